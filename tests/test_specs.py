"""Specs: one streaming pass, exact statistics, associative merge, JSON round trip."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rootfiles import write_events

from mlaas4hep.errors import BranchError, ReadError, SchemaVersionError, SpecError
from mlaas4hep.io.decompression import MAX_THREADS, decompression_threads
from mlaas4hep.io.tree import open_tree
from mlaas4hep.spec.compute import compute_dataset_spec, compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec, FileSpec, load_spec
from mlaas4hep.spec.sketch import QuantileSketch
from mlaas4hep.spec.statistics import BranchStats, values_stats


def test_hzz_statistics_match_numpy(shared_data):
    spec = compute_file_spec(shared_data / "uproot-HZZ.root", step_size=500)
    import uproot

    arrays = uproot.open(shared_data / "uproot-HZZ.root")["events"].arrays(["Jet_Px", "MET_px"])
    px = ak.to_numpy(ak.flatten(arrays["Jet_Px"])).astype(np.float64)
    stats = spec.branches["Jet_Px"]
    assert stats.kind == "jagged" and stats.dtype == "float32"
    assert stats.count == len(px)
    assert stats.min == pytest.approx(px.min()) and stats.max == pytest.approx(px.max())
    assert stats.sum == pytest.approx(px.sum(), rel=1e-9)
    assert stats.sumsq == pytest.approx((px**2).sum(), rel=1e-9)
    counts = ak.to_numpy(ak.num(arrays["Jet_Px"]))
    assert stats.max_length == counts.max()
    assert list(stats.length_hist) == list(np.bincount(counts))
    assert spec.branches["MET_px"].kind == "flat"
    assert spec.entries == 2421
    assert spec.identity["size"] == (shared_data / "uproot-HZZ.root").stat().st_size


def test_lz4_and_zlib_give_the_same_content(shared_data):
    zlib = compute_file_spec(shared_data / "uproot-HZZ.root")
    lz4 = compute_file_spec(shared_data / "uproot-HZZ-lz4.root")
    assert zlib.content() == lz4.content()
    assert zlib.identity != lz4.identity


def test_nanoaod_spec_covers_every_branch(shared_data):
    spec = compute_file_spec(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root")
    assert len(spec.branches) == 947
    assert spec.branches["nJet"].max == spec.branches["Jet_pt"].max_length
    event = spec.branches["event"]
    assert isinstance(event.min, int) and event.dtype == "uint64"
    assert FileSpec.from_json(spec.to_json()) == spec


def test_step_size_does_not_change_the_result(shared_data):
    whole = compute_file_spec(shared_data / "uproot-HZZ.root", step_size=100_000)
    small = compute_file_spec(shared_data / "uproot-HZZ.root", step_size=97)
    for name, stats in whole.branches.items():
        other = small.branches[name]
        assert (stats.count, stats.min, stats.max, stats.length_hist) == (
            other.count,
            other.min,
            other.max,
            other.length_hist,
        )
        assert stats.sum == pytest.approx(other.sum, rel=1e-9, abs=1e-6)


def test_decompressing_threads_do_not_change_the_spec(shared_data):
    """The NanoAOD's 947 branches decompressed by 1 and by 3 threads, in small steps
    (baskets met across step boundaries): the same content, and with ``--workers`` each
    process asks for its share of the CPUs."""
    path = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    one = compute_file_spec(path, step_size=300, threads=1)
    three = compute_file_spec(path, step_size=300, threads=3)
    assert one.content() == three.content()
    assert decompression_threads(3) == 3 and decompression_threads(0) == 1
    assert 1 <= decompression_threads(processes=64) <= decompression_threads() <= MAX_THREADS


def test_nan_and_inf_are_counted(tmp_path):
    values = np.array([1.0, np.nan, np.inf, -np.inf, 3.0], dtype=np.float32)
    stats = values_stats("flat", values.dtype, values)
    assert (stats.nan, stats.posinf, stats.neginf, stats.finite) == (1, 1, 1, 2)
    assert (stats.min, stats.max, stats.sum) == (1.0, 3.0, 4.0)
    allnan = values_stats("flat", values.dtype, np.full(3, np.nan, np.float32))
    assert allnan.min is None and allnan.nan == 3
    booleans = values_stats("flat", np.dtype(bool), np.array([True, False, True]))
    assert (booleans.min, booleans.max, booleans.sum) == (0, 1, 2.0)


def test_string_branch_listed_as_skipped(shared_data):
    with pytest.warns(UserWarning, match="Type"):
        spec = compute_file_spec(shared_data / "uproot-Zmumu.root")
    assert spec.skipped == {"Type": "char* (a string)"}
    assert len(spec.branches) == 19


def test_schema_version_is_checked(shared_data):
    spec = compute_file_spec(shared_data / "uproot-HZZ.root", include=["MET_*"])
    data = json.loads(spec.to_json())
    data["schema_version"] = 99
    with pytest.raises(SchemaVersionError, match="schema_version 99 is not supported"):
        FileSpec.from_json(json.dumps(data))
    del data["schema_version"]
    with pytest.raises(SpecError, match="no schema_version"):
        load_spec(json.dumps(data))
    with pytest.raises(SpecError, match="JSON"):
        load_spec("{not json")
    dataset = DatasetSpec([spec])
    assert load_spec(dataset.to_json()) == dataset
    assert load_spec(spec.to_json()) == spec


# --- merge properties -------------------------------------------------------------------


def _stats(draw, kind: str) -> BranchStats:
    count = draw(st.integers(0, 50))
    lo = draw(st.integers(-100, 100))
    hi = lo + draw(st.integers(0, 100))
    hist = (
        tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))) if kind == "jagged" else ()
    )
    values = draw(st.lists(st.floats(-100, 100), max_size=8))
    # some files come from a release without sketches: their merge has none
    sketch = draw(st.sampled_from([QuantileSketch.of(np.asarray(values, np.float32)), None]))
    return BranchStats(
        kind, "float32", count, 0, 0, 0, lo, hi, float(lo * count), float(lo * lo * count), hist,
        sketch=sketch,
    )  # fmt: skip


@st.composite
def file_specs(draw):
    key = draw(st.sampled_from([f"s3://bucket/f{i}.root" for i in range(6)]))
    names = draw(st.sets(st.sampled_from(["a", "b", "c", "Jet_pt"]), min_size=1))
    branches = {n: _stats(draw, "jagged" if n == "Jet_pt" else "flat") for n in sorted(names)}
    # the same key always has the same content in these tests (one version per file)
    return FileSpec(key, "Events", draw(st.integers(0, 100)), {"etag": key}, branches)


def _consistent(specs):
    first = {}
    return [first.setdefault(s.key, s) for s in specs]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(file_specs(), max_size=5),
    st.lists(file_specs(), max_size=5),
    st.lists(file_specs(), max_size=5),
)
def test_merge_is_associative_commutative_and_idempotent(a, b, c):
    a, b, c = (
        _consistent(a + b + c)[: len(a)],
        _consistent(a + b + c)[len(a) : len(a) + len(b)],
        _consistent(a + b + c)[len(a) + len(b) :],
    )
    A, B, C = DatasetSpec(a), DatasetSpec(b), DatasetSpec(c)
    assert A.merge(B).merge(C) == A.merge(B.merge(C))
    assert A.merge(B) == B.merge(A)
    assert A.merge(A) == A
    assert A.merge(B, A, B) == A.merge(B)
    merged = A.merge(B)
    assert merged.entries == sum(s.entries for s in {s.key: s for s in a + b}.values())


def test_file_given_twice_is_counted_once(shared_data):
    spec = compute_file_spec(shared_data / "uproot-HZZ.root")
    dataset = DatasetSpec.empty().merge(spec, spec).merge(spec)
    assert dataset.entries == 2421
    assert dataset.branch("Jet_Px").count == spec.branches["Jet_Px"].count
    assert dataset.contains(spec)


def test_changed_file_needs_an_explicit_replacement(shared_data):
    spec = compute_file_spec(shared_data / "uproot-HZZ.root")
    changed = replace(spec, identity={"size": 1, "xxh3_64": "0"}, entries=1)
    with pytest.raises(SpecError, match="appears twice with different contents"):
        DatasetSpec([spec]).merge(changed)
    assert DatasetSpec([spec]).without(spec.key).merge(changed).entries == 1


def test_missing_branches_and_kind_conflicts_are_recorded(tmp_path):
    a = write_events(tmp_path / "a.root", 50, 1)
    b = write_events(tmp_path / "b.root", 50, 2, extra={"only_b": np.ones(50, np.float32)})
    c = write_events(
        tmp_path / "c.root",
        50,
        3,
        extra={"MET_pt": ak.Array([[1.0]] * 50), "nPV": np.ones(50, np.float64)},
    )
    dataset = compute_dataset_spec([a, b, c]).dataset
    assert dataset.branches["only_b"].missing_in == (str(a), str(c))
    assert "kind differs" in dataset.branches["MET_pt"].conflict
    with pytest.raises(BranchError, match="MET_pt.*kind differs"):
        dataset.branch("MET_pt")
    assert dataset.branch("nPV").dtype == "float64"
    problems = "\n".join(dataset.problems())
    assert "only_b" in problems and "MET_pt" in problems and "promoted to float64" in problems


def test_bad_files_are_reported_and_the_good_ones_kept(shared_data, tmp_path):
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes((shared_data / "uproot-HZZ.root").read_bytes()[:50_000])
    good = shared_data / "uproot-HZZ.root"
    run = compute_dataset_spec([good, truncated, tmp_path / "missing.root"], workers=2)
    assert list(run.dataset.files) == [str(good)]
    assert set(run.failures) == {str(truncated), str(tmp_path / "missing.root")}
    assert "truncated.root" in run.failures[str(truncated)]
    with pytest.raises(ReadError, match=r"truncated.root|missing.root"):
        compute_dataset_spec([good, truncated], strict=True)


def test_spec_is_bounded_in_memory_by_step_size(tmp_path):
    """One pass holds about one step of arrays, not the file. Measured with tracemalloc, which
    sees numpy's and awkward's buffers and the decompressed baskets: the peak while computing
    the spec in steps of 1,000 events stays a small fraction of the branches' decompressed size,
    and of the peak of the same pass in a single step."""
    entries = 40_000
    path = write_events(tmp_path / "big.root", entries, 5, basket=1_000)
    with open_tree(path) as root_tree:
        decompressed = sum(root_tree.tree[n].uncompressed_bytes for n in root_tree.select())
    # First-use allocations (uproot's model classes, lazy imports) belong to no step.
    compute_file_spec(write_events(tmp_path / "warm.root", 100, 6), step_size=50)

    def traced_peak(step_size: int) -> tuple[FileSpec, int]:
        tracemalloc.start()
        try:
            # identity=False: the checksum reads in blocks of its own size (8 MiB), not in steps
            spec = compute_file_spec(path, step_size=step_size, identity=False)
            return spec, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    spec, stepped = traced_peak(1_000)
    whole_spec, whole = traced_peak(entries)
    assert spec.entries == whole_spec.entries == entries
    assert spec.branches["Jet_pt"].count == spec.branches["nJet"].sum
    assert spec.branches["Jet_pt"].count == whole_spec.branches["Jet_pt"].count
    assert stepped < decompressed / 3, (stepped, decompressed)
    assert stepped < whole / 5, (stepped, whole)


def test_spec_pass_imports_no_compiled_kernels():
    """The serverless package computes specs without numba (and without its JIT load)."""
    import subprocess
    import sys

    code = "import mlaas4hep.spec.compute, sys; print('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=60))
def test_moments_match_a_plain_python_computation(values):
    array = np.asarray(values, dtype=np.float32)
    stats = values_stats("flat", array.dtype, array)
    finite = [float(v) for v in array if np.isfinite(v)]
    assert stats.nan == sum(np.isnan(v) for v in array)
    assert stats.posinf + stats.neginf == sum(np.isinf(v) for v in array)
    assert stats.finite == len(finite)
    if finite:
        assert (stats.min, stats.max) == (min(finite), max(finite))
        assert stats.sum == pytest.approx(sum(finite), rel=1e-9, abs=1e-6)
    else:
        assert stats.min is None and stats.max is None
