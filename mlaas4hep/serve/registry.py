"""The model registry: model bundles in the BentoML model store, with aliases.

Versions are BentoML models (``name:version``) whose directory is a model bundle
(:mod:`mlaas4hep.model.bundle`); this module adds what serving needs on top of the store:

* :meth:`Registry.list` with metadata, filtered by name, labels, dataset, metric
  thresholds (``test_auc>=0.8``) and creation dates; :meth:`Registry.card`, the model
  card (the task and its outputs, features, spec summary, metrics, plots, lineage,
  framework versions, aliases);
* aliases (``production``, ``staging``, …) per model name, in one small JSON file in the
  store (``mlaas4hep-aliases.json``), written atomically (temporary file + rename, under
  a file lock) so that every process that serves from the store — each worker of
  ``bentoml serve`` — sees a promotion by polling the file, without a restart;
* :meth:`Registry.resolve`: ``name:alias``, ``name:version``, ``name`` (its
  ``production`` alias, else its latest version) or a bare alias held by one model name;
* :meth:`Registry.upload` of a ``.bentomodel`` archive or a tar of a bundle directory,
  size-limited and checked member by member (no absolute paths, no ``..``, no links or
  devices) before anything is written; :meth:`Registry.delete` refuses an aliased
  version.

With a models bucket (``Registry(bucket="s3://…")``) the registry is shared: versions
and aliases live in the bucket (:mod:`.registry_bucket`, conditional writes), every
replica reads them from there, and the local store is a cache of versions.

BentoML is imported when a registry is created, never at module import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import lzma
import os
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mlaas4hep import extras
from mlaas4hep.errors import ConfigError
from mlaas4hep.io.failures import describe
from mlaas4hep.model.manifest import read_document, read_manifest
from mlaas4hep.model.store import add_to_store, new_version, store_labels
from mlaas4hep.serve import archives
from mlaas4hep.serve.protocol import DEFAULT_ALIAS
from mlaas4hep.serve.registry_aliases import AliasFile
from mlaas4hep.serve.registry_bucket import RegistryBucket, VersionCache
from mlaas4hep.serve.registry_documents import (
    OPS,
    as_date,
    json_safe,
    metric_condition,
    number_or_none,
    spec_summary,
    task_summary,
    utc,
)
from mlaas4hep.serve.registry_errors import (
    ArchiveError,
    ModelNotFound,
    RegistryConflict,
    RegistryError,
    StaleCandidate,
)

HISTORY_LENGTH = 200
DELETED_LENGTH = 1000
T = TypeVar("T")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


class Registry:
    """Model bundles in a BentoML model store (``<home>/models``), with aliases."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        bucket: str | RegistryBucket | None = None,
    ) -> None:
        """``home``: the BentoML home (default ``$BENTOML_HOME``, else ``~/bentoml``).

        ``clock``: the creation time given to each new version (an aware datetime); by
        default BentoML's own, the current UTC time. Tests inject one to order versions
        without waiting.

        ``bucket``: an ``s3://`` prefix (or a :class:`RegistryBucket`) holding the shared
        registry: versions and aliases live there, written by any replica, and the
        local store is a cache of the versions (see :mod:`.registry_bucket`).
        """
        extras.require("bentoml")
        from bentoml._internal.models.model import ModelStore

        if home is None:
            home = os.environ.get("BENTOML_HOME") or Path.home() / "bentoml"
        self.home = Path(home)
        self.root = self.home / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(self.root)
        self.clock = clock
        self.bucket = RegistryBucket(bucket) if isinstance(bucket, str) else bucket
        #: where the alias document lives: the bucket's, else the store's own file
        self.documents: RegistryBucket | AliasFile = self.bucket or AliasFile(self.root)
        self.cache = (
            VersionCache(self.store, self.root, self.home, self.bucket) if self.bucket else None
        )

    # --- versions -------------------------------------------------------------------
    def _models(self, name: str | None = None) -> list[Any]:
        from bentoml.exceptions import NotFound

        with self.cache.locked(exclusive=False) if self.cache else contextlib.nullcontext():
            try:
                return self.store.list(name) if name else self.store.list()
            except NotFound:
                return []

    def _get(self, tag: str) -> Any:
        from bentoml.exceptions import BentoMLException, NotFound

        try:
            return self.store.get(tag)
        except NotFound:
            raise ModelNotFound(f"model {tag!r} is not in the registry", field="tag") from None
        except (BentoMLException, ValueError) as err:
            raise ModelNotFound(f"model {tag!r}: {err}", field="tag") from None

    def path(self, ref: str) -> Path:
        """The bundle directory of a version (``ref`` as for :meth:`resolve`)."""
        return Path(self._get(self.resolve(ref)).path)

    def resolve(self, ref: str) -> str:
        """The full tag ``name:version`` that ``ref`` names (see the module docstring).

        With a bucket, the aliases are the bucket's and the version is fetched into the
        local cache if it is not there yet."""
        if self.bucket is None:
            return self._resolve_here(ref)
        try:
            tag = self._resolve_here(ref)
        except ModelNotFound:
            self.sync()
            tag = self._resolve_here(ref)
        self._cache(tag)
        return tag

    def _resolve_here(self, ref: str) -> str:
        ref = ref.strip()
        if not ref:
            raise ModelNotFound("empty model reference", field="model")
        aliases = self.aliases()
        name, _, version = ref.partition(":")
        if version:
            target = aliases.get(name, {}).get(version)
            if target is not None:
                return target
            return str(self._get(ref).tag)
        if name in aliases and DEFAULT_ALIAS in aliases[name]:
            return aliases[name][DEFAULT_ALIAS]
        if (self.root / name).is_dir():
            return str(self._get(name).tag)  # its latest version
        holders = sorted(n for n, held in aliases.items() if name in held)
        if len(holders) == 1:
            return aliases[holders[0]][name]
        if holders:
            raise ModelNotFound(
                f"alias {name!r} is held by several models ({', '.join(holders)}): "
                f"say which, e.g. {holders[0]}:{name}",
                field="model",
            )
        raise ModelNotFound(
            f"no model, version or alias named {ref!r} in the registry", field="model"
        )

    def list(
        self,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        dataset: str | None = None,
        metrics: Sequence[str] = (),
        created_after: str | dt.datetime | None = None,
        created_before: str | dt.datetime | None = None,
        alias: str | None = None,
    ) -> list[dict[str, Any]]:
        """Versions with their metadata, newest first, that pass every filter given.

        ``metrics`` are conditions such as ``"test_auc>=0.8"`` on the bundle's test
        metrics; ``dataset`` is a substring of one of its training files or prefixes;
        dates are ISO 8601 (``2025-01-31`` or with a time, UTC unless an offset is given).
        """
        conditions = [metric_condition(text) for text in metrics]
        after, before = (
            as_date(created_after, "created_after"),
            as_date(created_before, "created_before"),
        )
        by_tag = self._aliases_by_tag()
        out = []
        for model in self._models(name):
            tag = str(model.tag)
            created = utc(model.creation_time)
            if (after and created < after) or (before and created > before):
                continue
            info_labels = dict(model.info.labels)
            if labels and any(info_labels.get(k) != v for k, v in labels.items()):
                continue
            if alias and alias not in by_tag.get(tag, []):
                continue
            entry = self._summary(model, by_tag.get(tag, []))
            if conditions and not all(
                number_or_none(entry["metrics"].get(k)) is not None
                and OPS[op](number_or_none(entry["metrics"][k]), value)
                for k, op, value in conditions
            ):
                continue
            if dataset and not any(dataset in item for item in entry["datasets"]):
                continue
            out.append(json_safe(entry))
        out.sort(key=lambda e: e["created"], reverse=True)
        return out

    def _summary(self, model: Any, aliases: list[str]) -> dict[str, Any]:
        path = Path(model.path)
        manifest = read_manifest(path, check=False)
        metrics = read_document(path / "metrics.json")
        lineage = read_document(path / "lineage.json")
        dataset_cfg = (lineage.get("config") or {}).get("dataset") or {}
        return {
            "tag": str(model.tag),
            "name": model.tag.name,
            "version": model.tag.version,
            "created": utc(model.creation_time).isoformat(),
            "aliases": sorted(aliases),
            "labels": dict(model.info.labels),
            "metadata": dict(model.info.metadata),
            "framework": manifest.get("framework"),
            "model": manifest.get("model"),
            "n_features": manifest.get("n_features"),
            "task": task_summary(manifest, {}).get("kind"),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "run_name": lineage.get("run_name"),
            "datasets": sorted(
                set(dataset_cfg.get("files") or []) | set(lineage.get("files") or {})
            ),
            "bundle": bool(manifest),
        }

    def card(self, ref: str) -> dict[str, Any]:
        """The model card of a version: what it needs, how good it is, where it comes from.

        (One document built field by field in the order a reader meets them.)
        """
        tag = self.resolve(ref)
        model = self._get(tag)
        path = Path(model.path)
        summary = self._summary(model, self._aliases_by_tag().get(tag, []))
        if not summary["bundle"]:
            raise RegistryError(f"model {tag} is not an mlaas4hep model bundle (no bundle.json)")
        manifest = read_manifest(path, check=False)
        vectorizer = read_document(path / "vectorizer.json")
        metrics = read_document(path / "metrics.json")
        lineage = read_document(path / "lineage.json")
        spec = read_document(path / "dataset_spec.json")
        history = metrics.get("history") or []
        task = task_summary(manifest, metrics)
        outputs = len(task.get("outputs") or [None])
        plots = path / "plots"
        return json_safe(
            {
                **{
                    k: summary[k]
                    for k in ("tag", "name", "version", "created", "aliases", "labels")
                },
                "size_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                "task": task,
                "model": {
                    "architecture": f"default (dense 128 → 64 → {outputs})"
                    if manifest.get("model") == "default"
                    else "user code (model.py), served from its ONNX graph"
                    if manifest.get("onnx")
                    else "user code (model.py): served only when trust_user_code is on",
                    "onnx": manifest.get("onnx"),
                    "framework": manifest.get("framework"),
                    "with_mask": manifest.get("with_mask"),
                    "n_features": manifest.get("n_features"),
                },
                "inputs": {
                    "branches": [
                        {k: b.get(k) for k in ("name", "kind", "dtype", "length")}
                        for b in vectorizer.get("blocks", [])
                    ],
                    "features": manifest.get("feature_names", []),
                    "normalization": vectorizer.get("normalization"),
                    "pad_value": vectorizer.get("pad_value"),
                    "nonfinite": vectorizer.get("nonfinite"),
                },
                "metrics": {
                    **summary["metrics"],
                    **(
                        {}
                        if task.get("kind") == "regression"
                        else {"roc_auc": metrics.get("test_auc")}
                    ),
                    "epochs": len(history),
                    "last_epoch": history[-1] if history else None,
                },
                "dataset": spec_summary(
                    spec, [b.get("name") for b in vectorizer.get("blocks", [])]
                ),
                "lineage": {
                    "run_name": lineage.get("run_name"),
                    "git_revision": lineage.get("git_revision"),
                    "files": lineage.get("files", {}),
                    "staged": lineage.get("staged", {}),
                    "config": lineage.get("config", {}),
                },
                "framework_versions": lineage.get("libraries", {}),
                # what the bundle has (ROC, confusion, residuals, loss, features …):
                # the PNG files the plot endpoint serves
                "plots": sorted(
                    p.name for p in plots.glob("*.png") if p.is_file() and not p.is_symlink()
                )
                if plots.is_dir()
                else [],
                "promotions": [h for h in self._read_aliases()["history"] if h.get("tag") == tag],
            }
        )

    def delete(self, ref: str) -> str:
        """Delete a version (refused while an alias points to it); returns its tag.

        Decided under the same write as promotions (the alias file's lock, or the
        bucket's conditional write, where the tag is recorded as deleted first so that a
        promotion racing with it is refused), so no alias is ever left dangling."""
        if self.bucket is None:
            tag = str(self._get(ref).tag) if ":" in ref else self.resolve(ref)
        else:
            tag = ref if ":" in ref and self.bucket.has(ref) else self.resolve(ref)

        def decide(document: dict[str, Any]) -> None:
            if self.bucket is None:
                self._get(tag)  # another delete may have gone first
            elif tag in document.get("deleted", []):
                raise ModelNotFound(f"model {tag!r} is not in the registry", field="tag")
            name = tag.split(":")[0]
            held = [a for a, t in document["aliases"].get(name, {}).items() if t == tag]
            if held:
                raise RegistryConflict(
                    f"model {tag} is aliased as {', '.join(sorted(held))}: promote another "
                    "version (or remove the alias) before deleting it",
                    field="tag",
                )
            if self.bucket is None:
                self.store.delete(tag)
            else:
                document["deleted"] = [*document.get("deleted", []), tag][-DELETED_LENGTH:]

        self._update(decide)
        if self.bucket is not None:
            self.bucket.remove(tag)
            self._forget(tag)
        return tag

    # --- aliases --------------------------------------------------------------------
    def aliases(self) -> dict[str, dict[str, str]]:
        """``{name: {alias: tag}}``, re-read only when the file (or the bucket's
        document) changed."""
        return self._read_aliases()["aliases"]

    def promote(
        self,
        ref: str,
        alias: str = DEFAULT_ALIAS,
        *,
        reason: Mapping[str, Any] | None = None,
        unless_newer: float | None = None,
    ) -> str:
        """Point ``name:alias`` at the version ``ref`` names; returns the full tag.

        ``reason`` (who or what decided, and why: a retraining's decision) is kept in the
        alias history with the promotion. ``unless_newer`` (the candidate's DatasetSpec
        version): refused with :class:`StaleCandidate` if the version behind the alias
        was promoted with a newer one, decided in the same write as the promotion, so
        that an older job finishing last never overwrites a newer one's model."""
        if not _ALIAS.match(alias) or alias == "latest":
            raise RegistryError(
                f"alias {alias!r}: lowercase letters, digits, '-' and '_', starting with a "
                "letter, at most 40 characters, and not 'latest'",
                field="alias",
            )
        tag = self.resolve(ref)
        name = tag.split(":")[0]
        if (self.root / name / alias).is_dir():
            raise RegistryConflict(f"alias {alias!r} would hide version {name}:{alias}", "alias")
        self._publish(tag)

        def point(document: dict[str, Any]) -> None:
            if self.bucket is None:
                self._get(tag)  # still there: a delete decides under the same lock
            elif tag in document.get("deleted", []):
                raise ModelNotFound(f"model {tag!r} was deleted", field="tag")
            previous = document["aliases"].setdefault(name, {}).get(alias)
            if unless_newer is not None and previous is not None:
                newest = _promoted_with(document, name, alias, previous)
                if newest is not None and newest > unless_newer:
                    raise StaleCandidate(
                        f"{tag} was trained on a DatasetSpec older than the one {previous} "
                        f"(behind {name}:{alias}) was trained on: not promoted",
                        field="tag",
                    )
            document["aliases"][name][alias] = tag
            entry = {"name": name, "alias": alias, "tag": tag, "previous": previous}
            document["history"].append({**entry, "time": time.time(), **(reason or {})})
            del document["history"][:-HISTORY_LENGTH]

        self._update(point)
        return tag

    def remove_alias(self, name: str, alias: str) -> str:
        """Drop ``name:alias``; returns the tag it pointed to."""

        def drop(document: dict[str, Any]) -> str:
            held = document["aliases"].get(name, {})
            if alias not in held:
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}", field="alias")
            tag = held.pop(alias)
            if not held:
                del document["aliases"][name]
            document["history"].append(
                {"name": name, "alias": alias, "tag": None, "previous": tag, "time": time.time()}
            )
            return tag

        return self._update(drop)

    def _update(self, change: Callable[[dict[str, Any]], T]) -> T:
        """One change of the alias document: under the file lock, or as a conditional
        write to the bucket (re-applied to the latest document when another won)."""
        return self.documents.update_aliases(change)

    # --- the bucket's versions in the local cache -----------------------------------
    def sync(self) -> None:
        """Fetch the bucket's versions missing here; drop the ones deleted there."""
        if self.cache is not None:
            self.cache.sync({str(m.tag) for m in self._models()})

    def _cache(self, tag: str) -> None:
        if self.cache is not None and not self._models(tag):
            self.cache.ensure(tag)

    def _publish(self, tag: str) -> None:
        if self.cache is not None:
            self.cache.publish(self._get(tag))

    def _forget(self, tag: str) -> None:
        if self.cache is not None:
            self.cache.forget(tag)

    def _aliases_by_tag(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for held in self.aliases().values():
            for alias, tag in held.items():
                out.setdefault(tag, []).append(alias)
        return out

    def _read_aliases(self) -> dict[str, Any]:
        return self.documents.read_aliases()

    # --- adding versions ------------------------------------------------------------
    def add(
        self,
        directory: str | os.PathLike[str],
        name: str,
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Register a bundle directory under ``name`` (a new version); returns its tag.

        The same labels and metadata as :meth:`ModelBundle.save_to_store` (plus
        ``labels``), into this registry's store rather than the process-wide one.
        """
        tag = archives.checked_name(name)
        try:  # the manifest is read and checked once, by add_to_store
            tag = add_to_store(
                directory, tag, labels=labels, store=self.store, created=self._creation_clock()
            )
        except ConfigError as err:
            raise RegistryError(str(err)) from None
        self._publish(tag)
        return tag

    def upload(
        self,
        data: bytes,
        name: str | None = None,
        *,
        max_unpacked_bytes: int = 2 << 30,
    ) -> str:
        """Register an uploaded archive: a ``.bentomodel`` (keeps its tag) or a tar
        (optionally compressed) of a bundle directory (a new version of ``name``)."""
        try:
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ArchiveError(
                f"not a tar archive (.bentomodel, .tar, .tar.gz, .tar.xz): {err}"
            ) from None
        try:
            with archive:
                files = archives.safe_members(archive, max_unpacked_bytes)
                if "bundle.json" not in files:
                    raise ArchiveError(
                        "the archive holds no bundle.json at its top level (or in its single "
                        "top folder): it is not a model bundle"
                    )
                manifest = archives.member_json(archive, files, "bundle.json")
                archives.validate_manifest(archive, files, manifest)
                labels, metadata = store_labels(
                    manifest,
                    archives.member_json(archive, files, "metrics.json", required=False),
                    archives.member_json(archive, files, "lineage.json", required=False),
                )
                tag: str
                if "model.yaml" in files:  # a .bentomodel: keep its name and version
                    info = archives.member_yaml(archive, files["model.yaml"])
                    raw = str((info or {}).get("name", "")), str((info or {}).get("version", ""))
                    if name and name != raw[0]:
                        raise ArchiveError(f"the archive is model {raw[0]!r}, not {name!r}")
                    in_use = self.aliases().get(raw[0], {})
                    version = archives.checked_version(raw[1], in_use)
                    tag = f"{archives.checked_name(raw[0])}:{version}"
                    labels = {
                        **{str(k): str(v) for k, v in (info.get("labels") or {}).items()},
                        **labels,
                    }
                    if self._models(tag):
                        raise RegistryConflict(
                            f"model {tag} is already in the registry", field="tag"
                        )
                elif name is None:
                    raise ArchiveError("a bundle archive needs a model name (the 'name' parameter)")
                else:
                    tag = archives.checked_name(name)
                with self._create(tag, labels, metadata) as model:
                    for relative, member in files.items():
                        if relative == "model.yaml" or not member.isfile():
                            continue
                        destination = Path(model.path, *PurePosixPath(relative).parts)
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        source = archive.extractfile(member)
                        if source is None:
                            raise ArchiveError(f"cannot read archive member {member.name!r}")
                        with source, open(destination, "wb") as out:
                            while chunk := source.read(1 << 20):
                                out.write(chunk)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise  # the store's disk, not the archive
            raise ArchiveError(
                f"the archive is truncated or corrupt ({describe(err)}): nothing was added"
            ) from None
        self._publish(str(model.tag))
        return str(model.tag)

    def _creation_clock(self) -> Any:
        """The creation time of new versions (None: BentoML's own)."""
        clock = self.clock
        return None if clock is None else (lambda: utc(clock()))

    def _create(self, tag: str, labels: dict[str, str], metadata: dict[str, Any]) -> Any:
        """A new version's creation context in this registry's store."""
        return new_version(tag, labels, metadata, store=self.store, created=self._creation_clock())


# ------------------------------------------------------------------------------ helpers


def _promoted_with(document: Mapping[str, Any], name: str, alias: str, tag: str) -> float | None:
    """The DatasetSpec version ``tag`` was last promoted to ``name:alias`` with."""
    for entry in reversed(document.get("history", [])):
        if (entry.get("name"), entry.get("alias"), entry.get("tag")) == (name, alias, tag):
            value = entry.get("dataset_spec_version")
            return float(value) if isinstance(value, (int, float)) else None
    return None
