"""The seeded sample-data generator: layout, determinism, sizes and separability."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.samples import bytes_per_event, make_paper_dataset, make_tth_dataset
from mlaas4hep.sources import open_tree
from mlaas4hep.specs import compute_dataset_spec
from mlaas4hep.stream import ChunkStream
from mlaas4hep.vectorizer import Vectorizer


@pytest.fixture(scope="module")
def tth(tmp_path_factory):
    return make_tth_dataset(tmp_path_factory.mktemp("tth"), n_events=20_000, seed=7)


def test_tth_files_labels_and_fraction(tth):
    assert len(tth) == 9
    assert sum(f.label for f in tth) == 1 and tth[0].path.name == "ttH_signal.root"
    assert sum(f.events for f in tth) == 20_000
    signal = sum(f.events for f in tth if f.label == 1) / 20_000
    assert signal == pytest.approx(0.10, abs=0.01)
    with open_tree(tth[0].path) as tree:
        assert tree.tree_name == "Events"
        assert tree.branches["Jet_pt"].counter == "nJet" and tree.branches["nJet"].kind == "flat"
        arrays = tree.arrays(["nJet", "Jet_pt"])
    assert np.array_equal(ak.to_numpy(ak.num(arrays["Jet_pt"])), ak.to_numpy(arrays["nJet"]))
    pts = arrays["Jet_pt"]
    assert ak.all(pts[:, 1:] <= pts[:, :-1])  # sorted by pt within each event


def test_same_seed_same_arrays(tth, tmp_path):
    again = make_tth_dataset(tmp_path, n_events=20_000, seed=7)
    other = make_tth_dataset(tmp_path / "other", n_events=20_000, seed=8)
    read = lambda f: uproot.open(f.path)["Events"].arrays(["Jet_pt", "MET_pt"])  # noqa: E731
    assert ak.array_equal(read(tth[3]), read(again[3]))
    assert not ak.array_equal(read(tth[3])["MET_pt"], read(other[3])["MET_pt"])


def test_paper_layout_and_size(tmp_path):
    files = make_paper_dataset(tmp_path, n_events=20_000, n_files=2)
    with open_tree(files[0].path) as tree:
        kinds = [b.kind for b in tree.branches.values()]
        counters = {b.counter for b in tree.branches.values() if b.counter}
    assert kinds.count("jagged") == 52
    assert kinds.count("flat") - len(counters) == 22 and len(counters) == 6
    assert 300 <= bytes_per_event(files) <= 400


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_tth_is_separable_but_not_trivially(tth):
    """A logistic regression on padded jets reaches a fair AUC; no single input is enough."""
    paths = [str(f.path) for f in tth]
    spec = compute_dataset_spec(paths).dataset
    vectorizer = Vectorizer(
        spec,
        ["nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepB", "MET_pt", "HT"],
        padding={"Jet_*": 8},
        normalization="zscore",
    )
    labels = {"ttH_signal.root": 1, "*": 0}
    train = next(
        iter(
            ChunkStream(
                paths, labels=labels, vectorizer=vectorizer, chunk_size=100_000, split="train"
            )
        )
    )
    test = next(
        iter(
            ChunkStream(
                paths, labels=labels, vectorizer=vectorizer, chunk_size=100_000, split="test"
            )
        )
    )
    weights, bias = np.zeros(vectorizer.n_features), 0.0
    for _ in range(300):  # full-batch gradient descent on the logistic loss
        p = 1 / (1 + np.exp(-(train.X @ weights + bias)))
        grad = p - train.y
        weights -= 0.5 * train.X.T @ grad / len(grad)
        bias -= 0.5 * grad.mean()
    auc = _auc(test.X @ weights + bias, test.y)
    assert 0.70 <= auc <= 0.97
    names = vectorizer.feature_names
    for name in ("nJet", "HT", "Jet_btagDeepB[0]"):
        single = _auc(test.X[:, names.index(name)], test.y)
        assert max(single, 1 - single) < 0.9


def test_cli_writes_files_and_labels(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"
    command = [sys.executable, str(script), "--preset", "tth", "--out", str(tmp_path)]
    result = subprocess.run([*command, "--events", "3000"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote 9 files, 3,000 events" in result.stdout.replace("\n", " ")
    assert (tmp_path / "labels.json").exists()
