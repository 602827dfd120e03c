"""Reading: trees from real files, branch classification and selection, clear errors."""

from __future__ import annotations

import itertools
import queue
import shutil
import warnings
from unittest import mock

import awkward as ak
import isal.isal_zlib
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st
from rootfiles import write_events, write_stated_totals

from mlaas4hep.errors import BranchError, ColumnError, ReadError
from mlaas4hep.io import tree as tree_module
from mlaas4hep.io import ttree as ttree_module
from mlaas4hep.io.branches import NonNumericBranchWarning
from mlaas4hep.io.codec import use_zlib_library
from mlaas4hep.io.columns import check_layout, check_offsets, jagged_parts
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.tree import MAX_STEP_ENTRIES, RootTree, open_tree
from mlaas4hep.io.xrootd import XRootDSource


def test_nanoaod_branches_are_classified(shared_data):
    with open_tree(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root") as tree:
        assert tree.tree_name == "Events"
        assert tree.num_entries == 200
        kinds: dict[tuple[str, str], int] = {}
        for info in tree.branches.values():
            kinds[info.kind, info.dtype] = kinds.get((info.kind, info.dtype), 0) + 1
        assert len(tree.branches) == 947
        assert kinds["flat", "bool"] == 464
        assert kinds["jagged", "float32"] == 217
        assert kinds["flat", "float32"] == 83
        assert kinds["jagged", "int32"] == 61
        assert kinds["jagged", "uint8"] == 34
        assert kinds["jagged", "bool"] == 32
        assert tree.branches["Jet_pt"].counter == "nJet"
        assert tree.branches["event"].dtype == "uint64"


@pytest.mark.parametrize("name", ["uproot-HZZ.root", "uproot-HZZ-lz4.root"])
def test_hzz_reads_jagged_chunks(shared_data, name):
    with open_tree(shared_data / name) as tree:
        assert tree.tree_name == "events"
        chunks = list(tree.iterate(["Jet_Px", "NJet"], step_size=1000))
        assert [len(c["NJet"]) for c in chunks] == [1000, 1000, 421]
        for chunk in chunks:
            offsets, _ = jagged_parts(chunk["Jet_Px"])
            assert np.array_equal(np.diff(offsets), chunk["NJet"].to_numpy())


def test_string_branch_is_skipped_with_a_warning(shared_data):
    with open_tree(shared_data / "uproot-Zmumu.root") as tree:
        assert "Type" in tree.skipped
        with pytest.warns(NonNumericBranchWarning, match="Type"):
            names = tree.select()
        assert len(names) == 19 and "Type" not in names


def test_selection_globs_include_exclude_and_order(shared_data):
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        names = tree.select(["MET_*", "Jet_P?"], ["Jet_Pz"])
        assert names == ["MET_px", "MET_py", "Jet_Px", "Jet_Py"]
        with pytest.raises(BranchError, match="'Nope' not found in .*uproot-HZZ.root"):
            tree.select(["Nope"])
        with pytest.raises(BranchError, match="Zzz"):
            tree.select(["Zzz*"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tree.select(["NJet"]) == ["NJet"]


def test_only_selected_branches_are_read(shared_data):
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        chunk = tree.arrays(["MET_px"], 0, 10)
        assert list(chunk) == ["MET_px"] and len(chunk["MET_px"]) == 10


def test_truncated_file_names_the_file(shared_data, tmp_path):
    broken = tmp_path / "truncated.root"
    broken.write_bytes((shared_data / "uproot-HZZ.root").read_bytes()[:60_000])
    with pytest.raises(ReadError, match="truncated.root") as info, open_tree(broken) as tree:
        list(tree.iterate(tree.select()))
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("compression", ["ZLIB", "LZ4", "ZSTD", "LZMA"])
def test_a_corrupt_basket_is_a_read_error_whatever_the_codec(tmp_path, compression):
    path = write_events(tmp_path / "events.root", 2000, seed=1)
    good = tmp_path / f"{compression}.root"
    with (
        uproot.open(path) as source,
        uproot.recreate(good, compression=getattr(uproot, compression)(1)) as out,
    ):
        events = source["Events"].arrays(["MET_pt", "nPV"], library="np")
        out.mktree("Events", {k: v.dtype for k, v in events.items()}).extend(events)
    data = bytearray(good.read_bytes())
    with uproot.open(good) as file:
        branch = file["Events"]["MET_pt"]
        start = int(branch.member("fBasketSeek")[0]) + branch.basket(0).member("fKeylen")
    data[start + 9 : start + 400] = bytes(391)  # past the codec's 9-byte header: zeroed
    broken = tmp_path / f"broken-{compression}.root"
    broken.write_bytes(bytes(data))
    try:
        with open_tree(broken) as tree:
            values = tree.arrays(["MET_pt"])["MET_pt"]
    except ReadError as err:
        assert f"broken-{compression}.root" in str(err)
    else:  # LZ4 as uproot reads it checks no checksum: zeros inflate to wrong numbers
        assert compression == "LZ4" and len(values) == 2000
    with open_tree(broken) as tree:  # the other branch still reads
        assert len(tree.arrays(["nPV"])["nPV"]) == 2000


def test_not_a_root_file(tmp_path):
    junk = tmp_path / "junk.root"
    junk.write_bytes(b"this is not ROOT" * 100)
    with pytest.raises(ReadError, match="junk.root"):
        open_tree(junk)


def test_missing_file():
    with pytest.raises(ReadError, match="no such file"):
        open_tree("/nonexistent/file.root")


def test_tree_detection(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as file:
        file.mktree("a", {"x": np.float32}).extend({"x": np.ones(3, np.float32)})
        file.mktree("b", {"x": np.float32}).extend({"x": np.ones(3, np.float32)})
        file["hist"] = np.histogram(np.ones(3))
    with pytest.raises(ReadError, match=r"several TTrees \(a, b\)"):
        open_tree(path)
    with open_tree(path, "b") as tree:
        assert tree.num_entries == 3
    with pytest.raises(ReadError, match="no TTree or RNTuple named 'c'"):
        open_tree(path, "c")
    empty = tmp_path / "empty.root"
    with uproot.recreate(empty) as file:
        file["hist"] = np.histogram(np.ones(3))
    with pytest.raises(ReadError, match="holds no TTree"):
        open_tree(empty)


def test_empty_tree(tmp_path):
    path = tmp_path / "empty-tree.root"
    with uproot.recreate(path) as file:
        file.mktree("Events", {"x": np.float32})
    with open_tree(path) as tree:
        assert tree.num_entries == 0
        assert [len(c["x"]) for c in tree.iterate(["x"])] in ([], [0])


def test_identity_changes_with_content(tmp_path):
    a = write_events(tmp_path / "a.root", 100, seed=1)
    b = tmp_path / "b.root"
    shutil.copy(a, b)
    assert file_identity(str(a)) == file_identity(str(b))
    write_events(b, 100, seed=2)
    assert file_identity(str(a)) != file_identity(str(b))


def test_expand_sources(shared_data):
    found = expand_sources([shared_data])
    assert found == sorted(str(p) for p in shared_data.rglob("*.root")) and len(found) >= 4
    assert expand_sources([str(shared_data / "uproot-HZZ*.root")]) == sorted(
        str(p) for p in shared_data.glob("uproot-HZZ*.root")
    )
    assert expand_sources(["root://host:1094//data/a.root"]) == ["root://host:1094//data/a.root"]


@pytest.mark.parametrize(
    ("name", "include"),
    [
        ("uproot-HZZ.root", None),
        ("uproot-Zmumu.root", None),
        # baskets embedded in the metadata, and no fTotBytes
        ("nanoAOD_2015_CMS_Open_Data_ttbar.root", ["Jet_*", "nJet"]),
    ],
)
def test_memory_step_size_gives_the_chunks_of_uproot(shared_data, name, include):
    with open_tree(shared_data / name) as tree:
        names = tree.select(include, warn=False)
        for step in ("20 kB", "1 MB", "64 MB"):
            ours = [len(c[names[0]]) for c in tree.iterate(names, step_size=step)]
            theirs = [len(c) for c in tree.tree.iterate(names, step_size=step)]
            assert ours == theirs, step


def test_memory_step_size_reads_no_basket_headers(tmp_path, monkeypatch):
    # uproot's own conversion reads the key header of every basket, a round trip each on
    # S3 (on moto, each one a copy of the whole object): 84 reads for this file.
    path = write_events(tmp_path / "baskets.root", 6000, seed=3, basket=500)
    with open_tree(path) as tree:
        names = tree.select()
        source, reads = tree.tree.file.source, []
        read_one = source.chunk
        monkeypatch.setattr(source, "chunk", lambda *span: reads.append(span) or read_one(*span))
        assert sum(len(c["nJet"]) for c in tree.iterate(names, step_size="200 kB")) == 6000
        assert tree.step_entries(names, "200 kB") < 6000  # several steps
    assert reads == []


# ------------------------------------------------------- steps of hostile metadata


def test_a_file_stating_one_byte_a_branch_still_reads_in_bounded_steps(tmp_path):
    # fTotBytes = fZipBytes = 1 in every branch, patched on disk: trusted, the whole tree
    # of 200 000 entries was one step whatever the step size
    honest = write_stated_totals(tmp_path / "honest.root", 200_000, seed=5, stated=None)
    with open_tree(honest) as tree:
        honest_pt = tree.step_entries(["pt"], "800 kB")
    path = write_stated_totals(tmp_path / "lying.root", 200_000, seed=5)
    with open_tree(path) as tree:
        names = tree.select()
        assert {tree.tree[name].member("fTotBytes") for name in names} == {1}
        # float64 values take 8 bytes an entry whatever the metadata say
        assert tree.step_entries(["x"], "800 kB") == 100_000
        # random float32 lists barely compress: the bytes their baskets occupy on disk
        # keep the step near the honest one (within the compression ratio)
        assert honest_pt <= tree.step_entries(["pt"], "800 kB") < 1.25 * honest_pt
        step = tree.step_entries(names, "800 kB")
        chunks = list(tree.iterate(names, step_size="800 kB"))
    sizes = [len(chunk["x"]) for chunk in chunks]
    assert sum(sizes) == 200_000 and max(sizes) == step
    assert step <= 800_000 // (8 + 4 + 4)  # x, npt and pt's offsets at least
    assert max(sum(a.layout.nbytes for a in c.values()) for c in chunks) < 2 * 800_000


def test_stated_totals_of_one_byte_are_raised_to_what_the_types_need(shared_data, monkeypatch):
    monkeypatch.setattr(ttree_module, "_uncompressed_bytes", lambda branch: 1)
    monkeypatch.setattr(ttree_module, "_compressed_bytes", lambda branch: 1)
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        names = ["NJet", "Jet_Px", "MET_px"]  # int32, float32 lists, float32: 12 B an entry
        assert tree.step_entries(names, "12 kB") == 1000
        assert [len(c["NJet"]) for c in tree.iterate(names, step_size="12 kB")] == [
            1000,
            1000,
            421,
        ]


def test_a_memory_step_never_exceeds_the_entry_cap_but_a_count_is_the_callers(
    shared_data, monkeypatch
):
    monkeypatch.setattr(tree_module, "MAX_STEP_ENTRIES", 1000)
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        names = ["NJet", "Jet_Px"]
        assert tree.step_entries(names, "64 MB") == 1000
        assert [len(c["NJet"]) for c in tree.iterate(names, step_size="64 MB")] == [
            1000,
            1000,
            421,
        ]
        assert tree.step_entries(names, 5000) == 5000


def test_compressed_bytes_beyond_the_stated_totals_are_bounded_by_the_file_size(
    shared_data, monkeypatch
):
    # a basket table stating petabytes would otherwise make every step one entry
    monkeypatch.setattr(ttree_module, "_compressed_bytes", lambda branch: 10**15)
    path = shared_data / "uproot-HZZ.root"
    with open_tree(path) as tree:
        stated = tree.tree["NJet"].member("fTotBytes")
        expected = round(10**6 * tree.num_entries / (stated + path.stat().st_size))
        assert tree.step_entries(["NJet"], "1 MB") == expected > 1


@pytest.fixture(scope="module")
def hzz_tree(shared_data):
    with open_tree(shared_data / "uproot-HZZ.root") as tree:
        yield tree


STEP_BRANCHES = ("NJet", "Jet_Px", "MET_px")  # int32, float32 lists, float32: 12 B an entry
metadata_bytes = st.lists(st.integers(0, 10**15), min_size=3, max_size=3)


@settings(max_examples=200, deadline=None)
@given(metadata_bytes, metadata_bytes, st.integers(0, 10**12), st.integers(0, 10**11))
def test_memory_steps_stay_within_the_cap_and_what_the_types_allow(
    hzz_tree, stated, compressed, entries, target
):
    # whatever the file states: its entries, each branch's uncompressed and compressed bytes
    stated_of = dict(zip(STEP_BRANCHES, stated, strict=True))
    compressed_of = dict(zip(STEP_BRANCHES, compressed, strict=True))
    with (
        mock.patch.object(ttree_module, "_uncompressed_bytes", lambda b: stated_of[b.name]),
        mock.patch.object(ttree_module, "_compressed_bytes", lambda b: compressed_of[b.name]),
        mock.patch.object(RootTree, "num_entries", property(lambda self: entries)),
    ):
        step = hzz_tree.step_entries(list(STEP_BRANCHES), f"{target} B")
    assert 1 <= step <= MAX_STEP_ENTRIES
    assert step <= max(1, round(target / 12))


def test_zlib_baskets_inflate_with_isal_to_the_same_arrays(tmp_path, monkeypatch):
    path = write_events(tmp_path / "zlib.root", 3000, seed=4, basket=700)  # ZLIB(1)
    calls = []
    inflate = isal.isal_zlib.decompress
    monkeypatch.setattr(
        isal.isal_zlib, "decompress", lambda *a, **k: calls.append(1) or inflate(*a, **k)
    )
    try:
        assert use_zlib_library("zlib") == "zlib"
        with open_tree(path) as tree:
            plain = tree.arrays(tree.select())
        assert calls == []
        assert use_zlib_library("isal") == "isal"
        with open_tree(path) as tree:
            fast = tree.arrays(tree.select())
        assert calls  # every basket went through ISA-L
    finally:
        use_zlib_library()
    assert plain.keys() == fast.keys()
    for name in plain:
        assert ak.array_equal(plain[name], fast[name]), name


def test_zlib_library_choice_is_checked_and_leaves_writing_alone(monkeypatch):
    try:
        with pytest.raises(
            ValueError, match=r"\(MLAAS4HEP_ZLIB\) must be 'isal' or 'zlib', not 'gzip'"
        ):
            use_zlib_library("gzip")
        monkeypatch.setenv("MLAAS4HEP_ZLIB", "zlib")
        assert use_zlib_library() == "zlib"
        monkeypatch.delenv("MLAAS4HEP_ZLIB")
        assert use_zlib_library() == "isal"  # the default, installed with the package
        assert uproot.ZLIB.library == "zlib"  # written files keep zlib's levels
    finally:
        use_zlib_library()


# ------------------------------------------------------------------- column layouts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-5, 40), min_size=0, max_size=12),
    st.integers(0, 40),
)
def test_offsets_pass_exactly_when_they_can_index_the_values(offsets, size):
    sound = (
        len(offsets) > 0
        and offsets[0] >= 0
        and offsets[-1] <= size
        and all(b >= a for a, b in itertools.pairwise(offsets))
    )
    try:
        check_offsets(np.asarray(offsets, dtype=np.int64), size, "Jet_pt")
    except ColumnError as err:
        assert not sound and err.branch == "Jet_pt"
    else:
        assert sound


def test_a_crafted_awkward_list_is_refused_before_any_kernel():
    content = ak.contents.NumpyArray(np.arange(4, dtype=np.float32))
    past = ak.contents.ListOffsetArray(ak.index.Index64(np.array([0, 2, 9])), content)
    with pytest.raises(ColumnError, match="point past its 4 values"):
        check_layout(ak.Array(past), "Jet_pt")
    backwards = ak.contents.ListArray(
        ak.index.Index64(np.array([2, 0])), ak.index.Index64(np.array([1, 4])), content
    )
    with pytest.raises(ColumnError, match="starts and stops"):
        check_layout(ak.Array(backwards), "Jet_pt")
    check_layout(ak.Array([[1.0, 2.0], [], [3.0]]), "Jet_pt")  # sound lists pass


def test_a_scheme_whose_client_is_missing_is_a_read_error(monkeypatch):
    import mlaas4hep.extras as extras

    real = extras.require

    def without_xrootd(module):
        if module.startswith("XRootD"):
            raise ImportError(f"{module} is required for this feature but is not installed")
        return real(module)

    monkeypatch.setattr("mlaas4hep.io.xrootd.require", without_xrootd)
    monkeypatch.setattr("mlaas4hep.io.xrootd._CONFIGURED", False)
    with pytest.raises(ReadError, match="root://host:1094//a.root.*not installed"):
        open_tree("root://host:1094//a.root")


def test_an_xrootd_step_inside_baskets_already_read_sends_no_vector_read():
    # uproot sends the server an empty vector read, which it refuses; the refusal closes
    # the file under the next step's reads (tests/integration/test_transports.py reads a
    # file whose baskets hold several steps over a real server)
    source = object.__new__(XRootDSource)  # not connected: any read would raise
    assert source.chunks([], queue.Queue()) == []


def test_web_urls_are_requested_as_http_and_webdav_as_its_https() -> None:
    from mlaas4hep.io.https import _etag, wire_url

    assert (
        wire_url("davs://eos.example.org:8443/eos/a.root")
        == "https://eos.example.org:8443/eos/a.root"
    )
    assert wire_url("dav://host/a.root") == "http://host/a.root"
    assert wire_url("https://user:pw@host/a.root?x=1") == "https://host/a.root?x=1"
    assert _etag('"abc"') == "abc" and _etag('W/"abc"') == "W/abc" and _etag("") is None
