"""Search spaces: every registered space samples valid, distinct, role-tagged parameters."""

from __future__ import annotations

import pickle

import optuna
import pytest

from search_spaces import (
    PAPER_SETTING,
    ROLES,
    SPACES,
    apply_params,
    inline_space,
    paper_setting,
    params_of,
    point_config,
    role,
)
from trainables.config import MODELS, TrialConfig


def _sample(space, seed: int = 0) -> dict:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    constants = space(trial) or {}
    return {**trial.params, **constants}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_samples_valid_trial_configs(name: str) -> None:
    for seed in range(20):
        params = _sample(SPACES[name], seed)
        assert params, name
        for param in params:
            assert role(param) in ("scientific", "nuisance"), "every parameter has a role"
        point_config(TrialConfig(model=name), params)  # in the engine's own bounds


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_space_and_a_paper_setting_inside_it(model: str) -> None:
    assert model in SPACES
    setting = paper_setting(model)
    assert setting["learning_rate"] == PAPER_SETTING["learning_rate"] == 0.01
    study = optuna.create_study()
    study.enqueue_trial(setting)
    trial = study.ask()
    SPACES[model](trial)
    assert trial.params == setting, "the paper point lies inside the default space"


def test_roles() -> None:
    assert ROLES["leak"] == "scientific"
    assert ROLES["reset_threshold"] == "scientific"
    assert ROLES["learning_rate"] == "nuisance"
    assert role("leak_group2") == "scientific"
    with pytest.raises(KeyError, match="leak_group<g>"):
        role("batch_size")  # fixed by the spec, never searched


# The searched parameters of each model family (the brief of the core issue).
FAMILIES = {
    "feedforward": {"learning_rate"},
    "leaky": {"learning_rate", "leak"},
    "leaky-reset": {"learning_rate", "leak"},
    "leaky-threshold": {"learning_rate", "leak", "reset_threshold"},
    "multiscale": {"learning_rate", "leak_group0", "leak_group1", "leak_group2"},
    "multiscale-reset": {
        "learning_rate",
        "leak_group0",
        "leak_group1",
        "leak_group2",
        "reset_threshold",
    },
    "minibatch": {"learning_rate"},
    "lstm": {"learning_rate"},
}


@pytest.mark.parametrize("model", MODELS)
def test_each_family_searches_its_parameters(model: str) -> None:
    assert set(_sample(SPACES[model])) == FAMILIES[model]
    assert set(paper_setting(model)) == FAMILIES[model]


def test_paper_values() -> None:
    assert paper_setting("multiscale-reset") == {
        "learning_rate": 0.01,
        "leak_group0": 0.0,
        "leak_group1": 0.3,
        "leak_group2": 0.6,
        "reset_threshold": 1.0,
    }
    assert PAPER_SETTING["leak"] == 0.5


def test_group_leaks_go_into_trial_config_group_leaks() -> None:
    base = TrialConfig(model="multiscale", group_leaks=(0.1, 0.2, 0.3, 0.4))
    config = point_config(base, {"leak_group0": 0.5, "leak_group2": 0.9, "learning_rate": 0.1})
    assert config.group_leaks == (0.5, 0.2, 0.9, 0.4) and config.learning_rate == 0.1
    assert params_of(config, ["leak_group2", "learning_rate"]) == {
        "leak_group2": 0.9,
        "learning_rate": 0.1,
    }
    with pytest.raises(ValueError, match="group < len"):
        apply_params(TrialConfig(group_leaks=(0.0,)).to_dict(), {"leak_group1": 0.3})


def test_inline_space_samples_its_ranges_and_pickles() -> None:
    space = inline_space(
        {"learning_rate": {"low": 1e-3, "high": 0.3, "log": True}, "leak": {"low": 0, "high": 0.9}}
    )
    space = pickle.loads(pickle.dumps(space))  # Ray pickles the searcher holding it
    for seed in range(10):
        params = _sample(space, seed)
        assert 1e-3 <= params["learning_rate"] <= 0.3
        assert 0 <= params["leak"] <= 0.9


def test_inline_space_choices() -> None:
    params = _sample(inline_space({"leak": {"choices": [0.0, 0.5]}}))
    assert params["leak"] in (0.0, 0.5)


def test_inline_space_searches_group_leaks() -> None:
    params = _sample(inline_space({"leak_group1": {"low": 0.2, "high": 0.4}}))
    assert 0.2 <= params["leak_group1"] <= 0.4


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"momentum": {"low": 0, "high": 1}}, ["momentum", "allowed"]),
        ({"leak": {"low": 0.5, "high": 0.1}}, ["low < high", "leak"]),
        ({"leak": {"low": 0, "high": 2}}, ["leak", "[0, 1]"]),
        ({"learning_rate": {"low": 0, "high": 1, "log": True}}, ["log", "low > 0"]),
        ({"leak": {"low": 0}}, ["leak", "low, high"]),
        ({"leak": {"low": "a", "high": 1}}, ["leak", "number"]),
        ({"leak_group0": {"low": 0, "high": 1.5}}, ["leak_group0", "[0, 1]"]),
    ],
)
def test_inline_space_rejects_bad_tables(table: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        inline_space(table)
    for word in words:
        assert word in str(caught.value)
