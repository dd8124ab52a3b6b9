"""The MNIST study through the service: real IDX files, real local Ray, a real MLflow store.

``paper-fig2-mnist`` at a tiny budget (20 images per class, the paper's 784-392-10 network):
every trial's run holds test-loss and accuracy curves over samples seen, tagged with the data
set, and the curves show learning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.spec import load_spec
from study.tuner import run_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_CLASS = 20
EVAL_EVERY = 20
STEPS = list(range(0, 10 * PER_CLASS + 1, EVAL_EVERY))


@pytest.fixture(scope="module")
def mnist_study(ray_local: None, real_data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("mnist")
    spec = load_spec(
        "paper-fig2-mnist",
        [
            "name=mnist-tiny",
            f"data_dir={real_data_dir}",
            f"datasets.mnist.train_per_category={PER_CLASS}",
            "datasets.mnist.test_per_category=10",
            "models=feedforward,leaky-reset",
            "orderings=reps-5",
            "trials_per_cell=1",
            "replicates=2",
            f"eval_every={EVAL_EVERY}",
            "network.learning_rate=0.1",
            f"tracking_uri=sqlite:///{folder / 'mlflow.db'}",
            f"storage_path={folder / 'ray'}",
        ],
    )
    rows = run_study(spec)
    return spec, rows, folder


def test_mnist_runs_have_curves_over_samples_seen(mnist_study) -> None:
    spec, rows, folder = mnist_study
    assert [(r.finished, r.failed, r.diverged) for r in rows] == [(1, 0, 0), (1, 0, 0)]
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    runs = client.search_runs([experiment], max_results=100)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(r.data.tags["model"] for r in trials) == ["feedforward", "leaky-reset"]
    for run in trials:
        assert run.data.tags["dataset"] == "mnist"
        assert run.data.params["config.dataset.name"] == "mnist"
        assert run.data.params["config.hidden"] == "[392]"
        loss = client.get_metric_history(run.info.run_id, "eval/test_loss")
        accuracy = client.get_metric_history(run.info.run_id, "eval/test_accuracy")
        assert [m.step for m in sorted(loss, key=lambda m: m.step)] == STEPS
        assert sorted(m.step for m in accuracy) == STEPS
        curve = [m.value for m in sorted(loss, key=lambda m: m.step)]
        assert curve[-1] < curve[0], f"no learning on MNIST: {curve}"
        assert all(0.0 <= m.value <= 1.0 for m in accuracy)
        path = client.download_artifacts(run.info.run_id, "curves.json", str(folder))
        curves = json.loads(Path(path).read_text())
        assert curves["samples_seen"] == STEPS
        assert len(curves["test_loss"]) == 2  # one curve per replicate
