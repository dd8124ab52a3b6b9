"""A checkpoint holds a trial's whole state, for every model family and optimizer.

Invariant: a run stopped after any evaluation point, pickled (as the Tune adapter does),
loaded into a fresh run and finished gives exactly (bit for bit, CPU) the curves, run metrics,
weights and memory state of the uninterrupted run. Between the two halves the global torch and
numpy random states are scrambled: the engine must not depend on them (it draws no random
numbers after construction), so weights, optimizer buffers, memory state, the position in the
ordering and the curves so far are all there is to carry.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from trainables.config import DatasetConfig, TrialConfig
from trainables.engine import TrialRun

SYNTHETIC = DatasetConfig(categories=3, features=6, train_per_category=12, test_per_category=6)
STREAM = DatasetConfig(name="multiscale-stream", stream_length=60, test_stream_length=20)

CASES: dict[str, dict[str, Any]] = {
    "feedforward-random": {"model": "feedforward", "ordering": "random"},
    "leaky-unscaled": {"model": "leaky", "gradient": "leak-unscaled"},
    "leaky-reset-two-layers": {"model": "leaky-reset", "hidden": (6, 4)},
    "leaky-threshold": {"model": "leaky-threshold", "reset_threshold": 0.8},
    "streamed-test": {"model": "leaky-reset", "test_protocol": "streamed"},
    # batches of 4 with evaluations every 7 samples: checkpoints fall inside a batch
    "minibatch-mid-batch": {"model": "minibatch", "batch_size": 4},
    "rmsprop-momentum": {"model": "leaky", "optimizer": "rmsprop", "momentum": 0.5},
    # a BPTT window of 3 with evaluations every 7 samples: checkpoints fall inside a window
    "lstm": {"model": "lstm", "bptt_window": 3, "learning_rate": 0.1, "epochs": 1},
    "multiscale-reset-autoencoder": {
        "model": "multiscale-reset",
        "ordering": "stream",
        "task": "reconstruct",
        "hidden": (3,),
        "reset_scope": "group",
        "dataset": STREAM,
    },
}


def _config(case: str) -> TrialConfig:
    values: dict[str, Any] = {
        "model": "leaky",
        "ordering": "reps-3",
        "dataset": SYNTHETIC,
        "hidden": (6,),
        "learning_rate": 0.05,
        "leak": 0.6,
        "replicates": 2,
        "epochs": 2,
        "eval_every": 7,
        "dtype": "float64",
        **CASES[case],
    }
    return TrialConfig(**values)


def _state(run: TrialRun) -> list[torch.Tensor]:
    state = run.state_dict()
    optimizer = state["optimizer"]
    return [
        *state["weights"],
        *state["biases"],
        *state["hidden"],
        *optimizer["grads"],
        *optimizer["square_avg"],
        *optimizer["momentum_buf"],
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_after_any_evaluation_is_exact(case: str) -> None:
    config = _config(case)
    whole = TrialRun(config)
    list(whole)
    expected = whole.result()
    stops = sorted({1, len(whole.eval_points) - 2})
    for stop in stops:  # evaluation points before the interruption
        first = TrialRun(config)
        points = iter(first)
        for _ in range(stop):
            next(points)
        state = pickle.loads(pickle.dumps(first.state_dict()))
        del first, points
        torch.manual_seed(1234 + stop)  # scramble the global RNGs between the two halves
        np.random.seed(4321 + stop)
        torch.rand(17)
        resumed = TrialRun(config)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(whole.eval_points) - stop
        got = resumed.result()
        np.testing.assert_array_equal(got.samples_seen, expected.samples_seen)
        np.testing.assert_array_equal(got.test_loss, expected.test_loss)
        np.testing.assert_array_equal(got.test_accuracy, expected.test_accuracy)
        assert got.diverged == expected.diverged
        science = {k: v for k, v in expected.summary.items() if not k.startswith("perf/")}
        mine = {k: v for k, v in got.summary.items() if not k.startswith("perf/")}
        np.testing.assert_equal(mine, science)  # NaN (no accuracy for autoencoders) == NaN
        for mine, theirs in zip(_state(resumed), _state(whole), strict=True):
            assert torch.equal(mine, theirs)
