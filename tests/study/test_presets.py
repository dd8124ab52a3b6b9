"""The science presets: they validate, are listed, and run end to end through the service.

The integration tests run a tiny version of each preset (few replicates, short streams, one or
two trials per cell, via ``--set``-style overrides) through real Ray Tune, Optuna and a SQLite
MLflow store, and one smoke study runs every model of ``trainables.config.MODELS``.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search_spaces import probe
from study.cells import expand
from study.cli import main
from study.spec import StudySpec, load_spec, preset_names, preset_text
from trainables.config import MODELS, TrialConfig
from trainables.engine import eval_schedule

SCIENCE = ("paper-fig3-multiscale", "paper-a10-generalization")


@pytest.mark.parametrize("name", SCIENCE)
def test_preset_validates_and_round_trips(name: str) -> None:
    spec = load_spec(name)
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
    text = preset_text(name)
    assert text.startswith(f"# study run {name}"), "first line: the command that runs it"
    assert len(expand(spec)) * spec.trials_per_cell <= 100, "a few minutes on 2 cores"


def test_fig3_is_the_papers_autoencoder_study() -> None:
    spec = load_spec("paper-fig3-multiscale")
    assert spec.models == (
        "feedforward",
        "leaky",
        "multiscale",
        "leaky-threshold",
        "multiscale-reset",
    )
    assert spec.orderings == ("stream",) and spec.replicates == 50
    assert spec.objective == "test_loss_auc"
    for cell in expand(spec):
        base = cell.base
        assert base.dataset.name == "multiscale-stream" and base.task == "reconstruct"
        assert base.hidden == (3,) and (base.output, base.loss) == ("sigmoid", "mse")
        assert base.learning_rate == 0.01 and base.group_leaks == (0.0, 0.3, 0.6)
        assert base.dataset.switch_periods == (1, 3, 5)


def test_a10_trains_smooth_and_tests_on_reps1_and_on_its_own_ordering() -> None:
    spec = load_spec("paper-a10-generalization")
    assert set(spec.models) == {"feedforward", "leaky-reset", "lstm"}
    tests = {(c.ordering, c.base.test_ordering) for c in expand(spec)}
    assert tests == {
        ("reps-5", "reps-1"),
        ("reps-5", None),
        ("reps-10", "reps-1"),
        ("reps-10", None),
    }


def _reduced_budget() -> list[str]:
    """The --set overrides of the reduced budget documented in the preset's header."""
    lines = preset_text("robustness-claims").splitlines()
    text = " ".join(line.lstrip("# ").rstrip("\\ ") for line in lines if line.startswith("#"))
    start = text.index("Reduced budget")
    command = text[text.index("study run", start) : text.index("As written", start)]
    return re.findall(r"--set (\S+)", command)


def test_robustness_preset_varies_one_factor_at_a_time_from_the_paper_setting() -> None:
    spec = load_spec("robustness-claims")
    assert preset_text("robustness-claims").startswith("# study run robustness-claims")
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
    assert [d.name for d in spec.datasets] == ["synthetic-categories", "mnist", "fashion-mnist"]
    assert spec.network.gradient == "leak-scaled" and spec.network.learning_rate == 0.01
    overrides = {v.name: v.overrides() for v in spec.variants}
    assert overrides.pop("baseline") == {}
    streamed = {"test_protocol": "streamed", "test_ordering": "random"}
    assert overrides.pop("test-streamed") == streamed, "one factor: the test protocol"
    assert all(len(changed) == 1 for changed in overrides.values()), overrides
    changed = collections.defaultdict(set)
    for values in overrides.values():
        for key, value in values.items():
            changed[key].add(json.dumps(value))
    assert changed["gradient"] == {'"leak-unscaled"'}, "both conventions (baseline: scaled)"
    assert len(changed["learning_rate"]) >= 2 and len(changed["dataset.noise"]) >= 2
    assert {len(json.loads(h)) for h in changed["hidden"]} == {1, 2}, "wider and deeper"
    assert max(json.loads(h)[0] for h in changed["hidden"]) > spec.network.hidden[0]


def test_robustness_preset_cells_fix_what_their_variant_sets() -> None:
    spec = load_spec("robustness-claims", _reduced_budget())
    cells = expand(spec)
    by_dataset = collections.defaultdict(set)
    for cell in cells:
        by_dataset[cell.dataset_label].add(cell.variant)
        searched = set(probe(spec.space_for(cell.model, cell.variant)))
        if cell.variant and cell.variant.startswith("lr-"):
            assert "learning_rate" not in searched, "a learning-rate variant fixes the rate"
            assert cell.base.learning_rate != 0.01
        else:
            assert "learning_rate" in searched
        assert cell.budget == (spec.trials_per_cell if searched else 1)
        if cell.variant and cell.variant.startswith("noise-"):
            assert cell.base.dataset.noise != 0.5
    everywhere = {v.name for v in spec.variants if not v.datasets}
    assert by_dataset["synthetic-categories"] == {v.name for v in spec.variants}
    assert by_dataset["mnist"] == by_dataset["fashion-mnist"] == everywhere
    assert spec.replicates >= 5, "enough replicates for a verdict"


def test_robustness_reduced_budget_is_the_documented_one() -> None:
    overrides = _reduced_budget()
    assert "trials_per_cell=4" in overrides and "replicates=10" in overrides
    spec = load_spec("robustness-claims", overrides)
    total = sum(cell.budget for cell in expand(spec))
    assert f"({total} trials;" in preset_text("robustness-claims")
    mnist = {d.name: d for d in spec.datasets}["mnist"]
    assert (mnist.train_per_category, mnist.test_per_category) == (300, 100)
    full = load_spec("robustness-claims")
    assert {d.name: d for d in full.datasets}["mnist"].train_per_category is None, "all"


def test_study_presets_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert set(SCIENCE) <= set(listed) and listed == preset_names()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--set", "network.task=regress"], ["network.task='regress'", "reconstruct"]),
        (["--set", "objective=final_test_accuracy"], ["objective", "without accuracy"]),
        (["--set", "network.group_leaks=0,2"], ["network.group_leaks", "[0, 1]"]),
        (["--set", "network.multiscale.reset_scope=unit"], ["network.multiscale.reset_scope"]),
    ],
)
def test_bad_values_exit_2_with_one_line(
    args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "paper-fig3-multiscale", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("study: error: "), err
    for word in words:
        assert word in err, err


# ---------------------------------------------------------------------------------------------
# End to end, tiny
# ---------------------------------------------------------------------------------------------
TINY = {
    "paper-fig3-multiscale": [
        "replicates=2",
        "trials_per_cell=1",
        "paper_setting_first=false",  # a searched point: leak_group* must reach the engine
        "objective=timescale_selectivity",  # the latent objective, end to end (direction max)
        "datasets.0.stream_length=60",
        "datasets.0.test_stream_length=30",
        "eval_every=20",
    ],
    "paper-a10-generalization": [
        "replicates=2",
        "trials_per_cell=1",
        "orderings=reps-5",
        "datasets.0.train_per_category=10",
        "datasets.0.test_per_category=5",
        "eval_every=20",
    ],
    "smoke": [
        "models=" + ",".join(MODELS),
        "orderings=random",
        "replicates=2",
        "trials_per_cell=1",
        "datasets.0.train_per_category=10",
        "datasets.0.test_per_category=5",
        "network.minibatch.batch_size=4",
        "network.lstm.bptt_window=2",
    ],
}


def _run(name: str, folder: Path) -> tuple[StudySpec, list, MlflowClient, list]:
    from study.tuner import run_study

    spec = load_spec(
        name,
        [
            *TINY[name],
            f"name=tiny-{name}",
            f"tracking_uri='sqlite:///{folder / 'mlflow.db'}'",
            f"storage_path='{folder / 'ray'}'",
        ],
    )
    rows = run_study(spec)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    runs = list(client.search_runs([experiment.experiment_id], max_results=1000))
    return spec, rows, client, runs


def _trials(runs: list) -> list:
    return [r for r in runs if r.data.tags.get("role") == "trial"]


@pytest.mark.integration
def test_tiny_fig3_runs_and_logs_timescale_selectivity(ray_local: None, tmp_path: Path) -> None:
    spec, rows, client, runs = _run("paper-fig3-multiscale", tmp_path)
    assert spec.direction == "max" and len(rows) == 5
    for row in rows:
        assert (row.finished, row.failed, row.diverged) == (1, 0, 0), row
    trials = _trials(runs)
    assert len(trials) == 5
    for run in trials:
        metrics = run.data.metrics
        assert metrics["objective"] == metrics["run/timescale_selectivity"]
        assert -1 <= metrics["objective"] <= 1, "a difference of r^2 values, not a penalty"
        assert run.data.params["config.task"] == "reconstruct"
    (run,) = [r for r in trials if r.data.tags["model"] == "multiscale"]
    searched = [float(run.data.params[f"searched.leak_group{g}"]) for g in range(3)]
    logged = json.loads(run.data.params["config.group_leaks"])
    assert logged == pytest.approx(searched), "searched leaks are what the trial ran with"
    # The config.json artifact is the same resolved config: a TrialConfig, no leak_group<g> keys.
    path = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    config = json.loads(Path(path).read_text())
    assert not [key for key in config if key.startswith("leak_group")]
    assert list(TrialConfig.from_dict(config).group_leaks) == pytest.approx(searched)


@pytest.mark.integration
def test_tiny_a10_runs_every_variant_with_its_tag(ray_local: None, tmp_path: Path) -> None:
    _, rows, _, runs = _run("paper-a10-generalization", tmp_path)
    assert len(rows) == 3 * 2
    assert all((row.finished, row.failed) == (1, 0) for row in rows), rows
    parents = [r for r in runs if r.data.tags.get("role") == "cell"]
    assert {p.data.tags["variant"] for p in parents} == {"test-reps-1", "test-same"}
    for run in _trials(runs):
        variant = run.data.tags["variant"]
        assert run.data.tags["cell"].endswith("/" + variant)
        expected = "reps-1" if variant == "test-reps-1" else "null"
        assert run.data.params["config.test_ordering"] == expected


@pytest.mark.integration
def test_every_model_runs_through_the_service(ray_local: None, tmp_path: Path) -> None:
    _, rows, _, runs = _run("smoke", tmp_path)
    assert {row.model for row in rows} == set(MODELS)
    assert all((row.finished, row.failed) == (1, 0) for row in rows), rows
    assert {r.data.tags["model"] for r in _trials(runs)} == set(MODELS)


@pytest.mark.parametrize("name", ["paper-fig2-mnist", "paper-fig2-fashion"])
def test_documented_reduced_budget_gives_real_curves(name: str) -> None:
    """The small-machine command in the preset's header (and README's, for MNIST) is valid and
    evaluates often enough over its shorter epoch to draw a curve."""
    header = [line.removeprefix("#").strip() for line in preset_text(name).splitlines()]
    start = next(
        i
        for i, line in enumerate(header)
        if line.startswith(f"study run {name} ") and line.endswith("\\")
    )
    command = ""
    for line in header[start:]:
        command += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            break
    words = command.split()
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    spec = load_spec(name, overrides)
    cell = expand(spec)[0]
    samples = 10 * cell.base.dataset.train_per_category
    points = eval_schedule(samples, samples, spec.eval_every, spec.eval_schedule)
    assert len(points) >= 20, f"{name}: only {len(points)} evaluation points: {points}"
    if name == "paper-fig2-mnist":
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
        assert " ".join(words[2:]) in " ".join(readme.replace("\\\n", " ").split())
