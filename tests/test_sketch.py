"""Quantile sketches: exact merges in any order, quantiles within the stated error, specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.errors import SpecError
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec, FileSpec
from mlaas4hep.spec.sketch import MAX_BINS, RELATIVE_ACCURACY, QuantileSketch
from mlaas4hep.spec.statistics import values_stats

# Values whose magnitudes stay within the sketch's unfolded range (32 octaves per sign)
# and above float32's smallest normal, where the relative error bound holds.
moderate = st.one_of(
    st.just(0.0),
    st.floats(1e-4, 1e5).flatmap(lambda x: st.sampled_from([x, -x])),
)
value_lists = st.lists(moderate, min_size=1, max_size=80)
QS = np.linspace(0.0, 1.0, 41)


def _within_error(estimate: np.ndarray, exact: np.ndarray) -> bool:
    bound = RELATIVE_ACCURACY * np.abs(exact) * (1 + 1e-9) + 1e-300
    return bool(np.all(np.abs(estimate - exact) <= bound))


@settings(max_examples=150, deadline=None)
@given(st.lists(value_lists, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_merge_in_any_order_gives_the_same_sketch(parts, rnd):
    sketches = [QuantileSketch.of(np.asarray(p)) for p in parts]
    forward = sketches[0]
    for sketch in sketches[1:]:
        forward = sketch.merge(forward)
    shuffled = sketches[:]
    rnd.shuffle(shuffled)
    tree = shuffled
    while len(tree) > 1:  # pairwise, another tree shape
        tree = [tree[i].merge(tree[i + 1]) if i + 1 < len(tree) else tree[i]
                for i in range(0, len(tree), 2)]  # fmt: skip
    union = QuantileSketch.of(np.concatenate([np.asarray(p) for p in parts]))
    assert forward == tree[0] == union  # deterministic: the same sketch, bit for bit
    assert np.array_equal(forward.quantiles(QS), union.quantiles(QS))


@settings(max_examples=150, deadline=None)
@given(st.lists(value_lists, min_size=1, max_size=4), st.sampled_from(["float32", "float64"]))
def test_quantiles_agree_with_numpy_within_the_documented_error(parts, dtype):
    arrays = [np.asarray(p, dtype=dtype) for p in parts]
    merged = QuantileSketch.of(arrays[0])
    for array in arrays[1:]:
        merged = merged.merge(QuantileSketch.of(array))
    union = np.concatenate(arrays).astype(np.float64)
    exact = np.quantile(union, QS, method="lower")
    assert _within_error(merged.quantiles(QS), exact)
    assert merged.count == union.size


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=60))
def test_integers_take_either_path_to_the_same_sketch(values):
    ints = np.asarray(values, dtype=np.int64)
    sketch = QuantileSketch.of(ints)
    assert sketch == QuantileSketch.of(ints.astype(np.float64))
    small = np.clip(ints, -30_000, 30_000)
    assert QuantileSketch.of(small.astype(np.int16)) == QuantileSketch.of(small)
    assert QuantileSketch.of(small.astype(np.float32)) == QuantileSketch.of(small)


def test_size_is_bounded_and_the_fold_is_merge_exact():
    rng = np.random.default_rng(0)
    wide = np.concatenate(
        [10.0 ** rng.uniform(-30, 30, 20_000), -(10.0 ** rng.uniform(-30, 30, 99))]
    )
    sketch = QuantileSketch.of(wide)
    positive, negative = sketch.n_buckets
    assert positive == MAX_BINS and negative <= MAX_BINS
    assert QuantileSketch.from_dict(json.loads(json.dumps(sketch.to_dict()))) == sketch
    halves = QuantileSketch.of(wide[::2]).merge(QuantileSketch.of(wide[1::2]))
    assert halves == sketch
    # values above the fold keep the relative error
    top = np.quantile(wide, [0.9, 0.99, 1.0], method="lower")
    assert _within_error(sketch.quantiles([0.9, 0.99, 1.0]), top)


def test_json_round_trip_and_wrong_accuracy_is_refused():
    sketch = QuantileSketch.of(np.array([-3.0, 0.0, 0.5, 7.0, 1e9]))
    again = QuantileSketch.from_dict(json.loads(json.dumps(sketch.to_dict())))
    assert again == sketch
    with pytest.raises(SpecError, match="relative accuracy"):
        QuantileSketch.from_dict({**sketch.to_dict(), "relative_accuracy": 0.05})
    with pytest.raises(SpecError, match="malformed quantile sketch"):
        QuantileSketch.from_dict({"relative_accuracy": RELATIVE_ACCURACY, "zero": 1})
    assert np.isnan(QuantileSketch().quantile(0.5))


def test_branch_quantiles_are_clamped_to_min_and_max():
    values = np.array([1.0, 2.0, 3.0, 1000.0], dtype=np.float32)
    stats = values_stats("flat", values.dtype, values)
    q = stats.quantiles([0.0, 1.0])
    assert list(q) == [1.0, 1000.0]
    booleans = values_stats("flat", np.dtype(bool), np.array([True, False, True, True]))
    assert list(booleans.quantiles([0.0, 0.25, 0.5, 1.0])) == [0.0, 0.0, 1.0, 1.0]


def test_file_spec_sketch_is_the_sketch_of_the_branch(shared_data):
    import awkward as ak
    import uproot

    path = shared_data / "uproot-HZZ.root"
    spec = compute_file_spec(path, step_size=300)
    arrays = uproot.open(path)["events"].arrays(["Jet_Px", "MET_px"])
    px = ak.to_numpy(ak.flatten(arrays["Jet_Px"]))
    assert spec.branches["Jet_Px"].sketch == QuantileSketch.of(px)  # over the items
    assert spec.branches["MET_px"].sketch == QuantileSketch.of(arrays["MET_px"].to_numpy())
    assert FileSpec.from_json(spec.to_json()) == spec
    dataset = DatasetSpec([spec]).merge(spec)  # the same file twice: counted once
    assert dataset.branch("Jet_Px").sketch == spec.branches["Jet_Px"].sketch


def test_specs_without_sketches_still_load_and_merge_to_none(shared_data):
    spec = compute_file_spec(shared_data / "uproot-HZZ.root", include=["MET_*"])
    data = json.loads(spec.to_json())
    for stats in data["branches"].values():
        del stats["sketch"]
    old = FileSpec.from_dict(data)
    assert old.branches["MET_px"].sketch is None and old.branches["MET_px"].quantiles([0.5]) is None
    other = FileSpec.from_dict({**spec.to_dict(), "source": "other.root"})
    merged = DatasetSpec([old, other])
    assert merged.branch("MET_px").sketch is None  # part of the data would mislead
    assert merged.branch("MET_px").count == 2 * spec.branches["MET_px"].count


def test_nanoaod_sketch_is_additive(shared_data):
    spec = compute_file_spec(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    data = spec.to_dict()
    stripped = {name: {k: v for k, v in s.items() if k != "sketch"}
                for name, s in data["branches"].items()}  # fmt: skip
    assert all("sketch" in s for s in data["branches"].values())
    old = FileSpec.from_dict({**data, "branches": stripped})
    for name, stats in spec.branches.items():
        assert old.branches[name].to_dict() == stripped[name]
        assert stats.sketch.count == stats.finite, name
    size = len(json.dumps(data)) / len(json.dumps({**data, "branches": stripped}))
    assert size < 2.5, size  # the spec document grows, boundedly


def test_large_arrays_take_one_histogram_to_the_same_sketch():
    rng = np.random.default_rng(1)
    for values in (rng.normal(0, 50, 100_000), rng.exponential(30, 100_000)):
        values = values.astype(np.float32)
        merged = QuantileSketch()
        for part in np.array_split(values, 8):  # below the direct path's size
            merged = merged.merge(QuantileSketch.of(part))
        assert QuantileSketch.of(values) == merged
        assert QuantileSketch.of(values.astype(np.float64)) == merged
