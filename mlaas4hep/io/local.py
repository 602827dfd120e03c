"""Local files: paths (``file://`` too), directories and glob patterns."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from mlaas4hep.io import names
from mlaas4hep.io.location import Location, normalize_url


class LocalLocation(Location):
    """A file system path: read in place, identified by size and an xxh3 checksum."""

    schemes = ("file",)
    remote = False

    def uproot_options(self, url: str, redirects: Any = None) -> dict[str, Any]:
        return {}

    def identity(self, url: str) -> dict[str, Any]:
        import xxhash

        digest = xxhash.xxh3_64()
        with open(url, "rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
        return {"size": os.path.getsize(url), "xxh3_64": digest.hexdigest()}

    def expand(self, text: str) -> list[str]:
        """Every ``*.root`` under a directory, a glob's matches, or the path itself."""
        path = Path(normalize_url(text))
        if path.is_dir():
            return sorted(str(p) for p in path.rglob("*.root"))
        if names.is_pattern(text):
            found = glob.glob(os.path.expanduser(text), recursive=True)
            return sorted(str(Path(p).resolve()) for p in found)
        return [str(path)]

    def read_bytes(self, url: str) -> bytes:
        return Path(url).read_bytes()

    def write_bytes(self, url: str, data: bytes) -> None:
        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put_tree(self, source: Path, target: str) -> None:
        import shutil

        shutil.copytree(source, target, dirs_exist_ok=True)


LOCAL = LocalLocation()
