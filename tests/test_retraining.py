"""Continuous training decisions: which version serves after a retraining, and why."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mlaas4hep.errors import ConfigError
from mlaas4hep.pipeline.retraining import decide, recipe_config, val_auc_of
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
    assert "0.0500 below" in decision.reason and "m:1" in decision.reason


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


def test_val_auc_is_the_last_reported() -> None:
    metrics = {"history": [{"val_auc": 0.6}, {"val_auc": 0.7}, {"val_loss": 1.0}]}
    assert val_auc_of(metrics) == 0.7
    assert val_auc_of({}) is None


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


def test_recipe_errors_name_the_problem(small_spec: DatasetSpec) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        recipe_config("a: [", "tth", small_spec, "u", "s3://m/")
    with pytest.raises(ConfigError, match="traning"):
        recipe_config(yaml.safe_dump({**RECIPE, "traning": {}}), "tth", small_spec, "u", "m")
    with pytest.raises(ConfigError, match="holds no files"):
        recipe_config(yaml.safe_dump(RECIPE), "tth", DatasetSpec(), "u", "m")
