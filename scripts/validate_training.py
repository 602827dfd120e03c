"""Validate the training path (the paper's Fig. 8): three ways to the same model.

(i)   the full job: ``run_training`` on Ray Train (2 workers, streamed chunks);
(ii)  mlaas4hep preprocessing (ChunkStream + Vectorizer) and a plain Keras ``fit``;
(iii) a hand-written uproot + awkward + Keras script that uses no mlaas4hep code.

All three use the default model (dense 128 → dropout 0.5 → 64 → sigmoid), the same
branches, padding and min-max normalisation, and are scored on held-out events. Their
test AUCs must agree within ``--tolerance`` (0.02); the script prints them and a
paper-like table, and exits 1 if they do not agree.

    python scripts/validate_training.py --events 200000 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BRANCHES = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass", "nJet", "MET_pt", "HT"]
JAGGED = {"Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass"}
PADDING = 8
SIGNAL = "ttH_signal.root"


def full_job(data: Path, out: Path, epochs: int, batch: int) -> tuple[float, float]:
    from mlaas4hep.training import TrainConfig, run_training

    config = TrainConfig.from_dict(
        {
            "dataset": {
                "files": [str(data)],
                "labels": {SIGNAL: 1, "*": 0},
                "include": BRANCHES,
            },
            "vectorizer": {"padding": PADDING},
            "training": {"epochs": epochs, "chunk_size": 20_000, "batch_size": batch},
            "scaling": {"num_workers": 2},
            "output": {"location": str(out), "name": "validate", "bentoml_store": False},
        }
    )
    start = time.perf_counter()
    summary = run_training(config, log=lambda line: None)
    return summary["test_auc"], time.perf_counter() - start


def mlaas4hep_keras(data: Path, epochs: int, batch: int) -> tuple[float, float]:
    from mlaas4hep.model.architectures import default_keras_model
    from mlaas4hep.model.metrics import auc
    from mlaas4hep.spec.compute import compute_dataset_spec
    from mlaas4hep.stream.chunks import ChunkStream
    from mlaas4hep.stream.options import Selection
    from mlaas4hep.transform.vectorizer import Vectorizer

    start = time.perf_counter()
    spec = compute_dataset_spec([str(data)], workers=2).dataset
    vectorizer = Vectorizer(spec, BRANCHES, padding=PADDING)
    stream = ChunkStream(
        [str(data)],
        vectorizer=vectorizer,
        selection=Selection(labels={SIGNAL: 1, "*": 0}),
        chunk_size=20_000,
    )
    model = default_keras_model(vectorizer.n_features)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    train = stream.with_split("train")
    for epoch in range(epochs):
        model.fit(train.to_tf_dataset(batch, epoch), epochs=1, verbose=0)
    scores, labels = [], []
    for b in stream.with_split("test").batches(4096):
        scores.append(model(b.X, training=False).numpy().ravel())
        labels.append(b.y)
    return auc(np.concatenate(labels), np.concatenate(scores)), time.perf_counter() - start


def plain_uproot_keras(data: Path, epochs: int, batch: int, seed: int = 0) -> tuple[float, float]:
    """No mlaas4hep: read everything, pad, min-max scale, random 80/20 split, fit."""
    import awkward as ak
    import tf_keras as keras
    import uproot

    start = time.perf_counter()
    columns, labels = [], []
    for path in sorted(data.glob("*.root")):
        with uproot.open(path) as f:
            arrays = f["Events"].arrays(BRANCHES)
        parts = []
        for name in BRANCHES:
            if name in JAGGED:
                padded = ak.fill_none(ak.pad_none(arrays[name], PADDING, clip=True), np.nan)
                parts.append(ak.to_numpy(padded).astype(np.float64))
            else:
                parts.append(ak.to_numpy(arrays[name]).astype(np.float64)[:, None])
        columns.append(np.hstack(parts))
        labels.append(np.full(len(arrays), 1.0 if path.name == SIGNAL else 0.0))
    X, y = np.vstack(columns), np.concatenate(labels)
    low, high = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
    X = (X - low) / np.where(high > low, high - low, 1.0)
    X = np.nan_to_num(X, nan=0.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    test = rng.random(len(y)) < 0.1
    model = keras.Sequential(
        [
            keras.layers.Input((X.shape[1],)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.AUC()])
    model.fit(X[~test], y[~test], batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    result = model.evaluate(X[test], y[test], batch_size=4096, verbose=0, return_dict=True)
    auc_value = next(v for k, v in result.items() if k.startswith("auc"))
    return float(auc_value), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--data", type=Path, help="existing ttH sample (else generated)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-validate-"))
    data = args.data
    if data is None:
        from mlaas4hep.local.samples import make_tth_dataset

        data = work / "tth"
        make_tth_dataset(data, n_events=args.events, seed=42)
    epochs, batch = args.epochs, args.batch_size
    rows = [
        ("(i) full job (Ray Train, 2 workers)", *full_job(data, work / "job", epochs, batch)),
        ("(ii) mlaas4hep + Keras fit", *mlaas4hep_keras(data, epochs, batch)),
        ("(iii) uproot + awkward + Keras", *plain_uproot_keras(data, epochs, batch)),
    ]
    print(f"\n{args.events} events, {args.epochs} epochs, batch {args.batch_size}\n")
    print(f"| {'way':<38} | test AUC | seconds |")
    print(f"| {'-' * 38} | -------- | ------- |")
    for name, value, seconds in rows:
        print(f"| {name:<38} | {value:8.4f} | {seconds:7.1f} |")
    spread = max(r[1] for r in rows) - min(r[1] for r in rows)
    agree = spread <= args.tolerance
    print(f"\nspread {spread:.4f} ({'within' if agree else 'OUTSIDE'} {args.tolerance})")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
