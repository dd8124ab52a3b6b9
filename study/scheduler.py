"""Early stopping inside each cell: one ASHA per cell, on the fraction of training done.

A study's cells differ in data set size (a 1,200-sample synthetic epoch next to 60,000 MNIST
images) and in the objective's scale (a leaky-reset cell's test-loss area is not a feedforward
cell's). One ASHA over the whole Tune run would compare trials across cells: it would stop the
trials of the weaker cells for being in a weaker cell, and its ``max_t`` in samples could be
right for one data set only. :class:`CellASHA` therefore keeps one ASHA per cell, so a trial is
only ever compared with trials of its own cell (the same data, ordering and model), and uses the
trainable's ``progress`` (samples seen / the trial's total samples) as ASHA's time: every cell's
rungs sit at the same fractions of its own training, and two trials of one cell reach a rung at
the same samples seen (one evaluation schedule per cell), where they are compared on the running
objective (``trainables.tune_adapter.running_objective``: the area over the curve so far).

Rungs: ``1 / REDUCTION_FACTOR**2`` and ``1 / REDUCTION_FACTOR`` of the training (1/9, 1/3); a
trial is stopped at a rung when its running objective is worse than the best ``1 /
REDUCTION_FACTOR`` of its cell's trials that reached that rung before it. A stopped trial is
PRUNED in its cell's Optuna study, tagged ``pruned=true`` in MLflow and counted as pruned in the
summary.

Example:
    >>> scheduler = CellASHA(mode="min")
    >>> scheduler.metric, scheduler.rungs()
    ('objective', [0.1111, 0.3333])
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

REDUCTION_FACTOR = 3
"""ASHA's halving rate: keep the best third at each rung."""
TIME_ATTR = "progress"
"""Reported by ``trainables.tune_adapter.train``: samples seen / the trial's total, in [0, 1]."""


class CellASHA(FIFOScheduler):
    """One :class:`ray.tune.schedulers.ASHAScheduler` per cell (``trial.config["cell"]``).

    Trials run in the order Tune offers them (FIFO); results go to the ASHA of the trial's cell,
    which is created when the cell's first trial is added.

    Args:
        mode: the objective's direction, 'min' or 'max'.
        metric: the result key compared at the rungs.
    """

    def __init__(self, mode: str, metric: str = "objective") -> None:
        super().__init__()
        self._metric = metric
        self._mode = mode
        self.per_cell: dict[str, ASHAScheduler] = {}

    def rungs(self) -> list[float]:
        """The fractions of training at which trials are compared (rounded, ascending)."""
        rungs = self._new_asha()._brackets[0]._rungs
        return sorted(round(milestone, 4) for milestone, _ in rungs if milestone < 1.0)

    def _new_asha(self) -> ASHAScheduler:
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            metric=self._metric,
            mode=self._mode,
            max_t=1.0,
            grace_period=1.0 / REDUCTION_FACTOR**2,
            reduction_factor=REDUCTION_FACTOR,
        )

    def _asha(self, trial: Trial) -> ASHAScheduler:
        key = trial.config["cell"]
        if key not in self.per_cell:
            self.per_cell[key] = self._new_asha()
        return self.per_cell[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept Tune's metric/mode only where they agree with the ones given here."""
        return (metric in (None, self._metric)) and (mode in (None, self._mode))

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        """Register the trial with its cell's ASHA."""
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        """CONTINUE or STOP, decided by the trial's cell's ASHA."""
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(
        self, tune_controller: Any, trial: Trial, result: dict[str, Any]
    ) -> None:
        """Record the final result at its rung and forget the trial."""
        asha = self._asha(trial)
        if trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """A pending or paused trial left the run."""
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        """A failed trial holds no place in any rung's bookkeeping."""
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        """Per cell, ASHA's own summary (stopped count and the rungs' cutoffs)."""
        return "\n".join(f"{key}: {asha.debug_string()}" for key, asha in self.per_cell.items())

    def save(self, checkpoint_path: str) -> None:
        """Pickle the per-cell schedulers."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Inverse of :meth:`save`."""
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
