"""A Ray Tune searcher that owns one Optuna study per cell.

Ray's ``OptunaSearch`` wraps a single Optuna study; a study here needs one per cell (each cell is
tuned on its own, with its own budget). :class:`CellSearcher` keeps them side by side, asks the
cells in round-robin order so that all cells progress at once on the shared cluster, and tells
each result to the study of the trial's cell.

Lifecycle (Ray Tune calls): ``suggest(trial_id)`` -> the trial runs -> ``on_trial_complete``;
``save``/``restore`` with every snapshot of Tune's experiment state.

Crash safety. A study's Optuna studies live in a durable storage (:func:`optuna_storage`: the
spec's RDB, else an append-only journal file in the study's results folder, fsynced per write),
and every asked trial carries its Tune config and Ray trial id as the user attribute ``tune``.
Tune snapshots its own state (trials, this searcher) only every ~10 s, so a driver killed with
SIGKILL leaves trials that were asked, and maybe finished, after the last snapshot. ``restore``
therefore rebuilds the bookkeeping from the storage and from the experiment state Tune restores:
an asked trial Tune forgot is handed out again under the same Optuna number and config (if it
never finished) or counted as done (if its result was told), so every cell gets exactly its
budget, and no configuration is asked twice. A trial that errored was told FAIL; when ``study
resume`` reruns it to a result, the result is added as a new COMPLETE trial with the user
attribute ``retry_of`` (Optuna's own pattern for retried trials), so the study knows it too.

The searcher also limits the trials in flight (``max_concurrent``) itself: Tune's
``ConcurrencyLimiter`` drops results of trials it did not see suggested, which after a restore
would keep results from the Optuna studies.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from study.cells import Cell
from study.spec import StudySpec

logger = logging.getLogger(__name__)

JOURNAL_FILE = "optuna.journal"
"""The cells' Optuna studies of a study without ``optuna_storage``, in its results folder."""
TUNE_ATTR = "tune"
"""User attribute of an asked Optuna trial: ``{"ray_trial_ids": [...], "config": {...}}`` (the
Ray trials that ran it, latest last, and its Tune config)."""
RETRY_ATTR = "retry_of"
"""User attribute of a trial that records the result of a rerun of FAILed trial ``number``."""


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


def optuna_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The durable storage of a study's Optuna studies: ``spec.optuna_storage`` (an RDB URL),
    else a journal file ``<results_dir>/optuna.journal`` (created with its folder)."""
    if spec.optuna_storage is not None:
        return optuna.storages.RDBStorage(spec.optuna_storage)
    from optuna.storages.journal import JournalFileBackend

    spec.results_dir.mkdir(parents=True, exist_ok=True)
    backend = JournalFileBackend(str(spec.results_dir / JOURNAL_FILE))
    return optuna.storages.JournalStorage(backend)


def asked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials this searcher asked in ``study`` (no enqueued-only or retry records)."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if TUNE_ATTR in t.user_attrs and RETRY_ATTR not in t.user_attrs
    ]


class CellSearcher(Searcher):
    """One Optuna study per cell; round-robin over cells with budget left (``Cell.budget``).

    Args:
        spec: the study spec (sampler, budget, seed, objective).
        cells: the study's cells, from :func:`study.cells.expand`.
        storage: where the studies live; None = in memory (pickled with the searcher; for
            tests and library use, not crash-safe). ``run_study`` passes
            :func:`optuna_storage`.
        max_concurrent: trials in flight at most (0 = no limit).
    """

    def __init__(
        self,
        spec: StudySpec,
        cells: list[Cell],
        storage: optuna.storages.BaseStorage | None = None,
        max_concurrent: int = 0,
    ) -> None:
        super().__init__(metric="objective", mode=spec.direction)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.budgets = {cell.key: cell.budget for cell in cells}
        self.cells = {cell.key: cell for cell in cells}
        self.spaces = {cell.key: spec.space_for(cell.model, cell.variant) for cell in cells}
        self.paper_first = spec.paper_setting_first
        self.durable = storage is not None
        self.max_concurrent = max_concurrent
        self.sampler_name, self.seed = spec.sampler, spec.seed
        direction = "minimize" if spec.direction == "min" else "maximize"
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
        self.live: set[str] = set()
        """Ray trial ids suggested and not complete (for ``max_concurrent``)."""
        self.replay: list[tuple[str, int]] = []
        """(cell key, Optuna number) asked before a crash that Tune forgot: suggested first."""
        self._next = 0

    # -- Tune's Searcher interface --------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Config of the next trial: a forgotten one, else the next cell (round robin) with
        budget left; None while ``max_concurrent`` trials are in flight."""
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None
        if self.replay:
            key, number = self.replay.pop(0)
            frozen = self.studies[key].trials[number]
            if TUNE_ATTR in frozen.user_attrs:
                return self._hand_out(trial_id, key, frozen)
            # Asked when the driver died, before its config was written: finish asking it.
            trial = optuna.trial.Trial(self.studies[key], frozen._trial_id)
            return self._configure(trial_id, key, trial, "fixed_params" in frozen.system_attrs)
        keys = list(self.cells)
        for offset in range(len(keys)):
            key = keys[(self._next + offset) % len(keys)]
            if self.asked[key] < self.budgets[key]:
                self._next = (self._next + offset + 1) % len(keys)
                self.asked[key] += 1
                paper = self.paper_first and self.asked[key] == 1
                return self._configure(trial_id, key, self.studies[key].ask(), paper)
        return Searcher.FINISHED

    def _configure(
        self, trial_id: str, key: str, trial: optuna.trial.Trial, paper: bool
    ) -> dict[str, Any]:
        """The Tune config of an asked trial (the space run on it; ``paper``: the cell's
        paper-setting trial), recorded on the trial for a restore."""
        cell = self.cells[key]
        constants = self.spaces[key](trial) or {}
        params = {**trial.params, **constants}
        if paper:
            # The paper's values also for parameters this cell's space does not search.
            params.update(cell.paper_params())
            trial.set_user_attr("paper_setting", True)
            if any(trial.params.get(k, v) != v for k, v in cell.paper_params().items()):
                trial.set_user_attr("paper_setting_outside_space", True)
        config = {
            "cell": key,
            "base": cell.base.to_dict(),
            "params": params,
            "optuna_trial_number": trial.number,
            "paper_setting": paper,
        }
        # One write holds what a restore needs to hand the trial out again (durable storage).
        trial.set_user_attr(TUNE_ATTR, {"ray_trial_ids": [trial_id], "config": config})
        self._track(trial_id, key, trial.number, trial.user_attrs)
        return config

    def _hand_out(self, trial_id: str, key: str, trial: FrozenTrial) -> dict[str, Any]:
        """A forgotten trial again, under a new Ray trial id (same number, same config); it
        resumes from the checkpoints its earlier Ray trials left (``previous_trials``)."""
        attr = trial.user_attrs[TUNE_ATTR]
        previous = list(attr["ray_trial_ids"])
        attr = {**attr, "ray_trial_ids": [*previous, trial_id]}
        # Optuna has no public setter for a trial known by number: the storage's own call.
        self.studies[key]._storage.set_trial_user_attr(trial._trial_id, TUNE_ATTR, attr)
        self._track(trial_id, key, trial.number, trial.user_attrs)
        return {**attr["config"], "previous_trials": previous}

    def _track(self, trial_id: str, key: str, number: int, attrs: dict[str, Any]) -> None:
        self.trials[trial_id] = (key, number, bool(attrs.get("paper_setting")))
        if attrs.get("paper_setting_outside_space"):
            self.off_space.add(trial_id)
        self.live.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell the cell's study: value, PRUNED (stopped by the scheduler) or FAIL (an error)."""
        self.live.discard(trial_id)
        if trial_id not in self.trials:
            return
        key, number, _ = self.trials[trial_id]
        # A paper point outside the space: Optuna records params this trial did not run with.
        state, value = outcome(None if trial_id in self.off_space else result, error)
        record(self.studies[key], number, state, value)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the searcher, studies included (Tune calls this with its experiment state)."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Inverse of :meth:`save`; with a durable storage, reconciled with it (module doc)."""
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
        if self.durable:
            self.reconcile(restored_tune_trials(Path(checkpoint_path).parent))

    def reconcile(self, tune_trials: dict[tuple[str, int], str] | None) -> None:
        """Rebuild the bookkeeping from the storage after a restore.

        Args:
            tune_trials: (cell key, Optuna number) -> Tune status of every trial in the
                experiment state Tune restores; None if it could not be read (then the
                searcher's own snapshot stands in for it).
        """
        known = (
            tune_trials
            if tune_trials is not None
            else {(k, n): "PENDING" for k, n, _ in self.trials.values()}
        )
        self.trials, self.off_space, self.live, self.replay = {}, set(), set(), []
        for key, study in self.studies.items():
            asked = asked_trials(study)
            # A trial the driver died asking (created, its config not yet written): finished
            # asking first, with its number, so the cell's numbers stay 0..budget-1.
            half_asked = [
                t.number
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if TUNE_ATTR not in t.user_attrs and RETRY_ATTR not in t.user_attrs
            ]
            self.replay.extend((key, number) for number in half_asked)
            self.asked[key] = len(asked) + len(half_asked)
            for trial in asked:
                ray_id = trial.user_attrs[TUNE_ATTR]["ray_trial_ids"][-1]
                self._track(ray_id, key, trial.number, trial.user_attrs)
                status = known.get((key, trial.number))
                if status is None and trial.state == TrialState.RUNNING:
                    self.replay.append((key, trial.number))  # asked, never finished, forgotten
                if status not in ("PENDING", "RUNNING", "PAUSED", "ERROR"):
                    self.live.discard(ray_id)  # Tune will not run it (again) under this id
            if self.sampler_name != "qmc":  # QMC resumes its sequence from the storage
                # The pickled sampler's random state is that of the snapshot: it would draw
                # again the points asked after it. A seed from the trials so far avoids that.
                seed = np.random.SeedSequence([self.seed, self.cells[key].index, len(asked)])
                study.sampler = make_sampler(self.sampler_name, int(seed.generate_state(1)[0]))
        if self.replay:
            logger.warning("%d trials asked before the crash are run again", len(self.replay))

    # -- queries for reports ---------------------------------------------------------------------
    def trial_info(self, trial_id: str) -> tuple[str, int, bool] | None:
        """(cell key, Optuna trial number, paper setting) of a Ray trial made here."""
        return self.trials.get(trial_id)


def outcome(result: dict[str, Any] | None, error: bool = False) -> tuple[TrialState, float | None]:
    """A trial's Optuna state and value: its objective (a final result), PRUNED (a result before
    the end: stopped by the scheduler) or FAIL (an error, or no result)."""
    if error or not result or "objective" not in result:
        return TrialState.FAIL, None
    if result.get("final") != 1:
        return TrialState.PRUNED, None
    # Diverged trials carry a finite penalty objective, so they rank last, never best.
    return TrialState.COMPLETE, float(result["objective"])


def record(study: optuna.Study, number: int, state: TrialState, value: float | None) -> None:
    """Tell trial ``number``'s outcome, idempotently: a finished trial is not told twice, and a
    FAILed trial that later reaches a result (rerun by ``study resume``) gets one ``retry_of``
    record holding it."""
    trial = study.trials[number]
    if trial.state == TrialState.FAIL and state != TrialState.FAIL:
        if not any(t.user_attrs.get(RETRY_ATTR) == number for t in study.trials):
            study.add_trial(
                optuna.trial.create_trial(
                    state=state,
                    value=value,
                    params=trial.params,
                    distributions=trial.distributions,
                    user_attrs={**trial.user_attrs, RETRY_ATTR: number},
                )
            )
        return
    if state == TrialState.COMPLETE:
        study.tell(number, value, skip_if_finished=True)
    else:
        study.tell(number, state=state, skip_if_finished=True)


def repair_journal(path: Path) -> None:
    """Undo what a driver killed inside a journal append leaves: a last line cut short (never
    applied; the next append would glue onto it and make the journal unreadable) and the
    append's lock (``<journal>.lock``, Optuna's symlink lock; nobody else writes a study's
    journal, so it is taken over now rather than after its 30 s grace period)."""
    Path(f"{path}.lock").unlink(missing_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            logger.warning("dropped a journal record cut short by the crash in %s", path)


def recover(spec: StudySpec, cells: list[Cell]) -> int:
    """Tell the results that a killed driver never told (run by ``study resume`` first).

    A trial still RUNNING in its Optuna study finished if one of its Ray trial folders holds a
    final checkpoint (``final.json``, written before Tune hears of the end); a trial Tune
    recorded TERMINATED without one was stopped by the scheduler (PRUNED). Returns how many
    trials were told.
    """
    from trainables.tune_adapter import FINAL_FILE, final_checkpoints

    if spec.optuna_storage is None:
        repair_journal(spec.results_dir / JOURNAL_FILE)
    tune_trials = restored_tune_trials(spec.results_dir) or {}
    storage = optuna_storage(spec)
    told = 0
    for cell in cells:
        try:
            study = optuna.load_study(study_name=cell.optuna_name, storage=storage)
        except KeyError:
            continue  # the crash came before this cell's study existed
        for trial in asked_trials(study):
            if trial.state != TrialState.RUNNING:
                continue
            ray_ids = trial.user_attrs[TUNE_ATTR]["ray_trial_ids"]
            finals = final_checkpoints(spec.results_dir, ray_ids)
            if trial.user_attrs.get("paper_setting_outside_space") and finals:
                record(study, trial.number, TrialState.FAIL, None)
            elif finals:
                final = json.loads((finals[-1] / FINAL_FILE).read_text())
                record(study, trial.number, *outcome(final))
            elif tune_trials.get((cell.key, trial.number)) == "TERMINATED":
                record(study, trial.number, TrialState.PRUNED, None)
            else:
                continue
            told += 1
    return told


def ended_outside_tune(
    spec: StudySpec, cells: list[Cell], seen: set[tuple[str, int]]
) -> list[tuple[dict[str, Any], dict[str, Any] | None, bool]]:
    """Trials that ended in their Optuna study but are not among ``seen`` (cell key, trial
    number): those whose end only :func:`recover` told, as Tune's snapshot never saw them, so a
    resumed Tune run does not list them. Each as (Tune config, final result or None, errored),
    the final result read from the trial's final checkpoint; a pruned trial has ``done`` only.
    """
    from trainables.tune_adapter import FINAL_FILE, final_checkpoints

    storage = optuna_storage(spec)
    found = []
    for cell in cells:
        try:
            study = optuna.load_study(study_name=cell.optuna_name, storage=storage)
        except KeyError:
            continue
        for trial in asked_trials(study):
            if (cell.key, trial.number) in seen or not trial.state.is_finished():
                continue
            attr = trial.user_attrs[TUNE_ATTR]
            finals = final_checkpoints(spec.results_dir, attr["ray_trial_ids"])
            if trial.state == TrialState.PRUNED:
                result: dict[str, Any] | None = {"done": True}
            elif finals:
                result = json.loads((finals[-1] / FINAL_FILE).read_text())
            else:
                result = None
            found.append((attr["config"], result, trial.state == TrialState.FAIL))
    return found


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


def restored_tune_trials(folder: Path) -> dict[tuple[str, int], str] | None:
    """(cell key, Optuna number) -> status of each trial in the newest Tune experiment state
    in ``folder`` (the snapshot ``Tuner.restore`` continues from); None if unreadable."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
        out = {}
        for trial_json, _ in trial_data:
            trial = json.loads(trial_json)
            config = trial["config"]
            out[(config["cell"], int(config["optuna_trial_number"]))] = trial["status"]
        return out
    except (KeyError, TypeError, ValueError) as error:
        logger.warning("cannot read Tune's experiment state %s (%s)", states[-1], error)
        return None
