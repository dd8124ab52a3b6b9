"""The one module of ``trainables`` that knows Ray Tune: run a :class:`TrialRun` as a Tune trial.

Tune's config for a trial (built by the study's searcher) is::

    {"cell": "synthetic-categories/leaky/reps-3",      # which cell the trial belongs to
     "base": {...TrialConfig.to_dict()...},            # the cell's fixed settings
     "params": {"learning_rate": 0.02, "leak": 0.7},   # the searched values (override base)
     "optuna_trial_number": 3, "paper_setting": False}

The trainable reports replicate means and CIs at every evaluation point, with ``progress``
(samples seen / the trial's total samples: the time axis of the per-cell ASHA in
``study.scheduler``) and where it ran (``node_id``: the Ray node; ``device``: cpu or cuda). It
checkpoints the engine state every ``checkpoint_every_s`` seconds (the spec's setting; 0 = at
every evaluation point) and at the end, and resumes exactly after a worker failure: the engine
state holds weights, optimizer buffers, memory state, the position in the ordering and the curves
so far (the engine draws no random numbers after construction, so there is no RNG state to
carry). The final checkpoint also holds ``curves.json`` (per-replicate curves), ``history.json``
(the reported metrics of every evaluation point), ``final.json`` (the final report) and
``tune_config.json`` (the trial's config), so the driver can log a trial's results from disk
even when it learns of them only after a crash. A trial restored from its final checkpoint
re-reports the final result instead of training again.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from search_spaces import apply_params
from trainables.config import TrialConfig
from trainables.engine import EvalPoint, TrialResult, TrialRun
from trainables.metrics import LATENT_OBJECTIVES, OBJECTIVES

CHECKPOINT_EVERY_S = 30.0
"""Seconds of training between intermediate checkpoints (the final one is always written)."""
DIVERGED_PENALTY = 1e6
"""Objective of a diverged trial, signed to rank last; finite, as MLflow and Optuna need."""
STATE_FILE = "state.pkl"
CURVES_FILE = "curves.json"
HISTORY_FILE = "history.json"
FINAL_FILE = "final.json"
CONFIG_FILE = "tune_config.json"
FINAL_FILES = (STATE_FILE, CURVES_FILE, HISTORY_FILE, CONFIG_FILE, FINAL_FILE)
"""What a final checkpoint holds (one cut short by a crash while it was copied lacks some)."""


def trial_config(config: dict[str, Any]) -> TrialConfig:
    """The TrialConfig a Tune config describes: the cell's base with the searched params
    (``leak_group<g>`` go into ``group_leaks``, see ``search_spaces.apply_params``)."""
    return TrialConfig.from_dict(apply_params(config["base"], config.get("params", {})))


def penalty(objective: str) -> float:
    """A finite objective value that never ranks best under ``objective``'s direction."""
    direction = {**OBJECTIVES, **LATENT_OBJECTIVES}[objective]
    return DIVERGED_PENALTY if direction == "min" else -DIVERGED_PENALTY


def running_objective(
    objective: str, history: list[dict[str, float]], epoch_length: int, target: float
) -> float:
    """The objective as far as the curve so far tells (what ASHA compares at matched samples).

    The area metrics use the part of the first epoch seen so far, so two trials compared at the
    same samples_seen are compared on the same stretch of curve.
    """
    if objective in LATENT_OBJECTIVES:
        return math.nan  # measured on the test stream once, at the end of the trial
    samples = np.array([h["samples_seen"] for h in history], dtype=np.float64)
    if objective in ("test_loss_auc", "test_error_auc"):
        key = "eval/test_loss" if objective == "test_loss_auc" else "eval/test_accuracy"
        values = np.array([h.get(key, math.nan) for h in history])
        if objective == "test_error_auc":
            values = 1.0 - values
        inside = samples <= epoch_length
        x, y = samples[inside], values[inside]
        if x.size < 2 or x[-1] <= x[0]:
            return float(y[-1]) if y.size else math.nan
        return float(np.sum((y[1:] + y[:-1]) * np.diff(x) / 2.0) / (x[-1] - x[0]))
    if objective == "final_test_loss":
        return history[-1].get("eval/test_loss", math.nan)
    if objective == "final_test_accuracy":
        return history[-1].get("eval/test_accuracy", math.nan)
    # samples_to_target: censored at the samples seen so far, as the engine censors at the end
    reached = [h["samples_seen"] for h in history if h.get("eval/test_accuracy", 0) >= target]
    return float(reached[0] if reached else history[-1]["samples_seen"])


def train(
    config: dict[str, Any],
    objective: str = "test_loss_auc",
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    results_dir: str | None = None,
) -> None:
    """Ray Tune function trainable: train one configuration's replicates, report, checkpoint.

    Args:
        config: Tune's trial config (see the module docstring); ``previous_trials`` (Ray trial
            ids that ran this configuration before a driver crash) may be added by the searcher.
        objective: the run metric the study optimises; reported as ``objective`` (finite).
        checkpoint_every_s: seconds between intermediate checkpoints (0: every evaluation).
        results_dir: the study's Ray results folder, when the workers see it as a file system:
            checkpoints there that are newer than Tune's (saved after its last snapshot of the
            experiment, which a killed driver leaves behind) are resumed from.
    """
    # One thread per trial: trials are the unit of parallelism, and several intra-op threads per
    # trial on a shared machine only contend (per-sample steps are far too small to split).
    torch.set_num_threads(1)
    run = TrialRun(trial_config(config))
    placement = placement_of(run)
    history: list[dict[str, float]] = []
    with _latest_checkpoint(config, results_dir) as folder:
        if folder is not None:
            with open(folder / STATE_FILE, "rb") as handle:
                saved = pickle.load(handle)
            if all((folder / name).exists() for name in FINAL_FILES):
                # The trial had ended (a driver crash hid its end): report it again, no work.
                final = json.loads((folder / FINAL_FILE).read_text())
                tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder)))
                return
            run.load_state_dict(saved["run"])
            history = saved["history"]
    last_checkpoint = time.monotonic()
    for point in run:
        metrics = _point_metrics(point)
        history.append(metrics)
        report = {
            **metrics,
            "objective": _finite(
                running_objective(
                    objective, history, run.epoch_length, run.config.target_accuracy
                ),
                objective,
            ),
            "final": 0,
            "diverged": int(point.diverged),
            "progress": point.samples_seen / run.total_samples,
            **placement,
        }
        is_last = point.diverged or point.index == len(run.eval_points) - 1
        if is_last:
            report.update(_final_metrics(run.result(), objective))
            # The last report always carries a checkpoint: the curves the driver logs live there.
            with tempfile.TemporaryDirectory() as folder:
                _write_checkpoint(Path(folder), run, history, final=report, config=config)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
        elif time.monotonic() - last_checkpoint >= checkpoint_every_s:
            with tempfile.TemporaryDirectory() as folder:
                _write_checkpoint(Path(folder), run, history, final=None)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
            last_checkpoint = time.monotonic()
        else:
            tune.report(report)


def placement_of(run: TrialRun) -> dict[str, str]:
    """Where this trial runs: its Ray node and the engine's device (``cpu``, ``cuda``).

    Reported with every result, so a trial restarted on another node after a failure is tagged
    with the node that finished it.
    """
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "device": run.device.type}
    if run.device.type == "cuda":
        placement["device_name"] = torch.cuda.get_device_name(run.device)
    return placement


@contextlib.contextmanager
def _latest_checkpoint(config: dict[str, Any], results_dir: str | None) -> Iterator[Path | None]:
    """The folder to resume from: a final checkpoint of this configuration on disk, else the
    newest readable one on disk (this trial's or an earlier run's of it), else Tune's."""
    on_disk: list[Path] = []
    if results_dir is not None and Path(results_dir).is_dir():
        ids = [tune.get_context().get_trial_id(), *config.get("previous_trials", [])]
        finals = final_checkpoints(Path(results_dir), ids)
        others = sorted(
            (
                folder
                for trial_id in ids
                for folder in Path(results_dir).glob(f"trial_{trial_id}/checkpoint_*")
                if not (folder / FINAL_FILE).exists() and (folder / STATE_FILE).exists()
            ),
            key=_written_at,
        )
        on_disk = [*others, *finals]  # a final one first, then the newest
    # A checkpoint cut short by a crash while it was copied is passed over for an older one.
    found = next((folder for folder in reversed(on_disk) if _readable(folder)), None)
    if found is not None:
        yield found
        return
    checkpoint = tune.get_checkpoint()  # remote storage: only Tune knows the checkpoints
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def final_checkpoints(results_dir: Path, trial_ids: list[str]) -> list[Path]:
    """The complete final checkpoints of these Ray trials in a study's results folder, oldest
    first (trial folders ``trial_<id>``, see ``study.tuner.trial_dirname``)."""
    found = [
        folder
        for trial_id in trial_ids
        for folder in results_dir.glob(f"trial_{trial_id}/checkpoint_*")
        if all((folder / name).exists() for name in FINAL_FILES)
    ]
    return sorted(found, key=_written_at)


def _written_at(folder: Path) -> float:
    # The state file's time, not the folder's: after a restart Tune may number a checkpoint
    # like one the killed process wrote, and rewrites the files inside that folder.
    return (folder / STATE_FILE).stat().st_mtime


def _readable(folder: Path) -> bool:
    try:
        with open(folder / STATE_FILE, "rb") as handle:
            pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError):
        return False
    return True


def _point_metrics(point: EvalPoint) -> dict[str, float]:
    return {"samples_seen": point.samples_seen, "eval_index": point.index, **point.metrics()}


def _final_metrics(result: TrialResult, objective: str) -> dict[str, float]:
    """Summary of the whole run: every run metric with ``run/`` names, plus ``objective``."""
    out: dict[str, float] = {"final": 1, "diverged": int(result.diverged)}
    for key, value in result.summary.items():
        out[key if key.startswith("perf/") else f"run/{key}"] = float(value)
    out["perf/trial_seconds"] = float(result.seconds)
    value = result.summary.get(objective, math.nan)
    out["objective"] = _finite(value, objective)
    # A diverged run has no CI; the penalty stands for both ends so tables stay numeric.
    for end in ("low", "high"):
        bound = result.summary.get(f"{objective}_ci_{end}", math.nan)
        out[f"objective_ci_{end}"] = _finite(bound, objective)
    return out


def _finite(value: float, objective: str) -> float:
    return float(value) if math.isfinite(value) else penalty(objective)


def _write_checkpoint(
    folder: Path,
    run: TrialRun,
    history: list[dict[str, float]],
    final: dict[str, Any] | None,
    config: dict[str, Any] | None = None,
) -> None:
    """The engine state and reported history; with ``final`` (the last report) the artifacts,
    the final report and the trial's Tune ``config``."""
    with open(folder / STATE_FILE, "wb") as handle:
        pickle.dump({"run": run.state_dict(), "history": history}, handle)
    if final is not None:
        (folder / CURVES_FILE).write_text(json.dumps(curves(run.result())))
        (folder / HISTORY_FILE).write_text(json.dumps(history))
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        # last: a checkpoint with final.json is complete (the driver reads the others)
        (folder / FINAL_FILE).write_text(json.dumps(final))


def curves(result: TrialResult) -> dict[str, Any]:
    """Per-replicate curves as JSON-ready lists (NaN/inf become None)."""

    def clean(array: np.ndarray) -> list[Any]:
        return [[v if math.isfinite(v) else None for v in row] for row in array.tolist()]

    return {
        "samples_seen": result.samples_seen.tolist(),
        "test_loss": clean(np.atleast_2d(result.test_loss)),
        "test_accuracy": clean(np.atleast_2d(result.test_accuracy)),
        "per_replicate": {k: clean(np.atleast_2d(v))[0] for k, v in result.per_replicate.items()},
        "diverged": result.diverged,
        "config": result.config.to_dict(),
    }
