"""Tuning Playbook checks of each cell's search (STYLE rule 17).

Per cell: how many trials finished, failed, diverged (the infeasible fraction); which searched
hyperparameters mattered (Optuna's fANOVA importance on an in-memory Optuna study rebuilt from
the MLflow child runs, or on the cell's study in an Optuna storage); whether the best trial sits
near a search bound (in log space for log-scaled parameters: widen the range if so); and the
spread across seeds (replicates of the best trial) beside the spread across configurations.

Search bounds come from the spec logged with the study: each cell's space (its model's named
space or inline table, or its variant's, without the values the variant fixes), probed once on
a scratch Optuna trial.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from search_spaces import ROLES, SPACES, probe
from study.results import CellRecord, StudyResults
from study.spec import StudySpec
from trainables.tune_adapter import DIVERGED_PENALTY

NEAR_BOUND = 0.05
"""A best value within this fraction of the range (log range for log params) of a bound warns."""


@dataclass
class CellCheck:
    """The Playbook checks of one cell's search."""

    cell: str
    group: str
    finished: int
    failed: int
    diverged: int
    pruned: int
    running: int
    budget: int | None
    infeasible_fraction: float | None
    """Diverged / finished (None before any trial finished)."""
    importance: dict[str, float] = field(default_factory=dict)
    """Searched parameter -> fANOVA importance (sums to 1); empty when not computable."""
    importance_note: str = ""
    warnings: list[str] = field(default_factory=list)
    """Near-bound warnings about the best trial."""
    seed_sd: float | None = None
    """SD of the objective over the best trial's replicates (seed variance)."""
    config_sd: float | None = None
    """SD of the objective over the cell's feasible trials (configuration variance)."""


def search_distributions(
    spec: StudySpec | None, model: str, variant: str | None = None
) -> dict[str, BaseDistribution]:
    """The distributions the study searched for ``model`` in ``variant``'s cells ({} = none).

    The spec's own space for the cell (``StudySpec.space_for``: the variant's or the study's
    entry, without the values the variant fixes); without a spec, the model's default space.
    """
    try:
        space = spec.space_for(model, variant) if spec is not None else SPACES[model]
        return probe(space)
    except Exception:  # an unknown model or a space that fails on a scratch trial
        return {}


def bound_position(value: float, distribution: BaseDistribution) -> float | None:
    """Where ``value`` sits in the range, 0 = low bound, 1 = high (log space for log params).

    >>> round(bound_position(1.0, FloatDistribution(0.01, 100.0, log=True)), 6)
    0.5
    """
    if not isinstance(distribution, FloatDistribution | IntDistribution):
        return None
    low, high = float(distribution.low), float(distribution.high)
    if distribution.log:
        if value <= 0 or low <= 0:
            return None
        value, low, high = math.log(value), math.log(low), math.log(high)
    if high <= low:
        return None
    return (value - low) / (high - low)


def check_cell(
    study: StudyResults,
    cell: CellRecord,
    distributions: dict[str, BaseDistribution],
    optuna_storage: str | None = None,
) -> CellCheck:
    """Counts, importance, near-bound warnings and seed/config spread of one cell."""
    finished = cell.count("finished")
    check = CellCheck(
        cell=cell.key,
        group=cell.group,
        finished=finished,
        failed=cell.count("failed"),
        diverged=cell.diverged,
        pruned=cell.count("pruned"),
        running=cell.count("running"),
        budget=study.cell_budget(cell.key),
        infeasible_fraction=cell.diverged / finished if finished else None,
    )
    check.importance, check.importance_note = importance(
        study, cell, distributions, optuna_storage
    )
    best = cell.best
    if best is not None:
        for name, value in sorted(best.searched.items()):
            where = distributions.get(name)
            if where is None or not isinstance(value, int | float):
                continue
            position = bound_position(float(value), where)
            if position is None:
                continue
            scale = " (log scale)" if getattr(where, "log", False) else ""
            if position <= NEAR_BOUND:
                side, bound = "lower", where.low  # type: ignore[attr-defined]
            elif position >= 1 - NEAR_BOUND:
                side, bound = "upper", where.high  # type: ignore[attr-defined]
            else:
                continue
            where_words = (
                "outside the searched range, beyond"
                if position < 0 or position > 1
                else f"within {NEAR_BOUND:.0%} of"
            )
            check.warnings.append(
                f"{cell.key}: best {name}={value:.3g} is {where_words} the {side} bound "
                f"{bound:g}{scale}; the optimum may lie outside the range: widen it"
            )
        if best.curves is not None and study.objective in best.curves.per_replicate:
            values = best.curves.per_replicate[study.objective]
            if values.size > 1:
                check.seed_sd = float(np.std(values, ddof=1))
    values = [t.objective for t in cell.ranked if t.objective is not None]
    if len(values) > 1:
        check.config_sd = float(np.std(values, ddof=1))
    return check


def importance(
    study: StudyResults,
    cell: CellRecord,
    distributions: dict[str, BaseDistribution],
    optuna_storage: str | None = None,
) -> tuple[dict[str, float], str]:
    """fANOVA importance of the searched parameters over the cell's feasible trials.

    The Optuna study is rebuilt in memory from the MLflow runs (params ``searched.*``, value
    ``objective``), or read from ``optuna_storage`` (``<study>::<cell>``). Diverged trials carry
    a penalty value, not a measurement, and are left out.

    Returns:
        (parameter -> importance, note); an empty dict with the reason when not computable.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "minimize" if study.direction == "min" else "maximize"
    trials = _stored_trials(study, cell, optuna_storage) if optuna_storage else None
    source = "Optuna storage" if trials is not None else "MLflow runs"
    outside = 0
    if trials is None:
        if not distributions:
            return {}, "search space unknown"
        trials = []
        for trial in cell.ranked:
            params = {k: v for k, v in trial.searched.items() if k in distributions}
            if not params or not _inside(params, distributions):
                outside += 1  # e.g. a paper setting outside the space: not a sample of it
                continue
            trials.append(
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: distributions[k] for k in params},
                    value=float(trial.objective),  # type: ignore[arg-type]
                )
            )
    skipped = f" ({outside} outside the space left out)" if outside else ""
    if len(trials) < 3:
        return {}, f"{len(trials)} feasible trials in the space: too few{skipped}"
    rebuilt = optuna.create_study(direction=direction)
    rebuilt.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            found = optuna.importance.get_param_importances(rebuilt, evaluator=evaluator)
        except Exception as error:  # e.g. every trial has the same value
            return {}, f"not computable: {error}"
    note = f"fANOVA over {len(trials)} trials ({source}){skipped}"
    return {k: float(v) for k, v in found.items()}, note


def role(name: str) -> str:
    """Playbook role of a hyperparameter: scientific, nuisance or fixed."""
    return ROLES.get(name, "fixed")


def _inside(params: dict[str, Any], distributions: dict[str, BaseDistribution]) -> bool:
    for name, value in params.items():
        try:
            if not distributions[name]._contains(distributions[name].to_internal_repr(value)):
                return False
        except (ValueError, TypeError):
            return False
    return True


def _stored_trials(
    study: StudyResults, cell: CellRecord, storage: str
) -> list[optuna.trial.FrozenTrial] | None:
    try:
        stored = optuna.load_study(study_name=f"{study.name}::{cell.key}", storage=storage)
    except Exception:
        return None
    return [
        t
        for t in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and abs(t.value) < DIVERGED_PENALTY
    ]
