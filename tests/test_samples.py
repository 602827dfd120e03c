"""Tests of the synthetic sample generator (mlaas4hep.local.samples) and its CLI.

They check what the rest of the project relies on: reproducibility, file and event
counts, NanoAOD branch naming with counters, the paper layout (22 flat + 52 jagged
branches, ~350 bytes/event) and that the ttH preset is separable but not trivially.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.errors import ConfigError
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local import generators, samples
from mlaas4hep.spec.compute import compute_dataset_spec
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.options import Selection, Split
from mlaas4hep.transform.vectorizer import Vectorizer

REPO = Path(__file__).resolve().parents[1]

TTH_BRANCHES = {
    "nJet",
    *(f"Jet_{f}" for f in ("pt", "eta", "phi", "mass", "btagDeepB", "hadronFlavour", "isTight")),
    "nMuon",
    *(f"Muon_{f}" for f in ("pt", "eta", "phi", "charge", "pfRelIso")),
    "nElectron",
    *(f"Electron_{f}" for f in ("pt", "eta", "phi", "charge")),
    *("MET_pt", "MET_phi", "HT", "nPV", "event", "genWeight"),
}


def read(path: Path) -> ak.Array:
    """Every branch of the ``Events`` tree of ``path``."""
    with uproot.open(path) as f:
        return f[samples.TREE_NAME].arrays()


def counters(tree: uproot.TTree) -> set[str]:
    return {b.count_branch.name for b in tree.branches if b.count_branch is not None}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the rank (Mann-Whitney) formula, with average ranks for ties."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse, count = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / count)[inverse]
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    return float((ranks[label == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def tth(tmp_path_factory: pytest.TempPathFactory) -> list[samples.SampleFile]:
    return samples.make_tth_dataset(tmp_path_factory.mktemp("tth"), 20_000, seed=7)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> list[samples.SampleFile]:
    return samples.make_paper_dataset(tmp_path_factory.mktemp("paper"), 20_000, n_files=4)


# ----------------------------------------------------------------------------- tth


def test_tth_files_and_event_totals(tth: list[samples.SampleFile]) -> None:
    assert len(tth) == 9
    assert [f.label for f in tth] == [1] + [0] * 8
    assert tth[0].path.name == "ttH_signal.root"
    assert len({f.process for f in tth}) == 9
    assert sum(f.events for f in tth) == 20_000
    for f in tth:
        with uproot.open(f.path) as file:
            assert file[samples.TREE_NAME].num_entries == f.events
    signal = sum(f.events for f in tth if f.label)
    assert signal / 20_000 == pytest.approx(0.10, abs=0.005)
    assert max(f.events for f in tth[1:]) - min(f.events for f in tth[1:]) <= 1


def test_tth_branch_names_types_and_counters(tth: list[samples.SampleFile]) -> None:
    with uproot.open(tth[0].path) as f:
        tree = f[samples.TREE_NAME]
        assert set(tree.keys()) == TTH_BRANCHES
        assert counters(tree) == {"nJet", "nMuon", "nElectron"}
        assert tree["Jet_pt"].count_branch.name == "nJet"
        arrays = tree.arrays()
    assert arrays["nJet"].type.content.primitive == "int32"
    assert arrays["Jet_pt"].type.content.content.primitive == "float32"
    assert arrays["Jet_hadronFlavour"].type.content.content.primitive == "int32"
    assert arrays["Jet_isTight"].type.content.content.primitive == "bool"
    assert arrays["event"].type.content.primitive == "uint64"


def test_tth_jagged_lengths_match_counters_and_are_sorted(tth: list[samples.SampleFile]) -> None:
    for f in (tth[0], tth[1]):
        a = read(f.path)
        for coll, fields in (("Jet", 7), ("Muon", 5), ("Electron", 4)):
            names = [k for k in a.fields if k.startswith(coll + "_")]
            assert len(names) == fields
            for name in names:
                assert np.array_equal(ak.to_numpy(ak.num(a[name])), ak.to_numpy(a["n" + coll]))
        pt = a["Jet_pt"]
        assert ak.all(pt[:, 1:] <= pt[:, :-1])
        assert ak.all(pt >= 25) and ak.all(abs(a["Jet_eta"]) <= 2.4)
        assert ak.all((a["Jet_btagDeepB"] >= 0) & (a["Jet_btagDeepB"] <= 1))
        assert np.allclose(ak.to_numpy(a["HT"]), ak.to_numpy(ak.sum(pt, axis=1)), rtol=1e-5)


def test_tth_event_numbers_unique_across_files(tth: list[samples.SampleFile]) -> None:
    events = np.concatenate([ak.to_numpy(read(f.path)["event"]) for f in tth])
    assert np.array_equal(np.sort(events), np.arange(1, 20_001, dtype=np.uint64))


def test_tth_signal_has_more_jets_and_b_jets(tth: list[samples.SampleFile]) -> None:
    sig, bkg = read(tth[0].path), read(tth[1].path)  # ttH vs ttlf

    def n_b(a: ak.Array) -> float:
        return float(ak.mean(ak.sum(a["Jet_hadronFlavour"] == 5, axis=1)))

    assert ak.mean(sig["nJet"]) > ak.mean(bkg["nJet"]) + 0.5
    assert n_b(sig) > n_b(bkg) + 0.5


def padded_features(files: list[samples.SampleFile]) -> tuple[np.ndarray, np.ndarray]:
    """Jet pt, eta, phi, mass, btag padded to 8 jets with zeros, plus flat variables."""
    xs, ys = [], []
    for f in files:
        a = read(f.path)
        jets = [
            ak.to_numpy(ak.fill_none(ak.pad_none(a[f"Jet_{k}"], 8, clip=True), 0.0))
            for k in ("pt", "eta", "phi", "mass", "btagDeepB")
        ]
        flat = [ak.to_numpy(a[k])[:, None] for k in ("nJet", "nMuon", "nElectron", "MET_pt", "HT")]
        xs.append(np.concatenate([*jets, *flat], axis=1).astype(np.float64))
        ys.append(np.full(len(a), f.label))
    return np.concatenate(xs), np.concatenate(ys)


def logistic_regression(x: np.ndarray, y: np.ndarray, steps: int = 300) -> np.ndarray:
    """Weights (bias last) of a class-balanced logistic regression, full-batch GD."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    sample_w = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = np.zeros(xb.shape[1])
    for _ in range(steps):  # a loop over gradient steps, not over events
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        w -= 0.5 * xb.T @ (sample_w * (p - y)) / len(y)
    return w


def test_tth_separable_but_not_trivially(tth: list[samples.SampleFile]) -> None:
    x, y = padded_features(tth)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    train = slice(0, len(y) // 2)
    test = slice(len(y) // 2, None)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
    xs = (x - mean) / std
    w = logistic_regression(xs[train], y[train])
    score = np.hstack([xs[test], np.ones((len(y[test]), 1))]) @ w
    assert 0.70 <= auc(score, y[test]) <= 0.97
    # no single variable (nJet, HT, MET, leading-jet pt/btag) does the job alone
    for column in (40, 44, 43, 0, 32):
        assert auc(x[:, column], y) < 0.85


def test_tth_through_the_pipeline(tth: list[samples.SampleFile]) -> None:
    """The same check on what the library itself reads: spec, Vectorizer, ChunkStream."""
    paths = [str(f.path) for f in tth]
    with open_tree(paths[0]) as tree:
        assert tree.tree_name == "Events"
        assert tree.branches["Jet_pt"].counter == "nJet" and tree.branches["nJet"].kind == "flat"
    vectorizer = Vectorizer(
        compute_dataset_spec(paths).dataset,
        ["nJet", "Jet_pt", "Jet_eta", "Jet_btagDeepB", "MET_pt", "HT"],
        padding={"Jet_*": 8},
        normalization="zscore",
    )

    def split(name: str):
        labels = {"ttH_signal.root": 1, "*": 0}
        stream = ChunkStream(
            paths,
            selection=Selection(labels=labels),
            vectorizer=vectorizer,
            chunk_size=100_000,
            split=Split(name),
        )
        return next(iter(stream))

    train, test = split("train"), split("test")
    w = logistic_regression(train.X, train.y)
    assert 0.70 <= auc(np.hstack([test.X, np.ones((len(test.y), 1))]) @ w, test.y) <= 0.97
    for name in ("nJet", "HT", "Jet_btagDeepB[0]"):
        single = auc(test.X[:, vectorizer.feature_names.index(name)], test.y)
        assert max(single, 1 - single) < 0.9


def test_same_seed_same_arrays_and_other_seed_differs(tmp_path: Path) -> None:
    kwargs = {"n_events": 3_000, "block_size": 700}  # several blocks per file
    a = samples.make_tth_dataset(tmp_path / "a", seed=3, **kwargs)
    b = samples.make_tth_dataset(tmp_path / "b", seed=3, **kwargs)
    c = samples.make_tth_dataset(tmp_path / "c", seed=4, **kwargs)
    for fa, fb, fc in zip(a, b, c, strict=True):
        ra, rb, rc = read(fa.path), read(fb.path), read(fc.path)
        for name in ra.fields:
            flat_a, flat_b = ak.flatten(ra[name], axis=None), ak.flatten(rb[name], axis=None)
            assert ak.to_numpy(flat_a).tobytes() == ak.to_numpy(flat_b).tobytes(), name
        assert not ak.array_equal(ra["Jet_pt"], rc["Jet_pt"])


def test_block_size_does_not_change_counts(tmp_path: Path) -> None:
    files = samples.make_paper_dataset(tmp_path, 2_501, n_files=2, block_size=400)
    assert [f.events for f in files] == [1251, 1250]
    events = np.concatenate([ak.to_numpy(read(f.path)["event"]) for f in files])
    assert np.array_equal(events, np.arange(1, 2_502, dtype=np.uint64))


# --------------------------------------------------------------------------- paper


def test_paper_layout_as_the_library_sees_it(paper: list[samples.SampleFile]) -> None:
    with open_tree(paper[0].path) as tree:
        kinds = [b.kind for b in tree.branches.values()]
        counter_names = {b.counter for b in tree.branches.values() if b.counter}
    assert kinds.count("jagged") == 52 and len(counter_names) == 6
    assert kinds.count("flat") - len(counter_names) == 22


def test_paper_layout_22_flat_52_jagged(paper: list[samples.SampleFile]) -> None:
    assert [f.path.name for f in paper] == [f"paper_{i}.root" for i in range(4)]
    assert [f.label for f in paper] == [1, 0, 1, 0]
    assert sum(f.events for f in paper) == 20_000
    with uproot.open(paper[0].path) as f:
        tree = f[samples.TREE_NAME]
        counter_names = counters(tree)
        jagged = [b.name for b in tree.branches if b.count_branch is not None]
        flat = [b.name for b in tree.branches if b.count_branch is None]
        flat = [name for name in flat if name not in counter_names]
        dtypes = {tree[name].interpretation.from_dtype.newbyteorder("=") for name in flat}
        jagged_dtypes = {tree[name].interpretation.content.from_dtype.kind for name in jagged}
    assert counter_names == {f"n{c}" for c in generators.PAPER_COLLECTIONS}
    assert len(flat) == 22 and flat == list(generators.PAPER_FLAT)
    assert len(jagged) == 52
    assert len(generators.PAPER_COLLECTIONS) == 6
    expected = {np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint32)}
    assert expected | {np.dtype(bool)} <= dtypes
    assert jagged_dtypes == {"f", "i", "b"}


def test_paper_counters_match_jagged_lengths(paper: list[samples.SampleFile]) -> None:
    a = read(paper[1].path)
    for coll, fields in generators.PAPER_COLLECTIONS.items():
        count = ak.to_numpy(a["n" + coll])
        for field in fields:
            assert np.array_equal(ak.to_numpy(ak.num(a[f"{coll}_{field}"])), count)
    assert ak.all(a["Jet_pt"][:, 1:] <= a["Jet_pt"][:, :-1])


def test_paper_bytes_per_event_with_zlib(paper: list[samples.SampleFile]) -> None:
    assert 300 <= samples.bytes_per_event(paper) <= 400


# ---------------------------------------------------------------------- utilities


@pytest.mark.parametrize("name", ["lz4", "zstd", "none"])
def test_other_compressions_are_readable(tmp_path: Path, name: str) -> None:
    files = samples.make_paper_dataset(tmp_path, 500, n_files=1, compression=name, level=None)
    assert len(read(files[0].path)) == 500


def test_make_compression() -> None:
    assert samples.make_compression("none") is None
    assert samples.make_compression(None) is None
    assert isinstance(samples.make_compression("zlib"), uproot.ZLIB)
    assert samples.make_compression("zlib").level == 1
    assert samples.make_compression("zstd", 9).level == 9
    assert isinstance(samples.make_compression("LZ4"), uproot.LZ4)
    with pytest.raises(ConfigError):
        samples.make_compression("gzip")
    with pytest.raises(ConfigError):
        samples.make_compression("zlib", 42)


def test_invalid_sizes_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        samples.make_tth_dataset(tmp_path, 5)
    with pytest.raises(ConfigError):
        samples.make_paper_dataset(tmp_path, 100, n_files=0)


@pytest.mark.parametrize(
    ("total", "weights"), [(9, [0.1] + [0.1125] * 8), (10, [1, 1, 1]), (1_000_003, [0.1, 0.9])]
)
def test_split_events(total: int, weights: list[float]) -> None:
    parts = samples.split_events(total, weights)
    assert sum(parts) == total and min(parts) >= 1
    exact = total * np.asarray(weights) / sum(weights)
    assert np.all(np.abs(np.asarray(parts) - exact) <= 1)


def test_truncate_mantissa() -> None:
    x = np.random.default_rng(1).exponential(50.0, 10_000).astype(np.float32)
    assert np.array_equal(generators.truncate_mantissa(x, 23), x)
    y = generators.truncate_mantissa(x, 10)
    assert np.all(np.abs(y - x) <= x * 2.0**-10)
    assert np.all(y.view(np.uint32) & np.uint32((1 << 13) - 1) == 0)


def test_write_labels_file(tth: list[samples.SampleFile], tmp_path: Path) -> None:
    path = samples.write_labels_file(tth, tmp_path / "sub" / "labels.json")
    labels = json.loads(path.read_text())
    assert labels["ttH_signal.root"] == 1
    assert sum(labels.values()) == 1 and len(labels) == 9


def test_cli(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_sample_data.py"
    cmd = [sys.executable, str(script), "--preset", "paper", "--out", str(tmp_path)]
    done = subprocess.run(
        [*cmd, "--events", "400", "--compression", "lz4", "--no-progress"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "paper_3.root" in done.stdout and "wrote 4 files, 400 events" in done.stdout
    assert json.loads((tmp_path / "labels.json").read_text())["paper_0.root"] == 1
    bad = subprocess.run([*cmd, "--events", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "at least 4 events" in bad.stderr


def test_cached_dataset_is_written_once(tmp_path):
    from mlaas4hep.local.samples import cached_dataset

    first = cached_dataset(tmp_path, "paper", 2_000, n_files=2)
    stamp = [p.stat().st_mtime_ns for p in first]
    again = cached_dataset(tmp_path, "paper", 2_000, n_files=2)
    assert again == first and [p.stat().st_mtime_ns for p in again] == stamp
    other = cached_dataset(tmp_path, "paper", 3_000, n_files=2)
    assert (
        len(list(tmp_path.glob("*.done"))) == 1
        and sum(open_tree(p).num_entries for p in other) == 3_000
    )
