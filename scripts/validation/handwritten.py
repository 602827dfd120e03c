"""Route (iii) of the training validation: what a physicist writes by hand, no mlaas4hep.

uproot reads every file whole, awkward pads the jagged branches to ``--padding`` values
per event, each branch is min-max scaled with its own minimum and maximum over every
value in the dataset (the jet slots of one branch share them; padded slots are 0), and a
tf-keras copy of the paper's model (dense 128 → dropout 0.5 → dense 64 → sigmoid,
Adam) is fitted with ``model.fit``. The train / validation / test events are the ones
of a split table (``--split``: for each file, the split code of each entry: 0 train,
1 validation, 2 test), so that this route trains and scores on the same events as the
others. The ROC AUC is exact (rank statistic, ties averaged). Nothing here imports
mlaas4hep: this file is the baseline the project is compared with.

    python scripts/validation/handwritten.py --split split.npz --out scores.npz \\
        --branches Jet_pt,Jet_eta,nJet,MET_pt --jagged Jet_pt,Jet_eta --signal ttH_signal.root

prints one JSON line: ``{"train": auc, "validation": auc, "test": auc, "seconds": s}``
and writes every split's labels and scores to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPLITS = ("train", "validation", "test")


def read_split_table(path: Path) -> dict[str, np.ndarray]:
    """``{file: split code of each entry}`` from the table the other routes exported."""
    with np.load(path) as table:
        files = [str(f) for f in table["files"]]
        return {f: table[f"codes_{i}"] for i, f in enumerate(files)}


def read_features(
    table: dict[str, np.ndarray],
    tree: str,
    branches: list[str],
    jagged: set[str],
    padding: int,
    signal: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, split code)`` of every event of every file in the table."""
    import awkward as ak
    import uproot

    per_branch: dict[str, list] = {name: [] for name in branches}
    labels, codes = [], []
    for path, file_codes in table.items():
        with uproot.open(path) as f:
            arrays = f[tree].arrays(branches)
        if len(arrays) != len(file_codes):
            raise SystemExit(
                f"{path}: {len(arrays)} entries, the split table has {len(file_codes)}"
            )
        for name in branches:
            per_branch[name].append(arrays[name])
        labels.append(np.full(len(arrays), 1.0 if Path(path).name == signal else 0.0))
        codes.append(file_codes)
    columns = []
    for name in branches:
        values = ak.concatenate(per_branch[name])
        flat = ak.to_numpy(ak.flatten(values) if name in jagged else values).astype(np.float64)
        low, high = float(flat.min()), float(flat.max())
        scale = (high - low) or 1.0
        if name in jagged:
            padded = ak.to_numpy(ak.fill_none(ak.pad_none(values, padding, clip=True), np.nan))
            scaled = (padded.astype(np.float64) - low) / scale
            columns.append(np.nan_to_num(scaled, nan=0.0))
        else:
            columns.append(((ak.to_numpy(values).astype(np.float64) - low) / scale)[:, None])
    X = np.hstack(columns).astype(np.float32)
    return X, np.concatenate(labels).astype(np.float32), np.concatenate(codes)


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """The exact ROC AUC: the Mann-Whitney rank statistic, tied scores sharing a rank."""
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = average_rank[inverse]
    positive = y == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fit(X: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int) -> object:
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.layers.Input((X.shape[1],)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(X, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="split table (.npz)")
    parser.add_argument("--out", type=Path, required=True, help="labels and scores (.npz)")
    parser.add_argument("--branches", required=True, help="comma-separated branch names")
    parser.add_argument("--jagged", default="", help="which of them are jagged")
    parser.add_argument("--signal", required=True, help="file name of the signal sample")
    parser.add_argument("--tree", default="Events")
    parser.add_argument("--padding", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    branches = args.branches.split(",")
    jagged = set(filter(None, args.jagged.split(",")))
    X, y, codes = read_features(
        read_split_table(args.split), args.tree, branches, jagged, args.padding, args.signal
    )
    train = codes == 0
    model = fit(X[train], y[train], args.epochs, args.batch_size, args.seed)
    result, saved = {}, {}
    for code, name in enumerate(SPLITS):
        rows = codes == code
        scores = model.predict(X[rows], batch_size=8192, verbose=0).ravel()
        result[name] = roc_auc(y[rows], scores)
        saved[f"{name}_y"], saved[f"{name}_scores"] = y[rows], scores
    result["seconds"] = time.perf_counter() - start
    np.savez(args.out, **saved)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
