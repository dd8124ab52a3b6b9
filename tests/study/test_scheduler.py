"""The per-cell ASHA: trials are compared only within their cell, at fractions of training."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from study.scheduler import CellASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _trial(cell: str) -> Trial:
    return Trial("train", config={"cell": cell}, stub=True)


def _report(scheduler: CellASHA, trial: Trial, progress: float, objective: float) -> str:
    result = {"progress": progress, "objective": objective, "samples_seen": 0}
    return scheduler.on_trial_result(None, trial, result)


def test_trials_are_compared_only_with_their_own_cell() -> None:
    scheduler = CellASHA(mode="min")
    assert scheduler.rungs() == [0.1111, 0.3333]
    good_a, worse_b, worst_b = _trial("a"), _trial("b"), _trial("b")
    for trial in (good_a, worse_b, worst_b):
        scheduler.on_trial_add(None, trial)
    assert _report(scheduler, good_a, 0.0, 0.10) == CONTINUE  # before the first rung
    assert _report(scheduler, good_a, 0.2, 0.10) == CONTINUE  # first at rung 1/9 of cell a
    # Far worse than cell a's trial, but the first of its own cell at the rung: continues.
    assert _report(scheduler, worse_b, 0.2, 0.50) == CONTINUE
    # Worse than the best third of its cell at the rung: stopped.
    assert _report(scheduler, worst_b, 0.2, 0.90) == STOP
    # The rung 1/3 (0.4 is the first evaluation past it): only cell b's own trials count.
    assert _report(scheduler, worse_b, 0.4, 0.45) == CONTINUE
    # The end of training stops a trial in any case (ASHA's max_t = the whole trial).
    assert _report(scheduler, worse_b, 1.0, 0.40) == STOP
    assert set(scheduler.per_cell) == {"a", "b"}
    assert "a: Using AsyncHyperBand" in scheduler.debug_string()


def test_maximised_objective_stops_the_smaller_values() -> None:
    scheduler = CellASHA(mode="max")
    first, second = _trial("a"), _trial("a")
    scheduler.on_trial_add(None, first)
    scheduler.on_trial_add(None, second)
    assert _report(scheduler, first, 0.34, 0.9) == CONTINUE
    assert _report(scheduler, second, 0.34, 0.2) == STOP


def test_tune_may_not_change_metric_or_mode() -> None:
    scheduler = CellASHA(mode="min")
    assert scheduler.set_search_properties("objective", "min")
    assert scheduler.set_search_properties(None, None)
    assert not scheduler.set_search_properties("objective", "max")
    assert not scheduler.set_search_properties("loss", "min")
