"""Benchmark: spec throughput through the whole event path, against `mlaas4hep specs`.

    python scripts/bench/bench_pipeline.py [--events 200000] [--files 4] [--out bench.json]

Writes the paper-layout sample (seeded), applies the Terraform stack to a fresh moto
server, then for 1 and 2 spec_file workers uploads the files under a new dataset and
times upload → DatasetSpec holding every file (S3 event → SQS → spec_file → S3 event →
SQS → merge_specs). In the same run it times ``mlaas4hep specs`` on the same s3:// files
(one process, then two), and reports events/s and the overhead of the event path
(goal: at most 20 %).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from functions.local_runtime import LocalRuntime  # noqa: E402
from mlaas4hep.pipeline import PipelineConfig, read_dataset_spec  # noqa: E402
from mlaas4hep.samples import make_paper_dataset  # noqa: E402
from mlaas4hep.servers import MotoServer  # noqa: E402
from mlaas4hep.specs import compute_dataset_spec  # noqa: E402
from mlaas4hep.terraform import INFRA_DIR, Terraform  # noqa: E402


def _through_events(moto, outputs, files, dataset: str, workers: int) -> float:
    config = PipelineConfig.from_env(outputs["functions"]["merge_specs"]["environment"])
    s3 = moto.client("s3")
    with LocalRuntime(outputs["functions"], workers={"spec_file": workers}):
        time.sleep(3)  # let the workers import their handlers before the clock starts
        start = time.perf_counter()
        for sample in files:
            s3.upload_file(
                str(sample.path), config.data_bucket, f"datasets/{dataset}/{sample.path.name}"
            )
        while len(read_dataset_spec(config, dataset)[0].files) < len(files):
            time.sleep(0.05)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the sample")
    parser.add_argument("--files", type=int, default=4, help="files in the sample")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_lambda_package.py")], check=True)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, MotoServer() as moto:
        files = make_paper_dataset(Path(tmp) / "data", n_events=args.events, n_files=args.files)
        events = sum(f.events for f in files)
        tf = Terraform(state_dir=Path(tmp) / "terraform", env=moto.env())
        variables = {"environment": "bench", "aws_endpoint_url": moto.endpoint_url}
        var_files = [INFRA_DIR / "envs" / "local.tfvars"]
        import os

        os.environ.update(moto.env())
        tf.init()
        tf.apply(var_files, variables)
        outputs = tf.output()
        config = PipelineConfig.from_env(outputs["functions"]["merge_specs"]["environment"])
        s3 = moto.client("s3")
        urls = []
        for sample in files:  # the reference reads the very same objects
            key = f"reference/{sample.path.name}"
            s3.upload_file(str(sample.path), config.data_bucket, key)
            urls.append(f"s3://{config.data_bucket}/{key}")
        for workers in (1, 2):
            start = time.perf_counter()
            compute_dataset_spec(urls, workers=workers)
            results[f"direct_{workers}"] = time.perf_counter() - start
            results[f"events_{workers}"] = _through_events(
                moto, outputs, files, f"bench{workers}", workers
            )
        tf.destroy(var_files, variables)
    report = {"events": events, "files": len(files)}
    for workers in (1, 2):
        direct, through = results[f"direct_{workers}"], results[f"events_{workers}"]
        report[f"workers_{workers}"] = {
            "event_path_s": round(through, 3),
            "event_path_events_per_s": round(events / through),
            "specs_direct_s": round(direct, 3),
            "specs_direct_events_per_s": round(events / direct),
            "overhead_percent": round(100 * (through / direct - 1), 1),
        }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
