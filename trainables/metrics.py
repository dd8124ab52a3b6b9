"""Run metrics from learning curves, and bootstrap statistics over replicates.

The objective of the paper is *learning efficiency*: how low the test error is, on average, while
the first epoch is being learned. We measure it as the area under the test-loss curve over the
first epoch divided by the epoch length (the mean test loss over the first epoch, trapezoid rule
over the evaluation points), so it is comparable across data sets of different sizes.

Example:
    >>> samples = np.array([0, 50, 100])
    >>> loss = np.array([[1.0, 0.5, 0.0]])
    >>> float(first_epoch_auc(samples, loss, epoch_length=100)[0])
    0.5
"""

from __future__ import annotations

import numpy as np

OBJECTIVES: dict[str, str] = {
    "test_loss_auc": "min",
    "test_error_auc": "min",
    "final_test_loss": "min",
    "final_test_accuracy": "max",
    "samples_to_target": "min",
}
"""Run metrics a study may optimise, with their direction."""

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def first_epoch_auc(samples_seen: np.ndarray, curve: np.ndarray, epoch_length: int) -> np.ndarray:
    """Area under ``curve`` [R, E] over samples 0..epoch_length, divided by epoch_length -> [R]."""
    inside = samples_seen <= epoch_length
    x = samples_seen[inside].astype(np.float64)
    y = curve[:, inside].astype(np.float64)
    area = np.sum((y[:, 1:] + y[:, :-1]) * np.diff(x) / 2.0, axis=1)
    return area / float(x[-1] - x[0])


def samples_to_target(
    samples_seen: np.ndarray, accuracy: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """First evaluation point where accuracy >= target, per replicate.

    Returns:
        (samples [R], reached [R] bool). A replicate that never reaches the target is censored
        at the last evaluation point (its ``reached`` is False).
    """
    hit = accuracy >= target
    reached = hit.any(axis=1)
    first = np.where(reached, hit.argmax(axis=1), len(samples_seen) - 1)
    return samples_seen[first].astype(np.float64), reached


def run_metrics(
    samples_seen: np.ndarray,
    test_loss: np.ndarray,
    test_accuracy: np.ndarray,
    epoch_length: int,
    target_accuracy: float,
) -> dict[str, np.ndarray]:
    """Every run metric per replicate ([R] arrays) from curves [R, E]."""
    to_target, reached = samples_to_target(samples_seen, test_accuracy, target_accuracy)
    return {
        "test_loss_auc": first_epoch_auc(samples_seen, test_loss, epoch_length),
        "test_error_auc": first_epoch_auc(samples_seen, 1.0 - test_accuracy, epoch_length),
        "final_test_loss": test_loss[:, -1].astype(np.float64),
        "final_test_accuracy": test_accuracy[:, -1].astype(np.float64),
        "samples_to_target": to_target,
        "target_reached": reached.astype(np.float64),
    }


def bootstrap_ci(
    values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval (95%) of the mean of ``values`` [R].

    Deterministic (fixed seed), so the same curves always give the same interval. One value gives
    a zero-width interval.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1.0 - CONFIDENCE) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean of a - b over seed-paired replicates with its bootstrap CI."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_ci(diff)
    return {"effect": float(diff.mean()), "ci_low": low, "ci_high": high}


def summarize(per_replicate: dict[str, np.ndarray]) -> dict[str, float]:
    """Replicate mean and 95% CI of each metric: ``name``, ``name_ci_low``, ``name_ci_high``."""
    out: dict[str, float] = {}
    for name, values in per_replicate.items():
        low, high = bootstrap_ci(values)
        out[name] = float(np.mean(values))
        out[f"{name}_ci_low"] = low
        out[f"{name}_ci_high"] = high
    return out
