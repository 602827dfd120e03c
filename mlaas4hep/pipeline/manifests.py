"""Dataset manifests: a dataset made of files that live elsewhere (``root://``, ``https://``).

Besides ROOT files landing in the data bucket, a dataset can be a *manifest* object,
``<data prefix><dataset>/files.txt`` (one URL per line; blank lines and ``#`` comments
ignored) or ``files.json`` (a list of URLs, or ``{"files": [...]}``). The spec function
reads it and fans out: one message per new entry on its own queue, each computing that
file's FileSpec, stored under the manifest's *entry path* (:func:`entry_path`), from which
the merge step reads the URL back (:func:`url_of_entry_path`). An entry dropped from a
new version of the manifest, or every entry of a deleted manifest, has its FileSpecs
deleted, so the DatasetSpec loses it as it loses a removed object.

A manifest is read whole (at most :data:`MAX_MANIFEST_BYTES`) and checked entry by entry
before anything is sent: a malformed one is quarantined with the line that is wrong, and
no entry of it is used.
"""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import urlsplit

#: The object names a manifest may have, directly under its dataset's folder.
MANIFEST_NAMES = ("files.txt", "files.json")
#: The folder of a dataset's FileSpec keys that holds manifest entries (a data object
#: may not be stored under it: :meth:`PipelineConfig.locate` refuses such keys).
ENTRY_FOLDER = "_manifest"
MAX_MANIFEST_BYTES = 1 << 20
MAX_ENTRIES = 10_000
MAX_URL_LENGTH = 512
#: The message kind of one manifest entry sent to the spec function's own queue.
ENTRY_KIND = "mlaas4hep.manifest-entry"

SCHEMES = ("root", "https", "davs")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the manifest and the line."""


def is_manifest(path: str) -> bool:
    """Whether ``path`` (within its dataset's folder) is the dataset's manifest."""
    return path in MANIFEST_NAMES


def check_url(url: str, where: str) -> str:
    """``url`` if it can be a manifest entry: a ``root://``, ``https://`` or ``davs://``
    URL with a host and a path to a ``.root`` file, no whitespace or control characters,
    at most :data:`MAX_URL_LENGTH` characters; else :class:`ManifestError` naming ``where``.
    """
    if not isinstance(url, str):
        raise ManifestError(f"{where}: an entry must be a URL string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise ManifestError(f"{where}: the URL is longer than {MAX_URL_LENGTH} characters")
    if _CONTROL.search(url):
        raise ManifestError(f"{where}: {url!r} holds whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ManifestError(
            f"{where}: {url!r} is not a {', '.join(s + '://' for s in SCHEMES)} URL"
        )
    if not parts.hostname:
        raise ManifestError(f"{where}: {url!r} names no host")
    if not parts.path.endswith(".root") or parts.query or parts.fragment:
        raise ManifestError(f"{where}: {url!r} is not the path of a .root file")
    return url


def parse_manifest(body: bytes, name: str, source: str) -> list[str]:
    """The URLs a manifest lists, in order, each once.

    ``name`` (``files.txt`` or ``files.json``) says the format; ``source`` names the
    manifest in errors. :class:`ManifestError` for a manifest over
    :data:`MAX_MANIFEST_BYTES` or :data:`MAX_ENTRIES`, not UTF-8, not the format, or
    with an entry :func:`check_url` refuses (naming its line or index).
    """
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{source}: not UTF-8 text ({err})") from err
    entries: list[tuple[str, object]] = []
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{source}: not JSON ({err})") from err
        if isinstance(data, dict) and set(data) == {"files"}:
            data = data["files"]
        if not isinstance(data, list):
            raise ManifestError(f'{source}: give a list of URLs, or {{"files": [...]}}')
        entries = [(f"{source}, entry {i}", item) for i, item in enumerate(data)]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append((f"{source}, line {number}", line))
    if len(entries) > MAX_ENTRIES:
        raise ManifestError(f"{source}: more than {MAX_ENTRIES} entries")
    urls = [check_url(url, where) for where, url in entries]  # type: ignore[arg-type]
    return list(dict.fromkeys(urls))


def entry_folder(manifest: str) -> str:
    """The folder, within a dataset's FileSpecs, of the entries of ``manifest``."""
    return f"{ENTRY_FOLDER}/{manifest}/"


def entry_path(manifest: str, url: str) -> str:
    """Where within the dataset's FileSpecs the entry ``url`` of ``manifest`` is kept:
    the URL in URL-safe base64 (letters, digits, ``-`` and ``_``: no ``/``, ``@`` or
    ``%`` that a key's encoding could change), so that it reads back exactly."""
    encoded = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    return entry_folder(manifest) + encoded


def url_of_entry_path(path: str) -> str | None:
    """The URL of a manifest entry's path (:func:`entry_path`); None for another path."""
    folder, sep, rest = path.partition("/")
    if folder != ENTRY_FOLDER or not sep:
        return None
    manifest, sep, encoded = rest.partition("/")
    if not is_manifest(manifest) or not sep or not _BASE64URL.fullmatch(encoded):
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def identity_version(identity: dict[str, object]) -> str:
    """A version name for a remote file from its content identity (checksum, size,
    modification time, ETag…), the same for the same content."""
    return "_".join(f"{key}-{identity[key]}" for key in sorted(identity)) or "unknown"
