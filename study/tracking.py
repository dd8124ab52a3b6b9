"""MLflow layout of a study, written by a Ray Tune callback living in the driver.

- one experiment per study (named like the study);
- one parent run per cell (tags: study, cell, dataset, model, ordering), finished at the end;
- one child run per Ray trial (``mlflow.parentRunId``), with tags (also where it ran: Ray node,
  host, device; see :data:`PLACEMENT_TAGS`), the resolved TrialConfig as params, every
  evaluation point as metrics with ``step = samples seen``, the run summary, and the
  per-replicate curves and config as artifacts.

Writes are batched (``log_batch``; an SQLite store fsyncs every request). Exactly one run per
trial, also across ``study resume``: the trial id -> run id mapping is saved with Tune's
experiment state and rebuilt from the tracking store's tags on start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_spaces import apply_params
from study.cells import Cell
from study.spec import StudySpec
from trainables.tune_adapter import CURVES_FILE, HISTORY_FILE

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
"""MLflow's per-request caps of ``log_batch``."""
MAX_PARAM_LENGTH = 6000
PLACEMENT_TAGS = {
    "node_id": "ray_node_id",
    "node_ip": "ray_node_ip",
    "hostname": "hostname",
    "device": "device",
    "device_name": "device_name",
}
"""Result keys telling where a trial ran (the trainable's and Tune's own) -> child run tag."""
FLUSH_EVERY_S = 10.0
"""Seconds between flushes of buffered metrics while trials run (so the UI shows live curves)."""


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; an SQLite store's folder is created first."""
    # The client prints a "View run" link per finished run to stdout: hundreds of lines here.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: MlflowClient, spec: StudySpec) -> str:
    """The study's experiment id, created if missing (local artifacts in mlruns/artifacts)."""
    found = client.get_experiment_by_name(spec.name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if spec.tracking_uri.startswith("sqlite:///"):
        db = Path(spec.tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "artifacts" / spec.name).as_uri()
    return client.create_experiment(
        spec.name, artifact_location=location, tags={"study": spec.name}
    )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``dataset.name``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MlflowTracking(Callback):
    """Ray Tune callback writing the study's MLflow runs (see the module docstring)."""

    def __init__(self, spec: StudySpec, cells: list[Cell]) -> None:
        self.spec_json = spec.to_json()
        self.study = spec.name
        self.tracking_uri = spec.tracking_uri
        self.cells = {cell.key: cell for cell in cells}
        self.runs: dict[str, str] = {}
        """Ray trial id -> MLflow child run id."""
        self.parents: dict[str, str] = {}
        """Cell key -> MLflow parent run id."""
        self.closed: set[str] = set()
        """Ray trial ids whose run is terminated (never written again)."""
        self._client: MlflowClient | None = None
        self._experiment_id = ""
        self._buffer: dict[str, list[Metric]] = {}
        self._logged_steps: dict[str, set[int]] = {}
        self._placements: dict[str, dict[str, str]] = {}
        """Ray trial id -> placement tags last written (written again only when they change)."""
        self._last_flush = time.monotonic()

    # -- pickling: Tune stores callbacks with the experiment; clients and buffers stay behind --
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _buffer={}, _logged_steps={}, _placements={})
        return state

    def get_state(self) -> dict[str, Any]:
        """Run-id mapping, saved by Tune with its experiment checkpoint."""
        return {"runs": dict(self.runs), "parents": dict(self.parents), "closed": set(self.closed)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` (on ``Tuner.restore``)."""
        self.runs.update(state.get("runs", {}))
        self.parents.update(state.get("parents", {}))
        self.closed.update(state.get("closed", set()))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = connect(self.tracking_uri)
        return self._client

    # -- Tune hooks --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Find or create the experiment and one parent run per cell; adopt existing runs."""
        from study.spec import StudySpec

        spec = StudySpec.from_dict(json.loads(self.spec_json))
        self._experiment_id = experiment_id(self.client, spec)
        self._adopt_existing_runs()
        provenance = _provenance()
        for key, cell in self.cells.items():
            if key in self.parents:
                continue
            tags = {
                "study": self.study,
                "cell": key,
                "dataset": cell.dataset_label,
                "model": cell.model,
                "ordering": cell.ordering,
                **({"variant": cell.variant} if cell.variant else {}),
                "role": "cell",
                **provenance,
            }
            run = self.client.create_run(self._experiment_id, tags=tags, run_name=key)
            self.parents[key] = run.info.run_id
            self.client.log_text(run.info.run_id, self.spec_json, "spec.json")

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Create the trial's child run, or adopt it when the trial is resumed."""
        self._guard(trial, self._start, trial)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        """Buffer the evaluation point's metrics at step = samples seen."""
        if trial.trial_id in self.closed:
            return
        self._guard(trial, self._tag_placement, trial.trial_id, result)
        self._guard(trial, self._buffer_point, trial.trial_id, result)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Flush buffered metrics every FLUSH_EVERY_S seconds (live curves in the UI)."""
        if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            for trial_id in list(self._buffer):
                self._guard(None, self._flush, trial_id)
            self._last_flush = time.monotonic()

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Log the remaining points, the summary and the artifacts; finish the run."""
        self._guard(trial, self._finish, trial, "FINISHED")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Flush what the trial reported, record the error, mark the run FAILED."""
        self._guard(trial, self._finish, trial, "FAILED")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Finish the cells' parent runs once every trial has ended."""
        if any(not t.is_finished() for t in trials):
            return  # interrupted: parents stay open until `study resume` finishes the study
        for run_id in self.parents.values():
            self._guard(None, self.client.set_terminated, run_id, "FINISHED")

    # -- implementation ------------------------------------------------------------------------
    def _guard(self, trial: Trial | None, action: Any, *args: Any) -> None:
        # A tracking hiccup must not end a sweep of many trials: warn, keep training.
        try:
            action(*args)
        except Exception as error:
            which = f" for trial {trial.trial_id}" if trial is not None else ""
            print(f"warning: MLflow write failed{which}: {error}", file=sys.stderr)

    def _adopt_existing_runs(self) -> None:
        """Map trial ids and cells to runs already in the store (after a driver crash)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self._experiment_id],
                f"tags.study = '{self.study}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                tags = run.data.tags
                if tags.get("role") == "cell" and "cell" in tags:
                    self.parents.setdefault(tags["cell"], run.info.run_id)
                elif "ray_trial_id" in tags:
                    self.runs.setdefault(tags["ray_trial_id"], run.info.run_id)
                    if run.info.status in ("FINISHED", "FAILED", "KILLED"):
                        self.closed.add(tags["ray_trial_id"])
            token = page.token
            if not token:
                break

    def _start(self, trial: Trial) -> None:
        trial_id = trial.trial_id
        if trial_id in self.runs:
            run_id = self.runs[trial_id]
            # Resumed: skip the points this run already holds (the trial re-reports them).
            history = self.client.get_metric_history(run_id, "eval/test_loss")
            self._logged_steps[trial_id] = {m.step for m in history}
            if trial_id not in self.closed:
                self.client.update_run(run_id, status="RUNNING")
            return
        config = trial.config
        cell = self.cells[config["cell"]]
        resolved = apply_params(config["base"], config["params"])
        tags = {
            "mlflow.parentRunId": self.parents[cell.key],
            "study": self.study,
            "cell": cell.key,
            "dataset": cell.dataset_label,
            "model": cell.model,
            "ordering": cell.ordering,
            **({"variant": cell.variant} if cell.variant else {}),
            "ray_trial_id": trial_id,
            "optuna_trial_number": str(config["optuna_trial_number"]),
            "paper_setting": str(bool(config["paper_setting"])).lower(),
            "replicates": str(resolved["replicates"]),
            "gradient": resolved["gradient"],
            "role": "trial",
        }
        run_name = f"{cell.key}#{config['optuna_trial_number']}"
        run = self.client.create_run(self._experiment_id, tags=tags, run_name=run_name)
        self.runs[trial_id] = run.info.run_id
        self._logged_steps[trial_id] = set()
        params = {
            **{f"config.{k}": v for k, v in flatten(resolved).items()},
            **{f"searched.{k}": v for k, v in config["params"].items()},
        }
        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for start in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run.info.run_id, params=items[start : start + MAX_PARAMS])

    def _tag_placement(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.runs:
            return
        tags = {tag: str(result[key]) for key, tag in PLACEMENT_TAGS.items() if key in result}
        if tags and tags != self._placements.get(trial_id):
            # A trial restarted on another node (worker failure) is re-tagged with the new one.
            self.client.log_batch(
                self.runs[trial_id], tags=[RunTag(k, v) for k, v in sorted(tags.items())]
            )
            self._placements[trial_id] = tags

    def _buffer_point(self, trial_id: str, result: dict[str, Any]) -> None:
        if "samples_seen" not in result or trial_id not in self.runs:
            return
        step = int(result["samples_seen"])
        if step in self._logged_steps.get(trial_id, set()):
            return
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), stamp, step)
            for key, value in result.items()
            if key.startswith("eval/") and _is_number(value)
        ]
        if _is_number(result.get("objective")):
            metrics.append(Metric("objective_running", float(result["objective"]), stamp, step))
        self._buffer.setdefault(trial_id, []).extend(metrics)
        self._logged_steps.setdefault(trial_id, set()).add(step)

    def _flush(self, trial_id: str) -> None:
        metrics = self._buffer.pop(trial_id, [])
        for start in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(
                self.runs[trial_id], metrics=metrics[start : start + MAX_METRICS]
            )

    def _finish(self, trial: Trial, status: str) -> None:
        trial_id = trial.trial_id
        if trial_id in self.closed or trial_id not in self.runs:
            return
        run_id = self.runs[trial_id]
        final = trial.last_result or {}
        with tempfile.TemporaryDirectory() as scratch:
            folder = _final_checkpoint(trial, Path(scratch)) if status == "FINISHED" else None
            if folder is not None and (folder / HISTORY_FILE).exists():
                # The checkpoint's history has every point, also those reported before a driver
                # crash: log whichever ones this run does not hold yet.
                for point in json.loads((folder / HISTORY_FILE).read_text()):
                    self._buffer_point(trial_id, point)
            self._flush(trial_id)
            step = int(final.get("samples_seen", 0))
            stamp = int(time.time() * 1000)
            summary = [
                Metric(key, float(value), stamp, step)
                for key, value in final.items()
                if (key.startswith(("run/", "perf/")) or key.startswith("objective"))
                and key != "objective_running"
                and _is_number(value)
            ]
            tags = [RunTag("diverged", str(bool(final.get("diverged", 0))).lower())]
            # Stopped early by the scheduler (ASHA): ended without its final report.
            pruned = status == "FINISHED" and final.get("final") != 1
            tags.append(RunTag("pruned", str(pruned).lower()))
            if status == "FAILED":
                tags.append(RunTag("error", _param_value(str(trial.error_file or "see Ray logs"))))
            for start in range(0, len(summary), MAX_METRICS):
                self.client.log_batch(
                    run_id,
                    metrics=summary[start : start + MAX_METRICS],
                    tags=tags if start == 0 else (),
                )
            if not summary:
                self.client.log_batch(run_id, tags=tags)
            # The resolved config: leak_group<g> folded into group_leaks, as in the params.
            config = apply_params(trial.config["base"], trial.config["params"])
            self.client.log_dict(run_id, config, "config.json")
            if folder is not None and (folder / CURVES_FILE).exists():
                self.client.log_artifact(run_id, str(folder / CURVES_FILE))
        self.client.set_terminated(run_id, status)
        self.closed.add(trial_id)
        self._logged_steps.pop(trial_id, None)


def _final_checkpoint(trial: Trial, scratch: Path) -> Path | None:
    """A local folder holding the trial's latest checkpoint (downloaded if storage is remote)."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    if os.path.isdir(checkpoint.path):
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory(str(scratch / "checkpoint")))


def _is_number(value: Any) -> bool:
    # MLflow stores NaN, but its UI and the Optuna storage do not cope well: drop non-finite.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _param_value(value: Any) -> str:
    text = (
        json.dumps(value) if isinstance(value, list | tuple | dict | bool | None) else str(value)
    )
    return text[:MAX_PARAM_LENGTH]


def _provenance() -> dict[str, str]:
    """Git SHA and package versions, tagged on every cell's run."""
    import mlflow
    import optuna
    import ray
    import torch

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {
        "git_sha": sha or "unknown",
        "version.ray": ray.__version__,
        "version.torch": torch.__version__,
        "version.optuna": optuna.__version__,
        "version.mlflow": mlflow.__version__,
    }
