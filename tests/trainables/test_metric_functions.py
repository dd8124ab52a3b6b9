"""Run metrics from curves and bootstrap statistics (trainables/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.metrics import (
    ACCURACY_OBJECTIVES,
    OBJECTIVES,
    bootstrap_ci,
    first_epoch_auc,
    paired_difference,
    run_metrics,
    samples_to_target,
    summarize,
)


@pytest.mark.parametrize(
    ("samples", "curve", "epoch_length", "expected"),
    [
        # docstring example: trapezoids (1 + 0.5)/2 * 50 + (0.5 + 0)/2 * 50 = 50, / 100
        ([0, 50, 100], [[1.0, 0.5, 0.0]], 100, [0.5]),
        # uneven spacing: (2 + 0)/2 * 10 + 0 * 90 = 10, / 100
        ([0, 10, 100], [[2.0, 0.0, 0.0]], 100, [0.1]),
        # points after the first epoch are ignored: (4 + 2)/2 * 20 = 60, / 20
        ([0, 20, 40, 60], [[4.0, 2.0, 100.0, 100.0]], 20, [3.0]),
        # two replicates at once
        ([0, 25, 50], [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], 50, [1.0, 0.5]),
    ],
)
def test_first_epoch_auc_hand_examples(
    samples: list[int], curve: list[list[float]], epoch_length: int, expected: list[float]
) -> None:
    """Trapezoid area under the curve over samples 0..epoch_length, divided by its length."""
    got = first_epoch_auc(np.array(samples), np.array(curve), epoch_length)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_samples_to_target_first_hit_and_censoring() -> None:
    """First point with accuracy >= target; never reached: censored at the last point."""
    samples = np.array([0, 100, 200, 300])
    accuracy = np.array([
        [0.1, 0.5, 0.95, 0.80],  # first reaches 0.9 at 200 (and later falls again)
        [0.1, 0.2, 0.30, 0.40],  # never
        [0.1, 0.9, 0.90, 0.90],  # exactly the target counts
        [0.95, 1.0, 1.0, 1.0],  # already at 0 samples
    ])
    to_target, reached = samples_to_target(samples, accuracy, 0.9)
    assert to_target.tolist() == [200.0, 300.0, 100.0, 0.0]
    assert reached.tolist() == [True, False, True, True]


def test_run_metrics_has_every_objective() -> None:
    """run_metrics gives every OBJECTIVES metric per replicate, consistent with its parts."""
    samples = np.array([0, 50, 100, 150])
    loss = np.array([[1.0, 0.5, 0.25, 0.2], [1.0, 0.8, 0.6, 0.5]])
    accuracy = np.array([[0.1, 0.6, 0.9, 0.95], [0.1, 0.3, 0.5, 0.6]])
    metrics = run_metrics(samples, loss, accuracy, epoch_length=100, target_accuracy=0.9)
    assert set(OBJECTIVES) <= set(metrics)
    np.testing.assert_allclose(metrics["test_loss_auc"], [0.5625, 0.8])
    # accuracy AUCs: (0.35 + 0.75) / 2 = 0.55 and (0.2 + 0.4) / 2 = 0.3
    np.testing.assert_allclose(metrics["test_error_auc"], [1 - 0.55, 1 - 0.3])
    assert metrics["final_test_loss"].tolist() == [0.2, 0.5]
    assert metrics["final_test_accuracy"].tolist() == [0.95, 0.6]
    assert metrics["samples_to_target"].tolist() == [100.0, 150.0]
    assert metrics["target_reached"].tolist() == [1.0, 0.0]
    assert all(OBJECTIVES[name] in ("min", "max") for name in OBJECTIVES)


def test_run_metrics_without_accuracy_has_only_loss_metrics() -> None:
    """Autoencoders (accuracy NaN): no accuracy metrics, so no censored samples_to_target."""
    samples = np.array([0, 50, 100])
    loss = np.array([[1.0, 0.5, 0.0]])
    metrics = run_metrics(samples, loss, np.full_like(loss, np.nan), 100, target_accuracy=0.9)
    assert set(metrics) == {"test_loss_auc", "final_test_loss"}
    assert not set(ACCURACY_OBJECTIVES) & set(metrics)
    np.testing.assert_allclose(metrics["test_loss_auc"], [0.5])


@pytest.mark.parametrize("values", [[0.3, 0.5, 0.1, 0.9, 0.4], [2.0, 2.1], list(range(20))])
def test_bootstrap_ci_is_deterministic_and_contains_the_mean(values: list[float]) -> None:
    """Same values: same interval; low <= mean <= high, inside [min, max], not degenerate."""
    low, high = bootstrap_ci(np.array(values))
    assert (low, high) == bootstrap_ci(np.array(values))
    assert min(values) <= low <= float(np.mean(values)) <= high <= max(values)
    assert low < high


def test_bootstrap_ci_single_value_and_constant() -> None:
    """One value or all equal: a zero-width interval at that value."""
    assert bootstrap_ci(np.array([0.7])) == (0.7, 0.7)
    low, high = bootstrap_ci(np.array([0.25, 0.25, 0.25]))
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_bootstrap_ci_narrows_with_more_replicates() -> None:
    """A 95% CI of the mean shrinks roughly like 1/sqrt(R)."""
    rng = np.random.default_rng(0)
    small = rng.normal(size=10)
    large = rng.normal(size=1000)
    width_small = np.subtract(*bootstrap_ci(small)[::-1])
    width_large = np.subtract(*bootstrap_ci(large)[::-1])
    assert width_large < width_small / 5


def test_summarize_and_paired_difference() -> None:
    """summarize: mean and CI per metric; paired_difference: mean of a - b with its CI."""
    summary = summarize({"m": np.array([1.0, 2.0, 3.0])})
    assert set(summary) == {"m", "m_ci_low", "m_ci_high"}
    assert summary["m"] == 2.0 and summary["m_ci_low"] <= 2.0 <= summary["m_ci_high"]
    diff = paired_difference(np.array([1.0, 2.0, 3.5]), np.array([0.5, 1.0, 3.0]))
    assert diff["effect"] == pytest.approx(2.0 / 3.0)
    assert diff["ci_low"] <= diff["effect"] <= diff["ci_high"]
