"""Vectorizer: layout, normalisation, padding, clipping, NaN handling, exact inverse."""

from __future__ import annotations

import itertools

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.errors import BranchError, ConfigError
from mlaas4hep.io.branches import BranchInfo
from mlaas4hep.io.tree import open_tree
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec, FileSpec
from mlaas4hep.spec.statistics import array_stats
from mlaas4hep.transform.vectorizer import Vectorizer


def test_layout_and_feature_names(hzz):
    spec, chunk = hzz
    v = Vectorizer(spec, ["NJet", "Jet_Px", "Jet_Py"])
    jet_len = spec.branch("Jet_Px").max_length
    assert v.n_features == 1 + 2 * jet_len
    assert v.feature_names[:3] == ["NJet", "Jet_Px[0]", "Jet_Px[1]"]
    out = v(chunk)
    assert out.X.dtype == np.float32 and out.mask.dtype == bool
    assert out.X.shape == (2421, v.n_features) and out.clipped == {}
    counts = ak.to_numpy(ak.num(chunk["Jet_Px"]))
    assert np.array_equal(out.mask[:, 1 : 1 + jet_len].sum(axis=1), counts)
    assert out.mask[:, 0].all()


def test_minmax_maps_training_data_into_unit_interval(hzz):
    spec, chunk = hzz
    out = Vectorizer(spec)(chunk)
    real = out.X[out.mask]
    assert real.min() >= 0.0 and real.max() <= 1.0
    assert np.all(out.X[~out.mask] == 0.0)


def test_zscore_has_zero_mean_unit_std(hzz):
    spec, chunk = hzz
    out = Vectorizer(spec, ["MET_px"], normalization="zscore")(chunk)
    assert out.X[:, 0].mean() == pytest.approx(0.0, abs=1e-5)
    assert out.X[:, 0].std() == pytest.approx(1.0, abs=1e-4)
    raw = Vectorizer(spec, ["MET_px"], normalization="none")(chunk)
    assert np.array_equal(raw.X[:, 0], chunk["MET_px"].to_numpy())


def test_padding_overrides_clip_and_count(hzz):
    spec, chunk = hzz
    v = Vectorizer(
        spec, ["Jet_Px", "Muon_Px"], padding={"Jet_*": 2, "Muon_Px": "p90"}, pad_value=np.nan
    )
    assert v.block("Jet_Px").length == 2
    counts = ak.to_numpy(ak.num(chunk["Jet_Px"]))
    out = v(chunk)
    assert out.clipped["Jet_Px"] == np.maximum(counts - 2, 0).sum()
    assert np.isnan(out.X[~out.mask]).all()
    with pytest.raises(ConfigError, match="padding for 'Jet_Px'"):
        Vectorizer(spec, ["Jet_Px"], padding={"Jet_Px": "lots"})
    with pytest.raises(ConfigError, match="normalization"):
        Vectorizer(spec, ["Jet_Px"], normalization="log")


def test_missing_branch_is_a_clear_error(hzz):
    spec, chunk = hzz
    with pytest.raises(BranchError, match="Nope"):
        Vectorizer(spec, ["Nope"])
    v = Vectorizer(spec, ["Jet_Px", "MET_px"])
    with pytest.raises(BranchError, match="lacks the branch.*MET_px"):
        v({"Jet_Px": chunk["Jet_Px"]})
    with pytest.raises(BranchError, match="different numbers of events"):
        v({"Jet_Px": chunk["Jet_Px"], "MET_px": chunk["MET_px"][:5]})
    with pytest.raises(BranchError, match="one number per event"):
        v({"Jet_Px": chunk["Jet_Px"], "MET_px": chunk["Jet_Px"]})


def _spec_of(columns: dict) -> DatasetSpec:
    infos = {}
    for name, arr in columns.items():
        kind = "jagged" if isinstance(arr, ak.Array) and arr.ndim == 2 else "flat"
        dtype = (ak.to_numpy(ak.flatten(arr)) if kind == "jagged" else np.asarray(arr)).dtype
        infos[name] = array_stats(BranchInfo(name, kind, np.dtype(dtype).name), arr)
    return DatasetSpec(
        [FileSpec("mem://x", "t", len(next(iter(columns.values()))), {"k": 1}, infos)]
    )


def test_nonfinite_values_are_masked_counted_or_rejected():
    columns = {
        "x": np.array([1.0, np.nan, 3.0, np.inf], dtype=np.float32),
        "j": ak.Array([[1.0, np.nan], [], [2.0], [np.inf, 5.0]]),
    }
    spec = _spec_of(columns)
    out = Vectorizer(spec)(columns)
    assert out.nonfinite == {"j": 2, "x": 2}
    v = Vectorizer(spec, ["x"])
    masked = v(columns)
    assert list(masked.mask[:, 0]) == [True, False, True, False]
    assert np.isfinite(masked.X).all()
    zeroed = Vectorizer(spec, ["x"], nonfinite="zero")(columns)
    assert zeroed.mask.all()
    with pytest.raises(ValueError, match="'x' holds 2 NaN/inf"):
        Vectorizer(spec, ["x"], nonfinite="raise")(columns)
    jagged = Vectorizer(spec, ["j"])
    out = jagged(columns)
    assert out.mask[0].tolist()[:2] == [True, False]
    back = jagged.inverse(out.X, out.mask)["j"]
    assert ak.to_list(ak.num(back)) == [1, 0, 1, 2]  # a list ends after its last real value
    assert ak.to_list(back[3])[1] == pytest.approx(5.0)
    assert np.isnan(ak.to_list(back[3])[0])


def test_config_round_trip_gives_identical_output(hzz):
    spec, chunk = hzz
    v = Vectorizer(spec, ["Jet_*", "MET_*"], normalization="zscore", padding={"Jet_*": "p99"})
    again = Vectorizer.from_dict(v.to_dict())
    assert again.feature_names == v.feature_names
    assert np.array_equal(again(chunk).X, v(chunk).X)
    with pytest.raises(ConfigError, match="config_version"):
        Vectorizer.from_dict({**v.to_dict(), "config_version": 7})


def test_nanoaod_whole_file_vectorizes(shared_data):
    path = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    spec = DatasetSpec([compute_file_spec(path)])
    v = Vectorizer(spec, ["Jet_*", "Muon_*", "nJet", "HLT_*"], exclude=["HLT_*Mu*"])
    with open_tree(path) as tree:
        out = v(tree.arrays(v.branches))
    assert out.X.shape == (200, v.n_features) and out.clipped == {}
    assert np.isfinite(out.X).all()


jagged_lists = st.lists(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), max_size=6), min_size=1, max_size=30
)


@settings(max_examples=80, deadline=None)
@given(jagged_lists, st.sampled_from(["minmax", "zscore", "none"]), st.integers(0, 7))
def test_inverse_gives_the_arrays_back(lists, normalization, pad):
    n = len(lists)
    rng = np.random.default_rng(len(lists))
    columns = {
        "j": ak.Array(lists, with_name=None),
        "i": ak.Array([[int(v) for v in row] for row in lists]) if lists else ak.Array([[]]),
        "f": rng.normal(size=n).astype(np.float64),
        "b": rng.random(n) < 0.5,
    }
    columns["j"] = ak.values_astype(columns["j"], np.float32)
    columns["i"] = ak.values_astype(columns["i"], np.int64)
    spec = _spec_of(columns)
    v = Vectorizer(spec, normalization=normalization, padding={"j": pad})
    out = v(columns)
    back = v.inverse(out.X, out.mask)
    clipped = ak.to_list(columns["j"][:, :pad])
    assert ak.to_list(ak.num(back["j"])) == [len(r) for r in clipped]
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(back["j"])),
        np.asarray([x for r in clipped for x in r], dtype=np.float64),
        rtol=1e-5,
        atol=1e-5 * (1 + max((abs(x) for r in lists for x in r), default=0)),
    )
    assert ak.to_list(back["i"]) == ak.to_list(columns["i"])
    np.testing.assert_allclose(back["f"], columns["f"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(back["b"], columns["b"])
    assert out.clipped.get("j", 0) == sum(max(len(r) - pad, 0) for r in lists)


def test_robust_normalisation_centres_on_the_median_and_clips(hzz):
    spec, chunk = hzz
    stats = spec.branch("MET_px")
    median, p16, p84 = stats.quantiles([0.5, 0.16, 0.84])
    v = Vectorizer(spec, ["MET_px", "Jet_Px"], normalization="robust")
    block = v.block("MET_px")
    assert block.shift == median and block.scale == pytest.approx((p84 - p16) / 2)
    out = v(chunk)
    real = out.X[out.mask]
    assert real.min() >= -5.0 and real.max() <= 5.0
    raw = chunk["MET_px"].to_numpy().astype(np.float64)
    expected = np.clip((raw - block.shift) / block.scale, -5, 5)
    np.testing.assert_allclose(out.X[:, 0], expected, rtol=1e-6, atol=1e-6)
    # the sketch is within 1/129 of numpy's quantiles, so the median of X is near 0
    assert abs(np.median(out.X[:, 0])) < 0.05
    unclipped = Vectorizer(spec, ["MET_px"], normalization="robust", robust_clip=None)(chunk)
    assert np.abs(unclipped.X).max() > 5.0


def test_quantile_clip_before_normalisation(hzz):
    spec, chunk = hzz
    v = Vectorizer(spec, ["MET_px"], clip=("p1", "p99"))
    low, high = spec.branch("MET_px").quantiles([0.01, 0.99])
    block = v.block("MET_px")
    assert (block.low, block.high) == (low, high)
    out = v(chunk)
    # minmax scales the clipped range to [0, 1]
    assert out.X.min() == 0.0 and out.X.max() == pytest.approx(1.0)
    raw = chunk["MET_px"].to_numpy()
    assert np.count_nonzero(out.X == 0.0) == np.count_nonzero(raw <= low)
    with pytest.raises(ConfigError, match="two quantiles"):
        Vectorizer(spec, ["MET_px"], clip=("p99", "p1"))
    with pytest.raises(ConfigError, match="two quantiles"):
        Vectorizer(spec, ["MET_px"], clip=("low", "p99"))


def test_clip_config_round_trips_and_plain_configs_stay_version_1(hzz):
    spec, chunk = hzz
    v = Vectorizer(spec, ["Jet_*", "MET_*"], normalization="robust", clip=["p0.1", "p99.9"])
    data = v.to_dict()
    assert data["config_version"] == 2 and data["blocks"][0]["bound"] == 5.0
    import json

    again = Vectorizer.from_dict(json.loads(json.dumps(data)))
    assert np.array_equal(again(chunk).X, v(chunk).X)
    assert Vectorizer(spec, ["MET_px"]).to_dict()["config_version"] == 1


def test_robust_and_clip_refuse_a_spec_without_sketches(hzz):
    from dataclasses import replace

    spec, _ = hzz
    (only,) = spec.files.values()
    old = FileSpec(only.source, only.tree, only.entries, only.identity,
                   {n: replace(s, sketch=None) for n, s in only.branches.items()})  # fmt: skip
    dataset = DatasetSpec([old])
    with pytest.raises(ConfigError, match=r"'MET_px'.*no quantile sketch.*recompute the spec"):
        Vectorizer(dataset, ["MET_px"], normalization="robust")
    with pytest.raises(ConfigError, match=r"clip needs the quantiles of branch 'MET_px'"):
        Vectorizer(dataset, ["MET_px"], clip=("p1", "p99"))
    Vectorizer(dataset, ["MET_px"], normalization="zscore")  # the other modes need none


def test_kept_nonfinite_values_pass_unclipped():
    columns = {"x": np.array([1.0, 2.0, 3.0, 100.0, np.inf], dtype=np.float32)}
    spec = _spec_of(columns)
    v = Vectorizer(spec, normalization="robust", nonfinite="keep", robust_clip=1.0)
    out = v(columns)
    assert out.X[3, 0] == 1.0 and out.X[4, 0] == np.inf
    zero = Vectorizer(spec, normalization="robust", nonfinite="zero", robust_clip=1.0)(columns)
    assert zero.X[4, 0] == -1.0  # zero replaces inf, then it is normalised and clipped


@settings(max_examples=60, deadline=None)
@given(jagged_lists, st.integers(0, 7), st.floats(-2, 2, width=32), st.randoms())
def test_rows_padded_by_the_kernel_equal_rows_padded_first(lists, pad, pad_value, rnd):
    """``pad_rows`` into garbage (an uninitialised output) gives what a padded output
    does, for rows in any order split over several calls, some events dropped."""
    n = len(lists)
    columns = {
        "j": ak.values_astype(ak.Array(lists), np.float32),
        "f": np.arange(n, dtype=np.float64),
    }
    v = Vectorizer(_spec_of(columns), padding={"j": pad}, pad_value=float(pad_value))
    order = list(range(n))
    rnd.shuffle(order)
    rows = np.asarray(order, dtype=np.int64)
    rows[rnd.sample(range(n), k=n // 3)] = -1  # dropped events: those rows stay unwritten
    cut = rnd.randint(0, n)
    padded_first = v.empty(n)
    garbage = v.uninitialised(n)
    garbage.X.fill(np.nan)
    garbage.mask.fill(True)
    for part in (slice(0, cut), slice(cut, n)):
        piece = {name: values[part] for name, values in columns.items()}
        v.transform(piece, out=padded_first, rows=rows[part])
        v.transform(piece, out=garbage, rows=rows[part], pad_rows=True)
    written = rows[rows >= 0]
    np.testing.assert_array_equal(garbage.X[written], padded_first.X[written])
    np.testing.assert_array_equal(garbage.mask[written], padded_first.mask[written])
    assert np.isnan(np.delete(garbage.X, written, axis=0)).all()  # untouched
    whole = v(columns)  # no out: every row written once, padded by the kernel
    np.testing.assert_array_equal(whole.X, v.transform(columns, out=v.empty(n)).X)


@settings(max_examples=60, deadline=None)
@given(jagged_lists, st.randoms(), st.integers(0, 5))
def test_branches_sharing_offsets_equal_each_branch_alone(lists, rnd, start):
    """Branches of one collection share one offsets array in the kernel: a branch with
    the same offsets, one with the same total but other counts (moved values), one of
    another dtype and sliced reads (offsets not starting at 0) each vectorise as they
    do alone."""
    counts = [len(row) for row in lists]
    values = [x for row in lists for x in row]
    moved = counts[::-1]  # same number of events and values, other counts
    offsets = np.concatenate([[0], np.cumsum(moved)]).astype(np.int64)
    columns = {
        "a": ak.values_astype(ak.Array(lists), np.float32),
        "b": ak.values_astype(ak.Array([[2 * x for x in row] for row in lists]), np.float32),
        "c": ak.values_astype(
            ak.Array([values[s:e] for s, e in itertools.pairwise(offsets)]), np.float32
        ),
        "d": ak.values_astype(ak.Array(lists), np.float64),
    }
    stop = len(lists) - rnd.randint(0, min(start, len(lists) - 1))
    begin = min(start, stop - 1)
    piece = {name: array[begin:stop] for name, array in columns.items()}
    spec = _spec_of(columns)
    vectorizer = Vectorizer(spec, padding={"*": 4})
    together = vectorizer(piece)
    for name in columns:
        alone = Vectorizer(spec, [name], padding={"*": 4})(piece)
        block = vectorizer.block(name)
        np.testing.assert_array_equal(together.X[:, block.column : block.stop], alone.X)
        np.testing.assert_array_equal(together.mask[:, block.column : block.stop], alone.mask)
