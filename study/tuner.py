"""One Ray Tune run per study: every cell shares the cluster at once, each with its own budget.

``run_study`` starts (or joins) Ray, builds the per-cell searcher and the tracking/progress
callbacks, and runs a single ``tune.Tuner``; ``resume_study`` continues an interrupted one with
``Tuner.restore`` from the spec stored beside its Ray results.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from study.cells import Cell, expand
from study.progress import (
    CellSummary,
    ProgressReporter,
    TrialOutcome,
    outcome,
    summarize,
    summary_table,
    write_summary_json,
)
from study.scheduler import CellASHA
from study.searcher import CellSearcher, ended_outside_tune, optuna_storage, recover
from study.spec import SpecError, StudySpec
from study.tracking import MlflowTracking

SPEC_FILE = "study_spec.json"
"""The resolved spec, stored in the study's Ray results folder so resume needs only the name."""


def study_dir(spec: StudySpec) -> Path:
    """Ray Tune's experiment folder of a study."""
    return spec.results_dir


def unique_name(spec: StudySpec, restore_deleted: bool = False) -> str:
    """``spec.name``, or ``name-2``, ``name-3``... when results of that name already exist.

    A study name is an MLflow experiment, a Ray results folder and an Optuna study prefix; running
    the same preset twice must not mix two studies' runs (``study resume`` continues one instead).
    An experiment of that name that was deleted is never reused or skipped silently: it is an
    error, unless ``restore_deleted`` (then it is restored, with its runs, and counts as taken).

    Raises:
        SpecError: ``spec.name`` belongs to a deleted experiment and not ``restore_deleted``.
    """
    from mlflow.entities import ViewType

    from study.tracking import connect, settle_deleted_experiment

    taken: set[str] = set()
    db = spec.tracking_uri.removeprefix("sqlite:///")
    if db == spec.tracking_uri or Path(db).exists():  # a missing SQLite store holds no names
        client = connect(spec.tracking_uri)
        settle_deleted_experiment(client, spec, restore_deleted)
        found = client.search_experiments(view_type=ViewType.ALL, max_results=50000)
        taken = {experiment.name for experiment in found}

    def free(name: str) -> bool:
        return name not in taken and not (Path(spec.storage_path) / name).exists()

    name, number = spec.name, 1
    while not free(name):
        number += 1
        name = f"{spec.name}-{number}"
    return name


def start_ray(spec: StudySpec) -> bool:
    """Connect to ``spec.ray_address`` or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's own INFO lines would drown the progress display; trial errors still surface.
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if spec.ray_address is None:
        # "local": a new Ray on this machine even when RAY_ADDRESS names a cluster (the spec said
        # local; the CLI has already turned RAY_ADDRESS into spec.ray_address where it applies).
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
    else:
        try:
            ray.init(address=spec.ray_address, **quiet)
        except ray.exceptions.AuthenticationError:
            raise SpecError(
                "ray_address",
                spec.ray_address,
                "a cluster accepting this process's token: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) to the cluster's token",
            ) from None
        except ConnectionError as error:
            raise SpecError(
                "ray_address",
                spec.ray_address,
                f"a running Ray head that accepts this process ({error}; a head with token "
                "authentication refuses a missing or wrong token this way too: set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the cluster's token)",
            ) from None
    return True


def check_cluster(spec: StudySpec) -> int:
    """Check one trial fits a node of the cluster; returns how many trials may run at once.

    Raises:
        SpecError: no alive node has ``resources.cpu`` CPUs and ``resources.gpu`` GPUs at once.
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}

    def fits(node: dict[str, float]) -> bool:
        return all(node.get(kind, 0) >= amount for kind, amount in need.items() if amount > 0)

    if not any(fits(node) for node in nodes):
        largest = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
        field = "resources.gpu" if spec.resources.gpu > 0 else "resources.cpu"
        raise SpecError(
            field,
            getattr(spec.resources, field.split(".")[1]),
            f"a per-trial request that fits one node (cpu={spec.resources.cpu:g}, "
            f"gpu={spec.resources.gpu:g} asked; nodes: {largest or 'none alive'})",
        )
    # Trials are packed per node: a node's leftover fraction is no use to another node's trial.
    at_once = sum(
        min(int(node.get(kind, 0) // amount) for kind, amount in need.items() if amount > 0)
        for node in nodes
        if fits(node)
    )
    if spec.max_concurrent_trials:
        at_once = min(at_once, spec.max_concurrent_trials)
    return max(at_once, 1)


def trainable(spec: StudySpec) -> Any:
    """The Tune trainable with the spec's objective, checkpoint interval and resources."""
    from ray import tune

    from trainables.tune_adapter import train

    return tune.with_resources(
        tune.with_parameters(
            train,
            objective=spec.objective,
            checkpoint_every_s=spec.checkpoint_every_s,
            results_dir=str(spec.results_dir),
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )


def run_study(spec: StudySpec, summary_json: str | None = None) -> list[CellSummary]:
    """Run the whole study; prints progress and the summary table; returns the summary rows."""
    from ray import tune

    cells = expand(spec)
    started = start_ray(spec)
    try:
        concurrency = check_cluster(spec)
        _quiet_tune()
        _pending_trials(concurrency)
        folder = study_dir(spec)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(spec.to_json())
        # One ASHA per cell on the fraction of training done (see study.scheduler).
        scheduler = CellASHA(mode=spec.direction) if spec.scheduler == "asha" else None
        print(
            f"study {spec.name}: {len(cells)} cells, {sum(c.budget for c in cells)} trials, "
            f"{concurrency} at once; tracking {spec.tracking_uri}",
            file=sys.stderr,
        )
        # The searcher limits trials in flight itself (see study.searcher: crash safety).
        searcher = CellSearcher(spec, cells, optuna_storage(spec), max_concurrent=concurrency)
        tuner = tune.Tuner(
            trainable(spec),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=sum(cell.budget for cell in cells),
                reuse_actors=True,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=_run_config(spec, cells),
        )
        results = tuner.fit()
        return _report(spec, cells, results, summary_json)
    finally:
        if started:
            import ray

            ray.shutdown()


def load_stored_spec(name: str, storage_path: str) -> StudySpec:
    """The spec a study was started with (stored beside its Ray results)."""
    path = Path(storage_path) / name / SPEC_FILE
    if not path.is_file():
        found = sorted(p.parent.name for p in Path(storage_path).glob(f"*/{SPEC_FILE}"))
        raise SpecError("name", name, f"a study under {storage_path}; found: {found or 'none'}")
    return StudySpec.from_dict(json.loads(path.read_text()))


def check_resumable(spec: StudySpec, restore_deleted: bool = False) -> None:
    """Before Ray starts: the study's experiment is not deleted (or is restored on request).

    Raises:
        SpecError: the experiment is deleted and not ``restore_deleted``.
    """
    from study.tracking import connect, settle_deleted_experiment

    settle_deleted_experiment(connect(spec.tracking_uri), spec, restore_deleted)


def resume_study(spec: StudySpec, summary_json: str | None = None) -> list[CellSummary]:
    """Continue an interrupted study: unfinished and errored trials resume from checkpoints.

    Tune restores its last snapshot of trials, searcher and callbacks; what happened after it
    comes from the durable stores: results a killed driver never told go to the Optuna studies
    first (:func:`study.searcher.recover`), the searcher hands out again the trials asked after
    the snapshot, and the tracking callback adopts the runs by their keys. So every cell ends
    with exactly its budget of trials and MLflow with exactly one run per trial.
    """
    from ray import tune

    cells = expand(spec)
    told = recover(spec, cells)
    if told:
        print(f"study {spec.name}: {told} results recorded after the crash", file=sys.stderr)
    started = start_ray(spec)
    try:
        _pending_trials(check_cluster(spec))
        _quiet_tune()
        print(f"study {spec.name}: resuming from {study_dir(spec)}", file=sys.stderr)
        _forget_stale_decisions(study_dir(spec))
        tuner = tune.Tuner.restore(
            str(study_dir(spec)), trainable=trainable(spec), resume_errored=True
        )
        results = tuner.fit()
        return _report(spec, cells, results, summary_json, resumed=True)
    finally:
        if started:
            import ray

            ray.shutdown()


def _forget_stale_decisions(folder: Path) -> None:
    """Drop the trial decisions Tune saved with its experiment state before it is restored.

    Ray 2.60's TuneController keeps ``_cached_trial_decisions`` (and ``_queued_...``) in its
    snapshot: a trial whose worker died during a checkpoint save leaves a cached STOP, which the
    restored run applies to that trial's first checkpoint after ``study resume`` (the trial
    stops one evaluation later, without its final result). Decisions belong to the session that
    made them.
    """
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return
    state = json.loads(states[-1].read_text())
    runner = state.get("runner_data", {})
    if not runner.get("_cached_trial_decisions") and not runner.get("_queued_trial_decisions"):
        return
    runner["_cached_trial_decisions"], runner["_queued_trial_decisions"] = {}, {}
    scratch = states[-1].with_suffix(".tmp")
    scratch.write_text(json.dumps(state))
    os.replace(scratch, states[-1])


def trial_dirname(trial: Any) -> str:
    """Short trial folders (Tune's default spells the whole config into the name)."""
    return f"trial_{trial.trial_id}"


def _run_config(spec: StudySpec, cells: list[Cell]) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=spec.name,
        storage_path=spec.storage_path,
        callbacks=[MlflowTracking(spec, cells), ProgressReporter(spec, cells)],
        # Worker deaths: the trial restarts from its last checkpoint (same numbers, exact resume).
        failure_config=tune.FailureConfig(max_failures=2),
        # Resume needs a trial's newest checkpoint only, but Tune keeps every one unless told
        # (6 MB per checkpoint of a 784-392-10 trial with 5 replicates, every 30 s of training;
        # benchmarks/cluster_stores.py). A bound makes Tune snapshot its experiment state after
        # every trial checkpoint, so it is a choice (keep_checkpoints), not the default.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints or None),
        verbose=0,
    )


def _report(
    spec: StudySpec,
    cells: list[Cell],
    results: Any,
    summary_json: str | None,
    resumed: bool = False,
) -> list[CellSummary]:
    """Print the summary table (and write it as JSON): one outcome per trial, from Tune's
    results and, after a crash, from the Optuna studies for trials only ``recover`` told."""
    outcomes: list[TrialOutcome] = []
    for result in results:
        if "cell" not in (result.config or {}):
            continue
        outcomes.append(outcome(result.config, result.metrics, result.error is not None))
    if resumed:
        seen = {(o.cell, o.optuna_trial_number) for o in outcomes}
        outcomes += [outcome(*ended) for ended in ended_outside_tune(spec, cells, seen)]
    rows = summarize(spec, cells, outcomes)
    print(summary_table(spec, rows), file=sys.stderr)
    if summary_json:
        write_summary_json(summary_json, spec, rows)
    return rows


def _pending_trials(concurrency: int) -> None:
    # Tune lets a custom searcher have one PENDING trial at a time unless it is wrapped in a
    # ConcurrencyLimiter (which CellSearcher replaces, see study.searcher): with one pending
    # trial at a time the trials would start one after another.
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency)


def _quiet_tune() -> None:
    # Short trials make Tune snapshot its state often; that is expected here, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The classic reporter is silent at verbose=0; the new one prints a config banner anyway.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
