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
from serving_fixtures import (
    INCLUDE,
    PROJECT_ROOT,
    Trained,
    ready_service,
    train_locally,
    wait_until,
)

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


def pinned_closure(requirements: list[str]) -> list[str]:
    """``name==version`` of the requirements and everything they need in turn, as
    installed here: what the bento's own requirements resolve to, without a resolver."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), tuple(sorted(requirement.extras)))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(requirement.name)
        assert requirement.specifier.contains(dist.version, prereleases=True), (
            f"{requirement} is not what the project installs ({dist.version})"
        )
        pins[key[0]] = dist.version
        environments = [{"extra": e} for e in sorted(requirement.extras) or [""]]
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate(e) for e in environments):
                todo.append(needed)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def fresh_virtualenv(where: Path, requirements: list[str]) -> Path:
    """A new virtualenv holding the requirements' closure and nothing else; its python.

    Each distribution of the closure is installed from this environment's own files, as
    its RECORD lists them (the very versions the closure pins), with its console scripts
    written as pip writes them, instead of downloaded again: what the new environment
    holds is exactly what the bento's requirements name, and a package they miss is
    missing there."""
    from importlib import metadata

    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
    for pin in pinned_closure(requirements):
        dist = metadata.distribution(pin.split("==")[0])
        root = Path(dist.locate_file("")).resolve()
        for file in dist.files or []:
            source = Path(dist.locate_file(file)).resolve()
            if not source.is_relative_to(root) or "__pycache__" in file.parts:
                continue  # scripts (written below) and byte code
            if source.is_file():
                target = site / source.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        for entry in dist.entry_points.select(group="console_scripts"):
            script = where / "bin" / entry.name
            attr = entry.attr.split(".")[0]
            script.write_text(
                f"#!{python}\nimport sys\nfrom {entry.module} import {attr}\n"
                f"sys.exit({entry.attr}())\n"
            )
            script.chmod(0o755)
    return python


def test_the_built_bento_serves_keras_and_torch_models_from_its_own_requirements(
    trained: Trained, tmp_path: Path
) -> None:
    """``bentoml build``, then ``bentoml serve <bento>`` from a new virtualenv that holds
    only what the bento's requirements.txt names (and what those need), in an empty
    directory: a Keras-trained and a torch-trained version are scored as the project
    scores them."""
    home = tmp_path / "bentoml"
    shutil.copytree(trained.home, home)
    training = {"epochs": 1, "chunk_size": 3000, "batch_size": 256}
    torch_tag = train_locally(
        home, trained.files, tmp_path / "torch-run", framework="torch", training=training
    )
    registry = Registry(home)
    registry.promote(trained.tag)
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
    lines = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip()[:1] not in ("", "#", "-")]
    for package in ("torch", "xrootd", "s3fs", "bentoml", "uproot"):
        assert any(r.startswith(package) for r in requirements), package
    assert (bento / "src" / "mlaas4hep" / "serve" / "server.py").exists()
    python = fresh_virtualenv(tmp_path / "venv", requirements)
    alone = subprocess.run(
        [str(python), "-c", "import mlaas4hep"], cwd=tmp_path, capture_output=True
    )
    assert alone.returncode != 0  # the project is not installed there: the bento brings it

    empty = tmp_path / "elsewhere"  # not the project: the bento's own copy of the code
    empty.mkdir()
    serve_env = {**env, "MLAAS4HEP_SERVE_MODEL": "tth", "MLAAS4HEP_SERVE_WORKERS": "1"}
    with uproot.open(trained.files[0]) as file:
        events = file["Events"].arrays(INCLUDE, entry_stop=50)
    options = {"target": tag, "working_dir": empty, "python": python}
    with (
        ready_service(serve_env, **options) as server,
        httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client,
    ):
        one = {"events": events[:1].to_list()}
        for version in (trained.tag, torch_tag):
            registry.promote(version)
            wait_until(
                lambda v=version: client.post("/predict", json=one).json().get("model") == v,
                timeout=30,
                what=f"the bento serving {version}",
            )
            expected = ModelBundle.load(registry.path(version)).predict(events)
            answer = client.post("/predict", json={"events": events.to_list()})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == version
            np.testing.assert_allclose(answer.json()["scores"], expected, rtol=0, atol=1e-6)
