"""A small study through real Ray Tune, real Optuna and a real ``mlflow server``.

Checks the MLflow layout the design promises: one parent run per cell with exactly
trials_per_cell children, parent/child links, tags, metric histories with step = samples seen,
artifacts; diverged trials recorded, never best.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.spec import load_spec
from study.tuner import run_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRIALS = 3


@pytest.fixture(scope="module")
def finished_study(mlflow_server: str, ray_local: None, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("study")
    spec = load_spec(
        "smoke",
        [
            f"trials_per_cell={TRIALS}",
            "name=integration",
            f"tracking_uri='{mlflow_server}'",
            f"storage_path='{folder / 'ray'}'",
            f"optuna_storage='sqlite:///{folder / 'optuna.db'}'",  # a real Optuna RDB
            # softmax + cross-entropy with a huge learning rate diverges (NaN) within 20 samples:
            # every tuned leaky-reset trial diverges, the paper setting (lr 0.01) does not.
            "network.output=softmax",
            "network.loss=cross-entropy",
            "search_space.leaky-reset={learning_rate={choices=[1000.0]}, leak={low=0, high=0.9}}",
        ],
    )
    rows = run_study(spec, summary_json=str(folder / "summary.json"))
    return spec, rows, folder


def _runs(client: MlflowClient, experiment_id: str) -> list:
    return list(client.search_runs([experiment_id], max_results=1000))


def test_one_parent_per_cell_with_exactly_the_budget_of_children(finished_study) -> None:
    spec, _, _ = finished_study
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = _runs(client, experiment.experiment_id)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("role") == "cell"}
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 4
    assert len(children) == 4 * TRIALS
    assert len({c.data.tags["ray_trial_id"] for c in children}) == len(children)
    for parent in parents.values():
        tags = parent.data.tags
        assert parent.info.status == "FINISHED"
        assert tags["study"] == spec.name
        assert tags["cell"] == f"{tags['dataset']}/{tags['model']}/{tags['ordering']}"
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert len(mine) == TRIALS
        assert sorted(int(c.data.tags["optuna_trial_number"]) for c in mine) == [0, 1, 2]
        assert [c.data.tags["paper_setting"] for c in mine].count("true") == 1
        for child in mine:
            ctags = child.data.tags
            assert child.info.status == "FINISHED"
            for key in ("study", "cell", "model", "ordering", "dataset"):
                assert ctags[key] == tags[key]
            assert ctags["replicates"] == "2" and ctags["gradient"] == "leak-scaled"
            assert child.data.params["config.model"] == tags["model"]
            assert "objective" in child.data.metrics


def test_metric_history_steps_are_samples_seen_and_artifacts_exist(finished_study) -> None:
    spec, _, folder = finished_study
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    children = [
        r
        for r in _runs(client, experiment.experiment_id)
        if r.data.tags.get("role") == "trial" and r.data.tags["diverged"] == "false"
    ]
    assert children
    for child in children:
        history = client.get_metric_history(child.info.run_id, "eval/test_loss")
        assert sorted(m.step for m in history) == [0, 20, 40, 60, 80, 100, 120]
        ci = client.get_metric_history(child.info.run_id, "eval/test_loss_ci_low")
        assert len(ci) == len(history)
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == {
            "config.json",
            "curves.json",
        }
    curves_path = client.download_artifacts(children[0].info.run_id, "curves.json", str(folder))
    curves = json.loads(Path(curves_path).read_text())
    assert curves["samples_seen"] == [0, 20, 40, 60, 80, 100, 120]
    assert len(curves["test_loss"]) == 2 and len(curves["test_loss"][0]) == 7


def test_diverged_trials_are_recorded_and_never_best(finished_study) -> None:
    spec, rows, folder = finished_study
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    diverged = [
        r for r in _runs(client, experiment.experiment_id) if r.data.tags.get("diverged") == "true"
    ]
    assert len(diverged) == 2 * (TRIALS - 1), "tuned leaky-reset trials of both orderings"
    for run in diverged:
        assert run.data.tags["model"] == "leaky-reset" and run.info.status == "FINISHED"
        assert run.data.metrics["objective"] == 1e6  # finite penalty, never NaN
    summary = json.loads((folder / "summary.json").read_text())
    for cell in summary["cells"]:
        assert cell["finished"] == TRIALS and cell["failed"] == 0
        if cell["model"] == "leaky-reset":
            assert cell["diverged"] == TRIALS - 1
            assert cell["best_objective"] == cell["paper_objective"] < 1e6
        else:
            assert cell["best_objective"] <= cell["paper_objective"]
    assert {r.cell for r in rows} == {c["cell"] for c in summary["cells"]}


def test_no_nan_or_inf_reaches_mlflow_or_the_optuna_storage(finished_study) -> None:
    """Invariant: a learning rate that really diverges (NaN within 20 samples) stops the trial
    early (fewer evaluation points than the schedule), tags it diverged, gives it the finite
    penalty objective; no metric value in MLflow and no value in the Optuna RDB is NaN or
    infinite; the curves artifact is strict JSON; Optuna's best trial is never a diverged one."""
    import math
    import sqlite3

    import optuna

    spec, _, folder = finished_study
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    for run in _runs(client, experiment.experiment_id):
        for key in run.data.metrics:
            values = [m.value for m in client.get_metric_history(run.info.run_id, key)]
            assert all(math.isfinite(v) for v in values), (run.info.run_name, key, values)
        if run.data.tags.get("diverged") != "true":
            continue
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "eval/test_loss")]
        assert len(steps) < 7, "a diverged trial stops at the first bad evaluation"
        path = client.download_artifacts(run.info.run_id, "curves.json", str(folder))
        text = Path(path).read_text()
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in curves.json"))
    with sqlite3.connect(folder / "optuna.db") as db:
        values = [v for (v,) in db.execute("SELECT value FROM trial_values")]
        values += [
            v for (v,) in db.execute("SELECT intermediate_value FROM trial_intermediate_values")
        ]
        kinds = {k for (k,) in db.execute("SELECT value_type FROM trial_values")}
    assert values and all(v is not None and math.isfinite(v) for v in values)
    assert kinds == {"FINITE"}, "Optuna stored no inf/-inf/NaN marker"
    for summary in optuna.get_all_study_summaries(spec.optuna_storage):
        study = optuna.load_study(study_name=summary.study_name, storage=spec.optuna_storage)
        finite = [t for t in study.trials if t.value is not None and t.value < 1e6]
        if finite:  # (the tuned leaky-reset cells hold diverged trials only)
            assert study.best_trial.value < 1e6, "a diverged trial (1e6) is never best"
