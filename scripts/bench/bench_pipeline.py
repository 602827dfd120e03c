"""Benchmark: spec throughput through the whole event path, against `mlaas4hep specs`.

    python scripts/bench/bench_pipeline.py [--events 1000000] [--files 4] [--repeat 3]
                                           [--data data/bench] [--out bench.json]

Uses the paper-layout sample (seeded, generated once into ``--data`` and kept), applies
the Terraform stack to a fresh moto server, then for 1 and 2 spec_file workers times the
notification path (S3 → SQS → spec_file → S3 → SQS → merge_specs) until the
DatasetSpec holds every file, under a new dataset each time, for two ways of landing:

- *upload*: the files uploaded one after the other as a user would (boto3's managed
  upload, multipart), the upload inside the clock;
- *landing*: the files copied server-side into the data prefix (``CopyObject``, as a
  transfer service or bucket replication puts them there), so that the clock holds the
  pipeline and not a client upload sharing the machine's cores with it.

In the same run, side by side, it uploads the same files once more and times
``compute_dataset_spec`` (what ``mlaas4hep specs`` runs) on those ``s3://`` objects,
in-process and warm, with one then two worker processes. Both sides are warmed up before
the clock (imports, connections: a few small files go through each path first) and the
best of ``--repeat`` runs counts, since the machine may be shared. Every run checks that
it covered all the events.

The report gives events/s and the overhead of each event path against the specs alone
(goal: at most 20 %) and of the upload path against upload + specs (the same start and
end), then, from the workers' log lines, where the event path's time went: the first
file's arrival (nothing can start before it), the spec phase (against the direct
computation), and the merge tail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from functions.local_runtime import LocalRuntime  # noqa: E402
from mlaas4hep.io.tree import open_tree  # noqa: E402
from mlaas4hep.local.moto import MotoServer  # noqa: E402
from mlaas4hep.local.project import infra_dir  # noqa: E402
from mlaas4hep.local.samples import cached_dataset, make_paper_dataset  # noqa: E402
from mlaas4hep.local.terraform import Terraform  # noqa: E402
from mlaas4hep.pipeline.config import PipelineConfig  # noqa: E402
from mlaas4hep.pipeline.merge_step import read_dataset_spec  # noqa: E402
from mlaas4hep.spec.compute import compute_dataset_spec  # noqa: E402

GOAL_PERCENT = 20.0
WARMUP_EVENTS = 4_000


@dataclass
class EventRun:
    """One landing of the sample under a new dataset, on the wall clock (epoch seconds),
    so that it lines up with the timestamps of the workers' log lines."""

    dataset: str
    start: float
    uploaded: list[float] = field(default_factory=list)  # each file's upload/copy returned
    end: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class DirectRun:
    """One upload of the sample apart from the datasets, then the specs computed on it."""

    upload: float
    specs: float


def upload_and_wait(
    s3, config: PipelineConfig, paths: list[Path], dataset: str, expected_entries: int
) -> EventRun:
    """Upload ``paths`` under ``dataset``, one after the other as a user would; the run
    ends when the DatasetSpec holds them all."""
    run = EventRun(dataset, time.time())
    for path in paths:
        s3.upload_file(str(path), config.data_bucket, f"{config.data_prefix}{dataset}/{path.name}")
        run.uploaded.append(time.time())
    return wait_for_spec(s3, config, run, len(paths), expected_entries, "upload")


def land_and_wait(
    s3, config: PipelineConfig, staged: list[str], dataset: str, expected_entries: int
) -> EventRun:
    """Copy the ``staged`` keys of the data bucket (outside the data prefix) into
    ``dataset`` server-side, one after the other; the run ends when the DatasetSpec
    holds them all."""
    run = EventRun(dataset, time.time())
    for key in staged:
        target = f"{config.data_prefix}{dataset}/{key.rsplit('/', 1)[-1]}"
        source = {"Bucket": config.data_bucket, "Key": key}
        s3.copy_object(Bucket=config.data_bucket, Key=target, CopySource=source)
        run.uploaded.append(time.time())
    return wait_for_spec(s3, config, run, len(staged), expected_entries, "landing")


def wait_for_spec(
    s3, config: PipelineConfig, run: EventRun, files: int, expected_entries: int, how: str
) -> EventRun:
    """End ``run`` when the DatasetSpec of its dataset holds ``files`` files.

    Waits on a HEAD of the DatasetSpec (the merge writes its file count as metadata), not
    on reading and parsing it, so that the watcher takes no CPU from the pipeline.
    """
    key = config.dataset_spec_key(run.dataset)
    while int(_head_metadata(s3, config.specs_bucket, key).get("files", 0)) < files:
        time.sleep(0.05)  # a HEAD costs moto and us ~3 ms of CPU: 6 % of a core at this rate
    run.end = time.time()
    spec = read_dataset_spec(config, run.dataset, s3=s3)[0]
    assert spec.entries == expected_entries, (run.dataset, spec.entries, expected_entries)
    print(f"  event path ({how}), {run.dataset}: {run.seconds:.2f} s", flush=True)
    return run


def _head_metadata(s3, bucket: str, key: str) -> dict[str, str]:
    try:
        return s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except s3.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return {}
        raise


def drop_prefix(s3, bucket: str, prefix: str) -> None:
    """Delete every version under ``prefix`` (moto keeps them all).

    Deleting by version id leaves no delete marker in the versioned data bucket.
    """
    listing = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    for item in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])


def upload_reference(s3, config: PipelineConfig, paths: list[Path], prefix: str) -> list[str]:
    """Upload ``paths`` under ``prefix``, outside the data prefix (so no event is sent);
    their ``s3://`` URLs."""
    urls = []
    for path in paths:
        key = f"{prefix}/{path.name}"
        s3.upload_file(str(path), config.data_bucket, key)
        urls.append(f"s3://{config.data_bucket}/{key}")
    return urls


def timed_direct(
    s3, config: PipelineConfig, paths: list[Path], prefix: str, workers: int, entries: int
) -> DirectRun:
    """Upload ``paths`` under ``prefix``, then compute their DatasetSpec from S3."""
    start = time.perf_counter()
    urls = upload_reference(s3, config, paths, prefix)
    uploaded = time.perf_counter()
    run = compute_dataset_spec(urls, workers=workers, strict=True)
    done = DirectRun(uploaded - start, time.perf_counter() - uploaded)
    assert len(run.dataset.files) == len(urls), run.failures
    assert run.dataset.entries == entries, (run.dataset.entries, entries)
    print(f"  mlaas4hep specs x{workers}: {done.specs:.2f} s (upload {done.upload:.2f} s)")
    drop_prefix(s3, config.data_bucket, prefix + "/")
    return done


# The workers' log lines (mlaas4hep.pipeline.spec_batch and merge_batch).
_STAMP = r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<worker>\S+) "
_SPEC_LINE = re.compile(
    _STAMP + r".*: (?P<status>\w+) \S* \(.*queued (?P<queued>[\d.]+) s, "
    r"checks (?P<checks>[\d.]+) s, computed in (?P<compute>[\d.]+) s, "
    r"stored in (?P<store>[\d.]+) s\)"
)
_MERGE_LINE = re.compile(
    _STAMP + r".*dataset (?P<dataset>\S+): updated .*\(queued (?P<queued>[\d.]+) s, "
    r"merged in (?P<merge>[\d.]+) s\)"
)


def _epoch(stamp: str) -> float:
    """A log line's time (``asctime``: local time, milliseconds) in epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def breakdown(log_text: str, run: EventRun, config: PipelineConfig) -> dict[str, Any]:
    """Where one event-path run's time went, from the workers' log lines.

    Times are seconds since the first upload (or copy) started. A worker's busy time
    is what its handler spent on this dataset's files (S3 round trips, spec, write).
    """
    marker = f"/{config.data_prefix}{run.dataset}/"
    specs, duplicates, merges = [], 0, []
    busy: dict[str, float] = {}
    for line in log_text.splitlines():
        spec = _SPEC_LINE.match(line)
        if spec and marker in line:
            if spec["status"] != "written":
                duplicates += 1
                continue
            stored = _epoch(spec["stamp"]) - run.start
            handled = float(spec["checks"]) + float(spec["compute"]) + float(spec["store"])
            busy[spec["worker"]] = busy.get(spec["worker"], 0.0) + handled
            specs.append(
                {
                    "started": round(stored - handled, 3),
                    "stored": round(stored, 3),
                    "queued": float(spec["queued"]),
                    "s3": round(float(spec["checks"]) + float(spec["store"]), 3),
                    "compute": float(spec["compute"]),
                }
            )
        merge = _MERGE_LINE.match(line)
        if merge and merge["dataset"] == run.dataset:
            merges.append(float(merge["merge"]))
    assert specs, f"no spec_file log line about {run.dataset}"
    first, last = min(s["started"] for s in specs), max(s["stored"] for s in specs)
    return {
        "event_path_s": round(run.seconds, 3),
        "first_upload_s": round(run.uploaded[0] - run.start, 3),
        "upload_s": round(run.uploaded[-1] - run.start, 3),
        "first_spec_started_s": first,
        "last_spec_stored_s": last,
        "spec_phase_s": round(last - first, 3),
        "spec_compute_s": [s["compute"] for s in specs],
        "spec_s3_round_trips_s": round(sum(s["s3"] for s in specs), 3),
        "spec_queued_s_max": max(s["queued"] for s in specs),
        "worker_busy_s": {name: round(seconds, 3) for name, seconds in sorted(busy.items())},
        "specs": sorted(specs, key=lambda s: s["started"]),
        "duplicate_deliveries": duplicates,
        "merge_writes": len(merges),
        "merge_s": round(sum(merges), 3),
        "merge_tail_s": round(run.seconds - last, 3),
    }


def describe(workers: int, how: str, direct: float, parts: dict[str, Any]) -> str:
    """The breakdown as text: the overhead split into the parts of the event path."""

    def share(seconds: float) -> str:
        return f"{100 * seconds / direct:+.1f} %"

    compute = parts["spec_compute_s"]
    hop = max(0.0, parts["first_spec_started_s"] - parts["first_upload_s"])  # ms stamps
    busy = ", ".join(f"{v:.2f}" for v in parts["worker_busy_s"].values())
    return "\n".join(
        [
            f"  {workers} worker(s), {how}: {parts['event_path_s']:.2f} s = "
            f"first file in {parts['first_upload_s']:.2f} s "
            f"+ SQS to spec_file {hop:.2f} s "
            f"+ spec phase {parts['spec_phase_s']:.2f} s "
            f"+ merge tail {parts['merge_tail_s']:.2f} s",
            f"    against mlaas4hep specs ({direct:.2f} s): first file "
            f"{share(parts['first_upload_s'])}, SQS {share(hop)}, spec phase "
            f"{share(parts['spec_phase_s'] - direct)}, merge tail "
            f"{share(parts['merge_tail_s'])}",
            f"    spec phase: every file in at {parts['upload_s']:.2f} s; "
            f"{len(compute)} specs in {min(compute):.2f}-{max(compute):.2f} s each "
            f"(sum {sum(compute):.2f} s), S3 round trips of the handler "
            f"{parts['spec_s3_round_trips_s']:.2f} s in all, workers busy {busy} s, "
            f"{parts['duplicate_deliveries']} duplicate deliveries skipped; "
            f"merge_specs: {parts['merge_writes']} writes, {parts['merge_s']:.2f} s in all",
        ]
    )


HOW = ("upload", "landing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the sample")
    parser.add_argument("--files", type=int, default=4, help="files in the sample")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench", help="sample dir")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_lambda_package.py")], check=True)
    paths = cached_dataset(args.data, "paper", args.events, args.files)
    events = 0
    for path in paths:
        with open_tree(path) as tree:
            events += tree.num_entries
    direct_runs: dict[int, list[DirectRun]] = {1: [], 2: []}
    event_runs: dict[tuple[int, str], list[EventRun]] = {}
    logs: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        warm = make_paper_dataset(Path(tmp) / "warm", n_events=WARMUP_EVENTS, n_files=4)
        os.environ.update(moto.env())
        tf = Terraform(state_dir=Path(tmp) / "terraform", env=moto.env())
        variables = {"environment": "bench", "aws_endpoint_url": moto.endpoint_url}
        tf.init()
        tf.apply([infra_dir() / "envs" / "local.tfvars"], variables)
        functions = tf.output()["functions"]
        config = PipelineConfig.from_env(functions["merge_specs"]["environment"])
        s3 = moto.client("s3")
        warm_paths = [w.path for w in warm]
        warm_urls = upload_reference(s3, config, warm_paths, "reference/warmup")
        staged = [url.split("/", 3)[3] for url in upload_reference(s3, config, paths, "staged")]
        for workers in (1, 2):
            log_file = Path(tmp) / f"workers-{workers}.log"
            compute_dataset_spec(warm_urls, workers=workers)  # warm-up of the direct path
            env = {**os.environ, "MLAAS4HEP_RUNTIME_LOG": str(log_file)}
            with LocalRuntime(functions, workers={"spec_file": workers}, env=env):
                upload_and_wait(s3, config, warm_paths, f"warmup{workers}", WARMUP_EVENTS)
                for rep in range(args.repeat):
                    prefix = f"reference/sample{workers}r{rep}"
                    direct = timed_direct(s3, config, paths, prefix, workers, events)
                    direct_runs[workers].append(direct)
                    for how in HOW:
                        dataset = f"{how}{workers}r{rep}"
                        if how == "upload":
                            run = upload_and_wait(s3, config, paths, dataset, events)
                        else:
                            run = land_and_wait(s3, config, staged, dataset, events)
                        event_runs.setdefault((workers, how), []).append(run)
                        drop_prefix(s3, config.data_bucket, f"{config.data_prefix}{dataset}/")
                time.sleep(0.5)  # the workers' last log lines
            logs[workers] = log_file.read_text(errors="replace")
        # No destroy: the moto server, and everything in it, goes away with this block.
    report: dict[str, Any] = {"events": events, "files": len(paths), "repeat": args.repeat}
    verdicts, lines = [], []
    for workers in (1, 2):
        specs = min(r.specs for r in direct_runs[workers])
        with_upload = min(r.upload + r.specs for r in direct_runs[workers])
        row: dict[str, Any] = {
            "specs_direct_s": round(specs, 3),
            "specs_direct_events_per_s": round(events / specs),
            "upload_and_specs_s": round(with_upload, 3),
        }
        for how in HOW:
            run = min(event_runs[(workers, how)], key=lambda r: r.seconds)
            parts = breakdown(logs[workers], run, config)
            row[how] = {
                "event_path_s": round(run.seconds, 3),
                "event_path_events_per_s": round(events / run.seconds),
                "overhead_percent": round(100 * (run.seconds / specs - 1), 1),
                "breakdown": parts,
            }
            verdicts.append(f"{workers} worker(s), {how} {row[how]['overhead_percent']:+.1f} %")
            lines.append(describe(workers, how, specs, parts))
        row["upload"]["overhead_vs_upload_and_specs_percent"] = round(
            100 * (row["upload"]["event_path_s"] / with_upload - 1), 1
        )
        report[f"workers_{workers}"] = row
    met = {
        how: all(report[f"workers_{w}"][how]["overhead_percent"] <= GOAL_PERCENT for w in (1, 2))
        for how in HOW
    }
    report["goal_met"] = met
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(f"\n{events:,} events in {len(paths)} files, best of {args.repeat} runs each")
    print(f"{'':24}{'1 function worker':>26}{'2 function workers':>26}")
    rows = [
        ("event path, upload", lambda r: _rate(r["upload"]["event_path_s"], events)),
        ("event path, landing", lambda r: _rate(r["landing"]["event_path_s"], events)),
        ("mlaas4hep specs", lambda r: _rate(r["specs_direct_s"], events)),
        ("upload + specs", lambda r: f"{r['upload_and_specs_s']:.2f} s"),
        ("overhead, upload", lambda r: f"{r['upload']['overhead_percent']:+.1f} %"),
        ("overhead, landing", lambda r: f"{r['landing']['overhead_percent']:+.1f} %"),
        (
            "upload vs upload+specs",
            lambda r: f"{r['upload']['overhead_vs_upload_and_specs_percent']:+.1f} %",
        ),
    ]
    for label, cell in rows:
        cells = "".join(f"{cell(report[f'workers_{w}']):>26}" for w in (1, 2))
        print(f"  {label:22}{cells}")
    print("where the event path's time went (seconds from the first upload or copy):")
    print("\n".join(lines))
    print(
        f"overhead of the event path vs mlaas4hep specs: {', '.join(verdicts)} "
        f"(goal <= {GOAL_PERCENT:g} %): "
        + "; ".join(f"{how} {'met' if met[how] else 'NOT met'}" for how in HOW)
    )
    return 0


def _rate(seconds: float, events: int) -> str:
    return f"{seconds:.2f} s {round(events / seconds):>9,}/s"


if __name__ == "__main__":
    sys.exit(main())
