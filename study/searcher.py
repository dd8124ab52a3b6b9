"""A Ray Tune searcher that owns one Optuna study per cell.

Ray's ``OptunaSearch`` wraps a single Optuna study; a study here needs one per cell (each cell is
tuned on its own, with its own budget). :class:`CellSearcher` keeps them side by side, asks the
cells in round-robin order so that all cells progress at once on the shared cluster, and tells
each result to the study of the trial's cell.

Lifecycle (Ray Tune calls): ``suggest(trial_id)`` -> the trial runs -> ``on_trial_complete``.
``save``/``restore`` pickle the studies with the Tune experiment, so ``Tuner.restore`` resumes
every cell where it was (with an RDB storage the studies live in the database as well).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.cells import Cell
from study.spec import StudySpec

logger = logging.getLogger(__name__)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The Optuna sampler a spec names, seeded (each cell gets its own seed)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        with warnings.catch_warnings():  # "experimental": chosen knowingly by the spec
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"sampler={name!r} is invalid: one of tpe, random, cmaes, gp, qmc")


class CellSearcher(Searcher):
    """One Optuna study per cell; round-robin over cells with budget left (``Cell.budget``).

    Args:
        spec: the study spec (sampler, budget, seed, storage, objective).
        cells: the study's cells, from :func:`study.cells.expand`.
    """

    def __init__(self, spec: StudySpec, cells: list[Cell]) -> None:
        super().__init__(metric="objective", mode=spec.direction)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.budgets = {cell.key: cell.budget for cell in cells}
        self.cells = {cell.key: cell for cell in cells}
        self.spaces = {cell.key: spec.space_for(cell.model, cell.variant) for cell in cells}
        self.paper_first = spec.paper_setting_first
        direction = "minimize" if spec.direction == "min" else "maximize"
        storage = _storage(spec.optuna_storage)
        self.studies: dict[str, optuna.Study] = {}
        for cell in cells:
            # load_if_exists=False: a name clash means another study owns these names.
            self.studies[cell.key] = optuna.create_study(
                storage=storage,
                sampler=make_sampler(spec.sampler, spec.seed + cell.index),
                study_name=cell.optuna_name,
                direction=direction,
            )
            self.studies[cell.key].set_user_attr("cell", cell.key)
            if self.paper_first:
                inside = paper_inside_space(self.spaces[cell.key], cell.paper_params())
                self.studies[cell.key].enqueue_trial(inside)
        self.asked = dict.fromkeys(self.cells, 0)
        self.trials: dict[str, tuple[str, int, bool]] = {}
        """Ray trial id -> (cell key, Optuna trial number, is the paper setting)."""
        self.off_space: set[str] = set()
        """Ray trial ids whose values the cell's space cannot hold (a paper point outside it)."""
        self._next = 0

    # -- Tune's Searcher interface --------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Config of the next trial: the next cell (round robin) with budget left."""
        keys = list(self.cells)
        for offset in range(len(keys)):
            key = keys[(self._next + offset) % len(keys)]
            if self.asked[key] < self.budgets[key]:
                self._next = (self._next + offset + 1) % len(keys)
                return self._ask(trial_id, key)
        return Searcher.FINISHED

    def _ask(self, trial_id: str, key: str) -> dict[str, Any]:
        cell, study = self.cells[key], self.studies[key]
        trial = study.ask()
        constants = self.spaces[key](trial) or {}
        params = {**trial.params, **constants}
        paper = self.paper_first and self.asked[key] == 0
        if paper:
            # The paper's values also for parameters this cell's space does not search.
            params.update(cell.paper_params())
            trial.set_user_attr("paper_setting", True)
            if any(trial.params.get(k, v) != v for k, v in cell.paper_params().items()):
                trial.set_user_attr("paper_setting_outside_space", True)
                self.off_space.add(trial_id)
        self.asked[key] += 1
        self.trials[trial_id] = (key, trial.number, paper)
        return {
            "cell": key,
            "base": cell.base.to_dict(),
            "params": params,
            "optuna_trial_number": trial.number,
            "paper_setting": paper,
        }

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell the cell's study: value, PRUNED (stopped by the scheduler) or FAIL (an error)."""
        if trial_id not in self.trials:
            return
        key, number, _ = self.trials[trial_id]
        study = self.studies[key]
        if trial_id in self.off_space:
            # Optuna records params that this trial did not run with: keep it out of the model.
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif error or not result or "objective" not in result:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif result.get("final") != 1:
            study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            # Diverged trials carry a finite penalty objective, so they rank last, never best.
            study.tell(number, float(result["objective"]), skip_if_finished=True)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the searcher, studies included (Tune calls this with its experiment state)."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Inverse of :meth:`save`."""
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))

    # -- queries for reports ---------------------------------------------------------------------
    def trial_info(self, trial_id: str) -> tuple[str, int, bool] | None:
        """(cell key, Optuna trial number, paper setting) of a Ray trial made here."""
        return self.trials.get(trial_id)


def paper_inside_space(space: Any, paper: dict[str, float]) -> dict[str, float]:
    """The paper values the space can hold (a categorical space may exclude them).

    The space is run once on a scratch study to learn its distributions.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        space(probe)
    inside = {}
    for name, value in paper.items():
        distribution = probe.distributions.get(name)
        if distribution is None:
            continue
        try:
            if distribution._contains(distribution.to_internal_repr(value)):
                inside[name] = value
        except ValueError:
            pass
    return inside


def _storage(url: str | None) -> optuna.storages.BaseStorage | None:
    if url is None:
        return None  # in memory, pickled with the Tune experiment for resume
    return optuna.storages.RDBStorage(url)
