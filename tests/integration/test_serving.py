"""The BentoML service, for real: ``bentoml serve`` on a free loopback port with a model
trained by the training job (see ``serving_fixtures``).

Predictions over HTTP (JSON records and columns, Arrow, Parquet, a ROOT file upload,
one event per request under concurrency) equal the in-process ``ModelBundle.predict``
to 1e-6; the registry endpoints work and the mutating ones need the token; a promotion
during a load fails no request; every bad input gets a 4xx JSON error naming the field
while the service keeps serving; a bundle with user code is refused in safe mode.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot
from serving_fixtures import JSON_LIMIT, UPLOAD_LIMIT, Service, http_get, wait_until

from mlaas4hep import cli
from mlaas4hep.model.bundle import ModelBundle
from mlaas4hep.serve.client import Client, ServiceError, every_worker_serves

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def reference(service: Service, trained) -> tuple:
    """400 events of the signal file and the scores the bundle gives them in process."""
    bundle = ModelBundle.load(service.registry.path(service.tag))
    with uproot.open(trained.files[0]) as f:
        events = f["Events"].arrays(bundle.vectorizer.branches, entry_stop=400)
    return events, bundle.predict(events)


@pytest.fixture(scope="module")
def http(service: Service):
    with httpx.Client(base_url=service.url, trust_env=False, timeout=60) as client:
        yield client


def bundle_archive(directory: Path) -> bytes:
    """A tar.gz of a bundle directory (without the store's model.yaml: a new version)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(
            directory,
            arcname="bundle",
            filter=lambda member: None if member.name == "bundle/model.yaml" else member,
        )
    return buffer.getvalue()


def test_predictions_over_http_equal_in_process(
    service: Service,
    reference: tuple,
    trained,
    http: httpx.Client,
    publish_to_s3,
    tmp_path: Path,
) -> None:
    events, expected = reference
    client = Client(service.url)
    records = events.to_list()
    for body in (records, {name: events[name].to_list() for name in events.fields}, events):
        got = client.predict(body)
        assert got.model == service.tag
        np.testing.assert_allclose(got.scores, expected, rtol=0, atol=TOLERANCE)

    sink = io.BytesIO()
    pq.write_table(pa.ipc.open_stream(_arrow(events)).read_all(), sink)
    answer = http.post(
        "/predict_arrow",
        content=sink.getvalue(),
        headers={"Content-Type": "application/vnd.apache.parquet", "Accept": "application/json"},
    )
    assert answer.status_code == 200 and answer.headers["X-Model-Tag"] == service.tag
    np.testing.assert_allclose(answer.json()["scores"], expected, rtol=0, atol=TOLERANCE)

    def one(i: int) -> tuple[int, float]:  # single events, concurrently: batched server-side
        response = http.post("/predict", json={"events": records[i : i + 1]})
        assert response.status_code == 200, response.text
        return i, response.json()["scores"][0]

    with ThreadPoolExecutor(16) as pool:
        for i, score in pool.map(one, range(0, 400, 2)):
            assert abs(score - expected[i]) <= TOLERANCE

    whole = client.predict_file(trained.files[0])
    with uproot.open(trained.files[0]) as f:
        assert len(whole) == f["Events"].num_entries
    np.testing.assert_allclose(whole.scores[:400], expected, rtol=0, atol=TOLERANCE)
    remote = client.predict_file(publish_to_s3(trained.files[0], bucket="serving-data"))
    np.testing.assert_array_equal(remote.scores, whole.scores)

    out = tmp_path / "scores.json"
    code = cli.main(["predict", "--url", service.url, str(trained.files[0]), "-o", str(out)])
    assert code == 0
    written = json.loads(out.read_text())
    assert written["model"] == service.tag
    np.testing.assert_allclose(written["scores"][:400], expected, rtol=0, atol=TOLERANCE)


def _arrow(events) -> bytes:
    from mlaas4hep.serve.client import to_arrow_stream

    return to_arrow_stream(events)


def test_health_readiness_and_metrics(service: Service, http: httpx.Client, reference) -> None:
    events, _ = reference
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    for _ in range(4):
        assert http.post("/predict", json={"events": events[:3].to_list()}).status_code == 200
    metrics = http_get(f"{service.url}/metrics").decode()
    assert f'mlaas4hep_model_info{{tag="{service.tag}"}} 1.0' in metrics
    assert "mlaas4hep_batch_events_bucket" in metrics and "mlaas4hep_batch_requests_sum" in metrics
    assert 'mlaas4hep_events_scored_total{endpoint="predict"' in metrics
    assert 'endpoint="/predict"' in metrics and "bentoml_service_request_duration" in metrics
    status = http.get("/status").json()
    assert status["model"]["tag"] == service.tag and status["model"]["mode"] == "onnx"
    assert service.token not in json.dumps(status)


def test_registry_endpoints_need_the_token_to_change_anything(
    service: Service,
    tmp_path: Path,
) -> None:
    client = Client(service.url, token=service.token)
    anonymous, wrong = Client(service.url), Client(service.url, token="x" * 32)
    listed = client.list()
    assert [m["tag"] for m in listed if "production" in m["aliases"]] == [service.tag]
    card = client.card("tth:production")
    assert card["tag"] == service.tag and card["inputs"]["features"][0] == "Jet_pt[0]"
    assert card["metrics"]["test_auc"] > 0.6 and card["lineage"]["run_name"]
    assert "tensorflow" in card["framework_versions"]

    archive = bundle_archive(service.registry.path(service.tag))
    for stranger in (anonymous, wrong):
        with pytest.raises(ServiceError) as caught:
            stranger.upload(archive, name="tth")
        assert caught.value.status == 401 and caught.value.field == "authorization"
    copy = client.upload(archive, name="tth")
    assert copy != service.tag and copy.startswith("tth:")
    with pytest.raises(ServiceError) as caught:
        anonymous.promote(copy, "staging")
    assert caught.value.status == 401
    assert client.promote(copy, "staging") == copy
    assert client.aliases()["tth"] == {"production": service.tag, "staging": copy}
    assert [m["tag"] for m in client.list(alias="staging")] == [copy]
    assert [m["tag"] for m in client.list(metric=["test_auc>=0"])][-1] == service.tag
    with pytest.raises(ServiceError) as caught:
        client.delete(copy)
    assert caught.value.status == 409 and "staging" in str(caught.value)
    spare = client.upload(archive, name="tth")
    with pytest.raises(ServiceError) as caught:
        anonymous.delete(spare)
    assert caught.value.status == 401
    assert client.delete(spare) == spare
    assert spare not in [m["tag"] for m in client.list()]

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(ServiceError) as caught:
        client.upload(evil.getvalue(), name="tth")
    assert caught.value.status == 400 and "unsafe path" in str(caught.value)
    with pytest.raises(ServiceError) as caught:
        client.upload(b"\0" * (UPLOAD_LIMIT + 1), name="tth")
    assert caught.value.status == 413

    assert cli.main(["models", "list", "--url", service.url, "--json"]) == 0
    code = cli.main(
        ["models", "promote", copy, "--alias", "canary", "--url", service.url, "--token",
         service.token]
    )  # fmt: skip
    assert code == 0 and client.aliases()["tth"]["canary"] == copy
    with pytest.raises(ServiceError) as caught:
        anonymous.remove_alias("tth", "canary")
    assert caught.value.status == 401
    assert client.remove_alias("tth", "canary") == copy and "canary" not in client.aliases()["tth"]
    assert cli.main(["models", "delete", copy, "--url", service.url]) == 1  # no token


def test_a_promotion_during_a_load_fails_no_request(
    service: Service,
    reference: tuple,
    http: httpx.Client,
) -> None:
    events, expected = reference
    client = Client(service.url, token=service.token)
    other = client.upload(bundle_archive(service.registry.path(service.tag)), name="tth")
    body = {"events": events[:1].to_list()}
    stop = threading.Event()
    seen: list[str | None] = []  # the model of each answer, in the order they came
    failures: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as own:
            while not stop.is_set():
                try:
                    response = own.post("/predict", json=body)
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                answer = response.json()
                if abs(answer["scores"][0] - expected[0]) > TOLERANCE:
                    failures.append(f"score {answer['scores'][0]} != {expected[0]}")
                seen.append(answer["model"])

    def serving_only(tag: str, since: int) -> bool:
        # The last 40 answers, all after the promotion, from every worker (eight clients
        # spread them): each worker has picked the alias up. Counted, not timed.
        recent = seen[since:][-40:]
        return len(recent) == 40 and all(model == tag for model in recent)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(seen) > 50, 30, "a running load")
        client.promote(other)
        since = len(seen)
        wait_until(lambda: serving_only(other, since), 30, "every worker serving the new version")
        client.promote(service.tag)
        since = len(seen)
        wait_until(lambda: serving_only(service.tag, since), 30, "every worker back on the first")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        service.registry.promote(service.tag)
    assert failures == []
    assert set(seen) == {service.tag, other} and len(seen) > 100


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("POST", "/predict", {"events": [{"Jet_pt": [50.0]}]}, 400, "events[0].Jet_eta"),
        ("POST", "/predict", "string-HT", 400, "events[0].HT"),
        ("POST", "/predict", "ragged-records", 400, "events[1].nJet"),
        ("POST", "/predict", "ragged-columns", 400, "columns.Jet_eta"),
        ("POST", "/predict", {"events": []}, 400, "events"),
        ("POST", "/predict", {"columns": {}}, 400, "columns.Jet_pt"),
        ("POST", "/predict", {"event": []}, 400, "body"),
        ("POST", "/predict", "too-large", 413, "body"),
        ("POST", "/predict_arrow", b"not arrow at all", 400, "body"),
        ("POST", "/predict_file", {"url": "/etc/passwd"}, 400, "url"),
        ("POST", "/predict_file", {"url": "s3://another-bucket/ttH.root"}, 403, "url"),
        ("POST", "/predict_file", b"not a ROOT file", 422, "body"),
        ("GET", "/models/tth:doesnotexist", None, 404, "tag"),
        ("GET", "/models/nothing", None, 404, "model"),
        ("POST", "/models/tth:doesnotexist/promote", None, 404, "tag"),
    ],
)
def test_bad_input_gets_a_4xx_json_error_and_the_service_keeps_serving(
    service: Service,
    http: httpx.Client,
    reference: tuple,
    method: str,
    path: str,
    body: object,
    status: int,
    field: str | None,
) -> None:
    events, _ = reference
    good = events[:2].to_list()
    headers = {"Authorization": f"Bearer {service.token}"}
    if body == "string-HT":
        body = {"events": [{**good[0], "HT": "high"}]}
    elif body == "ragged-records":
        body = {"events": [good[0], {k: v for k, v in good[1].items() if k != "nJet"}]}
    elif body == "ragged-columns":
        columns = {name: events[name][:2].to_list() for name in events.fields}
        columns["Jet_eta"] = columns["Jet_eta"][:1]
        body = {"columns": columns}
    elif body == "too-large":
        body = {"events": good * (2 * JSON_LIMIT // len(json.dumps(good)) + 1)}
    if isinstance(body, bytes):
        response = http.request(method, path, content=body, headers=headers)
    else:
        response = http.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] and answer["field"] == field, answer
    ok = http.post("/predict", json={"events": good})
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 2


def test_cards_and_status_read_without_the_token_say_nowhere_where_data_lives(
    service: Service,
    http: httpx.Client,
    trained,
) -> None:
    where = str(trained.files[0].parent)
    headers = {"Authorization": f"Bearer {service.token}"}
    for path in (f"/models/{service.tag}", "/models", "/status"):
        open_read = http.get(path)
        assert open_read.status_code == 200, open_read.text
        assert where not in open_read.text and "s3://" not in open_read.text, path
        assert http.get(path, headers=headers).status_code == 200
    full = http.get(f"/models/{service.tag}", headers=headers).json()
    assert where in json.dumps(full["lineage"])
    redacted = http.get(f"/models/{service.tag}").json()
    assert redacted["inputs"] == full["inputs"] and redacted["metrics"] == full["metrics"]
    files = json.dumps(redacted["lineage"]["files"])
    assert "<redacted>/ttH_signal.root" in files  # which files, not where


def test_user_code_is_never_run_refused_without_a_graph_and_served_from_one(
    service: Service,
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    """A bundle whose model is user code: without ``model.onnx`` safe mode refuses it and
    the service keeps serving; with its graph it is served, and its code never runs."""
    marker = tmp_path / "user-code-ran"
    copy = tmp_path / "bundle"
    shutil.copytree(service.registry.path(service.tag), copy)
    (copy / "model.yaml").unlink(missing_ok=True)
    manifest = json.loads((copy / "bundle.json").read_text())
    (copy / "model.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "def build_model(n_features):\n    raise RuntimeError('never')\n"
    )
    graph = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").unlink()
    without = {k: v for k, v in manifest.items() if k != "onnx"}
    (copy / "bundle.json").write_text(json.dumps({**without, "model": "model.py"}))
    client = Client(service.url, token=service.token)
    unsafe = client.upload(bundle_archive(copy), name="tth")
    assert client.card(unsafe)["model"]["architecture"].startswith("user code")
    events = [{"nJet": 1, "Jet_pt": [40.0], "Jet_eta": [0.3], "Jet_btagDeepB": [0.5],
               "MET_pt": 20.0, "HT": 40.0}]  # fmt: skip
    expected = http.post("/predict", json={"events": events}).json()["scores"]
    try:
        client.promote(unsafe)
        wait_until(
            lambda: "trust_user_code" in (http.get("/status").json()["error"] or ""),
            20,
            "the refusal",
        )
        for _ in range(10):  # both workers still serve the safe version
            answer = http.post("/predict", json={"events": [{}]})
            assert answer.status_code == 400 and "missing branch" in answer.json()["problem"]
        assert http.get("/status").json()["model"]["tag"] == service.tag

        (copy / "model.onnx").write_bytes(graph)
        (copy / "bundle.json").write_text(json.dumps({**manifest, "model": "model.py"}))
        served = client.upload(bundle_archive(copy), name="tth")
        client.promote(served)
        wait_until(every_worker_serves(client, served), 20, "every worker serving it")
        for _ in range(6):  # whichever worker answers
            assert http.post("/predict", json={"events": events}).json()["model"] == served
        answer = http.post("/predict", json={"events": events}).json()
        np.testing.assert_allclose(answer["scores"], expected, rtol=0, atol=1e-6)
        assert http.get("/status").json()["model"]["mode"] == "onnx"
    finally:
        service.registry.promote(service.tag)
    assert not marker.exists()
