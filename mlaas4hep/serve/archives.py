"""Uploaded model archives: checked member by member before anything is unpacked.

A ``.bentomodel`` or ``.tar.gz`` upload is hostile until proven otherwise: no links or
special files, no absolute or ``..`` paths, a bounded number of members and unpacked
bytes, and a manifest, Vectorizer and weights that agree with each other.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.manifest import check_manifest
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.serve.registry_errors import ArchiveError, RegistryError

MAX_ARCHIVE_MEMBERS = 10_000
NAME_RULE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


def safe_members(archive: tarfile.TarFile, max_unpacked_bytes: int) -> dict[str, tarfile.TarInfo]:
    """Regular files and folders of the archive by path relative to the bundle's root."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for count, member in enumerate(archive, start=1):
        if count > MAX_ARCHIVE_MEMBERS:
            raise ArchiveError(f"the archive holds more than {MAX_ARCHIVE_MEMBERS} members")
        name = member.name
        path = PurePosixPath(name)
        if (
            "\\" in name
            or "\x00" in name
            or path.is_absolute()
            or ".." in path.parts
            or re.match(r"^[A-Za-z]:", name)
        ):
            raise ArchiveError(f"unsafe path in the archive: {name!r} (absolute or with '..')")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(
                f"archive member {name!r} is a link or a special file: only regular files "
                "and folders are accepted"
            )
        total += member.size
        if total > max_unpacked_bytes:
            raise ArchiveError(
                f"the archive unpacks to more than {max_unpacked_bytes} bytes", status=413
            )
        normalized = path.as_posix().removeprefix("./")
        if normalized and normalized != ".":
            members[normalized] = member
    files = {k: m for k, m in members.items() if m.isfile()}
    if "bundle.json" not in files:  # a single top folder holding the bundle
        tops = {PurePosixPath(k).parts[0] for k in files}
        if len(tops) == 1:
            top = tops.pop()
            files = {k[len(top) + 1 :]: m for k, m in files.items() if k.startswith(top + "/")}
    return files


def member_json(
    archive: tarfile.TarFile, files: Mapping[str, tarfile.TarInfo], name: str, required: bool = True
) -> dict[str, Any]:
    if name not in files:
        if required:
            raise ArchiveError(f"the archive lacks {name}")
        return {}
    source = archive.extractfile(files[name])
    try:
        data = json.loads(source.read() if source else b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArchiveError(f"{name} in the archive is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ArchiveError(f"{name} in the archive must hold a JSON object")
    return data


def member_yaml(archive: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, Any]:
    import yaml

    source = archive.extractfile(member)
    try:
        data = yaml.safe_load(source.read() if source else b"")
    except yaml.YAMLError as err:
        raise ArchiveError(f"model.yaml in the archive is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ArchiveError("model.yaml in the archive must hold a mapping")
    return data


def validate_manifest(
    archive: tarfile.TarFile, files: Mapping[str, tarfile.TarInfo], manifest: Mapping[str, Any]
) -> None:
    from mlaas4hep.transform.vectorizer import Vectorizer

    try:
        check_manifest(manifest, "the archive's bundle.json")
    except ConfigError as err:
        raise ArchiveError(str(err)) from None
    try:
        vectorizer = Vectorizer.from_dict(member_json(archive, files, "vectorizer.json"))
    except ConfigError as err:
        raise ArchiveError(f"vectorizer.json in the archive: {err}") from None
    if manifest.get("n_features") != vectorizer.n_features:
        raise ArchiveError(
            f"bundle.json says {manifest.get('n_features')} features but vectorizer.json "
            f"makes {vectorizer.n_features}"
        )
    weights = str(manifest.get("weights", ""))
    if weights not in files:
        raise ArchiveError(f"the archive lacks the weights file {weights!r} named in bundle.json")
    if manifest.get("model") not in (None, "default") and "model.py" not in files:
        raise ArchiveError("bundle.json names a user model but the archive lacks model.py")


def checked_name(name: str) -> str:
    if not NAME_RULE.match(name or "") or len(name) > 63:
        raise RegistryError(
            f"model name {name!r}: lowercase letters, digits, '.', '_' and '-' only "
            "(starting and ending with a letter or digit, at most 63 characters)",
            field="name",
        )
    return name


def checked_version(version: str, aliases: Iterable[str] = ()) -> str:
    """``version`` if it can name a version: the name rule, and not an alias name (the
    default alias, ``latest``, or one of ``aliases``): a version named ``production``
    would stand in front of the alias and block every later promotion."""
    if not NAME_RULE.match(version or "") or len(version) > 63:
        raise ArchiveError(f"model.yaml in the archive has an invalid version {version!r}")
    if version in {DEFAULT_ALIAS, "latest", *aliases}:
        raise ArchiveError(
            f"model.yaml in the archive names the version {version!r}, which is an alias name"
        )
    return version
