"""Every numeric leaf becomes a feature: Double32_t/Float16_t, fixed-size arrays (flat,
inside collections, multi-dimensional), std::set, split members; what cannot be a number
is skipped with its type and the reason. Values are checked against uproot + numpy."""

from __future__ import annotations

import json
import types

import awkward as ak
import numpy as np
import pytest
import uproot

from mlaas4hep.cli import main
from mlaas4hep.io.branches import _counter_of, tree_member_name
from mlaas4hep.io.leaves import Leaf, element_names
from mlaas4hep.io.tree import open_tree
from mlaas4hep.serve.payloads import from_columns
from mlaas4hep.spec.compute import compute_dataset_spec
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.transform.vectorizer import Vectorizer

DOUBLE32 = "uproot-double32-float16.root"
STL = "uproot-stl_containers.root"


def _expected_columns(path, tree="tree"):
    """Every numeric leaf of a TTree, read by uproot and expanded with numpy by the
    documented rule (``name_i`` per element of a fixed-size array, C order)."""
    out = {}
    for name, array in uproot.open(path)[tree].arrays(library="np").items():
        if array.dtype == object:
            continue  # lists: checked one by one in the tests
        if array.ndim == 1:
            out[name] = array
        for index in np.ndindex(*array.shape[1:]) if array.ndim > 1 else []:
            out["_".join([name, *map(str, index)])] = array[(slice(None), *index)]
    return out


def test_double32_and_float16_leaves_are_features_with_their_values(shared_data):
    expected = _expected_columns(shared_data / DOUBLE32)
    assert len(expected) == 10 + 2 * 3  # ten scalars, two fixed-size arrays of three
    with open_tree(shared_data / DOUBLE32) as tree:
        assert tree.skipped == {}
        assert list(tree.branches) == list(expected)
        assert tree.branches["double32_20"].dtype == "float64"
        assert tree.branches["float16_10"].dtype == "float32"
        assert {b.kind for b in tree.branches.values()} == {"flat"}
        arrays = tree.arrays(list(tree.branches))
    for name, values in expected.items():
        got = arrays[name].to_numpy()
        assert got.dtype == values.dtype and np.array_equal(got, values), name


def test_stl_containers_numbers_are_features_and_the_rest_says_why(shared_data):
    raw = uproot.open(shared_data / STL)["tree"].arrays(library="ak", how=dict)
    with open_tree(shared_data / STL) as tree:
        assert {n: (b.kind, b.dtype) for n, b in tree.branches.items()} == {
            "vector_int32": ("jagged", "int32"),
            "set_int32": ("jagged", "int32"),  # a std::set of numbers is a list of them
        }
        arrays = tree.arrays(["vector_int32", "set_int32"])
        skipped = tree.skipped
    for name in ("vector_int32", "set_int32"):
        assert arrays[name].tolist() == raw[name].tolist()
        assert str(arrays[name].type) == "5 * var * int32"  # plain lists, no "set" marker
    assert set(skipped) | {"vector_int32", "set_int32"} == set(raw)
    assert skipped["string"] == "std::string (a string)"
    assert skipped["vector_vector_int32"] == "std::vector<std::vector<int32_t>> (a list of lists)"
    assert skipped["set_string"] == "std::set<std::string> (a list of non-numbers)"
    assert skipped["map_int32_int16"] == "std::map<int32_t, int16_t> (a map)"
    assert all(why.endswith(")") and " (" in why for why in skipped.values())


def test_inspect_lists_the_skipped_with_their_reason(shared_data, capsys):
    assert main(["inspect", str(shared_data / STL), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["branches"]) == {"vector_int32", "set_int32"}
    assert info["skipped"]["vector_vector_int32"].endswith("(a list of lists)")
    assert main(["inspect", str(shared_data / DOUBLE32)]) == 0
    out = capsys.readouterr().out
    assert "16 numeric branches" in out and "skipped" not in out


def _fixed_arrays(n):
    rng = np.random.default_rng(3)
    return {
        "vec": rng.normal(size=(n, 3)).astype(np.float32),
        "grid": rng.integers(-9, 9, size=(n, 2, 3)).astype(np.int16),
        "bits": rng.integers(0, 2, size=(n, 4)).astype(np.bool_),
        "x": rng.normal(size=n),
    }


@pytest.mark.parametrize("file_format", ["ttree", "rntuple"])
def test_fixed_size_arrays_are_flat_features_named_by_element(tmp_path, file_format):
    data = _fixed_arrays(50)
    path = tmp_path / "fixed.root"
    with uproot.recreate(path) as file:
        if file_format == "ttree":
            file.mktree("Events", {n: (a.dtype, a.shape[1:]) for n, a in data.items()})
            file["Events"].extend(data)
        else:
            file["Events"] = data
    with open_tree(path) as tree:
        names = [name for name, _ in element_names("vec", (3,))]
        names += [name for name, _ in element_names("grid", (2, 3))]
        names += [f"bits_{i}" for i in range(4)] + ["x"]
        assert sorted(tree.branches) == sorted(names)  # the RNTuple writer sorts fields
        assert (
            tree.branches["grid_1_2"].dtype == "int16" and tree.branches["bits_3"].dtype == "bool"
        )
        assert {b.kind for b in tree.branches.values()} == {"flat"} and tree.skipped == {}
        arrays = tree.arrays(names, 10, 40)
    assert np.array_equal(arrays["vec_2"].to_numpy(), data["vec"][10:40, 2])
    assert np.array_equal(arrays["grid_1_0"].to_numpy(), data["grid"][10:40, 1, 0])  # C order
    assert np.array_equal(arrays["bits_1"].to_numpy(), data["bits"][10:40, 1])


def test_fixed_size_arrays_inside_a_collection_are_jagged_features(tmp_path):
    # uproot writes `var * 2 * float32` into an RNTuple (its TTree writer cannot yet)
    masses = ak.to_regular(
        ak.values_astype(ak.Array([[[1, 2], [3, 4]], [[5, 6]], [], [[7, 8]]]), np.float32), axis=2
    )
    charge = ak.Array([[1, -1], [1], [], [-1]])
    path = tmp_path / "v0.root"
    with uproot.recreate(path) as file:
        file["Events"] = {"V0s": ak.zip({"fInvMass": masses, "q": charge}, depth_limit=2)}
    with open_tree(path) as tree:
        assert {n: (b.kind, b.counter) for n, b in tree.branches.items()} == {
            "nV0s": ("flat", None),
            "V0s_fInvMass_0": ("jagged", "nV0s"),
            "V0s_fInvMass_1": ("jagged", "nV0s"),
            "V0s_q": ("jagged", "nV0s"),
        }
        arrays = tree.arrays(list(tree.branches))
    assert arrays["V0s_fInvMass_0"].tolist() == [[1, 3], [5], [], [7]]
    assert arrays["V0s_fInvMass_1"].tolist() == [[2, 4], [6], [], [8]]
    assert arrays["nV0s"].tolist() == [2, 1, 0, 1]


def test_member_branches_are_named_by_their_member_path(tmp_path):
    assert tree_member_name("V0s/V0s.fInvMass[2]") == "V0s_fInvMass"  # a TClonesArray's
    assert tree_member_name("event./event.fTracks/event.fTracks.fPx") == "event_fTracks_fPx"
    assert tree_member_name("obj/member") == "obj_member"
    assert tree_member_name("Jet_pt") == "Jet_pt"
    path = tmp_path / "dots.root"
    with uproot.recreate(path) as file:
        file.mktree("Events", {"Mu.pt": "var * float32", "MET.pt": np.float32})
        file["Events"].extend(
            {"Mu.pt": ak.Array([[1.0], [2.0, 3.0]]), "MET.pt": np.array([4, 5], np.float32)}
        )
    with open_tree(path) as tree:
        assert list(tree.branches) == ["nMu_pt", "Mu_pt", "MET_pt"]
        assert tree.branches["Mu_pt"].counter == "nMu_pt"
        arrays = tree.arrays(["Mu_pt", "MET_pt"])
    assert arrays["Mu_pt"].tolist() == [[1.0], [2.0, 3.0]] and arrays["MET_pt"].tolist() == [4, 5]


def _branch(leaf_name=None, children=()):
    leaf = None
    if leaf_name is not None:
        leaf = types.SimpleNamespace(member=lambda key: leaf_name)
    return types.SimpleNamespace(count_leaf=leaf, branches=list(children))


def test_a_collection_member_counts_by_the_collection_not_another_member():
    # a split TClonesArray: the members' count leaf `V0s_` is the top branch's own leaf;
    # uproot's count_branch follows the leaf's parent, which is one of the members
    top = _branch(children=["V0s.fInvMass", "V0s.fPt"])
    member = _branch("V0s_")
    owners = {"V0s_": ("V0s", top), "nJet": ("nJet", _branch())}
    assert _counter_of(member, "V0s/V0s.fPt", owners, set()) == (
        "nV0s",
        Leaf("V0s/V0s.fPt", counts=True),
    )
    assert _counter_of(member, "V0s/V0s.fPt", owners, {"nV0s"}) == ("nV0s", None)
    assert _counter_of(_branch("nJet"), "Jet_pt", owners, set()) == ("nJet", None)
    assert _counter_of(_branch(), "x", owners, set()) == (None, None)


def test_spec_vectorizer_stream_and_service_over_expanded_leaves(shared_data, tmp_path):
    files = [str(shared_data / DOUBLE32)]
    spec = compute_dataset_spec(files).dataset
    assert spec.branches["array_10_2"].stats.kind == "flat"
    assert spec.branches["array_10_2"].stats.count == 17
    include = ["double32_*", "array_*"]
    vectorizer = Vectorizer(spec, include, normalization="none")
    assert "array_30_1" in vectorizer.feature_names
    stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=17, branches=["array_30_1"])
    (chunk,) = list(stream)
    column = vectorizer.feature_names.index("array_30_1")
    expected = _expected_columns(shared_data / DOUBLE32)["array_30_1"]
    np.testing.assert_allclose(chunk.X[:, column], chunk.arrays["array_30_1"].to_numpy(), 1e-6)
    np.testing.assert_allclose(np.sort(chunk.X[:, column]), np.sort(expected), rtol=1e-6)
    (batch,) = list(stream.batches(17))
    assert batch.X.shape == (17, vectorizer.n_features)
    # the service takes the same names in a JSON body
    raw = _expected_columns(shared_data / DOUBLE32)
    body = {name: raw[name].tolist() for name in vectorizer.branches}
    events = from_columns(body, vectorizer, max_events=100)
    X = vectorizer.transform(events.columns).X
    np.testing.assert_allclose(X[:, column], expected.astype(np.float32))
