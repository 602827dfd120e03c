"""Benchmark of training on Ray: the input pipeline, the data stall and the whole job.

On the sample ttH-like dataset (``--events``, 1,000,000 by default, nine files, zlib;
written once under ``data/bench-tth/``) and a local Ray head (2 CPUs, loopback), in
one run, side by side:

(a) input pipeline: events/s the data path (ChunkStream shard → Vectorizer → batches
    → tf.data tensors) delivers to a training loop, with 1 and 2 Ray workers. Each
    worker is a Ray actor (1 CPU) that reads its shard for one epoch through the same
    BatchFeed and tf.data adapter as the Keras loop, with no model; best of
    ``--repeat``.
(b) data stall: the share of training time the worker loop spent blocked on its next
    batch (the loop times it; the job reports it per unit), default model, 2 workers:
    with the batch feed ahead (the default) and with ``prefetch_batches: 0`` (batches
    made in the training thread), unit 0 of each.                      goal < 10 %
(c) time to train the default model end to end on all the events: ``ray job submit``
    of ``ray_jobs/train.py`` (spec pass, plan, Ray Train, test evaluation, plots,
    bundle in a BentoML store), with the breakdown the job reports; then the same job
    with torch.
(d) the model-step limit per framework (``step_limit.py``: the default model in a plain
    loop on in-memory tensors, one thread) and each job's training rate per worker as a
    share of it (goal >= 0.5); validation and start-up as shares of each job (goal <= 10 %);
    for 2 workers of 1 CPU (MultiWorkerMirroredStrategy / DDP) and for 1 worker with both
    CPUs (one process per node: no all-reduce; one plain Ray actor, no Ray Train).

    python scripts/bench/bench_training.py [--events N] [--epochs E] [--repeat R]
                                           [--skip-pipeline] [--skip-job]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from mlaas4hep.local.samples import cached_dataset
from mlaas4hep.pipeline.jobs_api import wait_for_job
from mlaas4hep.pipeline.submission import submit_training
from mlaas4hep.spec.compute import compute_dataset_spec
from mlaas4hep.training.config import TrainConfig
from mlaas4hep.training.result import job_result

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass", "nJet", "MET_pt", "HT"]
LABELS = {"ttH_signal.root": 1, "*": 0}
ONE = ("tensorflow-one", "torch-one")  # the jobs of one worker with both CPUs


def train_config(
    data: Path, out: Path, spec: str, epochs: int, workers: int, cpus: int = 1
) -> dict[str, Any]:
    return {
        "dataset": {"files": [str(data)], "labels": LABELS, "include": INCLUDE},
        "spec": spec,
        "vectorizer": {"padding": 8},
        "training": {"epochs": epochs, "chunk_size": 20_000, "batch_size": 256},
        "scaling": {"num_workers": workers, "cpus_per_worker": cpus},
        "output": {"location": str(out), "name": "bench-tth", "bentoml_store": True},
    }


# ------------------------------------------------------------------- (a) input pipeline


class FeedReader:
    """A Ray actor standing where a training worker stands, with no model."""

    def __init__(self) -> None:
        from mlaas4hep.model import architectures as models

        models.keras()  # TensorFlow imported before the clock starts

    def warm(self, worker_config: dict[str, Any]) -> None:
        """One batch through the data path: kernels compiled, files' headers cached."""
        from mlaas4hep.training import loop
        from mlaas4hep.training.session import Session

        worker = loop.setup(worker_config, Session())
        with worker.feed(0) as feed:
            next(feed.take(0, 1))
        worker.close()

    def read(self, worker_config: dict[str, Any], rank: int, world: int) -> dict[str, float]:
        """Consume one epoch of this worker's shard as the Keras step takes it; time it."""
        import tensorflow as tf

        from mlaas4hep.training import loop
        from mlaas4hep.training.feed import batches_per_unit
        from mlaas4hep.training.keras_loop import step_data
        from mlaas4hep.training.session import Session

        session = Session()
        session.rank, session.world_size = rank, world
        worker = loop.setup(worker_config, session)
        count = batches_per_unit(worker.plan, 0)
        weights = worker.train.weight_expr is not None
        events = 0
        start = time.perf_counter()
        with worker.feed(0) as feed:
            for batch in feed.take(0, count):  # to tensors, as the training step gets them
                data = tf.nest.map_structure(
                    tf.convert_to_tensor, step_data(batch, worker.with_mask, weights)
                )
                events += int(data[1].shape[0])
        seconds = time.perf_counter() - start
        worker.close()
        return {"events": events, "seconds": seconds, "produce": feed.produce_seconds}


def pipeline(address: str, data: Path, spec: str, repeat: int) -> dict[int, float]:
    """Events/s the data path delivers with 1 and 2 workers (best of ``repeat``)."""
    import ray

    from mlaas4hep.training.job import prepare, worker_config

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    reader = ray.remote(num_cpus=1)(FeedReader)
    rates: dict[int, float] = {}
    try:
        actors = [reader.remote() for _ in range(2)]
        for world in (1, 2):
            config = TrainConfig.from_dict(train_config(data, Path("unused"), spec, 1, world))
            cfg = worker_config(prepare(config))
            if world == 1:
                single = TrainConfig.from_dict(train_config(data, Path("unused"), spec, 1, 1))
                ray.get([a.warm.remote(worker_config(prepare(single))) for a in actors])
            best = 0.0
            for attempt in range(repeat):
                results = ray.get([actors[r].read.remote(cfg, r, world) for r in range(world)])
                events = sum(r["events"] for r in results)
                rate = events / max(r["seconds"] for r in results)
                best = max(best, rate)
                print(
                    f"  {world} worker(s), pass {attempt + 1}: {events:,} events, "
                    + ", ".join(f"{r['seconds']:.2f} s" for r in results)
                    + f" -> {rate:,.0f} events/s"
                )
            rates[world] = best
        for actor in actors:
            ray.kill(actor)
    finally:
        ray.shutdown()
    return rates


# ----------------------------------------------------------------------- (b), (c) jobs


def run_job(address: str, config: dict[str, Any], work: Path, env: dict[str, str]) -> tuple:
    path = work / f"train-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    job_id = submit_training(
        address, str(path), working_dir=str(ROOT), env=env, python=sys.executable
    )
    status, logs = wait_for_job(address, job_id, timeout=1800, poll=0.2)
    wall = time.perf_counter() - start
    result = job_result(logs)
    if status != "SUCCEEDED" or result is None:
        raise RuntimeError(f"training job {job_id} {status}:\n{logs[-3000:]}")
    metrics = json.loads(Path(result["bundle"]["output"], "metrics.json").read_text())
    return result, metrics["history"], wall


def step_limit(framework: str, n_features: int, batch: int) -> float:
    """Events/s of the default model's own step, one thread, in a process of its own."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "step_limit.py"),
         "--framework", framework, "--features", str(n_features), "--batch", str(batch)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])["events_per_second"])


def per_worker_rate(history: list[dict[str, Any]]) -> float:
    """The job's training rate per worker after the first unit (events/s of one worker)."""
    later = history[1:] or history
    rates = [h["events"] / h["train_seconds"] / len(h["workers"]) for h in later]
    return float(sum(rates) / len(rates))


def unit_times(result: dict[str, Any], history: list[dict[str, Any]], wall: float) -> dict:
    """The job's seconds by part, rank 0's view of the units (so that they add up):
    training steps, validation, the units in all, and start-up (submission, driver,
    Ray Train start/stop, imports, model build, checkpoints)."""
    t = result["timings"]
    train = sum(h["workers"][0]["train_seconds"] for h in history)
    validation = sum(h["validation_seconds"] for h in history)
    units = t.get("units", train + validation)
    return {
        "train": train,
        "validation": validation,
        "units": units,
        "submission": wall - t["total"] - t.get("driver_start", 0.0),
        "driver_start": t.get("driver_start", 0.0),
        "ray_train": t["fit"] - units,
    }


def shares(result: dict[str, Any], history: list[dict[str, Any]], wall: float) -> dict:
    """Validation and start-up as shares of the job's wall time."""
    times = unit_times(result, history, wall)
    startup = times["submission"] + times["driver_start"] + times["ray_train"]
    return {"validation": times["validation"] / wall, "startup": startup / wall}


STARTUP_ROWS = {
    "fit_workers_start": "worker start (Ray Train's group, or the actor)",
    "fit_worker_setup": "worker set-up: imports, streams, model, strategy",
    "fit_checkpoints": "checkpoints between units",
    "fit_workers_stop": "last checkpoint, workers stop",
}


def startup_rows(timings: dict[str, float], outside_units: float) -> list[tuple[str, float]]:
    """The fit's time outside its units by part, as the job reports it; one row when
    the job reports no parts."""
    rows = [(name, timings[key]) for key, name in STARTUP_ROWS.items() if key in timings]
    if not rows:
        return [("Ray Train start/stop, imports, model, checkpoints", outside_units)]
    return [*rows, ("rest of the fit", outside_units - sum(s for _, s in rows))]


def breakdown(result: dict[str, Any], history: list[dict[str, Any]], wall: float) -> None:
    """Where the job's time went; rank 0's view of the units, so that the rows add up."""
    t = result["timings"]
    times = unit_times(result, history, wall)
    train, validation, units = times["train"], times["validation"], times["units"]
    output = sum(t.get(k, 0.0) for k in ("bundle", "store", "export"))
    rows = [
        ("job submission, Ray job start and end, polling", times["submission"]),
        ("driver process start, imports", times["driver_start"]),
        ("spec pass (2 processes)", t.get("spec", 0.0)),
        ("open files, check branches", t.get("open_files", 0.0)),
        ("step plan", t.get("plan", 0.0)),
        *startup_rows(t, times["ray_train"]),
        ("training steps", train),
        ("validation (after the slowest worker's steps)", validation),
        ("rest of the units (records, reseed)", units - train - validation),
        ("test evaluation (driver)", t.get("evaluate", 0.0)),
        ("plots", t.get("plots", 0.0)),
        ("bundle, BentoML store, export", output),
    ]
    rows.append(("rest of the driver", wall - sum(seconds for _, seconds in rows)))
    for name, seconds in rows:
        print(f"    {name:<52} {seconds:7.1f} s {100 * seconds / wall:5.1f} %")
    print(f"    {'total (submit to result)':<52} {wall:7.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the end-to-end job")
    parser.add_argument("--repeat", type=int, default=2, help="best of N for the pipeline")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench-tth")
    parser.add_argument("--skip-pipeline", action="store_true", help="no (a)")
    parser.add_argument("--skip-job", action="store_true", help="no (b) and (c)")
    args = parser.parse_args()

    paths = cached_dataset(args.data, "tth", args.events)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {args.events:,} events, {size / 1e6:.0f} MB (ttH-like sample)")
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-bench-training-"))
    start = time.perf_counter()
    spec = compute_dataset_spec([str(args.data)], workers=2).dataset
    spec_path = work / "dataset-spec.json"
    spec_path.write_text(spec.to_json())
    print(f"spec pass: {time.perf_counter() - start:.1f} s\n")

    from mlaas4hep.local.stack import RayHead

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a loopback head of our own, no token
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (see RayHead)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    head = RayHead(num_cpus=2).start()
    rates: dict[int, float] = {}
    jobs: dict[str, tuple] = {}
    try:
        if not args.skip_pipeline:
            print("(a) input pipeline: ChunkStream shard -> Vectorizer -> batches -> tf.data")
            rates = pipeline(f"{head.host}:{head.port}", args.data, str(spec_path), args.repeat)
        if not args.skip_job:
            env = {"BENTOML_HOME": str(work / "bentoml"), "RAY_AUTH_MODE": "disabled"}
            config = train_config(args.data, work / "out", "compute", args.epochs, 2)
            print(f"\n(c) end-to-end job: default model, {args.epochs} epochs, 2 workers …")
            jobs["ahead"] = run_job(head.address, config, work, env)
            print(f"(c) the same with torch, {args.epochs} epochs, 2 workers …")
            config = train_config(args.data, work / "out", str(spec_path), args.epochs, 2)
            config["framework"] = "torch"
            config["output"]["bentoml_store"] = False
            jobs["torch"] = run_job(head.address, config, work, env)
            print("(b) the same job without the batch feed (prefetch_batches: 0), 1 epoch …")
            config = train_config(args.data, work / "out", str(spec_path), 1, 2)
            config["training"]["prefetch_batches"] = 0
            config["output"]["bentoml_store"] = False
            jobs["none"] = run_job(head.address, config, work, env)
            for framework in ("tensorflow", "torch"):
                print(f"(d) one worker with both CPUs (no all-reduce), {framework} …")
                config = train_config(args.data, work / "out", str(spec_path), args.epochs, 1, 2)
                config["framework"] = framework
                config["output"]["bentoml_store"] = False
                jobs[f"{framework}-one"] = run_job(head.address, config, work, env)
    finally:
        head.stop()

    limits = {}
    if jobs:
        from mlaas4hep.training.job import prepare

        probe = train_config(args.data, work / "out", str(spec_path), 1, 2)
        n_features = prepare(TrainConfig.from_dict(probe)).vectorizer.n_features
        print("\nmodel-step limit: the default model in a plain loop, one thread …")
        limits = {fw: step_limit(fw, n_features, 256) for fw in ("tensorflow", "torch")}

    print("\n================ results (one run, same machine) ================")
    if rates:
        print("(a) input pipeline, events/s delivered as tf.data tensors (best of N)")
        for world, rate in rates.items():
            print(
                f"    {world} worker(s): {rate:>12,.0f} events/s  ({rate / world:,.0f} per worker)"
            )
        print(f"    2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
    if jobs:
        result, history, wall = jobs["ahead"]
        _, plain, _ = jobs["none"]
        print("(b) data stall: share of training time blocked on the next batch (goal < 10 %)")
        print(
            f"    unit 0, batch feed ahead: {100 * history[0]['data_wait_fraction']:5.1f} %   "
            f"batches made in the loop: {100 * plain[0]['data_wait_fraction']:5.1f} %"
        )
        for h in history:
            rate = h["events"] / h["train_seconds"]
            workers = ", ".join(f"{100 * w['wait_seconds'] / w['train_seconds']:.1f} %"
                                for w in h["workers"])  # fmt: skip
            stall = 100 * h["data_wait_fraction"]
            print(
                f"    epoch {h['unit']}: {stall:5.1f} % (workers: {workers}),"
                f" training at {rate:,.0f} events/s, val AUC {h['val_auc']:.3f}"
            )
        if rates:
            trained = history[-1]["events"] / history[-1]["train_seconds"]
            print(f"    data path (a, 2 workers) / training consumption: {rates[2] / trained:.2f}")
        print(
            f"(c) end to end, {result['train_events']:,} training events x {len(history)} epochs:"
            f" {wall:.1f} s, test AUC {result['test_auc']:.3f}"
        )
        breakdown(result, history, wall)
        print("    the same, one worker with both CPUs (one Ray actor), tf-keras:")
        breakdown(*jobs["tensorflow-one"])
        layouts = {"2 workers x 1 CPU": ("ahead", "torch"), "1 worker x 2 CPUs": ONE}
        print("(d) training rate per worker / model-step limit (goal >= 0.5; one thread)")
        for layout, keys in layouts.items():
            for framework, key in zip(("tensorflow", "torch"), keys, strict=True):
                rate, cpus = per_worker_rate(jobs[key][1]), 2 if key in ONE else 1
                print(
                    f"    {layout}, {framework:<10} limit {limits[framework]:>9,.0f} events/s,"
                    f" job {rate:>9,.0f} per worker: {rate / limits[framework]:.2f}"
                    f" ({rate / cpus / limits[framework]:.2f} per CPU)"
                )
        for layout, keys in layouts.items():
            for framework, key in zip(("tensorflow", "torch"), keys, strict=True):
                share, wall = shares(*jobs[key]), jobs[key][2]
                print(
                    f"    {layout}, {framework:<10} validation {100 * share['validation']:4.1f} %"
                    f" of the job, start-up {100 * share['startup']:4.1f} % (goal <= 10 % each),"
                    f" job {wall:.1f} s"
                )
        for key in ONE:
            waits = ", ".join(f"{100 * h['data_wait_fraction']:.1f} %" for h in jobs[key][1])
            print(f"    {key}: data wait per epoch {waits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
