"""``benchmarks/study_overhead.py`` runs end to end at a tiny budget and writes a sane result.

It starts two local Rays and two MLflow stores one after another (about a minute here), so it
is marked slow; the numbers themselves are the benchmark's business, not this test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "study_overhead.py"


def test_tiny_overhead_run_writes_both_parts_and_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    tiny = ["--cells", "1", "--trials-per-cell", "1", "--replicates", "2", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trials per minute" in done.stdout and "caveat:" in done.stdout
    result = json.loads(out.read_text())
    service, baseline = result["service"], result["baseline"]
    # service: the cell's parent run and its trial; baseline: one run per seed
    for part in (service, baseline):
        assert part["configurations"] == 1 and part["failed"] == 0
        assert part["networks"] == 2 and part["samples_per_network"] == 1200
        assert part["evaluations_per_network"] == 25
        assert part["mlflow_runs"] == 2
        assert part["wall_seconds"] > 0 and part["trials_per_minute"] > 0
    # The same science: both trained the same networks at the paper setting.
    assert result["paper_objective_max_abs_diff"] < 1e-6
    ratio = result["ratio"]
    assert ratio["trials_per_minute"] == pytest.approx(
        baseline["wall_seconds"] / service["wall_seconds"]
    )
    assert 0 < ratio["trials_per_minute_vs_baseline_lower_bound"] <= ratio["trials_per_minute"]
    assert baseline["lower_bound_seconds"] <= baseline["wall_seconds"]
    assert "one Tuner per cell" in result["caveat"]
