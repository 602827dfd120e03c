"""Benchmark: spec throughput through the whole event path, against `mlaas4hep specs`.

    python scripts/bench/bench_pipeline.py [--events 1000000] [--files 4] [--repeat 2]
                                           [--data data/bench] [--out bench.json]

Uses the paper-layout sample (seeded, generated once into ``--data`` and kept), applies
the Terraform stack to a fresh moto server, then for 1 and 2 spec_file workers times
upload → DatasetSpec holding every file (S3 event → SQS → spec_file → S3 event → SQS →
merge_specs), upload included, under a new dataset each time. In the same run it times
``compute_dataset_spec`` (what ``mlaas4hep specs`` runs) on the very same ``s3://``
objects, in-process and warm, with one then two worker processes. Both sides are warmed
up before the clock (imports, compiled kernels, connections: a few small files go
through each path first) and the best of ``--repeat`` runs counts, since the machine may
be shared. The report gives events/s, the overhead of the event path (goal: at most
20 %) and, from the workers' logs, where the event path's time went.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from functions.local_runtime import LocalRuntime  # noqa: E402
from mlaas4hep.pipeline import PipelineConfig, read_dataset_spec  # noqa: E402
from mlaas4hep.samples import cached_dataset, make_paper_dataset  # noqa: E402
from mlaas4hep.servers import MotoServer  # noqa: E402
from mlaas4hep.specs import compute_dataset_spec  # noqa: E402
from mlaas4hep.terraform import INFRA_DIR, Terraform  # noqa: E402

GOAL_PERCENT = 20.0
WARMUP_EVENTS = 4_000


def upload_and_wait(s3, config: PipelineConfig, paths: list[Path], dataset: str) -> float:
    """Upload ``paths`` under ``dataset``; seconds until its DatasetSpec holds them all."""
    start = time.perf_counter()
    for path in paths:
        s3.upload_file(str(path), config.data_bucket, f"{config.data_prefix}{dataset}/{path.name}")
    upload = time.perf_counter() - start
    while len(read_dataset_spec(config, dataset, s3=s3)[0].files) < len(paths):
        time.sleep(0.02)
    total = time.perf_counter() - start
    print(f"  {dataset}: {total:.2f} s (upload {upload:.2f} s)", flush=True)
    return total


def drop_dataset(s3, config: PipelineConfig, dataset: str) -> None:
    """Delete every version of a dataset's data objects (moto keeps them in memory).

    Deleting by version id leaves no delete marker in the versioned data bucket.
    """
    prefix = f"{config.data_prefix}{dataset}/"
    listing = s3.list_object_versions(Bucket=config.data_bucket, Prefix=prefix)
    for item in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.delete_object(Bucket=config.data_bucket, Key=item["Key"], VersionId=item["VersionId"])


def timed_direct(urls: list[str], workers: int) -> float:
    start = time.perf_counter()
    run = compute_dataset_spec(urls, workers=workers, strict=True)
    seconds = time.perf_counter() - start
    assert len(run.dataset.files) == len(urls), run.failures
    print(f"  direct x{workers}: {seconds:.2f} s", flush=True)
    return seconds


def profile(log_file: Path) -> dict[str, float]:
    """Time spent by the workers, from their log lines (see pipeline.spec_batch)."""
    import re

    computed, queued, duplicates, merges, merge_queued = [], [], 0, 0, 0.0
    for line in log_file.read_text(errors="replace").splitlines():
        merge = re.search(r"dataset bench\S*: updated .*\(queued ([\d.]+) s\)", line)
        if merge:
            merges += 1
            merge_queued = max(merge_queued, float(merge.group(1)))
        match = re.search(r": (\w+) \S* \(.*queued ([\d.]+) s, computed in ([\d.]+) s\)", line)
        if not match or "/bench" not in line:
            continue
        status, wait, seconds = match.group(1), float(match.group(2)), float(match.group(3))
        if status == "written":
            computed.append(seconds)
            queued.append(wait)
        else:
            duplicates += 1
    return {
        "files_computed": len(computed),
        "compute_s_sum": round(sum(computed), 3),
        "queued_s_max": round(max(queued, default=0.0), 3),
        "duplicate_deliveries_skipped": duplicates,
        "merge_writes": merges,
        "merge_queued_s_max": round(merge_queued, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the sample")
    parser.add_argument("--files", type=int, default=4, help="files in the sample")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement (best)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench", help="sample dir")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_lambda_package.py")], check=True)
    paths = cached_dataset(args.data, "paper", args.events, args.files)
    best: dict[str, float] = {}
    profiles: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        warm = make_paper_dataset(Path(tmp) / "warm", n_events=WARMUP_EVENTS, n_files=4)
        events = 0
        import uproot

        for path in paths:
            with uproot.open(path) as handle:
                events += next(t for t in handle.values() if hasattr(t, "num_entries")).num_entries
        os.environ.update(moto.env())
        tf = Terraform(state_dir=Path(tmp) / "terraform", env=moto.env())
        variables = {"environment": "bench", "aws_endpoint_url": moto.endpoint_url}
        var_files = [INFRA_DIR / "envs" / "local.tfvars"]
        tf.init()
        tf.apply(var_files, variables)
        outputs = tf.output()
        config = PipelineConfig.from_env(outputs["functions"]["merge_specs"]["environment"])
        s3 = moto.client("s3")
        urls, warm_urls = [], []
        for path, into in [(p, urls) for p in paths] + [(w.path, warm_urls) for w in warm]:
            key = f"reference/{len(into)}/{path.name}"
            s3.upload_file(str(path), config.data_bucket, key)
            into.append(f"s3://{config.data_bucket}/{key}")
        for workers in (1, 2):
            log_file = Path(tmp) / f"workers-{workers}.log"
            compute_dataset_spec(warm_urls, workers=workers)  # warm-up of the direct path
            env = {**os.environ, "MLAAS4HEP_RUNTIME_LOG": str(log_file)}
            with LocalRuntime(outputs["functions"], workers={"spec_file": workers}, env=env):
                upload_and_wait(s3, config, [w.path for w in warm], f"warmup{workers}")
                for rep in range(args.repeat):
                    direct = timed_direct(urls, workers)
                    dataset = f"bench{workers}r{rep}"
                    through = upload_and_wait(s3, config, paths, dataset)
                    drop_dataset(s3, config, dataset)
                    best[f"direct_{workers}"] = min(best.get(f"direct_{workers}", 1e9), direct)
                    best[f"events_{workers}"] = min(best.get(f"events_{workers}", 1e9), through)
            profiles[workers] = profile(log_file)
        # No destroy: the moto server, and everything in it, goes away with this block.
    report: dict = {"events": events, "files": len(paths), "repeat": args.repeat}
    verdicts = []
    for workers in (1, 2):
        direct, through = best[f"direct_{workers}"], best[f"events_{workers}"]
        overhead = round(100 * (through / direct - 1), 1)
        report[f"workers_{workers}"] = {
            "event_path_s": round(through, 3),
            "event_path_events_per_s": round(events / through),
            "specs_direct_s": round(direct, 3),
            "specs_direct_events_per_s": round(events / direct),
            "overhead_percent": overhead,
            "profile": profiles[workers],
        }
        verdicts.append(f"{workers} worker(s) {overhead:+.1f} %")
    met = all(report[f"workers_{w}"]["overhead_percent"] <= GOAL_PERCENT for w in (1, 2))
    report["goal_met"] = met
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(
        f"overhead of the event path vs mlaas4hep specs: {', '.join(verdicts)} "
        f"(goal <= {GOAL_PERCENT:g} %): {'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
