"""The live progress display while a study runs, and the end-of-study summary.

:class:`ProgressReporter` shows per cell the trials done / budget and the best objective so
far, with the study's elapsed and estimated remaining time (redrawn in place on a terminal,
printed as periodic blocks in a log). The summary is computed from the trials' final results,
so it is the same after a resume.
"""

from __future__ import annotations

import json
import math
import shutil
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
        done = f"{r.finished}/{r.budget}"
        for count, what in ((r.failed, "failed"), (r.pruned, "pruned"), (r.diverged, "diverged")):
            done += f" ({count} {what})" if count else ""
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
    """``--summary-json``: study name, tracking URI, objective and one entry per cell.

    Non-finite numbers (a NaN CI bound, say) become ``null``: the file stays strict JSON.
    """
    payload = {
        "study": spec.name,
        "tracking_uri": spec.tracking_uri,
        "objective": spec.objective,
        "direction": spec.direction,
        "cells": [asdict(r) for r in rows],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_or_none(payload), indent=2, allow_nan=False))


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float, at any depth of dicts/lists/tuples, replaced by None.

    (``json.dumps(default=...)`` cannot do this: it never calls ``default`` for floats.)
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The live display
# ---------------------------------------------------------------------------------------------
@dataclass
class CellProgress:
    """Live state of one cell, from the trials Tune holds."""

    key: str
    budget: int
    ended: int = 0
    running: int = 0
    failed: int = 0
    pruned: int = 0
    diverged: int = 0
    best: float | None = None


class ProgressReporter(Callback):
    """Ray Tune callback showing, per cell, trials done / budget and the best objective so far,
    with the study's elapsed and estimated remaining time.

    On a terminal the table is redrawn in place (at most every ``REDRAW_S`` seconds). Otherwise
    (a log file, CI) the table is printed as a block when something changed, at most every
    ``BLOCK_EVERY_S`` seconds, and once more at the end; while nothing changes a one-line
    heartbeat comes every ``HEARTBEAT_S`` seconds, so logs stay short and readable.

    Args:
        spec: the study spec (budget per cell, objective and its direction).
        cells: the study's cells, in display order.
        stream: where to write (default: stderr, looked up at every write).
    """

    REDRAW_S = 1.0
    BLOCK_EVERY_S = 30.0
    HEARTBEAT_S = 60.0

    def __init__(self, spec: StudySpec, cells: list[Cell], stream: TextIO | None = None) -> None:
        self.budgets = {c.key: c.budget for c in cells}
        self.objective = spec.objective
        self.direction = spec.direction
        self.cell_keys = [c.key for c in cells]
        self.total = sum(self.budgets.values())
        self._stream = stream
        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._drawn_lines = 0
        self._changed = True
        self._ended_here: set[str] = set()
        """Trials that ended in this session (they measure the pace; restored ones do not)."""
        self._errored: set[str] = set()
        self._spec = spec
        self._cells = cells
        self._ended_outside: dict[tuple[str, int], TrialOutcome] = {}
        """Trials that ended in the Optuna studies, read once per session (see ``setup``)."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    # -- Tune hooks --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Restart the clock (also on resume, where it measures this session) and read which
        trials have ended: after a driver crash some ended where Tune's snapshot never saw
        them, so only the Optuna studies know (they are counted, never run again)."""
        from study.searcher import ended_outside_tune

        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._drawn_lines = 0
        self._changed = True
        self._ended_here = set()
        ended = [outcome(*e) for e in ended_outside_tune(self._spec, self._cells, set())]
        self._ended_outside = {(o.cell, o.optuna_trial_number): o for o in ended}

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial started: its cell's running count changed."""
        self._changed = True

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial finished (or was stopped by the scheduler)."""
        self._ended_here.add(trial.trial_id)
        self._changed = True

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial failed."""
        self._ended_here.add(trial.trial_id)
        self._errored.add(trial.trial_id)
        self._changed = True

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Redraw (terminal) or print a block / heartbeat (log) when it is time."""
        now = time.monotonic()
        since = now - self._last_draw
        if self._live():
            if since >= self.REDRAW_S:
                self._draw(trials, now)
        elif self._changed and since >= self.BLOCK_EVERY_S:
            self._draw(trials, now)
        elif since >= self.HEARTBEAT_S:
            self._write(self.header(trials, now) + "\n", lines=0)
            self._last_draw = now

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """The final state of every cell."""
        self._draw(trials, time.monotonic())
        self._drawn_lines = 0  # what follows (the summary) is printed below, never over it

    # -- what is shown -----------------------------------------------------------------------
    def cells(self, trials: list[Trial]) -> list[CellProgress]:
        """Per-cell counts and best objective (diverged trials never count as best)."""
        rows = {key: CellProgress(key, self.budgets[key]) for key in self.cell_keys}
        ended: list[TrialOutcome] = []
        known: set[tuple[str, int]] = set()
        for trial in trials:
            config = trial.config or {}
            row = rows.get(config.get("cell"))
            if row is None:
                continue
            known.add((config["cell"], config["optuna_trial_number"]))
            errored = trial.status == "ERROR" or trial.trial_id in self._errored
            if errored or trial.status == "TERMINATED" or trial.trial_id in self._ended_here:
                ended.append(outcome(config, trial.last_result, errored))
            else:
                row.running += trial.status == "RUNNING"
        ended += [o for key, o in self._ended_outside.items() if key not in known]
        sign = 1.0 if self.direction == "min" else -1.0
        for found in ended:
            if found.status == "running":
                continue  # stopped by an interrupt before its end: `study resume` finishes it
            row = rows[found.cell]
            row.ended += 1
            row.failed += found.status == "failed"
            row.pruned += found.status == "pruned"
            row.diverged += found.diverged
            better = row.best is None or sign * found.objective < sign * row.best
            if found.status == "finished" and not found.diverged and better:
                row.best = found.objective
        return list(rows.values())

    def header(self, trials: list[Trial], now: float | None = None) -> str:
        """``[ended/total trials, running, elapsed, ~left]``: the overall line."""
        rows = self.cells(trials)
        ended = sum(r.ended for r in rows)
        running = sum(r.running for r in rows)
        elapsed = (time.monotonic() if now is None else now) - self._started
        here = len(self._ended_here)
        if ended >= self.total:
            left = "done"
        elif here:
            # Trials ending in this session measure the pace (concurrency included).
            left = f"~{_clock(elapsed / here * (self.total - ended))} left"
        else:
            left = "~? left"
        return (
            f"[{ended}/{self.total} trials, {running} running, {_clock(elapsed)} elapsed, {left}]"
        )

    def table(self, trials: list[Trial], now: float | None = None) -> str:
        """The header line, then one line per cell: done/budget, running, best, notes."""
        rows = self.cells(trials)
        lines = [("cell", "done", "running", f"best {self.objective}", "")]
        for r in rows:
            counts = {"failed": r.failed, "pruned": r.pruned, "diverged": r.diverged}
            notes = [f"{n} {what}" for what, n in counts.items() if n]
            lines.append(
                (
                    r.key,
                    f"{r.ended}/{r.budget}",
                    str(r.running) if r.running else "-",
                    f"{r.best:.4f}" if r.best is not None else "-",
                    ", ".join(notes),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        body = [
            "  " + "  ".join(col.ljust(w) for col, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        ]
        return "\n".join([self.header(trials, now), *body])

    # -- writing -------------------------------------------------------------------------------
    def _live(self) -> bool:
        """Redraw in place: a terminal tall enough for the whole table."""
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return False
        return len(self.cell_keys) + 3 <= shutil.get_terminal_size().lines

    def _draw(self, trials: list[Trial], now: float) -> None:
        text = self.table(trials, now)
        self._write(text + "\n", lines=text.count("\n") + 1)
        self._last_draw = now
        self._changed = False

    def _write(self, text: str, lines: int) -> None:
        if self._drawn_lines and self._live():
            # Back to the first line of the previous table, clear to the end of the screen.
            text = f"\x1b[{self._drawn_lines}F\x1b[J" + text
        self._drawn_lines = lines if self._live() else 0
        self.stream.write(text)
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"
