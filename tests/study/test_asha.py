"""``scheduler = "asha"`` end to end: real local Ray, real Optuna storage, a real MLflow store.

Two cells on data sets of different sizes (120 and 360 training samples), so a scheduler whose
horizon came from one data set would cut the larger cell's trials short. Each cell searches
two learning rates: the paper's 0.01 (its first trial) and 1e-6, which barely moves the
weights, so the 1e-6 trials are worse at every rung and get stopped; the rest finish. Trials
run one at a time, so which trials reach a rung first is fixed and the test deterministic.
"""

from __future__ import annotations

import contextlib
import io
import math

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from study.cells import expand
from study.scheduler import REDUCTION_FACTOR
from study.spec import load_spec
from study.tuner import run_study
from trainables.engine import eval_schedule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 6
BAD_LR = 1e-6
SIZES = {0: 30, 1: 90}
"""Dataset index -> training items per category (4 categories: 120 and 360 samples)."""


@pytest.fixture(scope="module")
def asha_study(ray_local: None, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("asha")
    datasets = ", ".join(
        f"{{name='synthetic-categories', train_per_category={n}, test_per_category=10}}"
        for n in SIZES.values()
    )
    spec = load_spec(
        "smoke",
        [
            "name=asha",
            "scheduler=asha",
            f"datasets=[{datasets}]",
            "models=feedforward",
            "orderings=random",
            f"trials_per_cell={TRIALS}",
            "max_concurrent_trials=1",
            "sampler=random",
            f"search_space.feedforward={{learning_rate={{choices=[0.01, {BAD_LR}]}}}}",
            f"tracking_uri=sqlite:///{folder / 'mlflow.db'}",
            f"optuna_storage=sqlite:///{folder / 'optuna.db'}",
            f"storage_path={folder / 'ray'}",
        ],
    )
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # the progress display and the summary table
        rows = run_study(spec)
    return spec, rows, log.getvalue()


def test_weak_trials_are_stopped_at_a_rung_and_the_rest_finish(asha_study) -> None:
    spec, rows, _ = asha_study
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    trials = [
        r
        for r in client.search_runs([experiment], max_results=1000)
        if r.data.tags.get("role") == "trial"
    ]
    assert len(trials) == 2 * TRIALS
    for cell, row in zip(expand(spec), rows, strict=True):
        total = 4 * SIZES[cell.index]
        mine = [r for r in trials if r.data.tags["cell"] == cell.key]
        pruned = [r for r in mine if r.data.tags["pruned"] == "true"]
        finished = [r for r in mine if r.data.tags["pruned"] == "false"]
        assert pruned and finished, f"{cell.key}: expected both stopped and finished trials"
        assert (row.pruned, row.finished, row.failed) == (len(pruned), len(finished), 0)

        # Only the weak learning rate is ever stopped; the paper setting always finishes.
        assert {float(r.data.params["searched.learning_rate"]) for r in pruned} == {BAD_LR}
        assert any(r.data.tags["paper_setting"] == "true" for r in finished)

        # Finished trials ran their own data set's whole epoch (the horizon is per cell) ...
        points = eval_schedule(total, total, cell.base.eval_every, cell.base.eval_schedule)
        rung_points = {
            next(p for p in points if p >= total * fraction - 1e-9)
            for fraction in (REDUCTION_FACTOR**-2, REDUCTION_FACTOR**-1)
        }
        for run in finished:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/test_loss")]
            assert sorted(steps) == points
            assert "run/test_loss_auc" in run.data.metrics
        # ... and stopped ones end at a rung, at the same samples seen as the trials before them.
        for run in pruned:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/test_loss")]
            assert max(steps) in rung_points, (max(steps), rung_points)
            assert "run/test_loss_auc" not in run.data.metrics
            assert run.info.status == "FINISHED"

        # Optuna: the same trials PRUNED, the others COMPLETE with their objective.
        study = optuna.load_study(study_name=cell.optuna_name, storage=spec.optuna_storage)
        states = [t.state for t in study.trials]
        assert states.count(TrialState.PRUNED) == len(pruned)
        assert states.count(TrialState.COMPLETE) == len(finished)
        best = min(t.value for t in study.trials if t.state == TrialState.COMPLETE)
        assert math.isclose(best, row.best_objective)


def test_progress_display_and_summary_show_the_pruned_trials(asha_study) -> None:
    _, rows, log = asha_study
    # Not a terminal: the display ends with one block of every cell's final state.
    final = log[log.rindex(f"[{2 * TRIALS}/{2 * TRIALS} trials") :]
    assert "\x1b[" not in log, "no cursor movement outside a terminal"
    for row in rows:
        assert row.finished + row.pruned == TRIALS and row.best_objective is not None
        line = next(line for line in final.splitlines() if line.strip().startswith(row.cell))
        assert f"{TRIALS}/{TRIALS}" in line and f"{row.pruned} pruned" in line
        assert f"{row.best_objective:.4f}" in line
        # The summary table below it counts them too.
        summary = [line for line in final.splitlines() if line.startswith(row.cell)]
        assert f"{row.finished}/{TRIALS} ({row.pruned} pruned)" in summary[-1]
