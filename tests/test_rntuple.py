"""RNTuple as an input: the same events stored as a TTree (``mktree``) and as an RNTuple
read as the same branches, give the same specs, stream batches and served scores; real
CMS NanoAOD converted by ROOT's RNTupleImporter has the branches of its TTree; mixed
datasets stream and train; a file holding both asks for one."""

from __future__ import annotations

import json
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from rootfiles import write_events

from mlaas4hep.errors import ReadError
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.spec.compute import compute_dataset_spec, compute_file_spec
from mlaas4hep.spec.statistics import array_stats
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.options import Reading, Selection, Split
from mlaas4hep.transform.vectorizer import Vectorizer

NANO_RNTUPLE = "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root"
NANO_TTREE = "nanoAOD_2015_CMS_Open_Data_ttbar.root"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The same 2000 events (jagged Jet_pt/Jet_eta, a vector, flat numbers, a bool),
    written in baskets/clusters of 300, as a TTree and as an RNTuple."""
    folder = tmp_path_factory.mktemp("pair")
    extra = {"Track_d0": ak.Array([[0.5] * (i % 3) for i in range(2000)])}
    return {
        fmt: write_events(
            folder / f"{fmt}.root", 2000, seed=11, basket=300, extra=extra, file_format=fmt
        )
        for fmt in ("ttree", "rntuple")
    }


def test_the_same_events_read_as_the_same_branches_and_arrays(pair):
    with open_tree(pair["ttree"]) as ttree, open_tree(pair["rntuple"]) as rntuple:
        assert (ttree.format, rntuple.format) == ("TTree", "RNTuple")
        assert rntuple.branches == ttree.branches  # names, kinds, dtypes, counters
        assert rntuple.branches["Jet_pt"].counter == "nJet"
        assert rntuple.skipped == ttree.skipped == {}
        names = ttree.select()
        assert set(names) >= {"nJet", "Jet_pt", "Jet_eta", "nTrack_d0", "Track_d0", "isGood"}
        bounds = ttree.cluster_boundaries(names)
        assert np.array_equal(rntuple.cluster_boundaries(names), bounds)
        assert list(bounds) == [*range(0, 2000, 300), 2000]
        ours, theirs = ttree.arrays(names, 450, 1700), rntuple.arrays(names, 450, 1700)
        for name in names:
            assert ours[name].type == theirs[name].type, name
            assert ak.array_equal(ours[name], theirs[name]), name
        steps = [
            [len(c["nJet"]) for c in t.iterate(names, step_size=700)] for t in (ttree, rntuple)
        ]
        assert steps[0] == steps[1] == [700, 700, 600]
        assert 1 <= rntuple.step_entries(names, "20 kB") < 2000


@pytest.mark.parametrize("step", [700, "64 MB"])
def test_specs_of_the_same_events_are_identical(pair, step):
    # the same steps: the sums of squares are summed step by step, in floating point (a
    # memory step size counts each format's own bytes and may cut other steps)
    ttree, rntuple = (compute_file_spec(pair[f], step_size=step) for f in ("ttree", "rntuple"))
    assert rntuple.content() == ttree.content()
    assert rntuple.identity and ttree.identity  # the same content identity: size + checksum
    assert set(rntuple.identity) == set(ttree.identity)


def _stream_outcome(path: Path) -> list[tuple[np.ndarray, ...]]:
    spec = compute_dataset_spec([path]).dataset
    vectorizer = Vectorizer(spec, ["Jet_*", "MET_pt", "nJet"], padding=5)
    stream = ChunkStream(
        [path],
        vectorizer=vectorizer,
        chunk_size=256,
        seed=5,
        selection=Selection(label="nJet >= 4", weight="MET_pt / 10", cut="nPV > 15"),
        split=Split("train", fractions=(0.7, 0.2, 0.1)),
        reading=Reading(600),
    )
    with stream.shard(1, 2) as shard:
        return [(c.entry, c.X, c.mask, c.y, c.w) for c in shard.chunks(epoch=1)]


def test_stream_batches_of_the_same_events_are_identical(tmp_path):
    # one path for both: the split and the mix hash each file's URL
    path = tmp_path / "events.root"
    outcomes = []
    for fmt in ("ttree", "rntuple"):
        write_events(path, 3000, seed=4, basket=500, file_format=fmt)
        with open_tree(path) as tree:
            assert tree.format.lower() == fmt
        outcomes.append(_stream_outcome(path))
    ttree, rntuple = outcomes
    assert len(ttree) == len(rntuple) > 1
    for ours, theirs in zip(ttree, rntuple, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_mixed_dataset_streams_every_event_once(tmp_path):
    files = [
        str(write_events(tmp_path / "a.root", 1500, seed=1, basket=400)),
        str(write_events(tmp_path / "b.root", 2500, seed=2, basket=400, file_format="rntuple")),
    ]
    run = compute_dataset_spec(files)
    assert run.dataset.problems() == []  # the same branches, kinds and dtypes
    vectorizer = Vectorizer(run.dataset, ["Jet_*", "MET_pt", "nPV"])
    stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=1000, branches=["event"])
    chunks = list(stream)
    events = np.concatenate([c.arrays["event"].to_numpy() for c in chunks])
    assert len(events) == len(np.unique(events)) == 4000
    for chunk in chunks:
        assert np.all(np.abs(np.bincount(chunk.file_index, minlength=2) - [375, 625]) <= 1)


def test_a_file_with_a_ttree_and_an_rntuple_asks_for_one(tmp_path):
    path = tmp_path / "both.root"
    with uproot.recreate(path) as file:
        file.mktree("Events", {"x": np.float32}).extend({"x": np.ones(3, np.float32)})
        file["Runs"] = {"run": np.arange(2, dtype=np.uint32)}  # an RNTuple
    with pytest.raises(ReadError, match=r"several TTrees and RNTuples \(Events \(TTree\), "):
        open_tree(path)
    with open_tree(path, "Runs") as runs:
        assert runs.format == "RNTuple" and runs.num_entries == 2
    with open_tree(path, "Events") as events:
        assert events.format == "TTree" and events.num_entries == 3
    lone = tmp_path / "lone.root"
    with uproot.recreate(lone) as file:
        file["Events"] = {"x": np.ones(4, np.float32)}
    with open_tree(lone) as tree:  # found without being named
        assert tree.format == "RNTuple" and tree.tree_name == "Events"


def test_rntuple_fields_map_to_branch_like_names(tmp_path):
    path = tmp_path / "fields.root"
    data = {
        "MET": ak.zip({"pt": np.array([1.0, 2.0], np.float32), "phi": np.zeros(2, np.float32)}),
        "Muon": ak.Array([[{"pt": 3.0, "hits": [1, 2]}], []]),
        "name": ak.Array(["a", "b"]),
        "pair": ak.to_regular(ak.Array([[1.0, 2.0], [3.0, 4.0]]), axis=1),
    }
    with uproot.recreate(path) as file:
        file["Events"] = data
    with open_tree(path) as tree:
        kinds = {n: (b.kind, b.counter) for n, b in tree.branches.items()}
        assert kinds == {
            "MET_phi": ("flat", None),
            "MET_pt": ("flat", None),
            "nMuon": ("flat", None),
            "Muon_pt": ("jagged", "nMuon"),
            "pair_0": ("flat", None),  # a fixed-size array: one flat column per element
            "pair_1": ("flat", None),
        }
        assert set(tree.skipped) == {"Muon_hits", "name"}
        assert "list of lists" in tree.skipped["Muon_hits"]
        arrays = tree.arrays(list(tree.branches))
        assert arrays["nMuon"].tolist() == [1, 0] and arrays["Muon_pt"].tolist() == [[3.0], []]
        assert arrays["pair_0"].tolist() == [1.0, 3.0] and arrays["pair_1"].tolist() == [2.0, 4.0]


def _children(ntuple) -> list[list[int]]:
    return [[child.field_id for child in field.fields] for field in ntuple.all_fields]


def test_child_lists_filled_in_one_pass_are_uproots_own(shared_data, tmp_path):
    """``index_children`` gives every field the children uproot's own (quadratic) scan
    gives it: on ROOT's NanoAOD import (projections, cardinalities, 1,679 fields) and on
    an uproot-written RNTuple with records in lists, lists of lists (anonymous inner
    fields), fixed-size arrays and strings."""
    from mlaas4hep.io.rntuple import index_children

    written = tmp_path / "nested.root"
    data = {
        "MET": ak.zip({"pt": np.array([1.0, 2.0], np.float32), "phi": np.zeros(2, np.float32)}),
        "Muon": ak.Array([[{"pt": 3.0, "hits": [1, 2], "pos": {"x": 1.0}}], []]),
        "tracks": ak.Array([[[1.0], [2.0, 3.0]], []]),
        "name": ak.Array(["a", "b"]),
        "pair": ak.to_regular(ak.Array([[1.0, 2.0], [3.0, 4.0]]), axis=1),
    }
    with uproot.recreate(written) as file:
        file["Events"] = data
    for path in (shared_data / NANO_RNTUPLE, written):
        with uproot.open(path) as theirs, uproot.open(path) as ours:
            expected = _children(theirs["Events"])
            ntuple = ours["Events"]
            index_children(ntuple)
            assert all(f._fields is not None for f in ntuple.all_fields)
            assert _children(ntuple) == expected
            assert any(expected)
            if path == written:
                keys = ntuple.keys(recursive=True)
                assert keys == theirs["Events"].keys(recursive=True)
                assert ntuple.arrays(library="ak").tolist() == ak.Array(data).tolist()


def test_real_nanoaod_rntuple_has_the_branches_of_its_ttree(shared_data):
    # ROOT's RNTupleImporter stores each collection in a `_collectionN` field and projects
    # `Jet_pt`, `nJet` … onto it: the projections carry the TTree's names and types.
    with (
        open_tree(shared_data / NANO_RNTUPLE) as rntuple,
        open_tree(shared_data / NANO_TTREE) as ttree,
    ):
        assert rntuple.format == "RNTuple" and rntuple.num_entries == 10
        assert rntuple.branches == ttree.branches  # all 947, counters included
        assert rntuple.skipped == ttree.skipped == {}
    # the two files hold different events (other runs of the same sample), so their
    # statistics differ: the RNTuple's are checked against uproot's own reading
    spec = compute_file_spec(shared_data / NANO_RNTUPLE, include=["Jet_*", "nJet", "run"])
    ntuple = uproot.open(shared_data / NANO_RNTUPLE)["Events"]
    raw = ntuple.arrays(filter_name=["Jet_pt", "nJet", "run"])
    assert spec.entries == 10 and spec.branches["nJet"].dtype == "uint32"
    for name in ("Jet_pt", "nJet", "run"):
        info = rntuple.branches[name]
        values = ak.values_astype(raw[name], info.dtype)
        assert spec.branches[name].to_dict() == array_stats(info, values).to_dict(), name
    counts = ak.num(raw["Jet_pt"], axis=1).to_numpy()
    assert np.array_equal(counts, raw["nJet"].to_numpy())


def test_real_nanoaod_rewritten_as_rntuple_gives_the_same_spec(shared_data, tmp_path):
    # the TTree's events, written again as an RNTuple (Jet one field of records)
    names = ["Jet_pt", "Jet_eta", "Jet_jetId", "Jet_btagDeepB", "MET_pt", "run", "event"]
    with open_tree(shared_data / NANO_TTREE) as tree:
        arrays = tree.arrays(names)
    jets = ak.zip({n[4:]: arrays[n] for n in names if n.startswith("Jet_")})
    data = {"Jet": jets, **{n: arrays[n].to_numpy() for n in ("MET_pt", "run", "event")}}
    path = tmp_path / "nano.root"
    with uproot.recreate(path) as file:
        file["Events"] = data
    include = [*names, "nJet"]
    ttree = compute_file_spec(shared_data / NANO_TTREE, include=include)
    rntuple = compute_file_spec(path, include=include)
    # nJet: NanoAOD's counter is uint32, the one an uproot-written collection gives int32
    assert ttree.branches["nJet"].dtype == "uint32" and rntuple.branches["nJet"].dtype == "int32"
    ours, theirs = ttree.content(), rntuple.content()
    for content in (ours, theirs):
        content["branches"]["nJet"].pop("dtype")
    assert ours == theirs


def test_the_generator_writes_either_format_with_the_same_events(tmp_path):
    kwargs = {"n_events": 2000, "seed": 3, "block_size": 700}
    ttree = make_tth_dataset(tmp_path / "ttree", **kwargs)
    rntuple = make_tth_dataset(tmp_path / "rntuple", file_format="rntuple", **kwargs)
    for a, b in zip(ttree, rntuple, strict=True):
        assert uproot.open(b.path).classnames() == {"Events;1": "ROOT::RNTuple"}
        spec_a, spec_b = compute_file_spec(a.path), compute_file_spec(b.path)
        assert json.dumps(spec_a.content(), sort_keys=True) == json.dumps(
            spec_b.content(), sort_keys=True
        )
        with open_tree(b.path) as tree:
            bounds = tree.cluster_boundaries(tree.select())
        assert list(bounds) == [*range(0, b.events, 700), b.events]


def test_served_scores_of_the_same_events_are_identical(tmp_path):
    # /predict_file on the uploaded bytes of each format, one in-process server
    pytest.importorskip("torch")
    pytest.importorskip("bentoml")
    from test_registry import make_bundle, ticking_clock

    from mlaas4hep.serve.config import ServeConfig
    from mlaas4hep.serve.protocol import JSON
    from mlaas4hep.serve.registry import Registry
    from mlaas4hep.serve.server import ModelServer

    registry = Registry(tmp_path / "bentoml", clock=ticking_clock())
    registry.promote(registry.add(make_bundle(tmp_path, 1), "tth"))
    server = ModelServer(ServeConfig(model="tth"), registry, watch=False)
    kwargs = {"n_events": 1800, "seed": 3, "block_size": 500}
    answers = []
    for fmt in ("ttree", "rntuple"):
        files = make_tth_dataset(tmp_path / fmt, file_format=fmt, **kwargs)
        pieces, _, _ = server.predict_file(files[1].path.read_bytes(), JSON)
        answers.append(json.loads(b"".join(pieces)))
    assert answers[0] == answers[1]
    assert len(answers[0]["scores"]) == files[1].events


def test_a_mixed_dataset_trains(tmp_path):
    # the signal file as an RNTuple, the backgrounds as TTrees, one training config
    pytest.importorskip("torch")
    import shutil

    import yaml

    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.training.local import main

    kwargs = {"n_events": 4000, "seed": 3, "block_size": 1000}
    data = tmp_path / "data"
    make_tth_dataset(data, **kwargs)
    stored = make_tth_dataset(tmp_path / "rntuple", file_format="rntuple", **kwargs)
    shutil.copy(stored[0].path, data / stored[0].path.name)  # ttH_signal.root
    config = {
        "dataset": {
            "files": [str(data)],
            "labels": {"ttH_signal.root": 1, "*": 0},
            "include": ["Jet_pt", "Jet_btagDeepB", "nJet", "HT"],
        },
        "vectorizer": {"padding": 6},
        "training": {"epochs": 1, "chunk_size": 1000, "batch_size": 64},
        "framework": "torch",
        "output": {"location": str(tmp_path / "out"), "name": "mixed", "bentoml_store": False},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--device", "cpu", "--run-name", "mixed-1"]) == 0
    summary = json.loads((tmp_path / "out" / "mixed-1" / "summary.json").read_text())
    bundle = ModelBundle.load(summary["bundle"]["output"])
    assert bundle.spec.entries == 4000 and bundle.spec.problems() == []


def test_inspect_names_the_format(shared_data, capsys):
    from mlaas4hep.cli import main

    args = ["inspect", str(shared_data / NANO_RNTUPLE), "--include", "Jet_pt", "nJet"]
    assert main([*args, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["format"], info["tree"], info["entries"]) == ("RNTuple", "Events", 10)
    assert info["branches"]["Jet_pt"] == {"kind": "jagged", "dtype": "float32", "counter": "nJet"}
    assert main(args) == 0
    assert "RNTuple Events, 10 entries" in capsys.readouterr().out
