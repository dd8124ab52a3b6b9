"""Subprocess smoke tests of the scripts outside the package, so they cannot rot: the Fig. 2
example and the engine benchmark, each with tiny arguments (a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_fig2_example_prints_the_efficiency_table() -> None:
    out = _run("examples/fig2_efficiency_table.py", "--replicates", "3",
               "--train-per-category", "15", "--test-per-category", "5")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["model", "ordering"]
    rows = [line.split() for line in lines[1:] if line.split()[:1]
            and line.split()[0] in ("feedforward", "leaky", "leaky-reset")]
    assert len(rows) == 15  # 3 models x 5 orderings
    assert {row[1] for row in rows} == {"random", "reps-1", "reps-3", "reps-5", "reps-10"}
    assert sum("(reference)" in line for line in lines) == 3  # random, per model
    assert "15 conditions x 3 replicates" in out


def test_engine_benchmark_writes_rows_and_goals(tmp_path: Path) -> None:
    target = tmp_path / "engine.json"
    out = _run("benchmarks/engine.py", "--nets", "16-8-4", "--replicates", "1", "1024",
               "--steps", "40", "--naive-steps", "40", "--out", str(target))
    report = json.loads(target.read_text())
    rows = report["rows"]
    assert [(r["net"], r["replicates"], r["steps"]) for r in rows] == [
        ("16-8-4", 1, 40), ("16-8-4", 1024, 40)
    ]
    for row in rows:
        for clock, ratio in (("second", "ratio"), ("cpu_second", "ratio_cpu_time")):
            engine = row[f"engine_replicate_samples_per_{clock}"]
            assert engine > 0
            assert row[ratio] == engine / row[f"naive_replicate_samples_per_{clock}"]
    # both goals are reported: 16-8-4 at R = 1024 judged on its row, 784-392-10 not measured
    small, large = report["goals"]
    assert (small["net"], small["replicates"], small["least_ratio"]) == ("16-8-4", 1024, 1000.0)
    assert small["ratio"] == rows[1]["ratio"] and small["met"] == (small["ratio"] >= 1000.0)
    assert small["met_cpu_time"] == (rows[1]["ratio_cpu_time"] >= 1000.0)
    assert (large["net"], large["replicates"], large["least_ratio"]) == ("784-392-10", 8, 5.0)
    assert large["met"] is None and large["ratio"] is None and large["met_cpu_time"] is None
    assert ("MET" in out or "MISSED" in out) and "not measured" in out
    assert report["device"]["threads"] == 1
