"""Search spaces: every registered space samples valid, distinct, role-tagged parameters."""

from __future__ import annotations

import pickle

import optuna
import pytest

from search_spaces import PAPER_SETTING, ROLES, SPACES, inline_space, paper_setting
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
        assert set(params) <= set(ROLES), "every searched parameter declares its role"
        TrialConfig(**params)  # in the engine's own bounds


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


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"momentum": {"low": 0, "high": 1}}, ["momentum", "allowed"]),
        ({"leak": {"low": 0.5, "high": 0.1}}, ["low < high", "leak"]),
        ({"leak": {"low": 0, "high": 2}}, ["leak", "[0, 1]"]),
        ({"learning_rate": {"low": 0, "high": 1, "log": True}}, ["log", "low > 0"]),
        ({"leak": {"low": 0}}, ["leak", "low, high"]),
        ({"leak": {"low": "a", "high": 1}}, ["leak", "number"]),
    ],
)
def test_inline_space_rejects_bad_tables(table: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        inline_space(table)
    for word in words:
        assert word in str(caught.value)
