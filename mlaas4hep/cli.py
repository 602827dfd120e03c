"""The ``mlaas4hep`` command line: inspect files, compute dataset specs, stream chunks.

Each command is a thin layer over the library: parse arguments, call the core, print a
readable summary (rich) and exit with a status a shell script can test (0 success,
1 failure, 2 usage error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mlaas4hep.errors import MlaasError
from mlaas4hep.serve.protocol import DEFAULT_ALIAS

console = Console(stderr=True)
out = Console()


def build_parser() -> argparse.ArgumentParser:
    """The ``mlaas4hep`` argument parser, every command and option, without running anything.

    ``main`` parses with it; a caller (the README test, a shell-completion generator) can
    build it to check a command line: ``build_parser().parse_args(words)``.
    """
    parser = argparse.ArgumentParser(
        prog="mlaas4hep",
        description="Machine Learning as a Service for High-Energy Physics.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="show the tree, entries and branches of a file")
    inspect.add_argument("file", help="local path, root://host:port//path or s3://bucket/key")
    inspect.add_argument("--tree", help="tree name (found automatically when unique)")
    inspect.add_argument("--include", nargs="+", help="branch names or glob patterns")
    inspect.add_argument("--exclude", nargs="+", help="branch names or glob patterns to drop")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    specs = commands.add_parser("specs", help="compute the DatasetSpec of files")
    specs.add_argument("files", nargs="+", help="files, directories, globs, or s3:// prefixes")
    specs.add_argument("-o", "--output", default="dataset-spec.json", help="where to write it")
    specs.add_argument("--workers", type=int, default=1, help="parallel processes")
    specs.add_argument(
        "--threads",
        type=int,
        help="decompressing threads per process (default: the process's share of the CPUs)",
    )
    specs.add_argument("--tree", help="tree name (found automatically when unique)")
    specs.add_argument("--include", nargs="+", help="branch names or glob patterns")
    specs.add_argument("--exclude", nargs="+", help="branch names or glob patterns to drop")
    specs.add_argument("--strict", action="store_true", help="fail on the first bad file")
    specs.add_argument("--step-size", default="64 MB", help="events or bytes per read")
    specs.add_argument(
        "--update",
        action="store_true",
        help="reuse the specs of unchanged files from an existing output",
    )

    stream = commands.add_parser("stream", help="stream mixed, vectorised chunks (a dry run)")
    stream.add_argument("files", nargs="+", help="files, directories, globs, or s3:// prefixes")
    stream.add_argument("--spec", required=True, help="DatasetSpec JSON (from `mlaas4hep specs`)")
    stream.add_argument("--include", nargs="+", help="branches to vectorise")
    stream.add_argument("--exclude", nargs="+", help="branches to leave out")
    stream.add_argument("--chunk-size", type=int, default=10_000)
    stream.add_argument("--signal", nargs="+", default=[], help="files (or globs) labelled 1")
    stream.add_argument("--split", choices=["train", "validation", "test"])
    stream.add_argument("--cut", help="selection expression, e.g. 'nJet >= 4'")
    stream.add_argument("--seed", type=int, default=0)
    stream.add_argument(
        "--normalization", default="minmax", choices=["minmax", "zscore", "robust", "none"]
    )
    stream.add_argument("--padding", default="max", help="padding length: int, 'max' or 'p99'")
    _add_client_commands(commands)
    return parser


def _add_client_commands(commands: argparse._SubParsersAction) -> None:
    """``predict`` and ``models …``: the client of the serving API (mlaas4hep.serve.client)."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=os.environ.get("MLAAS4HEP_URL", "http://127.0.0.1:3000"),
        help="the service (default: $MLAAS4HEP_URL or http://127.0.0.1:3000)",
    )
    server.add_argument(
        "--token",
        default=os.environ.get("MLAAS4HEP_SERVE_TOKEN"),
        help="bearer token (default: $MLAAS4HEP_SERVE_TOKEN)",
    )
    predict = commands.add_parser(
        "predict", parents=[server], help="score every event of a ROOT file with the service"
    )
    predict.add_argument("file", help="local ROOT file (uploaded), or s3:// / root:// URL")
    predict.add_argument("--tree", help="tree name (found automatically when unique)")
    predict.add_argument("-o", "--output", help="write the scores: .json, .csv or .parquet")

    models = commands.add_parser("models", help="the model registry of the service")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[server], help="model versions, newest first")
    listing.add_argument("--name", help="only this model name")
    listing.add_argument("--label", nargs="+", default=[], help="key=value labels to match")
    listing.add_argument("--dataset", help="substring of a training file or prefix")
    listing.add_argument("--metric", nargs="+", default=[], help="e.g. 'test_auc>=0.8'")
    listing.add_argument("--created-after", help="ISO 8601 date")
    listing.add_argument("--created-before", help="ISO 8601 date")
    listing.add_argument("--alias", help="only versions holding this alias")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    card = actions.add_parser("card", parents=[server], help="the model card of a version")
    card.add_argument("ref", help="name:version, name:alias or name")
    upload = actions.add_parser("upload", parents=[server], help="upload a bundle archive")
    upload.add_argument("archive", help=".bentomodel, or .tar(.gz) of a bundle directory")
    upload.add_argument("--name", help="model name (needed for a bundle tar)")
    delete = actions.add_parser("delete", parents=[server], help="delete a version")
    delete.add_argument("ref", help="name:version")
    promote = actions.add_parser("promote", parents=[server], help="point an alias at a version")
    promote.add_argument("ref", help="name:version (or anything the registry resolves)")
    promote.add_argument("--alias", default=DEFAULT_ALIAS)
    actions.add_parser("aliases", parents=[server], help="the aliases of every model")

    ray = argparse.ArgumentParser(add_help=False)
    ray.add_argument(
        "--address",
        help="Ray Jobs API, http://HOST:8265 (default: $MLAAS4HEP_RAY_ADDRESS or the local stack)",
    )
    ray.add_argument(
        "--token-file",
        help="file holding the cluster's Ray token (default: $MLAAS4HEP_RAY_TOKEN, "
        "$RAY_AUTH_TOKEN or the local stack's .stack/ray_token)",
    )
    jobs = commands.add_parser(
        "jobs", help="retraining jobs on Ray: list, status, logs; the Jobs API address"
    )
    job_actions = jobs.add_subparsers(dest="action", required=True)
    job_list = job_actions.add_parser("list", parents=[ray], help="retraining jobs, newest first")
    job_list.add_argument("--dataset", help="only this dataset")
    job_list.add_argument("--all", action="store_true", help="every Ray job, not only retraining")
    job_status = job_actions.add_parser("status", parents=[ray], help="one job's status")
    job_status.add_argument("job", help="submission id")
    job_logs = job_actions.add_parser("logs", parents=[ray], help="one job's log")
    job_logs.add_argument("job", help="submission id")
    job_actions.add_parser(
        "address",
        parents=[ray],
        help="the Ray Jobs API address these commands use (the local stack's by default), "
        "for `ray job submit --address`",
    )
    cluster = commands.add_parser(
        "cluster", help="a node of the Ray cluster infra/modules/ray_cluster declares"
    )
    cluster_actions = cluster.add_subparsers(dest="action", required=True)
    node = cluster_actions.add_parser(
        "start-node",
        help="read the cluster's token from Secrets Manager, then run `ray start --block` "
        "with token authentication (the nodes' systemd unit runs this)",
    )
    node.add_argument("--role", choices=["head", "worker"], required=True)
    node.add_argument("--head-address", default="", help="host:port of the head's GCS (workers)")
    node.add_argument("--gcs-port", type=int, default=6379, help="the head's GCS port")
    node.add_argument("--dashboard-port", type=int, default=8265, help="the Jobs API port")
    node.add_argument("--num-cpus", type=int, help="CPUs offered to Ray (default: detected)")
    node.add_argument("--num-gpus", type=int, help="GPUs offered to Ray (default: detected)")
    node.add_argument("--token-secret", default="", help="Secrets Manager secret of the token")
    node.add_argument(
        "--create-token",
        action="store_true",
        help="the head: put a fresh token in the secret when it has no value",
    )
    node.add_argument("--region", help="AWS region of the secret (default: the SDK's)")
    node.add_argument("--env-file", help="JSON object of further environment variables")
    node.add_argument(
        "--print",
        action="store_true",
        help="print the `ray start` command (without the token) instead of running it",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "inspect": _inspect,
        "specs": _specs,
        "stream": _stream,
        "predict": _predict,
        "models": _models,
        "jobs": _jobs,
        "cluster": _cluster,
    }[args.command]
    try:
        return handler(args)
    except MlaasError as err:
        console.print(f"[bold red]error:[/] {err}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


def _inspect(args: argparse.Namespace) -> int:
    from mlaas4hep.io.tree import open_tree

    with open_tree(args.file, args.tree) as root_tree:
        names = root_tree.select(args.include, args.exclude, warn=False)
        info = {
            "file": root_tree.url,
            "tree": root_tree.tree_name,
            "format": root_tree.format,
            "entries": root_tree.num_entries,
            "branches": {
                n: {
                    "kind": root_tree.branches[n].kind,
                    "dtype": root_tree.branches[n].dtype,
                    **({"counter": c} if (c := root_tree.branches[n].counter) else {}),
                }
                for n in names
            },
            "skipped": root_tree.skipped,
        }
    if args.json:
        out.print_json(json.dumps(info))
        return 0
    out.print(
        f"[bold]{info['file']}[/]  {info['format']} [cyan]{info['tree']}[/], "
        f"{info['entries']} entries"
    )
    table = Table("branch", "kind", "dtype", "counter")
    for name, branch in info["branches"].items():
        table.add_row(name, branch["kind"], branch["dtype"], branch.get("counter", ""))
    out.print(table)
    kinds: dict[str, int] = {}
    for branch in info["branches"].values():
        kinds[branch["kind"]] = kinds.get(branch["kind"], 0) + 1
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    out.print(f"{len(info['branches'])} numeric branches ({summary})")
    if info["skipped"]:
        listed = ", ".join(f"{n} ({why})" for n, why in info["skipped"].items())
        out.print(f"[yellow]skipped non-numeric:[/] {listed}")
    return 0


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _specs(args: argparse.Namespace) -> int:
    from mlaas4hep.io.documents import read_text, write_text
    from mlaas4hep.io.expand import expand_sources
    from mlaas4hep.spec.compute import compute_dataset_spec
    from mlaas4hep.spec.documents import DatasetSpec

    urls = expand_sources(args.files)
    previous = None
    if args.update:
        try:
            previous = DatasetSpec.from_json(read_text(args.output))
        except FileNotFoundError:
            previous = None
    started = time.perf_counter()
    with _progress() as progress, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped branches are listed in each FileSpec
        task = progress.add_task("specs", total=len(urls))

        def advance(url: str, error: str | None) -> None:
            progress.advance(task)
            if error:
                progress.console.print(f"[red]failed[/] {error}")

        run = compute_dataset_spec(
            urls,
            args.tree,
            args.include,
            args.exclude,
            workers=args.workers,
            strict=args.strict,
            step_size=_step_size(args.step_size),
            progress=advance,
            previous=previous,
            threads=args.threads,
        )
    elapsed = time.perf_counter() - started
    dataset = run.dataset
    if not dataset.files:
        console.print("[bold red]error:[/] no file could be read; no spec written")
        return 1
    write_text(args.output, dataset.to_json(indent=1))
    rate = dataset.entries / elapsed if elapsed > 0 else float("inf")
    out.print(
        f"wrote {args.output}: {len(dataset.files)} files, {dataset.entries} events, "
        f"{len(dataset.branches)} branches in {elapsed:.2f} s ({rate:,.0f} events/s)"
    )
    if run.reused:
        out.print(f"reused the specs of {len(run.reused)} unchanged file(s)")
    for problem in dataset.problems():
        console.print(f"[yellow]warning:[/] {problem}")
    if run.failures:
        console.print(f"[yellow]{len(run.failures)} file(s) could not be read:[/]")
        for error in run.failures.values():
            console.print(f"  {error}")
    return 0


def _step_size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _stream(args: argparse.Namespace) -> int:
    import numpy as np

    from mlaas4hep.io import names
    from mlaas4hep.io.documents import read_text
    from mlaas4hep.io.expand import expand_sources
    from mlaas4hep.spec.documents import DatasetSpec
    from mlaas4hep.stream.chunks import ChunkStream
    from mlaas4hep.stream.options import Selection, Split
    from mlaas4hep.transform.vectorizer import Vectorizer

    spec = DatasetSpec.from_json(read_text(args.spec))
    urls = expand_sources(args.files)
    labels = {url: float(any(names.matches_file(url, p) for p in args.signal)) for url in urls}
    padding: int | str = int(args.padding) if args.padding.isdigit() else args.padding
    vectorizer = Vectorizer(
        spec, args.include, args.exclude, normalization=args.normalization, padding=padding
    )
    stream = ChunkStream(
        labels, vectorizer=vectorizer, chunk_size=args.chunk_size, seed=args.seed,
        selection=Selection(cut=args.cut), split=Split(args.split),
    )  # fmt: skip
    out.print(f"{vectorizer}; {stream.num_events} events in {stream.num_chunks} chunks")
    started = time.perf_counter()
    events = signal = 0
    clipped: dict[str, int] = {}
    with _progress() as progress:
        task = progress.add_task("chunks", total=stream.num_chunks)
        for chunk in stream.chunks():
            events += len(chunk)
            signal += int(np.count_nonzero(chunk.y)) if chunk.y is not None else 0
            for name, count in chunk.clipped.items():
                clipped[name] = clipped.get(name, 0) + count
            progress.advance(task)
    elapsed = time.perf_counter() - started
    out.print(
        f"streamed {events} events ({signal} signal) in {elapsed:.2f} s "
        f"({events / max(elapsed, 1e-9):,.0f} events/s), {vectorizer.n_features} features"
    )
    if clipped:
        out.print(f"values clipped by padding: {clipped}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mlaas4hep.serve.client import Client

    started = time.perf_counter()
    result = Client(args.url, args.token).predict_file(args.file, tree=args.tree)
    elapsed = time.perf_counter() - started
    scores = result.scores
    if args.output:
        _write_scores(args.output, scores, result.model)
    summary = f"scored {len(scores)} events of {args.file} with {result.model} in {elapsed:.2f} s"
    if len(scores):
        summary += (
            f"; scores mean {float(scores.mean()):.4f}, min {float(scores.min()):.4f}, "
            f"max {float(scores.max()):.4f}"
        )
    out.print(summary + (f"; wrote {args.output}" if args.output else ""))
    return 0


def _write_scores(path: str, scores: Any, model: str) -> None:
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"score": scores}).replace_schema_metadata({"model": model})
        pq.write_table(table, path)
    elif path.endswith(".csv"):
        with open(path, "w") as fh:
            fh.write("score\n")
            fh.writelines(f"{value:.9g}\n" for value in scores.tolist())
    elif path.endswith(".json"):
        with open(path, "w") as fh:
            json.dump({"model": model, "scores": scores.tolist()}, fh)
    else:
        raise MlaasError(f"--output {path}: give a .json, .csv or .parquet file name")


def _models(args: argparse.Namespace) -> int:
    from mlaas4hep.serve.client import Client

    client = Client(args.url, args.token)
    if args.action == "list":
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                console.print(f"[bold red]error:[/] --label {item!r}: write it as key=value")
                return 2
            labels[key] = value
        versions = client.list(
            args.name, labels=labels, dataset=args.dataset, metric=args.metric,
            created_after=args.created_after, created_before=args.created_before,
            alias=args.alias,
        )  # fmt: skip
        if args.json:
            out.print_json(json.dumps(versions))
            return 0
        table = Table("tag", "created", "aliases", "framework", "test AUC", "run")
        for v in versions:
            auc = v["metrics"].get("test_auc")
            table.add_row(
                v["tag"], v["created"][:19], ", ".join(v["aliases"]), str(v["framework"]),
                f"{auc:.4f}" if isinstance(auc, (int, float)) else "", str(v["run_name"] or ""),
            )  # fmt: skip
        out.print(table)
        return 0
    if args.action == "card":
        out.print_json(json.dumps(client.card(args.ref)))
    elif args.action == "upload":
        out.print(f"uploaded {client.upload(args.archive, name=args.name)}")
    elif args.action == "delete":
        out.print(f"deleted {client.delete(args.ref)}")
    elif args.action == "promote":
        out.print(f"{args.alias} → {client.promote(args.ref, args.alias)}")
    else:
        out.print_json(json.dumps(client.aliases()))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from datetime import datetime

    from mlaas4hep.pipeline import jobs_api as jobs

    address = args.address or jobs.default_address()
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    if args.action == "address":
        print(address)
        return 0

    def when(seconds: float | None) -> str:
        return datetime.fromtimestamp(seconds).isoformat(" ", "seconds") if seconds else ""

    if args.action == "list":
        table = Table("job", "dataset", "status", "started", "ended", "message")
        for job in jobs.list_jobs(address, dataset=args.dataset, all_jobs=args.all, token=token):
            message = job.message.strip().splitlines()
            table.add_row(
                job.submission_id, job.dataset, job.status, when(job.start_time),
                when(job.end_time), message[-1][:80] if message else "",
            )  # fmt: skip
        out.print(table)
        return 0
    if args.action == "status":
        job = jobs.job_info(address, args.job, token)
        out.print(f"{job.submission_id}: {job.status} ({job.dataset or 'no dataset'})")
        if job.message:
            out.print(job.message.strip())
        return 0 if job.status != "FAILED" else 1
    out.print(jobs.job_logs(address, args.job, token), markup=False, highlight=False)
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from mlaas4hep.cluster import node
    from mlaas4hep.extras import boto3

    settings = node.NodeSettings(
        role=args.role,
        head_address=args.head_address,
        gcs_port=args.gcs_port,
        dashboard_port=args.dashboard_port,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        token_secret=args.token_secret,
        create_token=args.create_token,
        environment=node.read_environment_file(args.env_file) if args.env_file else {},
    )
    region = {"region_name": args.region} if args.region else {}
    client = boto3().client("secretsmanager", **region) if settings.token_secret else None

    def show(executable: str, command: Sequence[str], env: Mapping[str, str]) -> int:
        auth = env.get("RAY_AUTH_MODE", "disabled")
        out.print(" ".join(command), highlight=False, soft_wrap=True)
        out.print(f"RAY_AUTH_MODE={auth}", highlight=False)
        return 0

    return node.start_node(settings, client, execute=show if args.print else os.execve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
