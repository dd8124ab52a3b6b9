"""Live progress lines while a study runs, and the end-of-study summary.

Progress goes to stderr as compact lines: on trial completion (at most one line every
``MIN_LINE_GAP_S`` seconds, plus the last) and a heartbeat every ``HEARTBEAT_S`` seconds. The
summary is computed from the trials' final results, so it is the same after a resume.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ray.tune import Callback

from study.cells import Cell
from study.spec import StudySpec

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

MIN_LINE_GAP_S = 2.0
HEARTBEAT_S = 15.0


@dataclass
class TrialOutcome:
    """What the summary needs of one trial."""

    cell: str
    params: dict[str, Any]
    paper_setting: bool
    optuna_trial_number: int
    status: str
    """'finished', 'failed', 'pruned' (stopped by the scheduler) or 'running'."""
    diverged: bool = False
    objective: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan


@dataclass
class CellSummary:
    """One row of the end-of-study table (and of ``--summary-json``)."""

    cell: str
    dataset: str
    model: str
    ordering: str
    budget: int
    finished: int = 0
    failed: int = 0
    diverged: int = 0
    pruned: int = 0
    paper_objective: float | None = None
    paper_ci: list[float] | None = None
    best_objective: float | None = None
    best_ci: list[float] | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_optuna_trial_number: int | None = None


def outcome(config: dict[str, Any], result: dict[str, Any] | None, errored: bool) -> TrialOutcome:
    """Classify one trial from its Tune config and last result."""
    result = result or {}
    if errored:
        status = "failed"
    elif result.get("final") == 1:
        status = "finished"
    elif result.get("done"):
        status = "pruned"
    else:
        status = "running"
    found = TrialOutcome(
        cell=config["cell"],
        params=dict(config["params"]),
        paper_setting=bool(config["paper_setting"]),
        optuna_trial_number=int(config["optuna_trial_number"]),
        status=status,
        diverged=bool(result.get("diverged", 0)),
    )
    if status == "finished":
        found.objective = float(result["objective"])
        found.ci_low = float(result.get("objective_ci_low", math.nan))
        found.ci_high = float(result.get("objective_ci_high", math.nan))
    return found


def summarize(
    spec: StudySpec, cells: list[Cell], outcomes: Iterable[TrialOutcome]
) -> list[CellSummary]:
    """Per cell: counts, the paper setting's objective and the best objective, with CIs."""
    rows = {
        c.key: CellSummary(c.key, c.dataset_label, c.model, c.ordering, c.budget)
        for c in cells
    }
    sign = 1.0 if spec.direction == "min" else -1.0
    best: dict[str, TrialOutcome] = {}
    for trial in outcomes:
        row = rows.get(trial.cell)
        if row is None:
            continue
        row.failed += trial.status == "failed"
        row.pruned += trial.status == "pruned"
        if trial.status != "finished":
            continue
        row.finished += 1
        row.diverged += trial.diverged
        if trial.diverged:
            continue  # a diverged trial is never reported as a cell's best or paper value
        if trial.paper_setting:
            row.paper_objective = trial.objective
            row.paper_ci = [trial.ci_low, trial.ci_high]
        held = best.get(trial.cell)
        if held is None or sign * trial.objective < sign * held.objective:
            best[trial.cell] = trial
    for key, trial in best.items():
        row = rows[key]
        row.best_objective = trial.objective
        row.best_ci = [trial.ci_low, trial.ci_high]
        row.best_params = trial.params
        row.best_optuna_trial_number = trial.optuna_trial_number
    return list(rows.values())


def summary_table(spec: StudySpec, rows: list[CellSummary]) -> str:
    """The summary as an aligned text table."""

    def value(v: float | None, ci: list[float] | None) -> str:
        if v is None:
            return "-"
        return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{v:.4f}"

    def params(p: dict[str, Any]) -> str:
        return (
            " ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(p.items())
            )
            or "-"
        )

    header = ("cell", "done", f"paper {spec.objective}", f"best {spec.objective}", "best params")
    lines = [header]
    for r in rows:
        done = f"{r.finished}/{r.budget}" + (f" ({r.failed} failed)" if r.failed else "")
        if r.diverged:
            done += f" ({r.diverged} diverged)"
        lines.append(
            (
                r.cell,
                done,
                value(r.paper_objective, r.paper_ci),
                value(r.best_objective, r.best_ci),
                params(r.best_params),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(col.ljust(w) for col, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_summary_json(path: str | Path, spec: StudySpec, rows: list[CellSummary]) -> None:
    """``--summary-json``: study name, tracking URI, objective and one entry per cell."""
    payload = {
        "study": spec.name,
        "tracking_uri": spec.tracking_uri,
        "objective": spec.objective,
        "direction": spec.direction,
        "cells": [asdict(r) for r in rows],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=_none_for_nan))


def _none_for_nan(value: Any) -> Any:
    return None


class ProgressReporter(Callback):
    """Ray Tune callback printing per-cell progress and an overall time estimate."""

    def __init__(self, spec: StudySpec, cells: list[Cell], stream: TextIO | None = None) -> None:
        self.budgets = {c.key: c.budget for c in cells}
        self.direction = spec.direction
        self.cell_keys = [c.key for c in cells]
        self.total = sum(self.budgets.values())
        self._stream = stream
        self._started = time.monotonic()
        self._last_line = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def setup(self, **info: Any) -> None:
        """Restart the clock (also on resume, where it measures this session)."""
        self._started = self._last_line = time.monotonic()

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """One line about the completed trial's cell (throttled)."""
        self._line(trials, trial)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """One line about the failed trial's cell (throttled)."""
        self._line(trials, trial)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """A heartbeat line when nothing completed for a while (long trials)."""
        if time.monotonic() - self._last_line >= HEARTBEAT_S:
            self._line(trials, None)

    def _line(self, trials: list[Trial], trial: Trial | None) -> None:
        now = time.monotonic()
        # The trial being reported may not carry its final status yet: count it as ended.
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is trial]
        last = len(ended) >= self.total
        if trial is not None and not last and now - self._last_line < MIN_LINE_GAP_S:
            return
        self._last_line = now
        elapsed = now - self._started
        # Trials that ended in this session measure the pace; restored ones cost nothing here.
        pace = elapsed / max(len(ended), 1)
        left = pace * (self.total - len(ended))
        text = (
            f"[{len(ended)}/{self.total} trials, {_clock(elapsed)} elapsed, ~{_clock(left)} left]"
        )
        if trial is not None and "cell" in trial.config:
            key = trial.config["cell"]
            cell_trials = [t for t in ended if t.config.get("cell") == key]
            values = [
                t.last_result["objective"]
                for t in cell_trials
                if t.last_result.get("final") == 1 and not t.last_result.get("diverged")
            ]
            best = (min if self.direction == "min" else max)(values) if values else None
            text += f" {key}: {len(cell_trials)}/{self.budgets.get(key, 0)} done"
            text += f", best objective {best:.4f}" if best is not None else ", no result yet"
        else:
            running = sum(t.status == "RUNNING" for t in trials)
            text += f" {running} running"
        print(text, file=self._stream or sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
