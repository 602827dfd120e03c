"""The model registry on a real BentoML store in a temporary folder (no server): list,
filters, cards, resolution of aliases, atomic promotion, safe uploads; and loading a
bundle for serving in safe mode, with the numpy forward pass equal to the framework's."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mlaas4hep.errors import ConfigError
from mlaas4hep.model.bundle import ModelBundle
from mlaas4hep.serve.config import ServeConfig
from mlaas4hep.serve.payloads import EventColumns
from mlaas4hep.serve.predictor import DenseNetwork, Predictor, UnsafeBundleError
from mlaas4hep.serve.registry import Registry
from mlaas4hep.serve.registry_aliases import ALIASES_FILE
from mlaas4hep.serve.registry_errors import (
    ArchiveError,
    ModelNotFound,
    RegistryConflict,
    RegistryError,
)
from mlaas4hep.serve.server import ModelServer, ServingMetrics
from mlaas4hep.spec.documents import DatasetSpec
from mlaas4hep.transform.vectorizer import Vectorizer

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec.*"),
]

BLOCKS = [
    {"name": "nJet", "kind": "flat", "dtype": "int32", "length": 1, "shift": 0.0, "scale": 10.0},
    {"name": "Jet_pt", "kind": "jagged", "dtype": "float32", "length": 4, "shift": 20.0,
     "scale": 200.0},
    {"name": "HT", "kind": "flat", "dtype": "float32", "length": 1, "shift": 0.0, "scale": 900.0},
]  # fmt: skip
MARKER_ENV = "MLAAS4HEP_TEST_USER_CODE_RAN"
USER_CODE = f"""
import os, pathlib
pathlib.Path(os.environ["{MARKER_ENV}"]).write_text("user code ran")
framework = "torch"

def build_model(n_features):
    import torch
    return torch.nn.Sequential(torch.nn.Linear(n_features, 1), torch.nn.Sigmoid(),
                               torch.nn.Flatten(0))
"""


def make_bundle(directory: Path, seed: int, auc: float = 0.8, user_code: bool = False) -> Path:
    """A torch bundle (the default model, or a user model) with reference rows."""
    from mlaas4hep.model import architectures as models

    torch.manual_seed(seed)
    vectorizer = Vectorizer.from_dict(
        {"config_version": 1, "normalization": "minmax", "pad_value": 0.0, "nonfinite": "mask",
         "blocks": BLOCKS}
    )  # fmt: skip
    code = USER_CODE if user_code else None
    if code:
        model = torch.nn.Sequential(
            torch.nn.Linear(vectorizer.n_features, 1), torch.nn.Sigmoid(), torch.nn.Flatten(0)
        )
    else:
        model = models.default_torch_model(vectorizer.n_features)
    model.eval()
    bundle = ModelBundle(
        "torch", vectorizer, DatasetSpec(), model_code=code, model=model,
        metrics={"test_auc": auc, "test_loss": float("nan"), "history": [{"unit": 0}]},
        lineage={"run_name": f"run-{seed}", "git_revision": "abc123",
                 "config": {"dataset": {"files": [f"s3://data/datasets/tth-{seed}/"]}},
                 "libraries": {"torch": torch.__version__}},
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    X = rng.random((32, vectorizer.n_features), dtype=np.float32)
    mask = rng.random((32, vectorizer.n_features)) > 0.2
    bundle.reference = {"X": X, "mask": mask, "scores": bundle.predict_vectorized(X, mask)}
    return bundle.save(directory / f"bundle-{seed}{'-user' if user_code else ''}")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {
        "a": make_bundle(out, 1, auc=0.82),
        "b": make_bundle(out, 2, auc=0.75),
        "user": make_bundle(out, 3, user_code=True),
    }


START = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def ticking_clock(start: dt.datetime = START, step: dt.timedelta = dt.timedelta(minutes=1)):
    """A clock one ``step`` later at each call: versions are created in a known order, at known
    times, without waiting for the wall clock to move on."""
    ticks = itertools.count()
    return lambda: start + next(ticks) * step


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "bentoml", clock=ticking_clock())


def tar_of(directory: Path, arcname: str = "bundle", mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        archive.add(directory, arcname=arcname)
    return buffer.getvalue()


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- registry


def test_list_filters_and_cards(registry: Registry, bundles: dict[str, Path]) -> None:
    first = registry.add(bundles["a"], "tth")
    second = registry.add(bundles["b"], "tth")
    other = registry.add(bundles["a"], "zjets")
    registry.promote(first)
    listed = registry.list()
    assert [m["tag"] for m in listed] == [other, second, first]  # newest first
    entry = next(m for m in listed if m["tag"] == first)
    assert entry["aliases"] == ["production"] and entry["framework"] == "torch"
    assert entry["metrics"]["test_auc"] == pytest.approx(0.82)
    assert entry["metrics"]["test_loss"] is None  # NaN is not JSON
    assert entry["labels"] == {"framework": "torch", "run": "run-1"}
    json.dumps(listed, allow_nan=False)
    assert [m["tag"] for m in registry.list("tth")] == [second, first]
    assert [m["tag"] for m in registry.list(metrics=["test_auc>=0.8"])] == [other, first]
    assert [m["tag"] for m in registry.list(metrics=["test_auc<0.8"])] == [second]
    assert [m["tag"] for m in registry.list(dataset="tth-2")] == [second]
    assert [m["tag"] for m in registry.list(labels={"run": "run-2"})] == [second]
    assert [m["tag"] for m in registry.list(alias="production")] == [first]
    assert [m["created"] for m in listed] == [
        (START + dt.timedelta(minutes=m)).isoformat() for m in (2, 1, 0)
    ]  # the registry's clock
    assert registry.list(created_after="2999-01-01") == []
    assert len(registry.list(created_before="2999-01-01T00:00:00+00:00")) == 3
    assert [m["tag"] for m in registry.list(created_after="2024-05-01T12:00:30")] == [
        other,
        second,
    ]
    assert [m["tag"] for m in registry.list(created_before="2024-05-01T12:01:30Z")] == [
        second,
        first,
    ]
    with pytest.raises(RegistryError, match="test_auc>=0.8"):
        registry.list(metrics=["auc is high"])
    with pytest.raises(RegistryError, match="ISO 8601"):
        registry.list(created_after="yesterday")

    card = registry.card("tth:production")
    assert card["tag"] == first and card["aliases"] == ["production"]
    assert card["inputs"]["features"][:3] == ["nJet", "Jet_pt[0]", "Jet_pt[1]"]
    assert [b["name"] for b in card["inputs"]["branches"]] == ["nJet", "Jet_pt", "HT"]
    assert card["model"]["architecture"].startswith("default")
    assert card["metrics"]["roc_auc"] == pytest.approx(0.82)
    assert card["lineage"]["git_revision"] == "abc123"
    assert card["framework_versions"]["torch"] == torch.__version__
    assert card["promotions"][0]["alias"] == "production"
    json.dumps(card, allow_nan=False)


def test_resolve_follows_aliases_names_and_versions(
    registry: Registry, bundles: dict[str, Path]
) -> None:
    first = registry.add(bundles["a"], "tth")
    second = registry.add(bundles["b"], "tth")
    assert registry.resolve("tth") == second  # no production alias: the latest
    assert registry.resolve(first) == first
    assert registry.resolve(f"tth:{first.split(':')[1][:6]}") == first  # a version prefix
    registry.promote(first)
    registry.promote(second, "staging")
    assert registry.resolve("tth") == first
    assert registry.resolve("tth:production") == first
    assert registry.resolve("tth:staging") == second
    assert registry.resolve("staging") == second  # a bare alias held by one model
    assert registry.resolve("tth:latest") == second
    other = registry.add(bundles["a"], "zjets")
    registry.promote(other, "staging")
    with pytest.raises(ModelNotFound, match="held by several models"):
        registry.resolve("staging")
    for ref in ("tth:nope", "ghost", "ghost:production", ""):
        with pytest.raises(ModelNotFound):
            registry.resolve(ref)


def test_promotion_is_atomic_and_seen_by_another_process(
    registry: Registry, bundles: dict[str, Path]
) -> None:
    first = registry.add(bundles["a"], "tth")
    second = registry.add(bundles["b"], "tth")
    elsewhere = Registry(registry.home)  # what another worker process holds
    assert elsewhere.aliases() == {}
    registry.promote(first)
    assert elsewhere.resolve("tth:production") == first
    registry.promote(second)
    assert elsewhere.resolve("tth:production") == second
    document = json.loads((registry.root / ALIASES_FILE).read_text())
    assert [h["previous"] for h in document["history"]] == [None, first]
    assert not list(registry.root.glob(".aliases-*"))  # no temporary file left behind
    for bad in ("Production", "latest", "1st", "a" * 41):
        with pytest.raises(RegistryError, match="alias"):
            registry.promote(first, bad)
    with pytest.raises(ModelNotFound):
        registry.promote("tth:doesnotexist")
    assert registry.remove_alias("tth", "production") == second
    assert registry.aliases() == {}


def test_delete_refuses_an_aliased_version(registry: Registry, bundles: dict[str, Path]) -> None:
    first = registry.add(bundles["a"], "tth")
    second = registry.add(bundles["b"], "tth")
    registry.promote(first)
    with pytest.raises(RegistryConflict, match="aliased as production"):
        registry.delete(first)
    assert registry.delete(second) == second
    assert [m["tag"] for m in registry.list()] == [first]
    with pytest.raises(ModelNotFound):
        registry.delete(second)


# ------------------------------------------------------------------------------ uploads


def test_upload_of_a_bundle_tar_and_of_a_bentomodel(
    registry: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    import bentoml

    tag = registry.upload(tar_of(bundles["a"]), name="tth")
    stored = registry.path(tag)
    for name in ("bundle.json", "model.pt", "vectorizer.json", "reference.npz"):
        assert (stored / name).read_bytes() == (bundles["a"] / name).read_bytes()
    assert registry.list()[0]["labels"]["run"] == "run-1"
    flat = registry.upload(tar_of(bundles["b"], arcname="."), name="tth")  # members at the top
    assert (registry.path(flat) / "bundle.json").exists()

    exported = tmp_path / "tth.bentomodel"
    bentoml.models.export_model(tag, str(exported), _model_store=registry.store)
    registry.delete(tag)
    assert registry.upload(exported.read_bytes()) == tag  # a .bentomodel keeps its tag
    with pytest.raises(RegistryConflict, match="already in the registry"):
        registry.upload(exported.read_bytes())
    with pytest.raises(ArchiveError, match="is model 'tth', not 'other'"):
        registry.upload(exported.read_bytes(), name="other")


def regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "members, message",
    [
        ([(regular("../evil.txt"), b"x")], "unsafe path"),
        ([(regular("/etc/evil.txt"), b"x")], "unsafe path"),
        ([(regular("bundle/../../evil.txt"), b"x")], "unsafe path"),
        ([(special("bundle.json", tarfile.SYMTYPE, "/etc/passwd"), None)], "link or a special"),
        ([(special("model.pt", tarfile.LNKTYPE, "bundle.json"), None)], "link or a special"),
        ([(special("fifo", tarfile.FIFOTYPE), None)], "link or a special"),
        ([(regular("notes.txt"), b"hello")], "no bundle.json"),
    ],
)
def test_unsafe_or_foreign_archives_are_refused_before_anything_is_written(
    registry: Registry, members: list, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ArchiveError, match=message):
        registry.upload(tar_with(members), name="tth")
    assert registry.list() == []
    assert not (tmp_path / "evil.txt").exists() and not (registry.home / "evil.txt").exists()


def test_archive_size_and_content_are_checked(registry: Registry, bundles: dict[str, Path]) -> None:
    with pytest.raises(ArchiveError) as caught:
        registry.upload(tar_of(bundles["a"]), name="tth", max_unpacked_bytes=1000)
    assert caught.value.status == 413
    with pytest.raises(ArchiveError, match="not a tar archive"):
        registry.upload(b"PK\x03\x04 a zip file", name="tth")
    with pytest.raises(ArchiveError, match="needs a model name"):
        registry.upload(tar_of(bundles["a"]))
    with pytest.raises(RegistryError, match="model name"):
        registry.upload(tar_of(bundles["a"]), name="../tth")
    manifest = json.loads((bundles["a"] / "bundle.json").read_text())
    broken = tar_with(
        [(regular("bundle.json"), json.dumps({**manifest, "n_features": 3}).encode()),
         (regular("vectorizer.json"), (bundles["a"] / "vectorizer.json").read_bytes()),
         (regular("model.pt"), b"")]
    )  # fmt: skip
    with pytest.raises(ArchiveError, match="says 3 features"):
        registry.upload(broken, name="tth")
    assert registry.list() == []


# ------------------------------------------------------------------------ safe loading


def test_numpy_forward_equals_the_framework_batched_or_not(bundles: dict[str, Path]) -> None:
    predictor = Predictor.load(bundles["a"], "tth:a")
    assert predictor.mode == "numpy" and isinstance(predictor.forward, DenseNetwork)
    framework = ModelBundle.load(bundles["a"])
    rng = np.random.default_rng(0)
    n = 3000
    counts = rng.integers(0, 7, n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    from mlaas4hep.io.columns import JaggedView

    events = EventColumns(
        {
            "nJet": counts.astype(np.int32),
            "Jet_pt": JaggedView(offsets, rng.uniform(20, 300, offsets[-1]).astype(np.float32)),
            "HT": rng.uniform(0, 900, n).astype(np.float32),
        },
        n,
    )
    expected = framework.predict(events.columns)
    together = predictor.score(events)
    np.testing.assert_allclose(together, expected, rtol=0, atol=1e-6)
    one_by_one = np.concatenate(
        [
            predictor.score(EventColumns({k: c[i : i + 1] for k, c in events.columns.items()}, 1))
            for i in range(0, n, 97)
        ]
    )
    np.testing.assert_allclose(one_by_one, together[::97], rtol=0, atol=1e-6)


def test_user_code_is_refused_in_safe_mode_and_never_runs(
    bundles: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    with pytest.raises(UnsafeBundleError, match="MLAAS4HEP_SERVE_TRUST_USER_CODE=1"):
        Predictor.load(bundles["user"], "tth:user")
    assert not marker.exists()
    predictor = Predictor.load(bundles["user"], "tth:user", trust_user_code=True)
    assert predictor.mode == "framework" and marker.exists()


def test_a_bundle_whose_scores_disagree_with_its_reference_is_refused(
    bundles: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundles["a"], copy)
    with np.load(copy / "reference.npz") as data:
        reference = {k: data[k] for k in data.files}
    reference["scores"] = reference["scores"] + 0.01
    np.savez(copy / "reference.npz", **reference)
    with pytest.raises(ConfigError, match="differ from the training job's"):
        Predictor.load(copy, "tth:tampered")
    with pytest.raises(ConfigError, match="not a model bundle"):
        Predictor.load(tmp_path, "tth:empty")


def test_the_server_switches_on_promotion_and_keeps_serving_after_a_bad_one(
    registry: Registry, bundles: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "ran.txt"))
    first = registry.promote(registry.add(bundles["a"], "tth"))
    second = registry.add(bundles["b"], "tth")
    user = registry.add(bundles["user"], "tth")
    server = ModelServer(ServeConfig(model="tth"), registry, watch=False)
    assert server.tag == first and server.ready()
    registry.promote(second)
    assert server.refresh() and server.tag == second
    registry.promote(user)
    assert not server.refresh() and server.tag == second
    assert "trust_user_code" in server.error and not (tmp_path / "ran.txt").exists()
    assert server.status()["model"]["tag"] == second
    assert server.status()["worker"] == os.getpid()  # which of the service's workers said so
    registry.promote(first)
    assert server.refresh() and server.tag == first and server.error is None
    empty = ModelServer(ServeConfig(model="ghost"), registry, watch=False)
    assert not empty.ready() and "ghost" in empty.error
    os.environ.pop(MARKER_ENV, None)


def test_a_worker_starts_whatever_fails_and_says_why(
    registry: Registry, bundles: dict[str, Path], monkeypatch
) -> None:
    good = registry.promote(registry.add(bundles["a"], "tth"))
    server = ModelServer(ServeConfig(model="tth"), registry, watch=False)
    assert server.tag == good
    failures = ServingMetrics.get().load_failures._value.get()

    def broken_load(*args, **kwargs):
        raise ValueError("a bundle no check foresaw")

    monkeypatch.setattr(Predictor, "load", broken_load)
    registry.promote(registry.add(bundles["b"], "tth"))
    assert not server.refresh() and server.tag == good  # the old version serves on
    assert "a bundle no check foresaw" in server.error
    assert ServingMetrics.get().load_failures._value.get() == failures + 1
    fresh = ModelServer(ServeConfig(model="tth"), registry, watch=False)  # starts anyway
    assert not fresh.ready() and "ValueError" in fresh.error

    def store_down(ref: str) -> str:
        raise RuntimeError("the store's disk went away")

    monkeypatch.setattr(registry, "resolve", store_down)
    assert not server.refresh() and server.tag == good
    assert "went away" in server.error
    assert not ModelServer(ServeConfig(model="tth"), registry, watch=False).ready()


@pytest.fixture
def shared(moto_server, tmp_path: Path):
    """``make(n)``: the n-th replica's registry, each with its own local store, all on one
    models bucket of the moto server."""
    import uuid

    bucket = f"models-{uuid.uuid4().hex[:8]}"
    moto_server.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/registry"

    def make(n: int) -> Registry:
        return Registry(tmp_path / f"replica-{n}", clock=ticking_clock(), bucket=url)

    return make


def test_replicas_share_versions_and_aliases_through_the_bucket(
    shared, bundles: dict[str, Path]
) -> None:
    one, two = shared(1), shared(2)
    tag = one.upload(tar_of(bundles["a"]), name="tth")
    assert two.resolve(tag) == tag and (two.path(tag) / "bundle.json").exists()  # fetched
    assert (
        two.path(tag).joinpath("model.pt").read_bytes() == (bundles["a"] / "model.pt").read_bytes()
    )
    assert [m["tag"] for m in two.list()] == [tag]
    one.promote(tag, reason={"by": "test", "why": "first"})
    assert two.resolve("tth") == tag and two.aliases() == {"tth": {"production": tag}}
    other = two.add(bundles["b"], "tth")
    two.promote(other)
    assert one.resolve("tth:production") == other  # promoted through the other replica
    (entry,) = [h for h in one.card(tag)["promotions"] if h["tag"] == tag]
    assert entry["by"] == "test" and entry["why"] == "first"
    with pytest.raises(RegistryConflict, match="aliased"):
        one.delete(other)
    two.delete(tag)
    with pytest.raises(ModelNotFound):
        one.promote(tag, "staging")
    one.sync()
    assert [m["tag"] for m in one.list()] == [other]
    fresh = shared(3)  # a new replica: everything from the bucket alone
    server = ModelServer(ServeConfig(model="tth"), fresh, watch=False)
    assert server.tag == other


def test_versions_are_manifests_over_content_addressed_blobs(shared, bundles) -> None:
    from mlaas4hep.serve.registry_bucket import file_digest

    one, two = shared(1), shared(2)
    first = one.add(bundles["a"], "tth")
    again = one.add(bundles["a"], "tth")  # the same bundle as a second version
    s3, bucket = one.bucket.s3, one.bucket.bucket
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    blobs = {k for k in keys if k.startswith("registry/blobs/sha256/")}
    manifests = {k for k in keys if k.startswith("registry/versions/")}
    assert keys == blobs | manifests
    assert manifests == {
        f"registry/versions/tth/{t.split(':')[1]}/registry.json" for t in (first, again)
    }
    record = one.bucket.record(first)
    files = sorted(p for p in bundles["a"].rglob("*") if p.is_file())
    assert {f"registry/blobs/sha256/{file_digest(p)[0]}" for p in files} == blobs  # stored once
    assert record["files"]["bundle.json"]["size"] == (bundles["a"] / "bundle.json").stat().st_size
    assert record["digest"] == one.bucket.record(again)["digest"]
    assert (
        two.path(first).joinpath("bundle.json").read_bytes()
        == (bundles["a"] / "bundle.json").read_bytes()
    )


def test_a_blob_changed_after_the_push_is_refused_by_name(shared, bundles) -> None:
    from mlaas4hep.serve.registry_errors import RegistryError

    one, two = shared(1), shared(2)
    tag = one.add(bundles["a"], "tth")
    digest = one.bucket.record(tag)["files"]["bundle.json"]["sha256"]
    one.bucket.s3.put_object(
        Bucket=one.bucket.bucket, Key=f"registry/blobs/sha256/{digest}", Body=b'{"x": 1}'
    )
    with pytest.raises(RegistryError, match=r"bundle\.json does not match the manifest"):
        two.resolve(tag)
    assert two.list() == []  # nothing half checked reached the cache


def test_deleting_a_version_collects_only_the_blobs_no_other_names(shared, bundles) -> None:
    one = shared(1)
    a, b = one.add(bundles["a"], "tth"), one.add(bundles["b"], "tth")
    named_a = {e["sha256"] for e in one.bucket.record(a)["files"].values()}
    named_b = {e["sha256"] for e in one.bucket.record(b)["files"].values()}
    one.delete(a)
    assert one.bucket.collect_blobs() == []  # within the grace period: kept
    assert sorted(one.bucket.collect_blobs(grace_seconds=-60)) == sorted(named_a - named_b)
    one.bucket.s3.head_object(  # a blob both held stays for b
        Bucket=one.bucket.bucket, Key=f"registry/blobs/sha256/{next(iter(named_b))}"
    )
    assert shared(2).path(b).joinpath("bundle.json").exists()


def test_an_unchanged_alias_document_is_not_fetched_again(shared, bundles, monkeypatch) -> None:
    one, two = shared(1), shared(2)
    one.promote(one.add(bundles["a"], "tth"))
    two.aliases()
    calls = []
    real = two.bucket.s3.get_object

    def counting(**kwargs):
        calls.append(kwargs.get("IfNoneMatch"))
        return real(**kwargs)

    monkeypatch.setattr(two.bucket.s3, "get_object", counting)
    first = two.aliases()
    assert two.aliases() is first and calls and all(calls)  # conditional reads: 304s
    one.promote(one.add(bundles["b"], "tth"))
    assert two.aliases() is not first and two.aliases()["tth"]["production"] != first


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_an_older_job_finishing_last_does_not_overwrite_production(
    where: str, shared, registry: Registry, bundles
) -> None:
    from mlaas4hep.serve.registry_errors import StaleCandidate

    store = shared(1) if where == "bucket" else registry
    older, newer = store.add(bundles["a"], "tth"), store.add(bundles["b"], "tth")
    store.promote(newer, reason={"dataset_spec_version": 200.0}, unless_newer=200.0)
    with pytest.raises(StaleCandidate, match="older than the one"):
        store.promote(older, reason={"dataset_spec_version": 100.0}, unless_newer=100.0)
    assert store.resolve("tth:production") == newer
    store.promote(older, unless_newer=300.0)  # trained on newer data: promoted
    assert store.resolve("tth:production") == older
    store.promote(newer)  # by hand (no version given): always
    assert store.resolve("tth:production") == newer


def test_concurrent_promotions_through_two_replicas_lose_none(shared, bundles) -> None:
    from concurrent.futures import ThreadPoolExecutor

    one, two = shared(1), shared(2)
    tags = [one.add(bundles["a" if i % 2 else "b"], "tth") for i in range(6)]
    plan = [(one if i % 2 else two, tags[i % len(tags)], i) for i in range(40)]

    def promote(step) -> None:
        replica, tag, i = step
        replica.promote(tag, reason={"step": i})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(promote, plan))
    history = [h for h in one.bucket.read_aliases()["history"] if h["alias"] == "production"]
    assert sorted(h["step"] for h in history) == list(range(40))  # every one, none lost
    assert one.resolve("tth:production") == history[-1]["tag"]  # the last writer won
    for before, after in itertools.pairwise(history):
        assert after["previous"] == before["tag"]  # each saw the one before it


# ------------------------------------------------------------------ hostile bundles


def test_a_version_named_like_an_alias_is_refused(
    registry: Registry, bundles: dict[str, Path], tmp_path: Path
) -> None:
    """A .bentomodel whose version is ``production`` would stand in front of the alias."""
    import shutil

    folder = tmp_path / "archive"
    shutil.copytree(bundles["a"], folder)
    (folder / "model.yaml").write_text("name: tth\nversion: production\n")
    with pytest.raises(ArchiveError, match="'production', which is an alias name"):
        registry.upload(tar_of(folder, arcname="."))
    assert registry.list() == []


@pytest.mark.parametrize("weights", ["../../etc/passwd", "/etc/passwd", ".hidden", "a/b.pt", 7])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(
    bundles: dict[str, Path], tmp_path: Path, weights: object
) -> None:
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(bundles["a"], folder)
    manifest = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").write_text(json.dumps({**manifest, "weights": weights}))
    with pytest.raises(ConfigError, match="must name a file inside the bundle"):
        Predictor.load(folder, "tth:hostile")
    with pytest.raises(ConfigError, match="must name a file inside the bundle"):
        ModelBundle.load(folder)


def test_keras_weights_that_point_outside_their_file_are_refused(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    from mlaas4hep.serve.predictor import keras_dense_layers

    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    external = tmp_path / "external.weights.h5"
    with h5py.File(external, "w") as f:
        f.create_dataset("dense/kernel", shape=(2, 4), dtype="f4", external=[(str(outside), 0, 32)])
        f.create_dataset("dense/bias", data=np.zeros(4, np.float32))
    with pytest.raises(ConfigError, match="keeps its data outside the file"):
        keras_dense_layers(external, 2)
    linked = tmp_path / "linked.weights.h5"
    with h5py.File(linked, "w") as f:
        f["dense/bias"] = np.zeros(4, np.float32)
        f["dense/kernel"] = h5py.ExternalLink(str(external), "/dense/kernel")
    with pytest.raises(ConfigError, match="is a link"):
        keras_dense_layers(linked, 2)


@pytest.mark.parametrize(
    "content", [b"not a zip at all", b"PK\x03\x04 truncated", None], ids=["garbage", "zip", "keys"]
)
def test_a_garbage_reference_file_is_a_clear_refusal(
    bundles: dict[str, Path], tmp_path: Path, content: bytes | None
) -> None:
    import shutil

    folder = tmp_path / "bundle"
    shutil.copytree(bundles["a"], folder)
    if content is None:
        np.savez(folder / "reference.npz", other=np.zeros(3))
    else:
        (folder / "reference.npz").write_bytes(content)
    with pytest.raises(ConfigError, match="reference.npz is not three arrays"):
        Predictor.load(folder, "tth:garbage")


def test_concurrent_promotions_and_deletions_leave_no_alias_dangling(
    registry: Registry, bundles: dict[str, Path]
) -> None:
    """Delete and promote decide under the same lock: whatever the interleaving, every
    alias names a version that exists."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    tags = [registry.add(bundles["a" if i % 2 else "b"], "tth") for i in range(8)]
    rng = random.Random(5)
    plan = [(rng.choice(("promote", "delete")), rng.choice(tags)) for _ in range(200)]

    def act(step: tuple[str, str]) -> None:
        action, tag = step
        try:
            if action == "promote":
                registry.promote(tag, rng.choice(("production", "staging")))
            else:
                registry.delete(tag)
        except (RegistryConflict, ModelNotFound):
            pass  # aliased, or gone already: refused, not half done

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(act, plan))
    existing = {str(m.tag) for m in registry.store.list()}
    for alias, tag in registry.aliases().get("tth", {}).items():
        assert tag in existing, (alias, tag)
        assert registry.resolve(f"tth:{alias}") == tag


@pytest.mark.parametrize("mode", ["w:gz", "w:xz", "w:bz2", "w"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_a_truncated_or_corrupt_archive_is_refused_and_leaves_nothing(
    registry: Registry, bundles: dict[str, Path], mode: str, keep: float
) -> None:
    whole = tar_of(bundles["a"], mode=mode)
    with pytest.raises(
        ArchiveError, match="truncated or corrupt|lacks|not valid JSON|not a tar|no bundle.json"
    ) as caught:
        registry.upload(whole[: int(len(whole) * keep)], name="tth")
    assert caught.value.status == 400
    assert registry.list() == []
    flipped = bytearray(whole)
    flipped[int(len(whole) * keep)] ^= 0xFF  # one corrupt byte
    try:  # refused as an archive, or (where the byte fell in padding) a valid upload
        registry.upload(bytes(flipped), name="tth")
    except ArchiveError as err:
        assert err.status == 400
        assert registry.list() == []
