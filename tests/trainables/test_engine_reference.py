"""The batched engine against the independent per-sample autograd reference (STYLE 3.5)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from reference import ReferenceResult, stream_order, train_reference

from trainables.config import DatasetConfig, TrialConfig
from trainables.data import load_dataset
from trainables.engine import TrialRun

TOLERANCE = 1e-9

BASE = TrialConfig(
    dataset=DatasetConfig(categories=3, features=6, train_per_category=40, test_per_category=10),
    hidden=(5,),
    learning_rate=0.05,
    leak=0.6,
    replicates=1,
    epochs=2,  # 240 steps, crossing one epoch boundary
    eval_every=80,
    dtype="float64",
)

MODELS = ("feedforward", "leaky", "leaky-reset")
GRADIENTS = ("leak-scaled", "leak-unscaled")

# sigmoid + MSE for every model x gradient x ordering ...
CASES = [
    dict(model=m, gradient=g, ordering=o, output="sigmoid", loss="mse")
    for m, g, o in itertools.product(MODELS, GRADIENTS, ("random", "reps-3"))
]
# ... every other output/loss pair once per model (gradient and ordering alternate) ...
for i, ((output, loss), model) in enumerate(
    itertools.product(
        (("softmax", "cross-entropy"), ("softmax", "mse"), ("sigmoid", "cross-entropy")), MODELS
    )
):
    CASES.append(
        dict(model=model, gradient=GRADIENTS[i % 2], ordering=("random", "reps-3")[i // 2 % 2],
             output=output, loss=loss)
    )
# ... and a deeper net.
CASES += [
    dict(model="leaky-reset", gradient=g, ordering="reps-3", output="sigmoid", loss="mse",
         hidden=(6, 5))
    for g in GRADIENTS
] + [
    dict(model="leaky", gradient="leak-unscaled", ordering="random", output="softmax",
         loss="cross-entropy", hidden=(6, 5)),
]


def _case_id(case: dict) -> str:
    return "-".join(str(v) for v in case.values()).replace(" ", "")


def _engine_and_reference(
    config: TrialConfig, reference_config: TrialConfig | None = None
) -> tuple[TrialRun, list, ReferenceResult]:
    """Engine trained to the end, its eval points, and the reference from the same init/stream."""
    data = load_dataset(config.dataset)
    fresh = TrialRun(config, data=data)
    weights = [w[0].clone() for w in fresh.weights]
    biases = [b[0].clone() for b in fresh.biases]
    run = TrialRun(config, data=data)
    points = list(run)
    reference = train_reference(
        reference_config or config,
        data,
        stream_order(config, data, replicate_id=0),
        weights,
        biases,
        learning_rate=config.learning_rate,
        leak=config.leak,
        eval_at=run.eval_points,
    )
    return run, points, reference


def _max_weight_difference(run: TrialRun, reference: ReferenceResult) -> float:
    diffs = [
        float((mine[0] - theirs).abs().max())
        for mine, theirs in zip(
            [*run.weights, *run.biases], [*reference.weights, *reference.biases], strict=True
        )
    ]
    return max(diffs)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_engine_matches_autograd_reference(case: dict) -> None:
    """Engine weights, biases and test curve equal the per-sample autograd reference (1e-9)."""
    config = BASE.replace(**case)
    run, points, reference = _engine_and_reference(config)

    assert run.step == run.total_samples == 240
    assert _max_weight_difference(run, reference) < TOLERANCE
    # the run did learn something, so agreement is not agreement of two untouched nets
    assert float((run.weights[0][0] - TrialRun(config).weights[0][0]).abs().max()) > 1e-3

    assert [p.samples_seen for p in points] == reference.samples_seen
    np.testing.assert_allclose(
        [p.test_loss[0] for p in points], reference.test_loss, rtol=0, atol=TOLERANCE
    )
    np.testing.assert_allclose(
        [p.test_accuracy[0] for p in points], reference.test_accuracy, rtol=0, atol=TOLERANCE
    )


@pytest.mark.parametrize(
    ("engine_changes", "reference_changes"),
    [
        ({"model": "leaky", "gradient": "leak-scaled"}, {"gradient": "leak-unscaled"}),
        ({"model": "leaky", "gradient": "leak-unscaled"}, {"gradient": "leak-scaled"}),
        ({"model": "leaky-reset", "ordering": "reps-3"}, {"model": "leaky"}),
        ({"model": "leaky"}, {"model": "feedforward"}),
    ],
    ids=["scaled-vs-unscaled", "unscaled-vs-scaled", "reset-vs-no-reset", "leaky-vs-feedforward"],
)
def test_reference_comparison_detects_a_different_rule(
    engine_changes: dict, reference_changes: dict
) -> None:
    """The comparison discriminates: a reference with another memory/gradient rule is >1e-4 off."""
    config = BASE.replace(**engine_changes)
    run, _, reference = _engine_and_reference(config, config.replace(**reference_changes))
    assert _max_weight_difference(run, reference) > 1e-4


def test_engine_initial_weights_are_xavier_uniform_with_zero_bias() -> None:
    """Init: weights in +-sqrt(6 / (fan_in + fan_out)) filling the range, biases exactly zero."""
    config = BASE.replace(hidden=(40, 30), replicates=2)
    run = TrialRun(config)
    sizes = [6, 40, 30, 3]
    for w, b, fan_in, fan_out in zip(run.weights, run.biases, sizes[:-1], sizes[1:], strict=True):
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert w.shape == (2, fan_out, fan_in)
        assert b.shape == (2, fan_out)
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.8 * bound
        assert torch.equal(b, torch.zeros_like(b))
    assert not torch.equal(run.weights[0][0], run.weights[0][1])  # replicates differ
