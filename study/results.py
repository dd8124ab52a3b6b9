"""A study's results as the MLflow tracking store holds them, read back into typed objects.

Everything comes from the store, in the layout ``study/tracking.py`` writes: the experiment named
like the study, one parent run per cell (``role=cell``) and one child run per trial
(``role=trial``) with tags (cell, dataset, model, ordering, optional variant, paper_setting,
diverged, optuna_trial_number), params (``config.*`` resolved config, ``searched.*`` searched
values), run metrics (``objective``, ``run/<metric>``) and the ``curves.json`` artifact
(per-replicate curves and run metrics). Cells are rebuilt from tags, so a report reads any store,
also a partly finished study, without the spec code that made it.

Only the curves the report needs are downloaded: each cell's paper-setting trial and its best
``top_k`` trials.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from study.cells import Cell, expand
from study.spec import SpecError, StudySpec, VariantSpec
from study.tracking import connect
from trainables.config import MODELS
from trainables.metrics import LATENT_OBJECTIVES, OBJECTIVES

DEFAULT_OBJECTIVE = "test_loss_auc"
SUMMARY_TAG = "study_summary"
"""Tag (value ``true``) of the study's summary run, which holds the report."""
CURVES_FILE = "curves.json"
SPEC_FILE = "spec.json"

_REPS = re.compile(r"^reps-(\d+)$")


@dataclass
class Curves:
    """Per-replicate curves and run metrics of one trial (its ``curves.json``)."""

    samples_seen: np.ndarray
    """[E] samples seen at each evaluation point."""
    test_loss: np.ndarray
    """[R, E] test loss (NaN where missing)."""
    test_accuracy: np.ndarray
    """[R, E] test accuracy (NaN for autoencoders)."""
    per_replicate: dict[str, np.ndarray]
    """Run metric name -> [R] values (empty for a diverged trial)."""
    diverged: bool

    @property
    def replicates(self) -> int:
        """Number of replicate networks R."""
        return int(self.test_loss.shape[0])

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Curves:
        """Parse a ``curves.json`` payload (``None`` entries are NaN)."""

        def array(values: Any) -> np.ndarray:
            return np.array(
                [[math.nan if v is None else v for v in row] for row in values], dtype=np.float64
            ).reshape(len(values), -1)

        per_replicate = {
            name: np.array([math.nan if v is None else v for v in values], dtype=np.float64)
            for name, values in payload.get("per_replicate", {}).items()
        }
        return cls(
            samples_seen=np.asarray(payload["samples_seen"], dtype=np.float64),
            test_loss=array(payload["test_loss"]),
            test_accuracy=array(payload["test_accuracy"]),
            per_replicate=per_replicate,
            diverged=bool(payload.get("diverged", False)),
        )


@dataclass
class TrialRecord:
    """One trial (MLflow child run) of a cell."""

    run_id: str
    cell: str
    number: int
    """Optuna trial number within the cell."""
    status: str
    """'finished', 'failed', 'pruned' (stopped early by a scheduler) or 'running'."""
    paper_setting: bool
    diverged: bool
    objective: float | None
    """The run's ``objective`` metric (a diverged trial's is a finite penalty)."""
    searched: dict[str, float]
    """Searched hyperparameter values (``searched.*`` params)."""
    config: dict[str, Any]
    """The resolved trial config (``config.*`` params, values parsed from their text)."""
    curves: Curves | None = None
    """Loaded for the paper-setting and best trials only."""

    @property
    def feasible(self) -> bool:
        """Finished and not diverged: a result that may be ranked."""
        return self.status == "finished" and not self.diverged

    @property
    def seed(self) -> int | None:
        """The trial's base seed (replicate r of two trials is paired when seeds agree)."""
        value = self.config.get("seed")
        return int(value) if isinstance(value, int | float) else None


@dataclass
class CellRecord:
    """One cell (MLflow parent run) and its trials."""

    key: str
    dataset: str
    model: str
    ordering: str
    variant: str | None
    run_id: str | None
    trials: list[TrialRecord] = field(default_factory=list)
    paper: TrialRecord | None = None
    """The paper-setting trial (finished, diverged or not), if it exists."""
    best: TrialRecord | None = None
    """The feasible trial with the best objective, if any."""
    ranked: list[TrialRecord] = field(default_factory=list)
    """Feasible trials, best first."""

    @property
    def group(self) -> str:
        """The setting this cell belongs to: ``dataset`` or ``dataset/variant``."""
        return f"{self.dataset}/{self.variant}" if self.variant else self.dataset

    def count(self, status: str) -> int:
        """Trials with ``status``."""
        return sum(t.status == status for t in self.trials)

    @property
    def diverged(self) -> int:
        """Finished trials that diverged."""
        return sum(t.status == "finished" and t.diverged for t in self.trials)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config of one of the cell's trials (shared settings)."""
        for trial in self.trials:
            if trial.config:
                return trial.config
        return {}


@dataclass(eq=False)
class StudyResults:
    """Everything a report needs of one study."""

    name: str
    tracking_uri: str
    experiment_id: str
    objective: str
    direction: str
    """'min' or 'max': the objective's direction."""
    spec: dict[str, Any] | None
    """The resolved spec logged with the cells (``spec.json``), if readable."""
    cells: list[CellRecord]
    summary_run_id: str | None = None
    """The existing summary run, if a report was made before."""

    @property
    def groups(self) -> list[str]:
        """Settings in order of first appearance."""
        return list(dict.fromkeys(cell.group for cell in self.cells))

    def cells_in(self, group: str) -> list[CellRecord]:
        """Cells of one setting."""
        return [cell for cell in self.cells if cell.group == group]

    @property
    def has_variants(self) -> bool:
        """True when some cell has a ``variant`` tag."""
        return any(cell.variant for cell in self.cells)

    @property
    def budget(self) -> int | None:
        """Trials per cell the spec asked for, if known."""
        value = (self.spec or {}).get("trials_per_cell")
        return int(value) if isinstance(value, int) else None

    @functools.cached_property
    def study_spec(self) -> StudySpec | None:
        """The logged spec as a StudySpec (None when missing or not valid for this code)."""
        if self.spec is None:
            return None
        try:
            return StudySpec.from_dict(self.spec)
        except (SpecError, TypeError, ValueError, KeyError):
            return None

    @functools.cached_property
    def design(self) -> dict[str, Cell]:
        """Cell key -> the cell as the spec designed it ({} without a valid spec)."""
        spec = self.study_spec
        return {cell.key: cell for cell in expand(spec)} if spec is not None else {}

    def cell_budget(self, key: str) -> int | None:
        """Trials cell ``key`` was to run (1 for a cell with nothing to search), if known."""
        found = self.design.get(key)
        return found.budget if found is not None else self.budget

    def overrides(self, group: str) -> dict[str, Any] | None:
        """What setting ``group`` changes: its variant's overrides as flat ``field: value``
        ({} for a variant without any, e.g. a baseline); None for a setting without a variant
        or when the logged spec does not describe the variant."""
        cells = self.cells_in(group)
        name = cells[0].variant if cells else None
        if name is None:
            return None
        for entry in (self.spec or {}).get("variants") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                try:
                    return VariantSpec.from_dict(entry).overrides()
                except (SpecError, TypeError):
                    return None
        return None


def direction_of(metric: str) -> str:
    """'min' or 'max' for a run metric (group losses are minimised)."""
    known = {**OBJECTIVES, **LATENT_OBJECTIVES}
    if metric in known:
        return known[metric]
    return "max" if "accuracy" in metric or "selectivity" in metric else "min"


def ordering_key(name: str) -> tuple[int, int, str]:
    """Sort key: random, then reps-k by k, then anything else by name."""
    if name == "random":
        return (0, 0, name)
    match = _REPS.match(name)
    if match:
        return (1, int(match.group(1)), name)
    return (2, 0, name)


def reps_of(ordering: str) -> int | None:
    """k of ``reps-k``, else None."""
    match = _REPS.match(ordering)
    return int(match.group(1)) if match else None


def model_key(name: str) -> tuple[int, str]:
    """Sort key: the engine's model order, unknown names last."""
    return (MODELS.index(name) if name in MODELS else len(MODELS), name)


def list_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    """Every active run of an experiment (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_study(name: str, tracking_uri: str, top_k: int = 3) -> StudyResults:
    """Read study ``name`` from the tracking store at ``tracking_uri``.

    Args:
        name: the study (its MLflow experiment).
        tracking_uri: any MLflow tracking URI (SQLite, a server, a file store).
        top_k: best trials per cell whose curves are downloaded (the paper trial is extra).

    Raises:
        SpecError: no such study in the store (the message lists the studies there), or no
            SQLite store at the path; nothing is created then.
    """
    # One progress bar per downloaded file would flood the terminal.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if tracking_uri.startswith("sqlite:///"):
        # Connecting would create an empty store (and its folder) at a mistyped path.
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():
            raise SpecError("tracking_uri", tracking_uri, "an existing MLflow store (no file)")
    client = connect(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        found = sorted(e.name for e in client.search_experiments(filter_string="tags.study != ''"))
        raise SpecError("name", name, f"a study in {tracking_uri}; found: {found or 'none'}")
    runs = list_runs(client, experiment.experiment_id)
    spec = _read_spec(client, runs)
    objective = str((spec or {}).get("objective") or DEFAULT_OBJECTIVE)
    cells: dict[str, CellRecord] = {}
    summary_run_id = None
    trials: list[tuple[Any, TrialRecord]] = []
    for run in runs:
        tags = run.data.tags
        if tags.get(SUMMARY_TAG) == "true":
            summary_run_id = summary_run_id or run.info.run_id
        elif tags.get("role") == "cell" and "cell" in tags:
            cells.setdefault(tags["cell"], _cell(tags, run.info.run_id))
        elif tags.get("role") == "trial" and "cell" in tags:
            trials.append((run, _trial(run, objective)))
    for run, trial in trials:
        cell = cells.get(trial.cell)
        if cell is None:  # a trial whose parent is missing: rebuild the cell from its tags
            cell = cells[trial.cell] = _cell(run.data.tags, None)
        elif cell.variant is None and run.data.tags.get("variant"):
            cell.variant = run.data.tags["variant"]
        cell.trials.append(trial)
    result = StudyResults(
        name=name,
        tracking_uri=tracking_uri,
        experiment_id=experiment.experiment_id,
        objective=objective,
        direction=direction_of(objective),
        spec=spec,
        cells=sorted(
            cells.values(),
            key=lambda c: (
                c.dataset,
                c.variant or "",
                model_key(c.model),
                ordering_key(c.ordering),
            ),
        ),
        summary_run_id=summary_run_id,
    )
    # In the spec's design order (data set, model, ordering, variant as the spec lists them),
    # so settings and the claims matrix follow the spec; cells the spec does not know go last.
    order = {key: cell.index for key, cell in result.design.items()}
    result.cells.sort(key=lambda c: order.get(c.key, len(order)))
    with tempfile.TemporaryDirectory() as scratch:
        for cell in result.cells:
            _rank(cell, result.direction)
            for trial in _needing_curves(cell, top_k):
                trial.curves = _download_curves(client, trial.run_id, Path(scratch))
    return result


# -- implementation ----------------------------------------------------------------------------
def _cell(tags: dict[str, str], run_id: str | None) -> CellRecord:
    return CellRecord(
        key=tags["cell"],
        dataset=tags.get("dataset", ""),
        model=tags.get("model", ""),
        ordering=tags.get("ordering", ""),
        variant=tags.get("variant") or None,
        run_id=run_id,
    )


def _trial(run: Any, objective: str) -> TrialRecord:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    diverged = tags.get("diverged") == "true"
    if run.info.status in ("FAILED", "KILLED"):
        status = "failed"
    elif run.info.status == "FINISHED":
        # A trial stopped by the scheduler ends FINISHED without the run summary metrics.
        status = "finished" if diverged or f"run/{objective}" in metrics else "pruned"
    else:
        status = "running"
    value = metrics.get("objective")
    return TrialRecord(
        run_id=run.info.run_id,
        cell=tags["cell"],
        number=int(tags.get("optuna_trial_number", -1)),
        status=status,
        paper_setting=tags.get("paper_setting") == "true",
        diverged=diverged,
        objective=float(value) if value is not None and status == "finished" else None,
        searched={
            k.removeprefix("searched."): _number(v)
            for k, v in params.items()
            if k.startswith("searched.")
        },
        config={
            k.removeprefix("config."): _parse(v)
            for k, v in params.items()
            if k.startswith("config.")
        },
    )


def _rank(cell: CellRecord, direction: str) -> None:
    cell.trials.sort(key=lambda t: t.number)
    sign = 1.0 if direction == "min" else -1.0
    cell.ranked = sorted(
        (t for t in cell.trials if t.feasible and t.objective is not None),
        key=lambda t: (sign * t.objective, t.number),  # type: ignore[operator]
    )
    cell.best = cell.ranked[0] if cell.ranked else None
    papers = [t for t in cell.trials if t.paper_setting and t.status == "finished"]
    cell.paper = papers[0] if papers else None


def _needing_curves(cell: CellRecord, top_k: int) -> list[TrialRecord]:
    wanted = list(cell.ranked[:top_k])
    if cell.paper is not None and cell.paper not in wanted:
        wanted.append(cell.paper)
    return wanted


def _download_curves(client: MlflowClient, run_id: str, scratch: Path) -> Curves | None:
    folder = scratch / run_id
    folder.mkdir(exist_ok=True)
    try:
        path = client.download_artifacts(run_id, CURVES_FILE, str(folder))
        return Curves.from_json(json.loads(Path(path).read_text()))
    except Exception:  # a missing or unreadable artifact: the report falls back to run metrics
        return None


def _read_spec(client: MlflowClient, runs: list[Any]) -> dict[str, Any] | None:
    for run in runs:
        if run.data.tags.get("role") != "cell":
            continue
        with tempfile.TemporaryDirectory() as scratch:
            try:
                path = client.download_artifacts(run.info.run_id, SPEC_FILE, scratch)
                return dict(json.loads(Path(path).read_text()))
            except Exception:
                continue
    return None


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _number(text: str) -> Any:
    value = _parse(text)
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    )
