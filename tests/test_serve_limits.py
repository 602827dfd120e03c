"""Limits read from a body's metadata, the /predict_file allow-list, redaction and
streamed responses: the service's defences that need no server to test."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlaas4hep.serve.answers import stream_scores
from mlaas4hep.serve.arrow_extent import ipc_extent, parquet_extent
from mlaas4hep.serve.payloads import RequestError, read_table
from mlaas4hep.serve.registry_documents import REDACTED, redact
from mlaas4hep.serve.sources import check_file_url

lists = st.lists(st.lists(st.floats(-1e6, 1e6, width=32), max_size=6), min_size=0, max_size=40)


def _table(rows: list[list[float]], repeat: int) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "Jet_pt": pa.array(rows * repeat, type=pa.list_(pa.float32())),
            "nJet": pa.array(np.tile(np.arange(n, dtype=np.int32), repeat)),
            "tag": pa.array(["a", "bb"] * (n * repeat // 2) + ["c"] * (n * repeat % 2)),
        }
    )


def _ipc(table: pa.Table, compression: str | None, file: bool, chunk: int) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    opener = pa.ipc.new_file if file else pa.ipc.new_stream
    with opener(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return sink.getvalue().to_pybytes()


@settings(max_examples=60, deadline=None)
@given(
    rows=lists,
    repeat=st.integers(1, 50),
    compression=st.sampled_from([None, "zstd", "lz4"]),
    file=st.booleans(),
    chunk=st.integers(1, 500),
)
def test_the_ipc_extent_counts_every_event_and_bounds_what_decoding_takes(
    rows, repeat, compression, file, chunk
) -> None:
    table = _table(rows, repeat)
    body = pa.py_buffer(_ipc(table, compression, file, chunk))
    extent = ipc_extent(pa, body.slice(8) if file else body)
    assert extent.rows == table.num_rows
    decoded = pa.ipc.open_file(body).read_all() if file else pa.ipc.open_stream(body).read_all()
    # the buffers decoding allocates (without Arrow's 8-byte padding of each buffer)
    assert extent.decoded_bytes >= decoded.nbytes - 64 * decoded.num_columns * max(
        1, table.num_rows // max(chunk, 1) + 1
    )


@settings(max_examples=30, deadline=None)
@given(rows=lists, repeat=st.integers(1, 50))
def test_the_parquet_extent_is_the_row_count_and_at_least_the_decoded_size(rows, repeat) -> None:
    table = _table(rows, repeat).drop_columns(["tag"])
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=64)
    extent = parquet_extent(pq.ParquetFile(pa.BufferReader(sink.getvalue())))
    assert extent.rows == table.num_rows
    assert extent.decoded_bytes >= table.nbytes


def test_a_body_over_a_limit_is_refused_from_its_metadata() -> None:
    zeros = pa.table({"x": pa.array(np.zeros(5_000_000, dtype=np.float64))})
    body = _ipc(zeros, "zstd", False, 5_000_000)
    assert len(body) < 100_000
    with pytest.raises(RequestError, match="5000000 events exceed the limit of 1000") as caught:
        read_table(body, max_events=1000)
    assert caught.value.status == 413 and caught.value.field == "body"
    with pytest.raises(RequestError, match="limits.decoded_bytes") as caught:
        read_table(body, max_events=10**8, max_decoded_bytes=1 << 20)
    assert caught.value.status == 413
    assert read_table(body, max_events=10**8, max_decoded_bytes=1 << 30).num_rows == 5_000_000


@pytest.mark.parametrize("cut", [7, 40, 200, -30, -3])
def test_a_cut_or_garbled_arrow_body_is_a_400(cut: int) -> None:
    body = _ipc(_table([[1.0, 2.0], []], 30), "zstd", False, 7)
    with pytest.raises(RequestError) as caught:
        read_table(body[:cut], max_events=10**6, max_decoded_bytes=1 << 30)
    assert caught.value.status == 400 and caught.value.field == "body"


# ------------------------------------------------------------------------ allow-list

SOURCES = [
    "s3://physics-data/datasets/",
    "root://eos.example.org//eos/cms/store/",
    "https://opendata.example.org/eos/opendata/",
    "http://127.0.0.1:8080/data/",
]


@pytest.mark.parametrize(
    "url",
    [
        "s3://physics-data/datasets/tth/a.root",
        "root://eos.example.org//eos/cms/store/x.root",
        "root://EOS.example.org:1094//eos/cms/store/x.root",
        "root://eos.example.org:1094///eos/cms/store/x.root",
        "https://opendata.example.org/eos/opendata/cms/x.root",
        "https://OPENDATA.example.org:443/eos/opendata/x.root",
        "http://127.0.0.1:8080/data/x.root",
    ],
)
def test_urls_under_a_source_are_read(url: str) -> None:
    assert check_file_url(url, SOURCES) == url


@pytest.mark.parametrize(
    "url",
    [
        "s3://physics-data/models/a.root",
        "s3://physics-data/datasets",  # the prefix itself is not under it
        "s3://physics-data/datasets/../models/a.root",
        "s3://physics-data/datasets/%2e%2e/models/a.root",
        "s3://physics-data/datasets/a.root?versionId=1",
        "s3://physics-data/datasets/a.root#x",
        "s3://other@physics-data/datasets/a.root",
        "s3://physics-data-2/datasets/a.root",
        "s3://physics-data:443/datasets/a.root",
        "root://eos.example.org:1095//eos/cms/store/x.root",
        "root://evil.org//eos/cms/store/x.root",
        "root://eos.example.org.evil.org//eos/cms/store/x.root",
        "root://user@eos.example.org//eos/cms/store/x.root",
        "root://eos.example.org//eos/cms/storeX/x.root",
        "root://eos.example.org//eos/cms/store/x.root\n",
        "s3://physics-data/datasets/a\\..\\b.root",
        "https://physics-data/datasets/a.root",
        "file:///etc/passwd",
        # web URLs: scheme, exact host, port, path prefix; no userinfo, query or //
        "http://opendata.example.org/eos/opendata/x.root",  # not https
        "https://opendata.example.org:8443/eos/opendata/x.root",
        "https://opendata.example.org.evil.org/eos/opendata/x.root",
        "https://evil.org/opendata.example.org/eos/opendata/x.root",
        "https://opendata.example.org@evil.org/eos/opendata/x.root",
        "https://evil.org@opendata.example.org/eos/opendata/x.root",
        "https://opendata.example.org/eos/opendata/../../etc/x.root",
        "https://opendata.example.org/eos/opendata/%2e%2e/x.root",
        "https://opendata.example.org/eos/opendata/x.root?redirect=evil.org",
        "https://opendata.example.org//eos/opendata/x.root",
        "https://opendata.example.org/eos/opendataX/x.root",
        "https://opendata.example.org/eos/opendata",  # the prefix itself
        "http://127.0.0.1:8081/data/x.root",
        "http://localhost:8080/data/x.root",  # hosts match exactly, not by resolution
        "http://127.0.0.1/data/x.root",  # port 80, not 8080
        "http://2130706433:8080/data/x.root",
    ],
)
def test_urls_outside_every_source_are_refused_with_one_answer(url: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_file_url(url, SOURCES)
    assert caught.value.status == 403 and caught.value.field == "url"
    assert "physics-data/datasets" not in caught.value.problem.replace(repr(url[:200]), "")
    with pytest.raises(RequestError, match="it has none"):
        check_file_url("s3://physics-data/datasets/a.root", [])


# ------------------------------------------------------------------------- redaction


def test_redaction_keeps_what_but_not_where() -> None:
    card = {
        "lineage": {
            "files": {"s3://data/datasets/tth/a.root": {"size": 1}, "/home/u/b.root": {}},
            "config": {
                "dataset": {"files": ["root://eos.example.org//eos/x/c.root", "d.root"]},
                "storage_options": {"key": "AKIA…", "secret": "s3cr3t", "anon": False},
                "output": {"location": "s3://models-bucket/"},
                "api_token": "t0k3n",
            },
        },
        "metrics": {"test_auc": 0.8},
        "name": "tth",
    }
    shown = redact(card)
    text = json.dumps(shown)
    for secret in ("data/datasets", "/home/u", "eos.example.org", "AKIA", "s3cr3t", "t0k3n"):
        assert secret not in text
    assert "models-bucket" not in text
    assert set(shown["lineage"]["files"]) == {f"{REDACTED}/a.root", f"{REDACTED}/b.root"}
    assert shown["lineage"]["config"]["dataset"]["files"] == [f"{REDACTED}/c.root", "d.root"]
    assert shown["lineage"]["config"]["storage_options"]["anon"] is False
    assert shown["metrics"] == card["metrics"] and shown["name"] == "tth"
    same_name = redact({"s3://a/x/f.root": 1, "s3://b/y/f.root": 2})
    assert len(same_name) == 2 and sorted(same_name.values()) == [1, 2]


# ------------------------------------------------------------------- streamed answers


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.floats(0, 1, width=32), max_size=300), piece=st.integers(1, 70))
def test_streamed_scores_equal_the_whole_answer(scores: list[float], piece: int) -> None:
    array = np.asarray(scores, dtype=np.float32)
    pieces, kind = stream_scores(array, "tth:1", "application/json", piece=piece)
    answer = json.loads(b"".join(pieces))
    assert kind == "application/json"
    assert answer == {"model": "tth:1", "scores": array.tolist()}
    pieces, _ = stream_scores(array, "tth:1", "application/vnd.apache.arrow.stream", piece=piece)
    table = pa.ipc.open_stream(b"".join(pieces)).read_all()
    assert table.schema.metadata[b"model"] == b"tth:1"
    np.testing.assert_array_equal(table.column("score").to_numpy(), array)
