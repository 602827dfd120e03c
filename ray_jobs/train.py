"""Ray job: train a model on ROOT files streamed from S3, XRootD or disk.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/train.py --config train.yaml

Parse the config, run :func:`mlaas4hep.training.run_training`, print the summary (one
JSON line prefixed ``MLAAS4HEP_RESULT``). A configuration or data error exits with
status 2 and a one-line message before any training starts.
"""

from __future__ import annotations

import argparse

from mlaas4hep.training import TrainConfig, run_training
from mlaas4hep.training.result import end_process, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="training YAML (path or s3:// URL)")
    parser.add_argument("--run-name", help="resume (or name) this run: output.run_name")
    args = parser.parse_args(argv)

    def body() -> dict:
        config = TrainConfig.from_yaml(args.config)
        if args.run_name:
            config.output.run_name = args.run_name
            config.validate()
        return run_training(config, log=lambda line: print(line, flush=True))

    return report(body)


if __name__ == "__main__":
    end_process(main())
