"""Staging root:// files into a cache: copied once, skipped when unchanged, read back;
and training that starts on the root:// URLs and switches to the copies once staged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep.io.identity import file_identity
from mlaas4hep.io.staging import StagingTable, cached_url, stage_files, start_staging
from mlaas4hep.io.tree import open_tree
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.stream.chunks import ChunkStream
from mlaas4hep.stream.options import Reading, Selection, Split
from mlaas4hep.stream.staged import StagedChunkStream


@pytest.fixture(scope="module")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("stage-src")
    return [f.path for f in make_tth_dataset(out, n_events=3000, seed=5, block_size=1000)][:3]


@pytest.mark.parametrize("cache_kind", ["directory", "s3"])
def test_stage_copies_once_and_skips_unchanged(
    cache_kind, small_files, publish_to_xrootd, publish_to_s3, moto_server, tmp_path
) -> None:
    urls = [publish_to_xrootd(p, name=f"stage/{cache_kind}/{p.name}") for p in small_files]
    if cache_kind == "s3":
        moto_server.client("s3").create_bucket(Bucket="cache")
        cache = "s3://cache/staged"
    else:
        cache = str(tmp_path / "cache")
    first = stage_files(urls, cache, parallel=2, use_ray=False)
    assert [r["skipped"] for r in first] == [False] * 3
    assert all(r["bytes"] == p.stat().st_size for r, p in zip(first, small_files, strict=True))
    again = stage_files(urls, cache, parallel=2, use_ray=False)
    assert [r["skipped"] for r in again] == [True] * 3, (first, again)
    for record, path in zip(first, small_files, strict=True):
        with open_tree(record["cached"]) as staged, open_tree(str(path)) as original:
            assert staged.num_entries == original.num_entries


@pytest.fixture(scope="module")
def blocky_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three files of ~600 events in baskets of 150: several blocks each to switch between."""
    out = tmp_path_factory.mktemp("stage-blocky")
    return [f.path for f in make_tth_dataset(out, n_events=6000, seed=8, block_size=150)][:3]


STREAM_OPTIONS = {
    "branches": ["nJet", "HT"],
    "selection": Selection(labels={"ttH_signal.root": 1, "*": 0}),
    "chunk_size": 240,
    "reading": Reading(block_size=150, prefetch=0),
    "split": Split("train"),
    "seed": 4,
}


def _rows(chunk) -> tuple[np.ndarray, ...]:
    return chunk.file_index, chunk.entry, chunk.y, np.asarray(chunk.arrays["HT"])


def test_stream_switches_to_the_cached_copies_once_staged(
    blocky_files, publish_to_xrootd, tmp_path
) -> None:
    urls = [publish_to_xrootd(p, name=f"stage/while/{p.name}") for p in blocky_files]
    cache = str(tmp_path / "cache")
    table = StagingTable(
        targets={u: cached_url(u, cache) for u in urls},
        identities={u: file_identity(u) for u in urls},
        check_seconds=0.0,
    )
    with ChunkStream(urls, **STREAM_OPTIONS) as plain:
        reference = [_rows(c) for c in plain.chunks(0)]
    assert len(reference) >= 4
    with StagedChunkStream(urls, staging=table, **STREAM_OPTIONS) as stream:
        chunks = stream.chunks(0)
        got = [_rows(next(chunks))]  # training has started on the root:// URLs
        assert stream.switched == set() and stream.reads["cache"] == 0
        records = stage_files(urls, cache, parallel=2, use_ray=False)
        assert not any(r["skipped"] for r in records)
        got += [_rows(c) for c in chunks]  # the rest comes from the cache
        assert stream.switched == set(urls)
        assert stream.reads["source"] > 0 and stream.reads["cache"] > 0, stream.reads
    # the same events, labels and values in the same order: keys and split unchanged
    assert len(got) == len(reference)
    for mine, theirs in zip(got, reference, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            np.testing.assert_array_equal(a, b)


def test_staging_run_knows_what_is_cached_and_streams_read_it(
    blocky_files, publish_to_xrootd, tmp_path
) -> None:
    urls = [publish_to_xrootd(p, name=f"stage/run/{p.name}") for p in blocky_files]
    cache = str(tmp_path / "cache")
    first = start_staging(urls[:2], cache, parallel=2, use_ray=False)
    assert first.staged == set() and len(first.pending) == 2
    first.wait()
    run = start_staging(urls, cache, parallel=2, use_ray=False)
    assert run.staged == set(urls[:2]) and run.pending == [urls[2]]
    records = run.wait()
    assert [r["skipped"] for r in records] == [True, True, False]
    with StagedChunkStream(urls, staging=run.table(0.0), **STREAM_OPTIONS) as stream:
        shard = stream.shard(0, 2)  # shards and splits keep the staging
        assert isinstance(shard, StagedChunkStream)
        assert sum(len(c) for c in shard.chunks(0)) > 0
        assert shard.reads["source"] == 0 and shard.reads["cache"] > 0
        shard.close()


def test_local_job_trains_while_staging(blocky_files, publish_to_xrootd, tmp_path) -> None:
    pytest.importorskip("torch")
    from mlaas4hep.training.config import TrainConfig
    from mlaas4hep.training.local import run_local

    urls = [publish_to_xrootd(p, name=f"stage/job/{p.name}") for p in blocky_files]
    config = TrainConfig.from_dict(
        {
            "dataset": {
                "files": urls,
                "labels": {"ttH_signal.root": 1, "*": 0},
                "include": ["nJet", "HT", "Jet_pt"],
            },
            "vectorizer": {"padding": 4},
            "framework": "torch",
            "training": {"epochs": 2, "chunk_size": 400, "batch_size": 64},
            "staging": {
                "enabled": True,
                "mode": "while",
                "cache": str(tmp_path / "cache"),
                "check_seconds": 0,
            },
            "output": {"location": str(tmp_path / "out"), "bentoml_store": False},
        }
    )
    summary = run_local(config, log=lambda line: None)
    assert summary["staging"] == {
        "mode": "while",
        "files": 3,
        "copied": 3,
        "bytes": sum(p.stat().st_size for p in blocky_files),
    }
    assert summary["reads"]["cache"] > 0
    lineage = json.loads(Path(summary["bundle"]["output"], "lineage.json").read_text())
    assert set(lineage["staged"]) == set(urls)  # keyed by the root:// URLs
