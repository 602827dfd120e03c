"""Fixtures of the serving tests: a model trained by the real training job, its store,
and ``bentoml serve`` on a free loopback port.

* ``trained``: the training job's loop in one process (``mlaas4hep.training.local``:
  the Ray job's config, checks, loop and bundle; the job on Ray has tests of its own)
  on a small sample of the ttH-like data, once per session; it registers its bundle in
  a fresh BentoML store (``BENTOML_HOME``) as the Ray job does.
* ``service``: the service on that store, two workers, serving ``tth`` (its
  ``production`` alias) with a token and small limits, its ``s3://`` pointed at the
  session's moto server, stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlaas4hep.local.bento import BentoServer
from mlaas4hep.local.samples import make_tth_dataset
from mlaas4hep.serve.registry import Registry

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ["Jet_pt", "Jet_eta", "Jet_btagDeepB", "nJet", "MET_pt", "HT"]
JSON_LIMIT = 256 * 1024
UPLOAD_LIMIT = 8 * 1024 * 1024


@dataclass
class Trained:
    home: Path  # BENTOML_HOME of the store the job registered into
    tag: str  # the version the job registered
    files: list[Path]  # the sample ROOT files


@dataclass
class Service:
    server: BentoServer
    registry: Registry
    token: str
    tag: str

    @property
    def url(self) -> str:
        return self.server.url


def train_locally(home: Path, files: list, out: Path, **options: object) -> str:
    """``python -m mlaas4hep.training.local`` on ``files`` (the job's loop, checks and
    bundle in one process), registering into the BentoML store ``home``; the tag.

    ``options`` are top-level config entries (``framework``, ``training``, …)."""
    from mlaas4hep.training.result import job_result

    config = {
        "dataset": {
            "files": [str(f) for f in files],
            "labels": {"ttH_signal.root": 1, "*": 0},
            "include": INCLUDE,
        },
        "vectorizer": {"padding": 6},
        "output": {"location": str(out), "name": "tth"},
        **options,
    }
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "train.yaml"
    recipe.write_text(yaml.safe_dump(config))
    job = subprocess.run(
        [sys.executable, "-m", "mlaas4hep.training.local", "--config", str(recipe)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = job_result(job.stdout)
    assert job.returncode == 0 and result and result["tag"], job.stderr[-3000:]
    return result["tag"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    data = tmp_path_factory.mktemp("serving-data")
    files = [f.path for f in make_tth_dataset(data, n_events=9000, seed=17, block_size=3000)]
    home = tmp_path_factory.mktemp("serving-bentoml")
    training = {"epochs": 2, "chunk_size": 3000, "batch_size": 128}
    tag = train_locally(home, [data], tmp_path_factory.mktemp("serving-train"), training=training)
    return Trained(home=home, tag=tag, files=files)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def service(
    trained: Trained, moto_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    registry = Registry(trained.home)
    registry.promote(trained.tag)
    token = secrets.token_hex(16)
    config = tmp_path_factory.mktemp("serving-config") / "serve.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "poll_seconds": 0.2,
                "file_sources": ["s3://serving-data/"],
                "limits": {
                    "json_bytes": JSON_LIMIT,
                    "model_bytes": UPLOAD_LIMIT,
                    "batch_events": 2048,
                },
            }
        )
    )
    env = {
        "BENTOML_HOME": str(trained.home),
        "MLAAS4HEP_SERVE_CONFIG": str(config),
        "MLAAS4HEP_SERVE_MODEL": "tth",
        "MLAAS4HEP_SERVE_TOKEN": token,
        "MLAAS4HEP_SERVE_WORKERS": "2",
        **moto_server.env(),  # /predict_file reads s3:// URLs from the moto server
    }
    with ready_service(env, timeout=60) as server:
        yield Service(server, registry, token, trained.tag)


@contextlib.contextmanager
def ready_service(env: dict[str, str], timeout: float = 90, **options) -> Iterator[BentoServer]:
    """``bentoml serve`` with ``env``, once its ``/readyz`` answers 200; stopped on exit."""
    server = BentoServer(env=env, **options).start()
    try:
        wait_until(lambda: server.get_status("/readyz") == 200, timeout, "the service's /readyz")
        yield server
    finally:
        server.stop()


def http_get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        return response.read()
