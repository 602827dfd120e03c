"""ROOT files read from a real web server on loopback: the same data as on local disk.

The server (``tests/webserver.py``) is a threaded ``http.server`` that answers range
requests itself, over real sockets on 127.0.0.1: reading in ranges, redirects, a server
that ignores ``Range`` and a 404 are what the reader must get right, and mocking the
transport would test the mocks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from webserver import FileServer

from mlaas4hep.cli import main
from mlaas4hep.errors import ConfigError, ReadError
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local.processes import free_port
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.transform.vectorizer import Vectorizer

pytestmark = pytest.mark.integration

FILES = [
    "uproot-HZZ.root",
    "uproot-HZZ-lz4.root",
    "nanoAOD_2015_CMS_Open_Data_ttbar.root",
    "cmsopendata2015_ttbar_19980_NANOAOD_RNTupleImporter_rntuple_v1-0-0-1.root",  # RNTuple
]


@pytest.fixture(scope="module")
def web_root(tmp_path_factory, shared_data) -> Path:
    """A served directory: the shared files under ``data/``, a small generated ttH set
    under ``data/tth/``."""
    root = tmp_path_factory.mktemp("web")
    (root / "data").mkdir()
    for name in FILES:
        shutil.copyfile(shared_data / name, root / "data" / name)
    make_tth_dataset(root / "data" / "tth", n_events=3000, seed=5, block_size=400)
    return root


@pytest.fixture(scope="module")
def web(web_root):
    with FileServer(web_root) as server:
        yield server


@pytest.fixture
def no_proxy_reachable(monkeypatch):
    """Environment proxies that lead nowhere: loopback must be reached without them."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", FILES)
def test_specs_over_http_equal_the_local_specs(web, web_root, no_proxy_reachable, name):
    local = compute_file_spec(web_root / "data" / name)
    remote = compute_file_spec(web.url_for(f"data/{name}"))
    assert remote.source == web.url_for(f"data/{name}")
    assert remote.content() == local.content()
    assert remote.identity["size"] == local.identity["size"]
    assert remote.identity["etag"]
    ranges = [r for method, path, r in web.requests if path == f"/data/{name}"]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges)  # never a whole GET


def test_webdav_urls_are_read_as_plain_http(web, web_root):
    url = web.url_for("data/uproot-HZZ.root").replace("http://", "dav://")
    spec = compute_file_spec(url)
    assert spec.source == url
    assert spec.content() == compute_file_spec(web_root / "data" / "uproot-HZZ.root").content()


@pytest.mark.parametrize(
    ("names", "include"),
    [
        (FILES[:2], ["Jet_*", "Muon_*", "MET_*"]),
        (FILES[2:], ["Jet_pt", "Jet_eta", "nMuon", "MET_pt"]),  # a TTree and an RNTuple
    ],
    ids=["ttrees", "ttree+rntuple"],
)
def test_chunk_streams_over_http_equal_local_ones_and_mix_with_them(web, web_root, names, include):
    local = [str(web_root / "data" / n) for n in names]
    remote = [web.url_for(f"data/{n}") for n in names]
    vectorizer = Vectorizer(DatasetSpec([compute_file_spec(u) for u in local]), include)
    results = {}
    for kind, files in {"local": local, "http": remote, "mixed": [remote[0], local[1]]}.items():
        stream = ChunkStream(files, vectorizer=vectorizer, chunk_size=1000)
        results[kind] = [(c.X, c.mask, c.file_index, c.entry) for c in stream]
    for kind in ("http", "mixed"):
        assert len(results[kind]) == len(results["local"])
        for ours, theirs in zip(results["local"], results[kind], strict=True):
            for a, b in zip(ours, theirs, strict=True):
                assert np.array_equal(a, b)


@pytest.mark.filterwarnings("ignore::mlaas4hep.io.branches.NonNumericBranchWarning")
def test_the_identity_changes_with_the_served_file(web, web_root, shared_data):
    path = web_root / "data" / "changing.root"
    shutil.copyfile(shared_data / "uproot-HZZ.root", path)
    os.utime(path, ns=(1_600_000_000_000_000_000,) * 2)
    url = web.url_for("data/changing.root")
    first = file_identity(url)
    assert first == file_identity(url)  # asked twice, the same
    os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)  # same bytes, a new version
    touched = file_identity(url)
    assert touched["size"] == first["size"] and touched["etag"] != first["etag"]
    shutil.copyfile(shared_data / "uproot-Zmumu.root", path)
    replaced = file_identity(url)
    assert replaced["size"] != first["size"] and replaced not in (first, touched)
    spec = compute_file_spec(url)
    assert spec.identity == replaced


def test_a_server_that_ignores_range_is_a_clear_error(web_root):
    with FileServer(web_root, ranges=False) as server:
        url = server.url_for("data/uproot-HZZ.root")
        with pytest.raises(ReadError, match="ignores Range") as caught:
            open_tree(url)
        assert caught.value.url == url
        with pytest.raises(ReadError, match="ignores Range"):
            compute_file_spec(url)
        with pytest.raises(ReadError, match="ignores Range"):
            file_identity(url)


def test_a_missing_file_and_a_dead_server_name_the_url(web):
    missing = web.url_for("data/nope.root")
    for call in (open_tree, file_identity, compute_file_spec):
        with pytest.raises(ReadError, match="no such file") as caught:
            call(missing)
        assert caught.value.url == missing and "nope.root" in str(caught.value)
    dead = f"http://127.0.0.1:{free_port()}/data/file.root"
    with pytest.raises(ReadError, match="cannot reach the server") as caught:
        open_tree(dead)
    assert caught.value.url == dead


def test_redirects_are_followed_within_their_limits(web, web_root):
    with FileServer(web_root) as other:
        local = compute_file_spec(web_root / "data" / "uproot-HZZ.root").content()
        web.redirect("moved/hzz.root", "/data/uproot-HZZ.root")  # same server, relative
        web.redirect("away/hzz.root", other.url_for("data/uproot-HZZ.root"))
        web.redirect("gone/hzz.root", "/data/nope.root")
        web.redirect("loop/a.root", "/loop/b.root")
        web.redirect("loop/b.root", "/loop/a.root")
        web.redirect("file/x.root", "file:///etc/passwd")
        web.redirect("ftp/x.root", "ftp://127.0.0.1/x.root")
        assert compute_file_spec(web.url_for("moved/hzz.root")).content() == local
        assert compute_file_spec(web.url_for("away/hzz.root")).content() == local
        with pytest.raises(ReadError, match="no such file"):
            open_tree(web.url_for("gone/hzz.root"))
        with pytest.raises(ReadError, match="loop/a.root"):
            open_tree(web.url_for("loop/a.root"))
        with pytest.raises(ReadError, match="not followed") as caught:
            open_tree(web.url_for("ftp/x.root"))
        assert caught.value.cause.startswith("the server redirects to 'ftp://")
        with pytest.raises(ReadError, match="file:///etc/passwd.*not allowed"):
            open_tree(web.url_for("file/x.root"))
        # a caller that limits redirects (the service) is never taken to another server
        before = len(other.requests)
        same_server = web.url + "/"
        with pytest.raises(ReadError, match="outside the sources"):
            open_tree(web.url_for("away/hzz.root"), redirects=lambda u: u.startswith(same_server))
        assert len(other.requests) == before
        with open_tree(web.url_for("moved/hzz.root"), redirects=lambda u: True) as tree:
            assert tree.num_entries == 2421


def test_an_http_url_names_one_file(web):
    url = web.url_for("data/uproot-HZZ.root")
    assert expand_sources([url, "/tmp/../tmp/none-such-*.root", url]) == [url]
    for text in (web.url_for("data/"), web.url_for("data/*.root"), web.url):
        with pytest.raises(ConfigError, match="names one file"):
            expand_sources([text])


def test_cli_specs_over_http(web, web_root, tmp_path):
    output = tmp_path / "ds.json"
    urls = [web.url_for(f"data/{n}") for n in FILES[:2]]
    assert main(["specs", *urls, str(web_root / "data" / FILES[2]), "-o", str(output)]) == 0
    spec = DatasetSpec.from_json(output.read_text())
    assert sorted(spec.files) == sorted([*urls, str(web_root / "data" / FILES[2])])


def test_training_reads_http_urls(web, web_root, tmp_path):
    pytest.importorskip("torch")
    from mlaas4hep.training.config import TrainConfig
    from mlaas4hep.training.local import run_local

    names = sorted(p.name for p in (web_root / "data" / "tth").glob("*.root"))
    urls = [web.url_for(f"data/tth/{n}") for n in names]
    config = TrainConfig.from_dict(
        {
            "dataset": {
                "files": urls,
                "labels": {"ttH_signal.root": 1, "*": 0},
                "include": ["nJet", "HT", "Jet_pt"],
            },
            "vectorizer": {"padding": 4},
            "framework": "torch",
            "training": {"epochs": 1, "chunk_size": 500, "batch_size": 64},
            "output": {"location": str(tmp_path / "out"), "bentoml_store": False},
        }
    )
    summary = run_local(config, log=lambda line: None)
    lineage = json.loads(Path(summary["bundle"]["output"], "lineage.json").read_text())
    assert sorted(lineage["config"]["dataset"]["files"]) == sorted(urls)
    assert summary["train_events"] > 0 and np.isfinite(summary["test_auc"])


def test_predict_file_reads_urls_under_its_sources_only(web, web_root, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("bentoml")
    from test_registry import make_bundle, ticking_clock

    from mlaas4hep.serve.config import ServeConfig
    from mlaas4hep.serve.payloads import RequestError
    from mlaas4hep.serve.protocol import JSON
    from mlaas4hep.serve.registry import Registry
    from mlaas4hep.serve.server import ModelServer

    registry = Registry(tmp_path / "bentoml", clock=ticking_clock())
    registry.promote(registry.add(make_bundle(tmp_path, 1), "tth"))
    config = ServeConfig(model="tth", file_sources=(web.url + "/data/tth/",))
    server = ModelServer(config, registry, watch=False)
    path = web_root / "data" / "tth" / "ttH_signal.root"

    def scores(source: str | bytes) -> dict:
        pieces, _, _ = server.predict_file(source, JSON)
        return json.loads(b"".join(pieces))

    by_url = scores(web.url_for("data/tth/ttH_signal.root"))
    assert by_url == scores(path.read_bytes())
    assert len(by_url["scores"]) > 0
    with FileServer(web_root) as other:
        web.redirect("data/tth/elsewhere.root", other.url_for("data/tth/ttH_signal.root"))
        web.redirect("data/tth/inside.root", "/data/tth/ttH_signal.root")
        assert scores(web.url_for("data/tth/inside.root")) == by_url
        before = len(web.requests)
        outside = [
            web.url_for("data/uproot-HZZ.root"),  # the same server, another path
            other.url_for("data/tth/ttH_signal.root"),  # the same path, another port
            web.url_for("data/tth/ttH_signal.root").replace("127.0.0.1", "localhost"),
            web.url_for("data/tth/../uproot-HZZ.root"),
            f"http://x@127.0.0.1:{web.port}/data/tth/ttH_signal.root",
            web.url_for("data/tth/ttH_signal.root?x=1"),
        ]
        for url in outside:
            with pytest.raises(RequestError) as caught:
                server.predict_file(url, JSON)
            assert caught.value.status == 403, url
        assert len(web.requests) == before  # refused before anything was contacted
        with pytest.raises(RequestError, match="outside the sources") as caught:
            server.predict_file(web.url_for("data/tth/elsewhere.root"), JSON)
        assert caught.value.status == 422
        assert other.requests == []  # the redirect to another server was not followed
        with pytest.raises(RequestError, match="no such file") as caught:
            server.predict_file(web.url_for("data/tth/nope.root"), JSON)
        assert caught.value.status == 422
