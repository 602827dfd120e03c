"""The whole service on one machine, driven by events alone: what ``make demo`` runs.

Stages (each timed and shown as it runs):

1. sample data — the ttH-like sample (signal + 8 backgrounds) and a held-out sample;
2. local stack — moto (S3, SQS…), XRootD, a Ray head, ``terraform apply`` of
   ``infra/`` to moto, the function runtime, ``bentoml serve`` (see
   :class:`mlaas4hep.local.stack.LocalStack`);
3. upload — the dataset's training recipe to ``s3://<models>/<dataset>/train.yaml`` and
   the ROOT files to ``s3://<data>/datasets/<dataset>/``; from here on nothing is
   called by hand:
4. specs — S3 notifications → ``spec_file`` → ``merge_specs`` → the DatasetSpec;
5. retraining — the DatasetSpec update → ``retrain`` → a Ray job (``ray_jobs/retrain.py``)
   trains, publishes the bundle to the shared registry in the models bucket and
   promotes it to ``production`` there;
6. serving — ``bentoml serve`` follows that registry's alias, fetches the new version
   from the bucket into its own store and serves it;
7. scoring — held-out events over HTTP, their AUC, a few predictions, the plots.

Optionally (``continuous``) a second signal file is uploaded: one more retraining, a new
version whose lineage names the new file, promoted or kept by the AUC margin, while a
load runs against the service (its failed requests are counted: 0 expected).

Everything started is stopped at the end, on an error, and on Ctrl-C; a failing stage
names the log to read.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mlaas4hep.errors import MlaasError

console = Console()
DATASET = "tth"
SIGNAL = "ttH_signal*.root"


class StageFailed(MlaasError):
    """A demo stage did not reach its goal; the message names the log to read."""


@dataclass
class DemoOptions:
    """Sizes and places of one demo run."""

    events: int = 100_000
    heldout_events: int = 20_000
    epochs: int = 2
    workers: int = 1
    data_dir: Path = Path("data/demo")
    out_dir: Path = Path("out/demo")
    state_dir: Path = Path(".stack/demo")
    margin: float = 0.02
    continuous: bool = False
    timeout: float = 420.0
    include: list[str] = field(
        default_factory=lambda: [
            "nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass", "nMuon", "nElectron",
            "MET_pt", "HT",
        ]
    )  # fmt: skip

    def recipe(self) -> dict[str, Any]:
        """The dataset's training recipe (its ``dataset.files`` come from the DatasetSpec)."""
        return {
            "dataset": {
                "files": ["replaced-by-the-dataset-spec"],
                "labels": {SIGNAL: 1, "*": 0},
                "include": self.include,
            },
            "vectorizer": {"normalization": "minmax", "padding": 8},
            "training": {
                "epochs": self.epochs,
                "chunk_size": 20_000,
                "batch_size": 256,
                "learning_rate": 0.002,
            },
            "scaling": {"num_workers": self.workers, "cpus_per_worker": 1},
            "output": {"name": DATASET},
        }


class Stages:
    """Prints each stage with its duration; remembers them for the summary."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, str]] = []
        self.current = ""

    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[list[str]]:
        notes: list[str] = []
        self.current = title
        started = time.perf_counter()
        console.rule(f"[bold cyan]{title}")
        with console.status(f"{title} …"):
            yield notes
        seconds = time.perf_counter() - started
        self.done.append((title, seconds, "; ".join(notes)))
        console.print(
            f"[green]✓[/] {title} ({seconds:.1f} s){': ' if notes else ''}{'; '.join(notes)}"
        )

    def table(self) -> Table:
        table = Table(title="what the demo did")
        for column in ("stage", "seconds", "result"):
            table.add_column(column)
        for title, seconds, result in self.done:
            table.add_row(title, f"{seconds:.1f}", result)
        return table


def wait_until(
    what: str, check: Callable[[], Any], timeout: float, log: str, interval: float = 1.0
) -> Any:
    """Poll ``check`` until it returns something truthy; StageFailed naming ``log`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise StageFailed(f"{what}: not done after {timeout:.0f} s; read {log}")
        time.sleep(interval)


class LoadProbe:
    """Single-event requests in a loop from a few threads; counts answers and failures."""

    def __init__(self, url: str, events: list[dict[str, Any]], threads: int = 4) -> None:
        from mlaas4hep.serve.client import Client

        self.client = Client(url, timeout=30)
        self.events = events
        self.ok = 0
        self.failed: list[str] = []
        self.models: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            try:
                answer = self.client.predict([self.events[i % len(self.events)]])
                self.models.add(answer.model)
                self.ok += 1
            except Exception as err:  # every failure is the measurement
                self.failed.append(str(err))
            i += 1

    def __enter__(self) -> LoadProbe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _records(events: Any, names: list[str], n: int) -> list[dict[str, Any]]:
    import awkward as ak

    return ak.to_list(events[names][:n])


def _read_events(paths: list[Path], names: list[str]) -> tuple[Any, np.ndarray]:
    import awkward as ak

    from mlaas4hep.io.tree import open_tree

    parts, labels = [], []
    for path in paths:
        with open_tree(str(path)) as tree:
            events = ak.zip(dict(tree.arrays(names)), depth_limit=1)
        parts.append(events)
        labels.append(np.full(len(events), float(path.match(SIGNAL)), dtype=np.float32))
    return ak.concatenate(parts), np.concatenate(labels)


class Demo:
    """One run of the demo (see the module docstring)."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.stages = Stages()
        self.stack: Any = None
        self.summary: dict[str, Any] = {}

    # --- helpers -------------------------------------------------------------------
    def s3_client(self) -> Any:
        """A boto3 S3 client on the stack's moto server (the stack must be up)."""
        import boto3

        env = self.stack.moto.env()
        return boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )

    @property
    def buckets(self) -> dict[str, str]:
        return self.stack.outputs["buckets"]

    def _dataset_files(self) -> int:
        from mlaas4hep.spec.documents import DatasetSpec

        key = f"datasets/{DATASET}/dataset.json"
        try:
            body = self.s3_client().get_object(Bucket=self.buckets["specs"], Key=key)["Body"].read()
        except Exception:
            return 0
        return len(DatasetSpec.from_json(body).files)

    def _retrain_state(self) -> dict[str, Any] | None:
        try:
            body = self.s3_client().get_object(
                Bucket=self.buckets["models"], Key=f"retrain/{DATASET}/state.json"
            )["Body"]
        except Exception:
            return None
        return json.loads(body.read())

    def wait_for_retraining(self, previous: str | None) -> tuple[str, str]:
        """Wait for a retraining submission other than ``previous`` (a Ray submission id, None
        for the first) and for its end; returns its submission id and the path its log was
        written to. Raises :class:`StageFailed` when the job ends other than SUCCEEDED, or
        when nothing is submitted or the job does not end within the demo's timeout."""
        from mlaas4hep.pipeline.jobs_api import job_info, job_logs

        runtime_log = self.stack.state_dir / "runtime.log"
        state = wait_until(
            "retraining submission",
            lambda: (s := self._retrain_state()) and s["submission_id"] != previous and s,
            self.options.timeout,
            str(runtime_log),
        )
        job_id = state["submission_id"]
        address, token = self.stack.ray.address, self.stack.ray.auth_token
        log_path = self.options.out_dir / f"{job_id}.log"

        def ended() -> str | None:
            status = job_info(address, job_id, token).status
            return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

        status = wait_until(
            f"Ray job {job_id}", ended, self.options.timeout, f"`mlaas4hep jobs logs {job_id}`"
        )
        log_path.write_text(job_logs(address, job_id, token))
        if status != "SUCCEEDED":
            message = job_info(address, job_id, token).message.strip().splitlines()
            raise StageFailed(
                f"retraining job {job_id} {status}: {message[-1] if message else ''}; "
                f"read {log_path} (or `mlaas4hep jobs logs {job_id}`)"
            )
        return job_id, str(log_path)

    def _decision(self, log_path: str) -> dict[str, Any]:
        from mlaas4hep.training.result import job_result

        record = job_result(Path(log_path).read_text())
        if record is None:
            raise StageFailed(f"the retraining job printed no result; read {log_path}")
        return record

    def _verdict(self, decision: dict[str, Any]) -> str:
        """What a retraining did to the shared registry, in words."""
        where = self.stack.registry_url
        if decision["promote"]:
            return f"promoted {decision['candidate']} to production in {where}"
        return f"kept {decision['current']} as production in {where}"

    def served_tag(self) -> str | None:
        """The tag of the model the service serves now; None when it serves none or does not
        answer (within 5 s)."""
        from mlaas4hep.serve.client import Client

        try:
            model = Client(self.stack.bento.url, timeout=5).status().get("model")
        except Exception:
            return None
        return model.get("tag") if isinstance(model, dict) else None

    def serving_everywhere(self, tag: str) -> Callable[[], bool]:
        """A check for :func:`wait_until`: every worker of the service serves ``tag``."""
        from mlaas4hep.serve.client import Client, every_worker_serves

        return every_worker_serves(Client(self.stack.bento.url, timeout=5), tag)

    # --- stages --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Every stage in order (one call each), the stack stopped whatever happens."""
        from mlaas4hep.local.samples import cached_dataset
        from mlaas4hep.local.stack import LocalStack

        o = self.options
        o.out_dir.mkdir(parents=True, exist_ok=True)
        with self.stages.stage("sample data") as notes:
            files = cached_dataset(o.data_dir / "train", "tth", o.events, seed=42)
            heldout = cached_dataset(o.data_dir / "heldout", "tth", o.heldout_events, seed=4242)
            notes.append(
                f"{o.events:,} events in {len(files)} files, {o.heldout_events:,} held out"
            )
        with self.stages.stage("local stack") as notes:
            self._fresh_state_dir()
            self.stack = LocalStack(o.state_dir, serve=True, retrain_margin=o.margin)
            record = self.stack.up()
            notes.append(
                f"moto {record['moto']['endpoint_url']}, Ray {record['ray']['address']}, "
                f"service {record['bento']['url']} following the registry "
                f"{record['bento']['registry_url']}"
            )
        s3 = self.s3_client()
        with self.stages.stage("upload") as notes:
            s3.put_object(
                Bucket=self.buckets["models"],
                Key=f"{DATASET}/train.yaml",
                Body=json.dumps(o.recipe()).encode(),
            )
            for path in files:
                s3.upload_file(str(path), self.buckets["data"], f"datasets/{DATASET}/{path.name}")
            notes.append(f"{len(files)} files to s3://{self.buckets['data']}/datasets/{DATASET}/")
        runtime_log = str(self.stack.state_dir / "runtime.log")
        with self.stages.stage("specs (S3 notifications → spec_file → merge_specs)") as notes:
            wait_until(
                "DatasetSpec", lambda: self._dataset_files() == len(files), o.timeout, runtime_log
            )
            notes.append(f"DatasetSpec of {len(files)} files in s3://{self.buckets['specs']}/")
        with self.stages.stage("retraining (retrain → Ray job → registry)") as notes:
            job_id, log_path = self.wait_for_retraining(None)
            record = self._decision(log_path)
            decision = record["decision"]
            notes.append(f"{job_id}: {self._verdict(decision)} ({decision['reason']})")
        tag = decision["candidate"]
        with self.stages.stage("serving picks the new version up") as notes:
            wait_until(
                "every worker of the service serving " + tag,
                self.serving_everywhere(tag),
                120,
                str(self.stack.state_dir / "bento.log"),
                interval=0.2,
            )
            notes.append(f"{self.stack.bento.url} serves {tag}, fetched from the registry")
        with self.stages.stage("scoring held-out events over HTTP") as notes:
            self.summary.update(self._score(heldout, tag, record))
            notes.append(
                f"AUC {self.summary['heldout_auc']:.4f} on {self.summary['heldout_events']:,} "
                f"events ({self.summary['events_per_second']:,.0f} events/s)"
            )
        with self.stages.stage("plots") as notes:
            plots = self._plots(tag)
            notes.append(f"{len(plots)} PNG files in {o.out_dir / 'plots'}")
        if o.continuous:
            self._continuous(files, heldout, job_id)
        return self.summary

    def _fresh_state_dir(self) -> None:
        """Each demo starts from an empty model store and Terraform state."""
        from mlaas4hep.local.stack import pid_alive, read_record, stop_recorded

        state_dir = self.options.state_dir
        record = read_record(state_dir)
        if record is not None and pid_alive(record.get("supervisor_pid")):
            raise StageFailed(f"a stack still runs from {state_dir} (see its stack.json)")
        if record is not None:
            stop_recorded(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)

    def _score(self, heldout: list[Path], tag: str, record: dict[str, Any]) -> dict[str, Any]:
        from mlaas4hep.model.metrics import auc
        from mlaas4hep.serve.client import Client

        client = Client(self.stack.bento.url)
        events, labels = _read_events(heldout, self.options.include)
        started = time.perf_counter()
        answer = client.predict(events)
        seconds = time.perf_counter() - started
        if answer.model != tag:
            raise StageFailed(f"scored by {answer.model}, expected {tag}")
        signal, background = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        picks = np.concatenate([signal[:2], background[:3]])
        few = _records(events[picks], self.options.include, len(picks))
        single = [client.predict([event]).scores[0] for event in few]
        table = Table(title=f"a few held-out events, one request each, scored by {tag}")
        for column in ("nJet", "leading jet pT", "HT", "label", "score"):
            table.add_column(column)
        for event, label, score in zip(few, labels[picks], single, strict=True):
            pt = event["Jet_pt"][0] if event["Jet_pt"] else float("nan")
            table.add_row(
                str(event["nJet"]),
                f"{pt:.1f}",
                f"{event['HT']:.1f}",
                f"{label:.0f}",
                f"{score:.4f}",
            )
        console.print(table)
        return {
            "model": tag,
            "heldout_events": len(labels),
            "heldout_auc": float(auc(labels, answer.scores)),
            "job_test_auc": record["training"].get("test_auc"),
            "events_per_second": len(labels) / max(seconds, 1e-9),
        }

    def _plots(self, tag: str) -> list[Path]:

        source = self.stack.registry().path(tag) / "plots"
        target = self.options.out_dir / "plots"
        target.mkdir(parents=True, exist_ok=True)
        copied = []
        for png in sorted(source.glob("*.png")):
            copied.append(Path(shutil.copy2(png, target / png.name)))
        for path in copied:
            console.print(f"  {path}")
        self.summary["plots"] = [str(p) for p in copied]
        return copied

    def _continuous(self, files: list[Path], heldout: list[Path], first_job: str) -> None:
        from mlaas4hep.local.samples import cached_dataset

        o = self.options
        with self.stages.stage("continuous training: a second signal file") as notes:
            extra = cached_dataset(o.data_dir / "extra", "tth", max(o.events // 5, 10_000), seed=7)
            signal = next(p for p in extra if p.match(SIGNAL))
            events, _ = _read_events(heldout[:2], o.include)
            probe_events = _records(events, o.include, 64)
            before = self.served_tag()
            with LoadProbe(self.stack.bento.url, probe_events) as probe:
                self.s3_client().upload_file(
                    str(signal),
                    self.buckets["data"],
                    f"datasets/{DATASET}/ttH_signal_2.root",
                )
                job_id, log_path = self.wait_for_retraining(first_job)
                record = self._decision(log_path)
                decision = record["decision"]
                expected = decision["candidate"] if decision["promote"] else before
                wait_until(
                    "every worker of the service serving " + str(expected),
                    self.serving_everywhere(str(expected)),
                    120,
                    str(self.stack.state_dir / "bento.log"),
                    interval=0.2,
                )
                time.sleep(2.0)
            self.summary["continuous"] = {
                "job": job_id,
                "decision": decision,
                "new_files": [f for f in record["files"] if f.endswith("ttH_signal_2.root")],
                "requests_during_switch": probe.ok,
                "failed_requests": len(probe.failed),
                "models_seen": sorted(probe.models),
            }
            notes.append(
                f"{job_id}: {self._verdict(decision)} ({decision['reason']}); {probe.ok} "
                f"requests during the switch, {len(probe.failed)} failed"
            )

    def stop(self) -> None:
        if self.stack is not None:
            with console.status("stopping the local stack …"):
                self.stack.down()
            console.print("[green]✓[/] local stack stopped")


def run_demo(options: DemoOptions) -> int:
    """Run the demo; 0 on success, 1 with the failing stage's message otherwise."""
    demo = Demo(options)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = demo.run()
        console.print(demo.stages.table())
        (options.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        console.print(
            f"[bold green]held-out AUC {summary['heldout_auc']:.4f}[/] "
            f"(the job's test AUC {summary['job_test_auc']:.4f}); "
            f"summary in {options.out_dir / 'summary.json'}"
        )
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything the demo started[/]")
        return 130
    except Exception as err:  # any stage: say which, and where its logs are
        lines = str(err).strip().splitlines() or [type(err).__name__]
        console.print(f"[bold red]demo failed in stage {demo.stages.current!r}:[/]")
        console.print("\n".join(lines[-15:]), markup=False, highlight=False)
        console.print(f"logs: {options.state_dir} (runtime.log, */*.log), {options.out_dir}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.stop()
