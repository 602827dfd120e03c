"""The model-step limit: the default model trained in a plain loop on in-memory tensors.

One framework per process, one thread, no input pipeline, no Ray: the events/s the
model's own training step reaches on this machine, the ceiling a training job's rate
per worker is compared with (``bench_training.py`` runs this for both frameworks).
The optimizer is the one the job uses (Adam; fused for torch where torch has it).

    python scripts/bench/step_limit.py --framework torch [--features 35] [--batch 256]

prints one JSON line: ``{"framework", "batch_size", "events_per_second"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def batches(n_features: int, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.random((steps * batch, n_features), dtype=np.float32)
    y = (rng.random(steps * batch) < 0.1).astype(np.float32)
    return X, y


def torch_rate(n_features: int, batch: int, steps: int) -> float:
    import torch

    from mlaas4hep.model.architectures import default_torch_model
    from mlaas4hep.training.torch_loop import adam

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = default_torch_model(n_features)
    optimizer = adam(model.parameters(), 1e-3, torch.device("cpu"))
    X, y = (torch.from_numpy(a) for a in batches(n_features, batch, steps))

    def run(count: int) -> None:
        for i in range(count):
            rows = slice(i * batch, (i + 1) * batch)
            loss = torch.nn.functional.binary_cross_entropy(model(X[rows]).reshape(-1), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    run(20)  # warm
    start = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - start)


def keras_rate(n_features: int, batch: int, steps: int) -> float:
    from mlaas4hep.model import architectures as models

    k = models.keras()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    k.utils.set_random_seed(0)
    model = models.default_keras_model(n_features)
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="binary_crossentropy")
    step: Any = tf.function(model.train_step, reduce_retracing=True)
    X, y = batches(n_features, batch, steps)
    tensors = [
        (tf.constant(X[i * batch : (i + 1) * batch]), tf.constant(y[i * batch : (i + 1) * batch]))
        for i in range(steps)
    ]

    def run(count: int) -> None:
        for i in range(count):
            step(tensors[i])

    run(20)  # warm: traced once
    start = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "tensorflow"), required=True)
    parser.add_argument("--features", type=int, default=35)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    measure = torch_rate if args.framework == "torch" else keras_rate
    rate = measure(args.features, args.batch, args.steps)
    print(json.dumps({"framework": args.framework, "batch_size": args.batch,
                      "events_per_second": rate}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
