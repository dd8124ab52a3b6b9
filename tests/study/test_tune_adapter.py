"""The Tune adapter's pure parts: config translation, running objective, finite penalties."""

from __future__ import annotations

import math

import pytest

from trainables.config import TrialConfig
from trainables.metrics import OBJECTIVES, first_epoch_auc
from trainables.tune_adapter import curves, penalty, running_objective, trial_config


def test_trial_config_merges_searched_params_into_the_base() -> None:
    base = TrialConfig(model="leaky", replicates=3).to_dict()
    config = trial_config({"base": base, "params": {"leak": 0.7, "learning_rate": 0.2}})
    assert (config.leak, config.learning_rate, config.replicates) == (0.7, 0.2, 3)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_penalty_is_finite_and_ranks_last(objective: str) -> None:
    value = penalty(objective)
    assert math.isfinite(value)
    assert value > 1e3 if OBJECTIVES[objective] == "min" else value < -1e3


def test_running_auc_matches_the_engine_metric_at_the_end() -> None:
    import numpy as np

    samples = [0, 50, 100, 150]
    loss = [0.4, 0.3, 0.25, 0.2]
    history = [
        {"samples_seen": s, "eval/test_loss": v} for s, v in zip(samples, loss, strict=True)
    ]
    expected = first_epoch_auc(np.array(samples), np.array([loss]), 150)[0]
    assert running_objective("test_loss_auc", history, 150, 0.9) == pytest.approx(expected)
    assert running_objective("final_test_loss", history, 150, 0.9) == 0.2


def test_running_samples_to_target_is_censored() -> None:
    history = [
        {"samples_seen": s, "eval/test_accuracy": a}
        for s, a in ((0, 0.2), (50, 0.95), (100, 0.99))
    ]
    assert running_objective("samples_to_target", history, 100, 0.9) == 50
    assert running_objective("samples_to_target", history[:1], 100, 0.9) == 0


def test_curves_are_json_ready_with_nan_as_none() -> None:
    import json

    import numpy as np

    from trainables.engine import TrialResult

    result = TrialResult(
        TrialConfig(replicates=2),
        np.array([0, 10]),
        np.array([[0.5, np.nan], [0.4, 0.3]]),
        np.array([[0.1, 0.2], [0.3, 0.4]]),
        diverged=True,
        seconds=1.0,
    )
    payload = json.loads(json.dumps(curves(result), allow_nan=False))
    assert payload["test_loss"] == [[0.5, None], [0.4, 0.3]]
    assert payload["samples_seen"] == [0, 10] and payload["diverged"] is True
