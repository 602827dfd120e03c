"""Staging root:// files into a cache: copied once, skipped when unchanged, read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlaas4hep.samples import make_tth_dataset
from mlaas4hep.sources import open_tree
from mlaas4hep.staging import stage_files


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
