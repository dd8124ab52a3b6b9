"""Summary: counts per cell, paper setting and best with CIs, diverged never best; the live
progress display (per cell done / budget and best, elapsed and remaining time)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from ray.tune.experiment import Trial

from study.cells import expand
from study.progress import (
    ProgressReporter,
    finite_or_none,
    outcome,
    summarize,
    summary_table,
    write_summary_json,
)
from study.spec import load_spec


@pytest.fixture(autouse=True)
def _own_results_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reporter reads the study's Optuna studies at setup: never a real study's folder.
    monkeypatch.chdir(tmp_path)


def _config(cell: str, number: int, lr: float) -> dict:
    return {
        "cell": cell,
        "params": {"learning_rate": lr},
        "paper_setting": number == 0,
        "optuna_trial_number": number,
        "base": {},
    }


def _final(value: float, diverged: int = 0) -> dict:
    return {
        "final": 1,
        "done": True,
        "objective": value,
        "objective_ci_low": value - 0.01,
        "objective_ci_high": value + 0.01,
        "diverged": diverged,
    }


def test_summary_counts_and_best(tmp_path: Path) -> None:
    spec = load_spec("smoke", ["trials_per_cell=4"])
    cells = expand(spec)
    key = cells[0].key
    outcomes = [
        outcome(_config(key, 0, 0.01), _final(0.2), errored=False),
        outcome(_config(key, 1, 0.1), _final(1e6, diverged=1), errored=False),
        outcome(_config(key, 2, 0.05), _final(0.1), errored=False),
        outcome(_config(key, 3, 0.5), None, errored=True),
    ]
    rows = summarize(spec, cells, outcomes)
    row = rows[0]
    assert (row.finished, row.failed, row.diverged) == (3, 1, 1)
    assert row.paper_objective == 0.2 and row.paper_ci == pytest.approx([0.19, 0.21])
    assert row.best_objective == 0.1 and row.best_params == {"learning_rate": 0.05}
    assert rows[1].best_objective is None and rows[1].finished == 0
    table = summary_table(spec, rows)
    assert key in table and "0.1000 [0.0900, 0.1100]" in table
    path = tmp_path / "s.json"
    write_summary_json(path, spec, rows)
    payload = json.loads(path.read_text())
    assert payload["study"] == "smoke" and payload["tracking_uri"] == spec.tracking_uri
    first = payload["cells"][0]
    assert (first["dataset"], first["model"], first["ordering"]) == (
        "synthetic-categories",
        "feedforward",
        "random",
    )
    assert first["best_params"] == {"learning_rate": 0.05}


def test_maximised_objective_picks_the_largest() -> None:
    spec = load_spec("smoke", ["objective=final_test_accuracy"])
    cells = expand(spec)
    key = cells[0].key
    rows = summarize(
        spec,
        cells,
        [
            outcome(_config(key, 0, 0.01), _final(0.6), errored=False),
            outcome(_config(key, 1, 0.1), _final(0.8), errored=False),
        ],
    )
    assert rows[0].best_objective == 0.8


def test_summary_json_writes_nan_as_null(tmp_path: Path) -> None:
    spec = load_spec("smoke")
    cells = expand(spec)
    found = outcome(_config(cells[0].key, 0, 0.01), _final(0.2), errored=False)
    found.ci_low = found.ci_high = math.nan  # e.g. a single replicate: no bootstrap CI
    rows = summarize(spec, cells, [found])
    path = tmp_path / "s.json"
    write_summary_json(path, spec, rows)
    payload = json.loads(path.read_text())  # strict JSON: no NaN token
    assert "NaN" not in path.read_text()
    assert payload["cells"][0]["paper_ci"] == [None, None]
    assert payload["cells"][0]["paper_objective"] == 0.2
    assert finite_or_none({"a": (1.0, math.inf), "b": [{"c": -math.inf}], "d": "x"}) == {
        "a": [1.0, None],
        "b": [{"c": None}],
        "d": "x",
    }


# ---------------------------------------------------------------------------------------------
# ProgressReporter, fed real ray.tune Trial objects the way Tune's controller calls it
# ---------------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _trials(spec_cells: list, per_cell: int) -> list[Trial]:
    return [
        Trial("train", config=_config(cell.key, number, 0.01), stub=True)
        for cell in spec_cells
        for number in range(per_cell)
    ]


def _end(reporter: ProgressReporter, trials: list[Trial], trial: Trial, result: dict) -> None:
    trial.update_last_result(result)
    reporter.on_trial_complete(0, trials, trial)  # Tune calls this before TERMINATED is set
    trial.set_status(Trial.TERMINATED)


def _cell_line(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(key + " "))


def test_progress_log_prints_a_block_per_change_with_every_cell() -> None:
    spec = load_spec("smoke", ["trials_per_cell=2"])
    cells = expand(spec)
    stream = io.StringIO()
    reporter = ProgressReporter(spec, cells, stream=stream)
    reporter.BLOCK_EVERY_S = 0.0
    reporter.HEARTBEAT_S = 3600.0
    trials = _trials(cells, 2)
    reporter.setup()
    reporter.on_step_end(0, trials)
    first = stream.getvalue()
    assert first.startswith("[0/8 trials, 0 running,") and "~? left]" in first
    assert all(f"{c.key}  0/2" in first for c in cells)

    for trial in trials[:3]:
        trial.set_status(Trial.RUNNING)
        reporter.on_trial_start(0, trials, trial)
    _end(reporter, trials, trials[0], _final(0.3))
    _end(reporter, trials, trials[1], _final(1e6, diverged=1))  # diverged: never the best
    reporter.on_step_end(0, trials)
    block = stream.getvalue()[len(first) :]
    assert block.startswith("[2/8 trials, 1 running,")
    line = _cell_line(block, cells[0].key)
    assert line.split()[1:] == ["2/2", "-", "0.3000", "1", "diverged"]
    line = _cell_line(block, cells[1].key)
    assert line.split()[1:] == ["0/2", "1", "-"]

    # Nothing changed: no new block, however often Tune steps.
    length = len(stream.getvalue())
    for _ in range(5):
        reporter.on_step_end(0, trials)
    assert len(stream.getvalue()) == length

    # A pruned (stopped early) and a failed trial are counted as such.
    trials[2].update_last_result({"objective": 0.5, "final": 0, "done": True})
    reporter.on_trial_complete(0, trials, trials[2])
    trials[3].update_last_result({})
    reporter.on_trial_error(0, trials, trials[3])
    reporter.on_experiment_end(trials)
    last = stream.getvalue()[length:]
    assert _cell_line(last, cells[1].key).split()[1:] == [
        "2/2",
        "-",
        "-",
        "1",
        "failed,",
        "1",
        "pruned",
    ]
    assert "\x1b[" not in stream.getvalue()


def test_progress_log_is_throttled_and_has_a_heartbeat() -> None:
    spec = load_spec("smoke")
    cells = expand(spec)
    stream = io.StringIO()
    reporter = ProgressReporter(spec, cells, stream=stream)
    trials = _trials(cells, 1)
    reporter.setup()
    reporter.on_step_end(0, trials)
    length = len(stream.getvalue())
    _end(reporter, trials, trials[0], _final(0.3))
    reporter.on_step_end(0, trials)  # changed, but the last block is < BLOCK_EVERY_S old
    assert len(stream.getvalue()) == length
    reporter.HEARTBEAT_S = 0.0
    reporter.BLOCK_EVERY_S = 3600.0
    reporter.on_step_end(0, trials)
    heartbeat = stream.getvalue()[length:]
    assert heartbeat.count("\n") == 1 and heartbeat.startswith("[1/")


def test_progress_redraws_in_place_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINES", "40")
    monkeypatch.setenv("COLUMNS", "120")
    spec = load_spec("smoke")
    cells = expand(spec)
    stream = _Terminal()
    reporter = ProgressReporter(spec, cells, stream=stream)
    reporter.REDRAW_S = 0.0
    trials = _trials(cells, 1)
    reporter.setup()
    reporter.on_step_end(0, trials)
    first = stream.getvalue()
    height = first.count("\n")
    assert height == len(cells) + 2 and "\x1b[" not in first
    _end(reporter, trials, trials[0], _final(0.25))
    reporter.on_step_end(0, trials)
    redraw = stream.getvalue()[len(first) :]
    assert redraw.startswith(f"\x1b[{height}F\x1b[J[1/{len(cells) * spec.trials_per_cell} ")
    assert "0.2500" in _cell_line(redraw, cells[0].key)

    # A table taller than the terminal is printed as blocks instead (no cursor movement).
    monkeypatch.setenv("LINES", str(len(cells)))
    stream = _Terminal()
    reporter = ProgressReporter(spec, cells, stream=stream)
    reporter.REDRAW_S = reporter.BLOCK_EVERY_S = 0.0
    reporter.setup()
    reporter.on_step_end(0, trials)
    reporter.on_trial_start(0, trials, trials[1])
    reporter.on_step_end(0, trials)
    assert "\x1b[" not in stream.getvalue() and stream.getvalue().count("[1/") == 2


def test_progress_estimates_remaining_time_from_this_sessions_pace() -> None:
    spec = load_spec("smoke", ["trials_per_cell=2"])
    cells = expand(spec)
    reporter = ProgressReporter(spec, cells, stream=io.StringIO())
    trials = _trials(cells, 2)
    # Restored on resume: ended before this session, so they do not measure its pace.
    for trial in trials[:4]:
        trial.update_last_result(_final(0.4))
        trial.set_status(Trial.TERMINATED)
    reporter.setup()
    start = reporter._started
    assert reporter.header(trials, start + 30).endswith("0:30 elapsed, ~? left]")
    _end(reporter, trials, trials[4], _final(0.2))
    _end(reporter, trials, trials[5], _final(0.1))
    # 2 trials in 60 s, 2 of 8 left: about 60 s more.
    assert (
        reporter.header(trials, start + 60) == "[6/8 trials, 0 running, 1:00 elapsed, ~1:00 left]"
    )
    for trial in trials[6:]:
        _end(reporter, trials, trial, _final(0.3))
    assert reporter.header(trials, start + 90).endswith("1:30 elapsed, done]")
    rows = {row.key: row for row in reporter.cells(trials)}
    assert rows[cells[2].key].best == 0.1 and rows[cells[3].key].best == 0.3


def test_progress_best_follows_the_objective_direction() -> None:
    spec = load_spec("smoke", ["objective=final_test_accuracy"])
    cells = expand(spec)
    reporter = ProgressReporter(spec, cells, stream=io.StringIO())
    trials = _trials(cells, 2)
    reporter.setup()
    _end(reporter, trials, trials[0], _final(0.6))
    _end(reporter, trials, trials[1], _final(0.8))
    assert reporter.cells(trials)[0].best == 0.8
    assert "best final_test_accuracy" in reporter.table(trials)


def test_progress_does_not_count_a_trial_an_interrupt_stopped() -> None:
    """Invariant: a trial Tune terminated on Ctrl-C before its final result (an intermediate
    result at most) is neither done nor running; `study resume` finishes it."""
    spec = load_spec("smoke", ["trials_per_cell=2"])
    cells = expand(spec)
    reporter = ProgressReporter(spec, cells, stream=io.StringIO())
    trials = _trials(cells, 2)
    reporter.setup()
    _end(reporter, trials, trials[0], _final(0.3))
    trials[1].update_last_result({"objective": 0.4, "samples_seen": 60})
    trials[1].set_status(Trial.TERMINATED)
    row = reporter.cells(trials)[0]
    assert (row.ended, row.running, row.best) == (1, 0, 0.3)
    assert reporter.header(trials).startswith("[1/8 trials, 0 running,")
