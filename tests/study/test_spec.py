"""Study spec: presets, TOML files, --set overrides, one-message validation, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.spec import (
    DEFAULT_PRESET,
    SpecError,
    StudySpec,
    apply_override,
    load_spec,
    preset_names,
    preset_text,
)


def test_presets_load_and_round_trip() -> None:
    assert {"paper-fig2-synthetic", "paper-fig2-mnist", "paper-fig2-fashion", "smoke"} <= set(
        preset_names()
    )
    for name in preset_names():
        spec = load_spec(name)
        assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
        assert preset_text(name).startswith("# study run"), "first line shows the command"


def test_default_preset_is_the_paper_fig2_synthetic_study() -> None:
    spec = load_spec(None)
    assert spec.name == DEFAULT_PRESET == "paper-fig2-synthetic"
    assert spec.models == ("feedforward", "leaky", "leaky-reset")
    assert spec.orderings == ("random", "reps-1", "reps-3", "reps-5")
    (dataset,) = spec.datasets
    assert (dataset.name, dataset.categories, dataset.train_per_category) == (
        "synthetic-categories",
        4,
        300,
    )
    assert spec.network.hidden == (8,) and spec.network.learning_rate == 0.01
    assert spec.network.leak == 0.5 and spec.paper_setting_first


def test_overrides_parse_toml_literals_lists_and_nested_keys() -> None:
    spec = load_spec(
        "smoke",
        [
            "trials_per_cell=5",
            "replicates=3",
            "max_concurrent_trials=1",
            "seed=7",
            "models=feedforward,leaky",
            "orderings=random,reps-2",
            "network.hidden=16,8",
            "network.learning_rate=0.05",
            "datasets.synthetic-categories.train_per_category=40",
            "datasets.0.noise=0.25",
            "search_space.leaky={leak={low=0, high=0.9}}",
            "paper_setting_first=false",
            "name=my-study",
        ],
    )
    assert (spec.trials_per_cell, spec.replicates, spec.max_concurrent_trials, spec.seed) == (
        5,
        3,
        1,
        7,
    )
    assert spec.models == ("feedforward", "leaky")
    assert spec.orderings == ("random", "reps-2")
    assert spec.network.hidden == (16, 8) and spec.network.learning_rate == 0.05
    assert spec.datasets[0].train_per_category == 40 and spec.datasets[0].noise == 0.25
    assert spec.space_name("leaky") == "inline" and spec.space_name("feedforward") == "feedforward"
    assert not spec.paper_setting_first and spec.name == "my-study"


def test_toml_file_and_relative_paths_become_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(
        'name = "t"\nmodels = ["leaky"]\ntracking_uri = "sqlite:///store/m.db"\n'
        'storage_path = "results"\ndata_dir = "data"\n'
        '[[datasets]]\nname = "mnist"\ntrain_per_category = "all"\n'
        '[search_space]\nleaky = "leaky"\n'
    )
    spec = load_spec("s.toml")
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/store/m.db"
    assert spec.storage_path == str(tmp_path / "results")
    assert spec.data_dir == str(tmp_path / "data")
    assert spec.datasets[0].train_per_category is None
    assert spec.dataset_configs()[0].data_dir == str(tmp_path / "data")


def test_defaults_live_in_the_project_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec("smoke")
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert spec.storage_path == str(tmp_path / ".study" / "ray_results")


BAD = [
    (["replicates=abc"], "replicates", "integer"),
    (["replicates=0"], "replicates", ">= 1"),
    (["trials_per_cell=1.5"], "trials_per_cell", "integer"),
    (["replicat=3"], "replicat", "did you mean 'replicates'"),
    (["network.hiden=3"], "network.hiden", "did you mean 'network.hidden'"),
    (["datasets.0.nam=x"], "datasets.0.nam", "did you mean 'datasets.0.name'"),
    (["datasets.mnist.noise=1"], "datasets.mnist.noise", "names ['synthetic-categories']"),
    (["datasets.0.name=cifar"], "datasets[0].name", "mnist"),
    (["models=ff"], "models", "feedforward"),
    (["models=leaky,leaky"], "models", "at most once"),
    (["orderings=reps-0"], "orderings", "k >= 1"),
    (["orderings=sorted"], "orderings", "reps-k"),
    (["objective=auc"], "objective", "test_loss_auc"),
    (["sampler=tpee"], "sampler", "did you mean 'tpe'"),
    (["scheduler=hyperband"], "scheduler", "asha"),
    (["resources.gpu=1.5"], "resources.gpu", "fraction"),
    (["resources.cpu=0"], "resources.cpu", "> 0"),
    (["network.learning_rate=-1"], "network.learning_rate", "> 0"),
    (["network.leak=1.5"], "network.leak", "[0, 1]"),
    (["network.output=tanh"], "network.output", "sigmoid"),
    (["search_space.leaky=nope"], "search_space.leaky", "feedforward"),
    (["search_space.leaky={leak={low=0, high=2}}"], "search_space.leaky", "[0, 1]"),
    (["search_space.lstm=leaky"], "search_space", "leaky-reset"),
    (["name=a b"], "name", "no spaces"),
    (["paper_setting_first=yes"], "paper_setting_first", "boolean"),
    (["seed"], "--set", "key=value"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), BAD)
def test_bad_input_gives_one_message_naming_field_value_and_allowed(
    overrides: list[str], field: str, allowed: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("smoke", overrides)
    message = str(caught.value)
    assert message.startswith(field), message
    assert "is invalid:" in message and allowed in message, message
    assert "\n" not in message


def test_unknown_spec_source_lists_presets() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("paper-fig2-synth")
    assert "did you mean 'paper-fig2-synthetic'" in str(caught.value)
    with pytest.raises(SpecError, match="existing TOML file"):
        load_spec("missing.toml")


def test_bad_toml_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(SpecError, match="valid TOML"):
        load_spec(str(path))


def test_apply_override_creates_tables() -> None:
    values: dict = {}
    apply_override(values, "resources.cpu=2")
    assert values == {"resources": {"cpu": 2}}
    assert StudySpec.from_dict(values).resources.cpu == 2.0
