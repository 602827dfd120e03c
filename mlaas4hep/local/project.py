"""Where a project's infrastructure and local state live: found once, in one place.

The Python deployables (``functions``, ``serving``, ``ray_jobs``) are installed with the
package and imported as such; the Terraform root module (``infra/``) is not Python and
stays a folder that a person applies. The local stack, the demo and the Terraform
runner find it here: ``$MLAAS4HEP_PROJECT_DIR``, else the current directory or the
nearest parent that holds ``infra/main.tf``. Nothing is located relative to the
installed package's own files.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlaas4hep.errors import ConfigError

PROJECT_ENV = "MLAAS4HEP_PROJECT_DIR"
_MARKER = Path("infra") / "main.tf"


def project_dir(start: str | os.PathLike[str] | None = None) -> Path:
    """The project folder: ``$MLAAS4HEP_PROJECT_DIR``, or ``start`` (the current
    directory) or its nearest parent that holds ``infra/main.tf``."""
    explicit = os.environ.get(PROJECT_ENV)
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not (path / _MARKER).is_file():
            raise ConfigError(f"{PROJECT_ENV}={explicit}: no {_MARKER} there")
        return path
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / _MARKER).is_file():
            return folder
    raise ConfigError(
        f"no mlaas4hep project in {here} or above (a folder with {_MARKER}): run from the "
        f"project's folder or set {PROJECT_ENV}"
    )


def infra_dir() -> Path:
    """The Terraform root module of the project."""
    return project_dir() / "infra"


def state_dir() -> Path:
    """Where the local stack records what it started (``.stack/`` in the project)."""
    return project_dir() / ".stack"


def package_dir(module: str) -> Path:
    """The folder of an installed Python package (``functions``, ``serving`` …)."""
    import importlib.util

    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"the package {module!r} is not installed: pip install -e .")
    return Path(next(iter(found.submodule_search_locations)))
