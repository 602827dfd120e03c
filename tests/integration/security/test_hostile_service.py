"""The service under attack: hostile bodies, files, archives and callers against the real
``bentoml serve``.

One service for the module, configured as a deployment would be: the token required for
every read (``MLAAS4HEP_SERVE_PREDICT_AUTH=1``), ``/predict_file`` URLs limited to one
bucket, the limits of the deployment's default task (2 GiB, 2 workers) with a smaller
``decoded_bytes`` and ``list_items``. Every case asserts the status code and the
``field`` of the JSON error, then that the service still answers with the same worker
processes; bulk cases also that the workers' memory stayed bounded (the refusal came
before the work).
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import awkward as ak
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
import yaml
from rootfiles import corrupt_entry_offsets, write_uncompressed
from serving_fixtures import Service, Trained, ready_service, wait_until

from mlaas4hep.local.bento import BentoServer
from mlaas4hep.serve.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
MiB = 1 << 20
RSS_BOUND = 150 * MiB  # what a refused bulk request may add to the workers' memory
DECODED_LIMIT = 64 * MiB
LIST_LIMIT = 1000


@pytest.fixture(scope="module")
def hostile(trained: Trained, moto_server, tmp_path_factory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("hostile-bentoml")
    shutil.copytree(trained.home, home, dirs_exist_ok=True)
    registry = Registry(home)
    registry.promote(trained.tag)
    token = secrets.token_hex(16)
    config = tmp_path_factory.mktemp("hostile-config") / "serve.yaml"
    settings = {
        "poll_seconds": 0.2,
        "file_sources": ["s3://serving-data/"],
        "limits": {"decoded_bytes": DECODED_LIMIT, "list_items": LIST_LIMIT},
    }
    config.write_text(yaml.safe_dump(settings))
    env = {
        "BENTOML_HOME": str(home),
        "MLAAS4HEP_SERVE_CONFIG": str(config),
        "MLAAS4HEP_SERVE_MODEL": "tth",
        "MLAAS4HEP_SERVE_TOKEN": token,
        "MLAAS4HEP_SERVE_PREDICT_AUTH": "1",
        "MLAAS4HEP_SERVE_WORKERS": "2",
        "MLAAS4HEP_SERVE_MEMORY_MIB": "2048",  # the deployment's default task
        **moto_server.env(),
    }
    with ready_service(env, timeout=60) as server:
        yield Service(server, registry, token, trained.tag)


@pytest.fixture(scope="module")
def http(hostile: Service) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {hostile.token}"}
    with httpx.Client(base_url=hostile.url, trust_env=False, timeout=120, headers=headers) as c:
        yield c


@pytest.fixture(scope="module")
def good(hostile: Service, trained: Trained) -> list[dict]:
    branches = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "nJet", "MET_pt", "HT"]
    with uproot.open(trained.files[0]) as file:
        return file["Events"].arrays(branches, entry_stop=3).to_list()


def rss(server: BentoServer) -> int:
    """Resident memory of the service's processes, in bytes."""
    total = 0
    for pid in server.processes():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def refused(response: httpx.Response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text[:2000]
    answer = response.json()
    assert answer["error"] and answer["field"] == field, answer
    return answer


def still_serving(hostile: Service, http: httpx.Client, good: list[dict], workers: list[int]):
    assert http.get("/healthz").status_code == 200
    ok = http.post("/predict", json={"events": good})
    assert ok.status_code == 200 and len(ok.json()["scores"]) == len(good), ok.text
    assert hostile.server.processes() == workers, "a worker died or was restarted"


# ------------------------------------------------------------------------------- bodies


def arrow_stream(table: pa.Table, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def model_table(good: list[dict], jet_pt: pa.Array | None = None) -> pa.Table:
    columns = {name: [event[name] for event in good] for name in good[0]}
    table = pa.table(columns)
    if jet_pt is not None:
        table = table.set_column(table.schema.get_field_index("Jet_pt"), "Jet_pt", jet_pt)
    return table


def bad_list(offsets: list[int], content: int) -> pa.Array:
    """A list<float32> array with the given offsets over ``content`` values, unchecked."""
    values = pa.array(np.arange(content, dtype=np.float32))
    buffers = [None, pa.py_buffer(np.asarray(offsets, dtype=np.int32))]
    return pa.Array.from_buffers(
        pa.list_(pa.float32()), len(offsets) - 1, buffers, children=[values]
    )


def huge_table(rows: int) -> pa.Table:
    """``rows`` events of the model's flat branches as int8 zeros (one shared array)."""
    zeros = pa.array(np.zeros(rows, dtype=np.int8))
    return pa.table({name: zeros for name in ("nJet", "MET_pt", "HT", "a", "b", "c", "d", "e")})


def refused_before_the_work(
    hostile: Service, http: httpx.Client, good: list[dict], body: bytes, problem: str
) -> None:
    """A bulk body refused with a 413 naming ``problem``, the workers' memory bounded."""
    workers, before = hostile.server.processes(), rss(hostile.server)
    answer = refused(http.post("/predict_arrow", content=body), 413, "body")
    assert problem in answer["problem"]
    assert rss(hostile.server) - before < RSS_BOUND
    still_serving(hostile, http, good, workers)


@pytest.mark.parametrize(
    "case",
    ["offsets-past-content", "offsets-decreasing", "list-too-long"],
)
def test_arrow_lists_with_hostile_offsets_or_lengths_are_refused(
    hostile: Service, http: httpx.Client, good: list[dict], case: str
) -> None:
    workers = hostile.server.processes()
    if case == "offsets-past-content":
        table, status = model_table(good, bad_list([0, 2**29, 2**29 + 8, 2], 8)), 400
    elif case == "offsets-decreasing":
        table, status = model_table(good, bad_list([0, 5, 3, 8], 8)), 400
    else:
        table, status = model_table(good, bad_list([0, 2, 4, 4 + LIST_LIMIT + 1], 5000)), 413
    for body in (arrow_stream(table), arrow_stream(table, "zstd")):
        refused(http.post("/predict_arrow", content=body), status, "Jet_pt")
    still_serving(hostile, http, good, workers)


# Parquet is checked from its footer, Arrow IPC from its record-batch headers: one case of
# each (the Arrow codecs share that path; test_serve_limits covers lz4 in process).
@pytest.mark.parametrize("encoding", ["parquet", "arrow-zstd"])
def test_a_small_compressed_body_of_50_million_events_is_refused_before_decoding(
    hostile: Service, http: httpx.Client, good: list[dict], encoding: str
) -> None:
    table = huge_table(50_000_000)  # 400 MB once decoded, a few hundred KB on the wire
    body = parquet(table) if encoding == "parquet" else arrow_stream(table, encoding[6:])
    del table
    assert len(body) < 4 * MiB
    refused_before_the_work(hostile, http, good, body, "50000000 events exceed the limit")


def test_a_body_that_decodes_beyond_the_limit_is_refused(
    hostile: Service, http: httpx.Client, good: list[dict]
) -> None:
    rows = 200_000  # within bulk_events; 8 columns of float64 = 12.8 MB ... ×10 lists
    content = pa.array(np.zeros(rows * 50, dtype=np.float64))
    lists = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * 50), content)
    table = pa.table({"Jet_pt": lists, "Jet_eta": lists, "nJet": pa.array(np.zeros(rows))})
    body = arrow_stream(table, "zstd")
    refused_before_the_work(hostile, http, good, body, "limits.decoded_bytes")


def test_hostile_json_bodies_get_a_400_naming_the_field(
    hostile: Service, http: httpx.Client, good: list[dict]
) -> None:
    workers = hostile.server.processes()
    headers = {"Content-Type": "application/json"}
    cases = [
        ("[" * 100_000, "body"),
        ('{"events": ' + "[" * 100_000 + "]" * 100_000 + "}", "body"),
        ('{"events": [{"nJet": ' + "9" * 5000 + "}]}", "body"),
        ('{"events": [' + json.dumps(good[0])[:-1] + ', "nJet": Infinity}]}', "events[0].nJet"),
        ('{"events": [' + json.dumps(good[0])[:-1] + ', "nJet": NaN}]}', "events[0].nJet"),
        ('{"events": [' + json.dumps(good[0])[:-1] + ', "nJet": -1e300}]}', "events[0].nJet"),
        ('{"events": [' + json.dumps(good[0])[:-1] + ', "nJet": 1e30}]}', "events[0].nJet"),
        ('{"events": [' + json.dumps(good[0])[:-1] + ', "nJet": 2.5}]}', "events[0].nJet"),
        ('{"columns": {"nJet": "x"}}', "columns.Jet_pt"),
        ('{"events": [' + json.dumps(good[0]) + "]", "body"),  # truncated
        (b"\xff\xfe not utf-8", "body"),
    ]
    for text, field in cases:
        data = text if isinstance(text, bytes) else text.encode()
        response = http.post("/predict", content=data, headers=headers)
        assert response.status_code == 400, (text[:80], response.status_code, response.text[:500])
        answer = response.json()
        assert answer.get("problem") and answer.get("field") == field, (text[:80], answer)
    still_serving(hostile, http, good, workers)


# -------------------------------------------------------------------------------- files


def test_hostile_root_files_get_a_422_naming_the_file(
    hostile: Service, http: httpx.Client, good: list[dict], trained: Trained, tmp_path: Path
) -> None:
    workers = hostile.server.processes()
    whole = trained.files[0].read_bytes()
    corrupt = bytearray(whole)
    with uproot.open(trained.files[0]) as file:  # the first basket of a branch the model reads
        branch = file["Events"]["Jet_pt"]
        start = int(branch.member("fBasketSeek")[0]) + branch.basket(0).member("fKeylen")
    corrupt[start + 16 : start + 272] = bytes(256)  # its compressed bytes: zeroed
    rng = np.random.default_rng(3)
    n = 200
    counts = np.full(n, 3)
    events = {
        "Jet": ak.zip(
            {
                name: ak.unflatten(rng.random(3 * n).astype(np.float32), counts)
                for name in ("pt", "eta", "btagDeepB")
            }
        ),
        "MET_pt": rng.random(n).astype(np.float32),
        "HT": rng.random(n).astype(np.float32),
    }
    crafted = {}
    for how, value in (("past", 10**6), ("decreasing", 0)):
        path = write_uncompressed(tmp_path / f"{how}.root", events)
        crafted[how] = corrupt_entry_offsets(path, "Jet_pt", 10, value).read_bytes()
    bodies = {
        "truncated": whole[: len(whole) * 6 // 10],
        "header only": whole[:2000],
        "zeroed baskets": bytes(corrupt),
        **crafted,
    }
    for what, body in bodies.items():
        response = http.post("/predict_file", content=body)
        assert response.status_code == 422, (what, response.text[:300])
        refused(response, 422, "body")
    still_serving(hostile, http, good, workers)


def test_predict_file_reads_only_its_configured_sources_and_tells_nothing_else(
    hostile: Service, http: httpx.Client, good: list[dict], trained: Trained, publish_to_s3
) -> None:
    workers = hostile.server.processes()
    inside = publish_to_s3(trained.files[0], bucket="serving-data")
    assert http.post("/predict_file", json={"url": inside}).status_code == 200
    existing = publish_to_s3(trained.files[0], bucket="private-data", key="secret.root")
    outside = [
        existing,
        "s3://private-data/missing.root",
        "s3://serving-data/../private-data/secret.root",
        "s3://serving-data@private-data/secret.root",
        "root://evil.example.org//eos/x.root",
        "root://127.0.0.1:1094//etc/passwd",
    ]
    answers = []
    for url in outside:
        for response in (
            http.post("/predict_file", json={"url": url}),
            http.post("/predict_file", params={"url": url}),
        ):
            answers.append(refused(response, 403, "url")["problem"].replace(repr(url[:200]), "U"))
    assert len(set(answers)) == 1, set(answers)  # the same words, existing or not
    still_serving(hostile, http, good, workers)


# ----------------------------------------------------------------------------- archives


def test_hostile_model_uploads_are_refused_and_a_broken_version_never_stops_serving(
    hostile: Service, http: httpx.Client, good: list[dict], tmp_path: Path
) -> None:
    workers = hostile.server.processes()
    bundle = tmp_path / "bundle"
    shutil.copytree(hostile.registry.path(hostile.tag), bundle)
    (bundle / "model.yaml").unlink(missing_ok=True)

    def archive(folder: Path) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(folder, arcname="bundle")
        return buffer.getvalue()

    whole = archive(bundle)
    refused(http.post("/models?name=tth", content=whole[: len(whole) // 2]), 400, "body")
    (bundle / "reference.npz").write_bytes(b"not a zip at all")
    created = http.post("/models?name=tth", content=archive(bundle))
    if created.status_code == 201:  # accepted as files; it must not load, nor stop serving
        broken = created.json()["tag"]
        assert http.post(f"/models/{broken}/promote").status_code == 200
        wait_until(
            lambda: "reference.npz" in str(http.get("/status").json()["error"]),
            30,
            "the load failure in /status",
        )
        assert http.post("/predict", json={"events": good}).json()["model"] == hostile.tag
        assert http.post(f"/models/{hostile.tag}/promote").status_code == 200
    else:
        refused(created, 400, created.json()["field"])
    still_serving(hostile, http, good, workers)


# --------------------------------------------------------------------------------- auth


def test_every_route_but_health_needs_the_token(hostile: Service, good: list[dict]) -> None:
    tag = hostile.tag
    routes = [
        ("POST", "/predict"),
        ("POST", "/predict_arrow"),
        ("POST", "/predict_file"),
        ("POST", "/predict_file?url=s3://serving-data/ttH_signal.root"),
        ("GET", "/status"),
        ("GET", "/models"),
        ("GET", f"/models/{tag}"),
        ("GET", "/aliases"),
        ("GET", "/metrics"),
        ("POST", "/models?name=tth"),
        ("DELETE", f"/models/{tag}"),
        ("POST", f"/models/{tag}/promote"),
        ("DELETE", "/aliases/tth/production"),
    ]
    wrong = [
        {},
        {"Authorization": "Bearer " + "0" * len(hostile.token)},  # equal length
        {"Authorization": "Bearer short"},  # different length
        {"Authorization": "Bearer " + hostile.token + "x"},
        {"Authorization": "Basic " + hostile.token},
        {"Authorization": hostile.token},
    ]
    with httpx.Client(base_url=hostile.url, trust_env=False, timeout=30) as client:
        for method, path in routes:
            for headers in wrong:
                response = client.request(method, path, headers=headers, json={"events": good})
                refused(response, 401, "authorization")
        for path in ("/healthz", "/livez", "/readyz"):
            assert client.get(path).status_code == 200, path
        right = {"Authorization": f"Bearer {hostile.token}"}
        assert client.get("/status", headers=right).status_code == 200
        metrics = client.get("/metrics", headers=right)
        assert metrics.status_code == 200 and "mlaas4hep_model_info" in metrics.text
        assert hostile.registry.resolve("tth") == tag  # nothing was changed
