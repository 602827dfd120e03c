"""Build the Lambda deployment package of the pipeline functions (and, on demand, its layer).

    python -m mlaas4hep.local.lambda_package            # build/lambda/functions.zip
    python -m mlaas4hep.local.lambda_package --layer    # also build/lambda/layer.zip

(the repository's build script is a thin wrapper over this). The modules come from the installed
packages, the dependency list from the installed distribution's metadata.

``functions.zip`` holds the ``mlaas4hep`` package and the ``functions/`` handlers, and
nothing else: it is a few hundred kB, so a code change redeploys in seconds. The
third-party dependencies (uproot, awkward, numpy, s3fs, a boto3 recent enough for S3
conditional writes, the compression codecs) go in a separate layer built from
manylinux wheels for the Lambda runtime, since they change rarely and are too big to
upload with every change (see infra/README.md). Both zips are reproducible: sorted
entries, fixed timestamps and permissions, so the same sources give the same hash and
Terraform's ``source_code_hash`` changes only when the code does.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mlaas4hep.local.project import package_dir, project_dir

FIXED_TIME = (1980, 1, 1, 0, 0, 0)

#: Lambda quotas: a zip uploaded directly, and function + layers once unpacked.
MAX_ZIPPED = 50 * 1024**2
MAX_UNZIPPED = 250 * 1024**2

#: Modules that are not part of what a function runs.
EXCLUDED_FILES = {"functions/local_runtime.py"}
#: Core dependencies the functions never import (numba is for the training path and
#: brings llvmlite, over 100 MB).
LAYER_EXCLUDED = {"numba", "rich"}


def default_out() -> Path:
    """``build/lambda`` in the project (where ``infra/`` looks for the package)."""
    return project_dir() / "build" / "lambda"


def _sources() -> list[tuple[Path, str]]:
    """The installed ``mlaas4hep`` and ``functions`` packages' modules, as zip entries."""
    files = []
    for package in ("mlaas4hep", "functions"):
        root = package_dir(package)
        for path in sorted(root.rglob("*.py")):
            name = f"{package}/{path.relative_to(root).as_posix()}"
            if "__pycache__" not in name and name not in EXCLUDED_FILES:
                files.append((path, name))
    return files


def _write_zip(target: Path, entries: list[tuple[Path, str]]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path, name in sorted(entries, key=lambda item: item[1]):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(target)


def _unzipped_size(path: Path) -> int:
    with zipfile.ZipFile(path) as zf:
        return sum(info.file_size for info in zf.infolist())


def build_functions(out_dir: Path | None = None) -> Path:
    """Write ``functions.zip`` (mlaas4hep + functions/) and return its path."""
    target = (out_dir or default_out()) / "functions.zip"
    _write_zip(target, _sources())
    if target.stat().st_size > MAX_ZIPPED:
        raise SystemExit(f"{target} is over Lambda's 50 MB limit for a direct upload")
    return target


def layer_requirements() -> list[str]:
    """The functions' dependencies, with the version ranges of pyproject.toml."""
    from importlib import metadata

    out = []
    for requirement in metadata.requires("mlaas4hep") or []:
        spec, _, marker = requirement.partition(";")
        if marker.strip() and marker.replace(" ", "").replace("'", '"') != 'extra=="s3"':
            continue
        requirement = spec.strip()
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        if name not in LAYER_EXCLUDED:
            out.append(requirement)
    return out


def build_layer(out_dir: Path | None = None, python_version: str = "3.11") -> Path:
    """Write ``layer.zip`` (``python/`` + the dependencies' manylinux wheels) and return it."""
    target = (out_dir or default_out()) / "layer.zip"
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "python"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--target",
                str(site),
                "--platform",
                "manylinux2014_x86_64",
                "--implementation",
                "cp",
                "--python-version",
                python_version,
                "--only-binary=:all:",
                *layer_requirements(),
            ],
            check=True,
        )
        for junk in [*site.rglob("__pycache__"), *site.rglob("tests")]:
            shutil.rmtree(junk, ignore_errors=True)
        entries = [
            (path, path.relative_to(tmp).as_posix()) for path in site.rglob("*") if path.is_file()
        ]
        _write_zip(target, entries)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (build/lambda)")
    parser.add_argument("--layer", action="store_true", help="also build the dependency layer")
    args = parser.parse_args(argv)
    package = build_functions(args.out)
    total = _unzipped_size(package)
    print(
        f"{package}: {package.stat().st_size / 1024:.0f} kB zipped, {total / 1024:.0f} kB unzipped"
    )
    if args.layer:
        layer = build_layer(args.out)
        layer_size = _unzipped_size(layer)
        total += layer_size
        print(
            f"{layer.name}: {layer.stat().st_size / 1024**2:.1f} MB zipped, "
            f"{layer_size / 1024**2:.1f} MB unzipped"
        )
        if layer.stat().st_size > MAX_ZIPPED:
            print("the layer is over 50 MB zipped: publish it through S3 (see infra/README.md)")
    if total > MAX_UNZIPPED:
        raise SystemExit(
            f"function + layer unzip to {total / 1024**2:.0f} MB, over Lambda's 250 MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
