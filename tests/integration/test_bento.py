"""The bento is real: ``bentoml build`` packs the service, and ``bentoml serve <bento>``
serves a model the training job produced from the bento's own copy of the code.

(No container runtime on the test machines: ``bentoml containerize`` stays a documented
step; what the image would install is the bento's ``requirements.txt``, checked here
against the project's own dependency ranges.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
import uproot
import yaml
from serving_fixtures import INCLUDE, PROJECT_ROOT, Trained, ready_service

from mlaas4hep.model.bundle import ModelBundle
from mlaas4hep.serve.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
#: What a serving image needs beyond the core: the service, S3, PyTorch weights, XRootD.
SERVING_EXTRAS = ("serve", "s3", "torch", "xrootd")


def declared() -> tuple[set[str], set[str]]:
    """(the project's requirements for serving, the bentofile's packages)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in SERVING_EXTRAS:
        wanted |= set(project["optional-dependencies"][extra])
    bentofile = yaml.safe_load((PROJECT_ROOT / "serving" / "bentofile.yaml").read_text())
    return wanted, set(bentofile["python"]["packages"])


def test_the_bentofile_declares_what_serving_needs_in_the_projects_own_ranges() -> None:
    wanted, packages = declared()
    assert wanted <= packages, f"missing from serving/bentofile.yaml: {sorted(wanted - packages)}"


def test_the_built_bento_serves_a_trained_model(trained: Trained, tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    shutil.copytree(trained.home, home)
    Registry(home).promote(trained.tag)
    env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    built = subprocess.run(
        [str(bentoml), "build", "-f", "serving/bentofile.yaml", ".", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = home / "bentos" / Path(*tag.split(":"))
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    for package in ("torch", "xrootd", "s3fs", "bentoml", "uproot"):
        assert package in requirements, package
    assert (bento / "src" / "mlaas4hep" / "serve" / "server.py").exists()

    empty = tmp_path / "elsewhere"  # not the project: the bento's own copy of the code
    empty.mkdir()
    serve_env = {**env, "MLAAS4HEP_SERVE_MODEL": "tth", "MLAAS4HEP_SERVE_WORKERS": "1"}
    with ready_service(serve_env, target=tag, working_dir=empty) as server:
        with uproot.open(trained.files[0]) as file:
            events = file["Events"].arrays(INCLUDE, entry_stop=50)
        expected = ModelBundle.load(Registry(home).path(trained.tag)).predict(events)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
            answer = client.post("/predict", json={"events": events.to_list()})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == trained.tag
        np.testing.assert_allclose(answer.json()["scores"], expected, rtol=0, atol=1e-6)
