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

import itertools

import numpy as np

OBJECTIVES: dict[str, str] = {
    "test_loss_auc": "min",
    "test_error_auc": "min",
    "final_test_loss": "min",
    "final_test_accuracy": "max",
    "samples_to_target": "min",
}
"""Run metrics a study may optimise, with their direction."""
ACCURACY_OBJECTIVES: tuple[str, ...] = (
    "test_error_auc",
    "final_test_accuracy",
    "samples_to_target",
)
"""The objectives computed from test accuracy. Autoencoders (task 'reconstruct') have no
accuracy (NaN curves), so their runs do not report these (nor ``target_reached``)."""

LATENT_OBJECTIVES: dict[str, str] = {
    "timescale_selectivity": "max",
    "timescale_selectivity_best": "max",
}
"""Further run metrics of data sets with latent states (multiscale-stream), with direction.
Autoencoders also report ``test_loss_auc_group{g}`` and ``final_test_loss_group{g}`` (min)."""

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
    """Every run metric per replicate ([R] arrays) from curves [R, E].

    Without accuracy (all NaN: autoencoders) only the loss metrics: samples to a target
    accuracy would otherwise read as censored at the end, a real-looking number.
    """
    out = {
        "test_loss_auc": first_epoch_auc(samples_seen, test_loss, epoch_length),
        "final_test_loss": test_loss[:, -1].astype(np.float64),
    }
    if np.isnan(test_accuracy).all():
        return out
    to_target, reached = samples_to_target(samples_seen, test_accuracy, target_accuracy)
    out.update({
        "test_error_auc": first_epoch_auc(samples_seen, 1.0 - test_accuracy, epoch_length),
        "final_test_accuracy": test_accuracy[:, -1].astype(np.float64),
        "samples_to_target": to_target,
        "target_reached": reached.astype(np.float64),
    })
    return out


def group_metrics(
    samples_seen: np.ndarray, group_loss: np.ndarray, epoch_length: int
) -> dict[str, np.ndarray]:
    """Per-feature-group run metrics ([R] arrays) from curves [R, E, G] (autoencoders).

    ``test_loss_auc_group{g}`` and ``final_test_loss_group{g}``; g counts feature groups in input
    order (multiscale-stream: fast first).
    """
    out: dict[str, np.ndarray] = {}
    for g in range(group_loss.shape[2]):
        curve = group_loss[:, :, g]
        out[f"test_loss_auc_group{g}"] = first_epoch_auc(samples_seen, curve, epoch_length)
        out[f"final_test_loss_group{g}"] = curve[:, -1].astype(np.float64)
    return out


def timescale_r2(states: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation of each hidden unit with each latent, [R, H, G].

    ``states`` [R, N, H] hidden activity over a stream, ``latent`` [N, G] its latent states. A
    unit (or latent) that never varies has no defined correlation; it counts as r^2 = 0.

    >>> t = np.arange(8.0)
    >>> latent = np.stack([t % 2, (t // 4) % 2], axis=1)  # fast, slow
    >>> timescale_r2(latent[None], latent).round(2).tolist()
    [[[1.0, 0.0], [0.0, 1.0]]]
    """
    h = states - states.mean(axis=1, keepdims=True)
    z = latent - latent.mean(axis=0, keepdims=True)
    cov = np.einsum("rnh,ng->rhg", h, z)
    scale = np.sqrt(np.einsum("rnh,rnh->rh", h, h))[:, :, None] * np.sqrt((z * z).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(scale > 0, cov / scale, 0.0)
    return r**2


def timescale_metrics(
    r2: np.ndarray, unit_leak: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Timescale selectivity (paper Fig. 3E) per replicate from r^2 [R, H, G].

    Hidden units are put in memory order, per replicate: sorted by their leak ``unit_leak``
    [R, H] (ascending, stable), so a tuned multiscale net with group leaks (0.6, 0, 0.3) is
    read as fast, medium, slow too; units with equal leaks (memoryless and uniform-leak nets,
    or ``unit_leak`` None) keep their positions, as in the paper. The ordered units are split
    into G contiguous groups, and group g is matched with latent g (fast, medium, slow). M[g, k]
    is the mean r^2 of unit group g with latent k. ``timescale_selectivity`` is the mean over g
    of M[g, g] minus the mean of M[g, k != g] (matched minus non-matched).
    ``timescale_selectivity_best`` takes the best one-to-one assignment of unit groups to latents
    instead (does the net un-mix at all, whichever units do it?). Also reports each
    ``timescale_r2_unit{g}_latent{k}`` = M[g, k] (unit group g in memory order).

    >>> t = np.arange(8.0)
    >>> latent = np.stack([t % 2, (t // 4) % 2], axis=1)  # fast, slow
    >>> r2 = timescale_r2(latent[None, :, ::-1], latent)  # unit 0 follows the slow latent
    >>> float(timescale_metrics(r2)["timescale_selectivity"][0]) < 0  # by position: mismatched
    True
    >>> timescale_metrics(r2, np.array([[0.6, 0.0]]))["timescale_selectivity"].round(6).tolist()
    [1.0]
    """
    groups = r2.shape[2]
    from trainables.models import unit_groups  # torch: not needed to name the metrics

    if unit_leak is not None:  # memory order: [R, H] unit indices, slowest-forgetting last
        order = np.argsort(np.asarray(unit_leak), axis=1, kind="stable")
        r2 = np.take_along_axis(r2, order[:, :, None], axis=1)  # [R, H, G]
    index = unit_groups(r2.shape[1], groups)
    matrix = np.stack([r2[:, index == g].mean(axis=1) for g in range(groups)], axis=1)  # [R,G,G]

    def selectivity(assign: tuple[int, ...]) -> np.ndarray:
        rows = []
        for g, k in enumerate(assign):
            others = [m for m in range(groups) if m != k]
            rest = matrix[:, g, others].mean(axis=1) if others else 0.0
            rows.append(matrix[:, g, k] - rest)
        return np.mean(rows, axis=0)

    out = {
        "timescale_selectivity": selectivity(tuple(range(groups))),
        "timescale_selectivity_best": np.max(
            [selectivity(p) for p in itertools.permutations(range(groups))], axis=0
        ),
    }
    for g in range(groups):
        for k in range(groups):
            out[f"timescale_r2_unit{g}_latent{k}"] = matrix[:, g, k]
    return out


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
