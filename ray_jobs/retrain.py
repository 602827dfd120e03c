"""Ray job: retrain a dataset's model on its current DatasetSpec and decide the promotion.

Submitted by the retrain function (``functions/retrain.py``) when a DatasetSpec has
stopped changing; by hand it is:

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/retrain.py --dataset tth \
        --dataset-spec s3://specs/datasets/tth/dataset.json --models s3://models/tth/

See :mod:`mlaas4hep.pipeline.retraining`. Prints one JSON line prefixed ``MLAAS4HEP_RESULT`` with
the decision; a configuration or data error exits with status 2 before any training.
"""

from __future__ import annotations

import argparse
import os

from mlaas4hep.pipeline.retraining import DEFAULT_MARGIN, retrain
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.training.result import end_process, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="dataset name (data prefix folder)")
    parser.add_argument("--dataset-spec", required=True, help="URL of the DatasetSpec")
    parser.add_argument("--models", required=True, help="the dataset's models prefix")
    parser.add_argument("--recipe", help="training YAML (default: <models>/train.yaml)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="alias to promote to")
    parser.add_argument(
        "--registry",
        default=os.environ.get("MLAAS4HEP_REGISTRY_URL") or None,
        help="s3:// prefix of the shared registry the serving replicas follow (default "
        "$MLAAS4HEP_REGISTRY_URL; none: the local model store)",
    )
    parser.add_argument(
        "--staging-cache",
        default=os.environ.get("MLAAS4HEP_STAGING_CACHE") or None,
        help="where a recipe's staging without a cache copies root:// files (default "
        "$MLAAS4HEP_STAGING_CACHE, the deployment's cache bucket)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="promote unless the AUC on the new model's test events drops by more than this",
    )
    args = parser.parse_args(argv)
    return report(
        lambda: retrain(
            args.dataset,
            args.dataset_spec,
            args.models,
            recipe_url=args.recipe,
            alias=args.alias,
            margin=args.margin,
            registry_url=args.registry,
            staging_cache=args.staging_cache,
            log=lambda line: print(line, flush=True),
        )
    )


if __name__ == "__main__":
    end_process(main())
