"""Validate the training path like for like (the paper's Fig. 8): four routes, same events.

(i)   the full job: ``ray_jobs/train.py`` submitted to a Ray head (Ray Train, 2 workers,
      streamed chunks), as ``ray job submit`` does;
(ii)  mlaas4hep's ChunkStream + Vectorizer feeding a plain tf-keras ``fit``;
(iii) a hand-written uproot + awkward + tf-keras script with no mlaas4hep import
      (``scripts/validation/handwritten.py``, run in its own process);
(BDT) scikit-learn's ``HistGradientBoostingClassifier`` on (ii)'s flat inputs, early
      stopping on the validation split (the paper compares with the analysis BDT).

Every route trains on the same train events and is scored on the same validation and
test events: the split is mlaas4hep's hash of (file, entry) (``--fractions``, 64/16/20
by default, as the paper), exported as a table of each file's entries that route (iii)
reads. The neural routes share the branches, the padding, the per-branch min-max
normalisation (one minimum and maximum per branch over the whole dataset, padded slots
0), the paper's model (dense 128 → dropout 0.5 → dense 64 → sigmoid, Adam 1e-3), the
epochs and the batch of ``--batch-size`` events per optimizer step (the job's 2 workers
take half each). Every AUC is exact, from the scores; (iii) computes its own and the
script checks it against mlaas4hep's.

By default at the paper's scale: 9 files (8 background + 1 signal, 10.8 % signal),
350,000 events, 5 epochs, batch 100. Writes ``table.md``, ``results.json`` and
``fig8.png`` (test ROC curves and the AUCs of each split) under ``--out``, prints the
table, and exits 1 if the three neural routes' test AUCs differ by more than
``--tolerance``: by default 0.02, or three standard errors of the test AUC (Hanley and
McNeil) when a small sample makes that larger.

    python scripts/validate_training.py [--events 350000] [--epochs 5] [--batch-size 100]
                                        [--tolerance 0.02] [--out data/validate-training]
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

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
HANDWRITTEN = ROOT / "scripts" / "validation" / "handwritten.py"
BRANCHES = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass", "nJet", "MET_pt", "HT"]
JAGGED = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "Jet_mass"]
PADDING = 8
SIGNAL = "ttH_signal.root"
SPLITS = ("train", "validation", "test")
NEURAL = ("(i) full job on Ray", "(ii) mlaas4hep + Keras fit", "(iii) uproot + awkward + Keras")
BDT = "BDT (HistGradientBoosting)"

Scores = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, scores)


def job_config(files: list[str], out: Path, args: argparse.Namespace) -> Any:
    from mlaas4hep.training import TrainConfig

    return TrainConfig.from_dict(
        {
            "dataset": {
                "files": files,
                "labels": {SIGNAL: 1, "*": 0},
                "include": BRANCHES,
                "fractions": list(args.fractions),
                "split_seed": args.seed,
            },
            "vectorizer": {"padding": PADDING},
            "training": {
                "epochs": args.epochs,
                "chunk_size": 20_000,
                "batch_size": args.batch_size // args.workers,  # per worker
                "seed": args.seed,
            },
            "scaling": {"num_workers": args.workers},
            "output": {"location": str(out), "name": "validate", "bentoml_store": False},
        }
    )


class Inputs:
    """The dataset as mlaas4hep reads it: the files, the Vectorizer and each split's stream."""

    def __init__(self, files: list[str], args: argparse.Namespace) -> None:
        from mlaas4hep.spec.compute import compute_dataset_spec
        from mlaas4hep.stream.chunks import ChunkStream
        from mlaas4hep.stream.options import Selection, Split
        from mlaas4hep.transform.vectorizer import Vectorizer

        spec = compute_dataset_spec(files, workers=2).dataset
        self.vectorizer = Vectorizer(spec, BRANCHES, padding=PADDING)
        self.stream = ChunkStream(
            files,
            vectorizer=self.vectorizer,
            selection=Selection(labels={SIGNAL: 1, "*": 0}),
            chunk_size=20_000,
            seed=args.seed,
            split=Split(fractions=tuple(args.fractions), seed=args.seed),
        )
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, mask, y)`` of every event of ``split``, in reading order (read once)."""
        if split not in self._arrays:
            batches = list(self.stream.with_split(split).batches(8192))
            self._arrays[split] = tuple(  # type: ignore[assignment]
                np.concatenate([getattr(b, a) for b in batches]) for a in ("X", "mask", "y")
            )
        return self._arrays[split]

    def export_split(self, path: Path) -> None:
        """The split table route (iii) reads: each file's split code of every entry."""
        table = self.stream.split_table()
        files = list(table)
        codes = {f"codes_{i}": table[f] for i, f in enumerate(files)}
        np.savez(path, files=np.array(files), **codes)


def score_splits(inputs: Inputs, predict: Any) -> Scores:
    out = {}
    for split in SPLITS:
        X, mask, y = inputs.arrays(split)
        out[split] = (y, np.asarray(predict(X, mask), dtype=np.float64).ravel())
    return out


def full_job(inputs: Inputs, files: list[str], work: Path, args: argparse.Namespace) -> Scores:
    """``ray job submit`` of ``ray_jobs/train.py`` to a Ray head of its own (loopback,
    2 CPUs), as a user submits it; the bundle it writes scores the three splits."""
    import yaml

    from mlaas4hep.local.stack import RayHead
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.model.metrics import auc
    from mlaas4hep.pipeline.jobs_api import wait_for_job
    from mlaas4hep.pipeline.submission import submit_training
    from mlaas4hep.training.result import job_result

    recipe = work / "train.yaml"
    recipe.write_text(yaml.safe_dump(job_config(files, work / "job", args).to_dict()))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # our own loopback head, no token
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (see RayHead)
    head = RayHead(num_cpus=max(2, args.workers)).start()
    try:
        env = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]}
        job_id = submit_training(
            head.address, str(recipe), working_dir=str(ROOT), env=env, python=sys.executable
        )
        status, logs = wait_for_job(head.address, job_id, timeout=3600)
    finally:
        head.stop()
    summary = job_result(logs)
    if status != "SUCCEEDED" or summary is None:
        raise SystemExit(f"route (i): training job {job_id} {status}:\n{logs[-3000:]}")
    bundle = ModelBundle.load(summary["bundle"]["output"])
    if bundle.vectorizer.to_dict() != inputs.vectorizer.to_dict():
        raise SystemExit("the job's preprocessing differs from route (ii)'s: not like for like")
    scores = score_splits(inputs, bundle.predict_vectorized)
    if abs(auc(*scores["test"]) - summary["test_auc"]) > 1e-6:  # the job's own test events
        raise SystemExit(f"the job's test AUC {summary['test_auc']} is not route (i)'s test AUC")
    return scores


def mlaas4hep_keras(inputs: Inputs, args: argparse.Namespace) -> Scores:
    from mlaas4hep.model import architectures as models

    k = models.keras()
    k.utils.set_random_seed(args.seed)
    model = models.default_keras_model(inputs.vectorizer.n_features)
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss="binary_crossentropy")
    train = inputs.stream.with_split("train")
    for epoch in range(args.epochs):
        model.fit(train.to_tf_dataset(args.batch_size, epoch), epochs=1, verbose=0)
    return score_splits(inputs, lambda X, mask: model.predict(X, batch_size=8192, verbose=0))


def handwritten(split_table: Path, work: Path, args: argparse.Namespace) -> Scores:
    out = work / "handwritten.npz"
    command = [
        sys.executable, str(HANDWRITTEN), "--split", str(split_table), "--out", str(out),
        "--branches", ",".join(BRANCHES), "--jagged", ",".join(JAGGED), "--signal", SIGNAL,
        "--padding", str(PADDING), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"route (iii) failed:\n{run.stderr[-3000:]}")
    own = json.loads(run.stdout.strip().splitlines()[-1])
    with np.load(out) as saved:
        scores = {s: (saved[f"{s}_y"], saved[f"{s}_scores"].astype(np.float64)) for s in SPLITS}
    from mlaas4hep.model.metrics import auc

    for split, (y, s) in scores.items():  # two implementations of the exact AUC agree
        if abs(own[split] - auc(y, s)) > 1e-9:
            raise SystemExit(f"route (iii)'s AUC {own[split]} != mlaas4hep's {auc(y, s)}")
    return scores


def bdt(inputs: Inputs, args: argparse.Namespace) -> Scores:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, _, y = inputs.arrays("train")
    X_val, _, y_val = inputs.arrays("validation")
    model = HistGradientBoostingClassifier(
        max_iter=300, early_stopping=True, random_state=args.seed
    )
    model.fit(X, y, X_val=X_val, y_val=y_val)
    return score_splits(inputs, lambda X, mask: model.predict_proba(X)[:, 1])


def auc_standard_error(value: float, positives: int, negatives: int) -> float:
    """The standard error of an AUC measured on ``positives`` signal and ``negatives``
    background events (Hanley & McNeil, Radiology 143 (1982) 29)."""
    q1, q2 = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (
        value * (1 - value) + (positives - 1) * (q1 - value**2) + (negatives - 1) * (q2 - value**2)
    ) / (positives * negatives)
    return float(np.sqrt(max(variance, 0.0)))


def table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.events:,} events ({args.fractions[0]:.0%}/{args.fractions[1]:.0%}/"
        f"{args.fractions[2]:.0%} split), {args.epochs} epochs, batch {args.batch_size}",
        "",
        "| route | train AUC | validation AUC | test AUC | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['train']:.4f} | {r['validation']:.4f} | {r['test']:.4f} "
            f"| {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(scores: dict[str, Scores], results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlaas4hep.model.metrics import roc_curve

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, by_split in scores.items():
        fpr, tpr, _ = roc_curve(*by_split["test"])
        left.plot(fpr, tpr, label=f"{name}: {results[name]['test']:.4f}")
    left.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    left.set(xlabel="false positive rate", ylabel="true positive rate", title="test ROC")
    left.legend(fontsize=8, loc="lower right")
    width = 0.8 / len(scores)
    for i, name in enumerate(scores):
        values = [results[name][s] for s in SPLITS]
        right.bar(np.arange(3) + i * width, values, width, label=name)
    low = min(results[n][s] for n in scores for s in SPLITS)
    right.set(xticks=np.arange(3) + 0.4 - width / 2, xticklabels=SPLITS, ylabel="ROC AUC",
              ylim=(max(0.5, low - 0.05), 1.0), title="AUC by split")  # fmt: skip
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=350_000)
    parser.add_argument("--signal-fraction", type=float, default=0.108)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100, help="events per optimizer step")
    parser.add_argument("--fractions", type=float, nargs=3, default=(0.64, 0.16, 0.20))
    parser.add_argument("--workers", type=int, default=2, help="Ray workers of route (i)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tolerance", type=float, help="largest test-AUC spread (default: 0.02 or 3 s.e.)"
    )
    parser.add_argument("--data", type=Path, help="an existing ttH-like sample (else generated)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "validate-training")
    args = parser.parse_args(argv)
    if args.batch_size % args.workers:
        parser.error("--batch-size must be a multiple of --workers")
    from mlaas4hep.local.samples import make_tth_dataset
    from mlaas4hep.model.metrics import auc

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mlaas4hep-validate-"))
    data = args.data
    if data is None:
        data = work / "tth"
        make_tth_dataset(data, args.events, seed=42, signal_fraction=args.signal_fraction)
    from mlaas4hep.training.job import resolve_files

    files = resolve_files(job_config([str(data)], work, args))
    inputs = Inputs(files, args)
    inputs.export_split(work / "split.npz")
    routes = {
        NEURAL[0]: lambda: full_job(inputs, files, work, args),
        NEURAL[1]: lambda: mlaas4hep_keras(inputs, args),
        NEURAL[2]: lambda: handwritten(work / "split.npz", work, args),
        BDT: lambda: bdt(inputs, args),
    }
    scores: dict[str, Scores] = {}
    results: dict[str, dict[str, float]] = {}
    for name, route in routes.items():
        print(f"{name} …", flush=True)
        start = time.perf_counter()
        scores[name] = route()
        results[name] = {s: auc(*scores[name][s]) for s in SPLITS}
        results[name]["seconds"] = time.perf_counter() - start
    reference = scores[NEURAL[0]]
    for name in routes:  # as many events and signal events in each split for every route
        for split in SPLITS:
            if not np.array_equal(np.sort(scores[name][split][0]), np.sort(reference[split][0])):
                raise SystemExit(f"{name} scored other {split} events than route (i)")
    text = table(results, args)
    spread = max(results[n]["test"] for n in NEURAL) - min(results[n]["test"] for n in NEURAL)
    if args.tolerance is None:
        y = reference["test"][0]
        error = auc_standard_error(results[NEURAL[0]]["test"], int(y.sum()), int((y == 0).sum()))
        args.tolerance = round(max(0.02, 3 * error), 4)
    agree = spread <= args.tolerance
    verdict = (
        f"neural routes' test AUC spread {spread:.4f} "
        f"({'within' if agree else 'OUTSIDE'} {args.tolerance})"
    )
    (args.out / "table.md").write_text(f"{text}\n\n{verdict}\n")
    record = {"results": results, "spread": spread, "tolerance": args.tolerance}
    (args.out / "results.json").write_text(json.dumps(record, indent=1))
    plot(scores, results, args.out / "fig8.png")
    print(f"\n{text}\n\n{verdict}\nwritten: {args.out}/table.md, results.json, fig8.png")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
