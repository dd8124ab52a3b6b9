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
from study.searcher import CellSearcher
from study.spec import SpecError, StudySpec
from study.tracking import MlflowTracking

SPEC_FILE = "study_spec.json"
"""The resolved spec, stored in the study's Ray results folder so resume needs only the name."""


def study_dir(spec: StudySpec) -> Path:
    """Ray Tune's experiment folder of a study."""
    return Path(spec.storage_path) / spec.name


def unique_name(spec: StudySpec) -> str:
    """``spec.name``, or ``name-2``, ``name-3``... when results of that name already exist.

    A study name is an MLflow experiment, a Ray results folder and an Optuna study prefix; running
    the same preset twice must not mix two studies' runs (``study resume`` continues one instead).
    """
    from study.tracking import connect

    client = connect(spec.tracking_uri)
    taken = {e.name for e in client.search_experiments(view_type=3, max_results=50000)}

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
                "ray_address", spec.ray_address, f"a running Ray head ({error})"
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
    """The Tune trainable with the spec's objective and per-trial resources."""
    from ray import tune

    from trainables.tune_adapter import train

    return tune.with_resources(
        tune.with_parameters(train, objective=spec.objective),
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
        tuner = tune.Tuner(
            trainable(spec),
            tune_config=tune.TuneConfig(
                search_alg=CellSearcher(spec, cells),
                scheduler=scheduler,
                num_samples=sum(cell.budget for cell in cells),
                max_concurrent_trials=concurrency,
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


def resume_study(spec: StudySpec, summary_json: str | None = None) -> list[CellSummary]:
    """Continue an interrupted study: unfinished and errored trials resume from checkpoints.

    The searcher (with its Optuna studies) and the callbacks come back from Tune's experiment
    state, so no trial is asked twice and the tracking callback reuses the runs it created.
    """
    from ray import tune

    cells = expand(spec)
    started = start_ray(spec)
    try:
        check_cluster(spec)
        _quiet_tune()
        print(f"study {spec.name}: resuming from {study_dir(spec)}", file=sys.stderr)
        tuner = tune.Tuner.restore(
            str(study_dir(spec)), trainable=trainable(spec), resume_errored=True
        )
        results = tuner.fit()
        return _report(spec, cells, results, summary_json)
    finally:
        if started:
            import ray

            ray.shutdown()


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
        # Resume needs a trial's latest checkpoint only; Tune keeps every one by default, which
        # on a cluster is 6 MB per checkpoint of a 784-392-10 trial with 5 replicates on the
        # shared results volume (benchmarks/cluster_stores.py), every 30 s of training.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        verbose=0,
    )


def _report(
    spec: StudySpec, cells: list[Cell], results: Any, summary_json: str | None
) -> list[CellSummary]:
    outcomes: list[TrialOutcome] = []
    for result in results:
        if "cell" not in (result.config or {}):
            continue
        outcomes.append(outcome(result.config, result.metrics, result.error is not None))
    rows = summarize(spec, cells, outcomes)
    print(summary_table(spec, rows), file=sys.stderr)
    if summary_json:
        write_summary_json(summary_json, spec, rows)
    return rows


def _quiet_tune() -> None:
    # Short trials make Tune snapshot its state often; that is expected here, not a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The classic reporter is silent at verbose=0; the new one prints a config banner anyway.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
