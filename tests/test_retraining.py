"""Continuous training decisions: which version serves after a retraining, and why."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mlaas4hep.errors import ConfigError
from mlaas4hep.pipeline.retraining import decide, recipe_config, retrain
from mlaas4hep.spec.compute import compute_file_spec
from mlaas4hep.spec.documents import DatasetSpec

RECIPE = {
    "dataset": {"files": ["ignored.root"], "labels": {"ttH_signal*.root": 1, "*": 0}},
    "vectorizer": {"normalization": "minmax"},
    "training": {"epochs": 1, "chunk_size": 4000, "batch_size": 256},
    "scaling": {"num_workers": 1},
}


def test_first_model_is_promoted() -> None:
    decision = decide("m:1", 0.8, None, None, 0.01)
    assert decision.promote and "no model" in decision.reason


def test_worse_beyond_margin_keeps_the_current_model_and_says_why() -> None:
    decision = decide("m:2", 0.75, "m:1", 0.80, 0.02)
    assert not decision.promote
    assert "0.0500 worse" in decision.reason and "m:1" in decision.reason


def test_slightly_worse_within_margin_is_promoted() -> None:
    assert decide("m:2", 0.795, "m:1", 0.80, 0.01).promote


def test_candidate_without_auc_is_not_promoted() -> None:
    assert not decide("m:2", float("nan"), "m:1", 0.8).promote
    assert not decide("m:2", None, "m:1", 0.8).promote


@given(
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 0.2),
)
def test_promotion_is_exactly_the_margin_rule(new: float, old: float, margin: float) -> None:
    assert decide("m:2", new, "m:1", old, margin).promote == (new - old >= -margin)


@given(st.floats(0, 10), st.floats(0, 10), st.floats(0, 0.2))
def test_a_regression_is_promoted_unless_its_loss_is_higher_by_the_margin(
    new: float, old: float, margin: float
) -> None:
    decision = decide("m:2", new, "m:1", old, margin, metric="loss")
    assert decision.promote == (new - old <= margin) and decision.metric == "loss"


@pytest.fixture(scope="module")
def small_spec(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    from mlaas4hep.local.samples import make_tth_dataset

    folder = tmp_path_factory.mktemp("tth-retrain")
    files = make_tth_dataset(folder, n_events=2000, seed=3, block_size=1000)
    return DatasetSpec([compute_file_spec(str(f.path)) for f in files])


def test_recipe_trains_on_the_spec_files_with_a_run_per_spec(small_spec: DatasetSpec) -> None:
    text = yaml.safe_dump(RECIPE)
    config = recipe_config(text, "tth", small_spec, "s3://specs/d/tth/dataset.json", "s3://m/tth/")
    assert config.dataset.files == sorted(small_spec.files)
    assert config.spec == "s3://specs/d/tth/dataset.json"
    assert config.output.location == "s3://m/tth/runs"
    again = recipe_config(text, "tth", small_spec, "s3://x", "s3://m/tth/")
    assert again.output.run_name == config.output.run_name
    fewer = small_spec.without(sorted(small_spec.files)[0])
    other = recipe_config(text, "tth", fewer, "s3://x", "s3://m/tth/")
    assert other.output.run_name != config.output.run_name


def test_a_recipe_that_stages_without_a_cache_stages_into_the_deployments(
    small_spec: DatasetSpec,
) -> None:
    staged = yaml.safe_dump({**RECIPE, "staging": {"enabled": True, "mode": "while"}})
    config = recipe_config(staged, "tth", small_spec, "u", "s3://m/tth/", "s3://cache/staged/")
    assert config.staging.enabled and config.staging.cache == "s3://cache/staged/tth/"
    own = yaml.safe_dump({**RECIPE, "staging": {"enabled": True, "cache": "/scratch/c"}})
    assert recipe_config(own, "tth", small_spec, "u", "m", "s3://c/").staging.cache == "/scratch/c"
    plain = recipe_config(yaml.safe_dump(RECIPE), "tth", small_spec, "u", "m", "s3://c/")
    assert not plain.staging.enabled and plain.staging.cache is None
    with pytest.raises(ConfigError, match="staging.cache"):
        recipe_config(staged, "tth", small_spec, "u", "m")


def test_recipe_errors_name_the_problem(small_spec: DatasetSpec) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        recipe_config("a: [", "tth", small_spec, "u", "s3://m/")
    with pytest.raises(ConfigError, match="traning"):
        recipe_config(yaml.safe_dump({**RECIPE, "traning": {}}), "tth", small_spec, "u", "m")
    with pytest.raises(ConfigError, match="holds no files"):
        recipe_config(yaml.safe_dump(RECIPE), "tth", DatasetSpec(), "u", "m")


def ht_bundle(folder, sign: float, val_auc: float):
    """A default-architecture torch bundle scoring sigmoid(sign · 8 · HT/2000): ranking
    events by HT (signal-like, sign +1) or against it (sign -1); ``val_auc`` is what its
    own metrics claim, whatever it really does."""
    import torch

    from mlaas4hep.model.architectures import default_torch_model
    from mlaas4hep.model.bundle import ModelBundle
    from mlaas4hep.transform.vectorizer import Vectorizer

    block = {"name": "HT", "kind": "flat", "dtype": "float32", "length": 1, "shift": 0.0,
             "scale": 2000.0}  # fmt: skip
    vectorizer = Vectorizer.from_dict(
        {"config_version": 1, "normalization": "minmax", "pad_value": 0.0,
         "nonfinite": "mask", "blocks": [block]}
    )  # fmt: skip
    model = default_torch_model(1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        first, second, last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        first.weight[0, 0] = 1.0
        second.weight[0, 0] = 1.0
        last.weight[0, 0] = 8.0 * sign
    model.eval()
    bundle = ModelBundle(
        "torch", vectorizer, DatasetSpec(), model=model,
        metrics={"test_auc": val_auc, "history": [{"unit": 0, "val_auc": val_auc}]},
        lineage={"run_name": f"ht-{sign}-{val_auc}"},
    )  # fmt: skip
    return bundle.save(folder / f"ht-{sign}-{val_auc}")


@pytest.mark.parametrize(
    "candidate_sign, production_sign, promoted",
    [(+1, -1, True), (-1, +1, False)],
    ids=["better-on-shared-events-though-its-own-auc-is-lower", "the-reverse"],
)
def test_the_gate_compares_both_versions_on_the_same_test_events(
    small_spec: DatasetSpec, tmp_path, monkeypatch, candidate_sign, production_sign, promoted
) -> None:
    from mlaas4hep.serve.registry import Registry

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    registry = Registry()
    claims = {+1: 0.60, -1: 0.99}  # what each version's own metrics say: the opposite
    production = registry.promote(
        registry.add(ht_bundle(tmp_path, production_sign, claims[production_sign]), "tth")
    )
    candidate_bundle = ht_bundle(tmp_path, candidate_sign, claims[candidate_sign])
    models = tmp_path / "models"
    models.mkdir()
    (models / "train.yaml").write_text(
        yaml.safe_dump(  # in the order written: the first pattern that matches labels a file
            {**RECIPE, "dataset": {**RECIPE["dataset"], "include": ["HT"]}}, sort_keys=False
        )
    )
    spec_path = tmp_path / "dataset.json"
    spec_path.write_text(small_spec.to_json())

    def train(config):
        tag = Registry().add(candidate_bundle, "tth")
        return {"tag": tag, "val_auc": claims[candidate_sign], "run_name": config.output.run_name}

    record = retrain("tth", str(spec_path), str(models), train=train, log=lambda line: None)
    decision, comparison = record["decision"], record["comparison"]
    assert decision["promote"] is promoted, decision["reason"]
    assert decision["current"] == production and comparison["events"] > 0
    assert decision["events"] == comparison["events"]
    assert comparison["metric"] == decision["metric"] == "auc"
    assert (comparison["candidate_value"] > 0.5) is (candidate_sign > 0)
    assert (comparison["current_value"] > 0.5) is (production_sign > 0)
    served = Registry().resolve("tth:production")
    assert served == (decision["candidate"] if promoted else production)
    if promoted:
        (entry,) = [h for h in Registry().card(served)["promotions"] if h["tag"] == served]
        assert entry["decision"]["events"] == comparison["events"] and "retraining" in entry["by"]
