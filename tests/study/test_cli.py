"""The ``study`` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.services import trial_runs_in

STUDY = str(Path(sys.executable).parent / "study")


def study(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STUDY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_presets_lists_one_line_each(tmp_path: Path) -> None:
    done = study("presets", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert {"paper-fig2-synthetic", "paper-fig2-mnist", "paper-fig2-fashion", "smoke"} <= set(
        names
    )
    assert len(lines) == len(names)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["check", "smoke", "--set", "replicates=0"], ["replicates=0", ">= 1"]),
        (["check", "smoke", "--set", "modles=leaky"], ["modles", "did you mean 'models'"]),
        (["check", "nope"], ["spec='nope'", "smoke"]),
        (
            ["check", "smoke", "--set", "datasets=mnist", "--data-dir", "/nonexistent"],
            ["datasets[0]", "/nonexistent"],
        ),
        (["check", "smoke", "--tracking-uri", "http://127.0.0.1:9"], ["tracking_uri", "/health"]),
        (["check", "smoke", "--ray-address", "127.0.0.1:9"], ["ray_address", "reachable"]),
        (["check", "smoke", "--set", "resources.cpu=512"], ["resources.cpu", "at most"]),
        (["run", "smoke", "--set", "sampler=grid"], ["sampler", "tpe"]),
        (["run", "--bogus"], ["unrecognized arguments"]),
        (["list", "--tracking-uri", "http://127.0.0.1:9"], ["tracking_uri", "/health"]),
        (["report", "x", "--tracking-uri", "http://127.0.0.1:9"], ["tracking_uri", "/health"]),
        (["list", "--tracking-uri", "sqlit:///x.db"], ["tracking_uri", "did you mean 'sqlite'"]),
    ],
)
def test_invalid_input_exits_2_with_one_line(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    done = study(*args, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "mlruns").exists(), "nothing is created before input is valid"


def test_check_passes_on_a_preset(tmp_path: Path) -> None:
    done = study("check", "smoke", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4 cells x 2 trials" in done.stdout


def test_check_reads_real_mnist(real_data_dir: Path) -> None:
    data = real_data_dir
    done = study(
        "check",
        "paper-fig2-mnist",
        "--data-dir",
        str(data),
        "--set",
        "datasets.mnist.train_per_category=100",
        cwd=data,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1000 training" in done.stdout and "784 features" in done.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_run_smoke_writes_summary_and_store(tmp_path: Path) -> None:
    started = time.monotonic()
    done = study(
        "run",
        "smoke",
        "--set",
        "trials_per_cell=2",
        "--set",
        "replicates=2",
        "--summary-json",
        str(tmp_path / "summary.json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 120
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["study"] == "smoke"
    assert summary["tracking_uri"] == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert len(summary["cells"]) == 4
    for cell in summary["cells"]:
        assert {
            "dataset",
            "model",
            "ordering",
            "finished",
            "failed",
            "diverged",
            "paper_objective",
            "paper_ci",
            "best_objective",
            "best_ci",
            "best_params",
        } <= set(cell)
        assert cell["finished"] == 2
        assert cell["paper_ci"][0] <= cell["paper_objective"] <= cell["paper_ci"][1]
    assert "best test_loss_auc" in done.stderr  # the summary table
    listing = study("list", cwd=tmp_path)
    assert listing.returncode == 0 and "smoke" in listing.stdout and "complete" in listing.stdout
    again = study(
        "run",
        "smoke",
        "--set",
        "trials_per_cell=1",
        "--set",
        "models=leaky",
        "--set",
        "orderings=random",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "'smoke-2'" in again.stderr, "a second run of a name gets a fresh study"


@pytest.mark.slow
@pytest.mark.integration
def test_interrupted_study_resumes_without_lost_or_duplicated_runs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    budget = 8
    process = subprocess.Popen(
        [
            STUDY,
            "run",
            "smoke",
            "--name",
            "resumable",
            "--set",
            f"trials_per_cell={budget}",
            "--set",
            "replicates=2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    db = tmp_path / "mlruns" / "mlflow.db"
    deadline = time.monotonic() + 120
    while trial_runs_in(db) < 6 and process.poll() is None:
        assert time.monotonic() < deadline, "study did not progress"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # the driver is interrupted mid-study
    output, _ = process.communicate(timeout=120)
    # Tune catches the interrupt and returns: the CLI must not call that study done.
    assert process.returncode == 130, output[-3000:]
    assert "continue with `study resume resumable`" in output
    assert "study resumable done" not in output
    finished_before = trial_runs_in(db)
    assert finished_before < 4 * budget, "the interruption came too late to test resume"

    done = study("resume", "resumable", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("resumable")
    runs = list(client.search_runs([experiment.experiment_id], max_results=1000))
    parents = [r for r in runs if r.data.tags.get("role") == "cell"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 4 and all(p.info.status == "FINISHED" for p in parents)
    assert len(children) == 4 * budget, "exactly one run per trial"
    assert all(c.info.status == "FINISHED" for c in children)
    for parent in parents:
        numbers = sorted(
            int(c.data.tags["optuna_trial_number"])
            for c in children
            if c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        )
        assert numbers == list(range(budget)), "no Optuna trial lost or asked twice"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/test_loss")]
        assert sorted(steps) == [0, 20, 40, 60, 80, 100, 120], "no point lost or duplicated"
