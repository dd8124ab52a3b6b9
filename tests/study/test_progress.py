"""Summary: counts per cell, paper setting and best with CIs, diverged never best."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.cells import expand
from study.progress import outcome, summarize, summary_table, write_summary_json
from study.spec import load_spec


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
