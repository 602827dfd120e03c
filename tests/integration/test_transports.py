"""The same data read from local disk, a real XRootD server and a real S3 API (moto)."""

from __future__ import annotations

import numpy as np
import pytest
from rootfiles import write_stated_totals

from mlaas4hep.cli import main
from mlaas4hep.errors import ReadError
from mlaas4hep.io.expand import expand_sources
from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.tree import open_tree
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
def urls(shared_data, publish_to_xrootd, publish_to_s3):
    return {
        name: {
            "local": str(shared_data / name),
            "root": publish_to_xrootd(shared_data / name),
            "s3": publish_to_s3(shared_data / name, bucket="transport-data"),
        }
        for name in FILES
    }


@pytest.mark.parametrize("name", FILES)
def test_specs_are_identical_across_transports(urls, name):
    specs = {kind: compute_file_spec(url) for kind, url in urls[name].items()}
    assert specs["root"].source.startswith("root://127.0.0.1:")
    assert specs["s3"].source.startswith("s3://transport-data/")
    assert specs["local"].content() == specs["root"].content() == specs["s3"].content()
    assert specs["s3"].identity["size"] == specs["local"].identity["size"]
    assert specs["root"].identity["size"] == specs["local"].identity["size"]
    assert "etag" in specs["s3"].identity and "adler32" in specs["root"].identity


@pytest.mark.parametrize(
    ("names", "include"),
    [
        (FILES[:2], ["Jet_*", "Muon_*", "MET_*"]),
        (FILES[2:], ["Jet_pt", "Jet_eta", "nMuon", "MET_pt"]),  # a TTree and an RNTuple
    ],
    ids=["ttrees", "ttree+rntuple"],
)
def test_chunk_streams_are_identical_across_transports(urls, names, include):
    spec = DatasetSpec([compute_file_spec(urls[n]["local"]) for n in names])
    vectorizer = Vectorizer(spec, include)
    results = {}
    for kind in ("local", "root", "s3"):
        stream = ChunkStream([urls[n][kind] for n in names], vectorizer=vectorizer, chunk_size=1000)
        results[kind] = [(c.X, c.mask, c.file_index, c.entry) for c in stream]
    for kind in ("root", "s3"):
        for ours, theirs in zip(results["local"], results[kind], strict=True):
            for a, b in zip(ours, theirs, strict=True):
                assert np.array_equal(a, b)


def test_cli_specs_over_s3_prefix_and_xrootd(urls, tmp_path):
    output = tmp_path / "ds.json"
    assert (
        main(
            [
                "specs",
                "s3://transport-data/",
                urls["uproot-HZZ.root"]["root"],
                "-o",
                str(output),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    spec = DatasetSpec.from_json(output.read_text())
    assert len(spec.files) == 5  # four files in the bucket (one RNTuple) plus one over XRootD
    assert len(expand_sources(["s3://transport-data/"])) == 4


def test_unreachable_and_missing_remote_files_name_the_url(urls, xrootd_server):
    root_missing = xrootd_server.url + "//tmp/does-not-exist.root"
    with pytest.raises(ReadError, match="does-not-exist.root"):
        open_tree(root_missing)
    with pytest.raises(ReadError, match="s3://transport-data/nope.root"):
        open_tree("s3://transport-data/nope.root")
    with pytest.raises(ReadError, match="nope.root"):
        file_identity("s3://transport-data/nope.root")
    from mlaas4hep.local.processes import free_port

    dead = f"root://127.0.0.1:{free_port()}//data/file.root"
    with pytest.raises(ReadError, match=dead.replace(".", r"\.")):
        open_tree(dead)


def test_a_file_stating_one_byte_a_branch_reads_in_the_same_steps_remotely(
    tmp_path, publish_to_xrootd, publish_to_s3
):
    # Its stated totals (1 byte) are raised to what the types need and to the bytes the
    # baskets occupy, which asks the transport for the file's size: the same steps
    # whether the file is local, behind XRootD or in S3.
    path = write_stated_totals(tmp_path / "stated-one-byte.root", 20_000, seed=7)
    urls = {
        "local": str(path),
        "root": publish_to_xrootd(path),
        "s3": publish_to_s3(path, bucket="transport-hostile"),
    }
    steps = {}
    for kind, url in urls.items():
        with open_tree(url) as tree:
            steps[kind] = [len(c["x"]) for c in tree.iterate(tree.select(), step_size="150 kB")]
    assert steps["local"] == steps["root"] == steps["s3"]
    assert sum(steps["local"]) == 20_000 and len(steps["local"]) > 1
