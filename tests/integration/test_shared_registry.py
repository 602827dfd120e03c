"""Two ``bentoml serve`` replicas, each with its own local store, on one registry in a
(moto) models bucket: what one replica is told, both serve.

The replicas start with empty stores and serve ``production`` from the bucket alone;
under a load of single-event requests to both, a version uploaded and promoted through
replica 1 is served by replica 2 within its poll period, and no request fails;
promotions sent concurrently through both replicas all land in the alias history.
"""

from __future__ import annotations

import io
import secrets
import tarfile
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uproot
import yaml
from serving_fixtures import INCLUDE, Trained, wait_until

from mlaas4hep.local.bento import BentoServer
from mlaas4hep.serve.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
POLL_SECONDS = 0.3


class Replicas:
    def __init__(self, servers: list[BentoServer], token: str, url: str, tag: str) -> None:
        self.servers, self.token, self.url, self.tag = servers, token, url, tag

    def client(self, i: int) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(
            base_url=self.servers[i].url, trust_env=False, timeout=60, headers=headers
        )


@pytest.fixture(scope="module")
def replicas(trained: Trained, moto_server, tmp_path_factory) -> Iterator[Replicas]:
    bucket = f"registry-{uuid.uuid4().hex[:8]}"
    moto_server.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/shared"
    seed = Registry(tmp_path_factory.mktemp("seed-store"), bucket=url)
    tag = seed.add(Registry(trained.home).path(trained.tag), "tth")
    seed.promote(tag, reason={"by": "test fixture"})
    token = secrets.token_hex(16)
    config = tmp_path_factory.mktemp("replica-config") / "serve.yaml"
    config.write_text(yaml.safe_dump({"poll_seconds": POLL_SECONDS}))
    servers = []
    try:
        for i in range(2):
            env = {
                "BENTOML_HOME": str(tmp_path_factory.mktemp(f"replica-{i}")),
                "MLAAS4HEP_SERVE_CONFIG": str(config),
                "MLAAS4HEP_SERVE_MODEL": "tth",
                "MLAAS4HEP_SERVE_TOKEN": token,
                "MLAAS4HEP_SERVE_WORKERS": "1",
                "MLAAS4HEP_MODELS_BUCKET": url,
                **moto_server.env(),
            }
            servers.append(BentoServer(env=env).start())
        for server in servers:
            wait_until(lambda s=server: s.get_status("/readyz") == 200, 90, "a replica's /readyz")
        yield Replicas(servers, token, url, tag)
    finally:
        for server in servers:
            server.stop()


def archive_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(
            directory,
            arcname="bundle",
            filter=lambda m: None if m.name.endswith("model.yaml") else m,
        )
    return buffer.getvalue()


def test_what_one_replica_is_told_both_serve_without_a_failed_request(
    replicas: Replicas, trained: Trained
) -> None:
    with uproot.open(trained.files[0]) as file:
        events = file["Events"].arrays(INCLUDE, entry_stop=1).to_list()
    clients = [replicas.client(0), replicas.client(1)]
    for client in clients:  # both serve production from the bucket alone
        assert client.post("/predict", json={"events": events}).json()["model"] == replicas.tag
    stop = threading.Event()
    seen: list[list[str]] = [[], []]
    failures: list[str] = []

    def load(i: int) -> None:
        with replicas.client(i) as client:
            while not stop.is_set():
                response = client.post("/predict", json={"events": events})
                if response.status_code != 200:
                    failures.append(f"replica {i}: {response.status_code} {response.text[:200]}")
                else:
                    seen[i].append(response.json()["model"])

    threads = [threading.Thread(target=load, args=(i,)) for i in (0, 1, 0, 1)]
    for thread in threads:
        thread.start()
    try:
        bundle = Registry(trained.home).path(trained.tag)
        created = clients[0].post("/models?name=tth", content=archive_of(bundle))
        assert created.status_code == 201, created.text
        new = created.json()["tag"]
        promoted = clients[0].post(f"/models/{new}/promote")
        assert promoted.status_code == 200, promoted.text

        def both_serve_new() -> bool:
            return all(s and s[-1] == new for s in seen)

        wait_until(both_serve_new, 30, "both replicas serving the promoted version")
        card = clients[1].get(f"/models/{new}")  # replica 2 knows the version too
        assert card.status_code == 200 and card.json()["aliases"] == ["production"]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:5]
    assert all(replicas.tag in s and s[-1] == new for s in seen)

    # concurrent promotions through both replicas: every one in the history, in order
    tags = [new, replicas.tag] * 5

    def promote(i: int) -> int:
        with replicas.client(i % 2) as client:
            return client.post(f"/models/{tags[i]}/promote", json={"alias": "staging"}).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(promote, range(len(tags)))) == {200}
    shared = Registry(trained.home.parent / f"reader-{uuid.uuid4().hex[:6]}", bucket=replicas.url)
    history = [h for h in shared.bucket.read_aliases()["history"] if h["alias"] == "staging"]
    assert len(history) == len(tags)
    assert shared.resolve("tth:staging") == history[-1]["tag"]
    for client in clients:
        client.close()


def test_a_retraining_promotion_switches_both_replicas_and_a_keep_neither(
    replicas: Replicas, trained: Trained, tmp_path: Path, monkeypatch
) -> None:
    from mlaas4hep.pipeline.retraining import retrain
    from mlaas4hep.spec.compute import compute_file_spec
    from mlaas4hep.spec.documents import DatasetSpec

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "job-store"))
    spec = DatasetSpec([compute_file_spec(str(f)) for f in trained.files])
    spec_path = tmp_path / "dataset.json"
    spec_path.write_text(spec.to_json())
    models = tmp_path / "models"
    models.mkdir()
    recipe = {
        "dataset": {"files": ["replaced"], "labels": {"ttH_signal.root": 1, "*": 0},
                    "include": INCLUDE},
        "vectorizer": {"padding": 6},
        "training": {"epochs": 1, "chunk_size": 3000, "batch_size": 128},
    }  # fmt: skip
    (models / "train.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    bundle = Registry(trained.home).path(trained.tag)

    def train(config):  # the job's registration: a new version of the trained bundle
        return {"tag": Registry(bucket=replicas.url).add(bundle, "tth"), "val_auc": 0.5}

    with uproot.open(trained.files[0]) as file:
        events = file["Events"].arrays(INCLUDE, entry_stop=1).to_list()

    def served() -> set[str]:
        tags = set()
        for i in (0, 1):
            with replicas.client(i) as client:
                tags.add(client.post("/predict", json={"events": events}).json()["model"])
        return tags

    kwargs = {"train": train, "registry_url": replicas.url, "log": lambda line: None}
    record = retrain("tth", str(spec_path), str(models), **kwargs)
    promoted = record["decision"]
    assert promoted["promote"] and promoted["events"] > 0, promoted
    wait_until(lambda: served() == {promoted["candidate"]}, 30, "both replicas switching")

    kept = retrain("tth", str(spec_path), str(models), margin=-1.0, **kwargs)["decision"]
    assert not kept["promote"] and kept["current"] == promoted["candidate"], kept
    assert served() == {promoted["candidate"]}  # a keep decision switches neither
    history = Registry(tmp_path / "reader", bucket=replicas.url).card(promoted["candidate"])
    (entry,) = [h for h in history["promotions"] if h["alias"] == "production"]
    assert "retraining of tth" in entry["by"] and entry["decision"]["events"] == promoted["events"]
