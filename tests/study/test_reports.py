"""``study report`` on a small study with known outcomes.

The study is written by the real pieces: the real trainable (``tune_adapter.train``, with Ray's
runtime calls replaced by a recorder) produces each trial's results and final checkpoint, and
the real tracking callback (``MlflowTracking``) writes them into a SQLite MLflow store. Only the
trials' learning rates are chosen by hand, so some conditions cannot learn (lr 1e-6) and others
clearly do (lr 0.05 or 0.5): the verdicts follow by construction.

Classification setting (synthetic-categories, 6 replicates), (paper-trial lr, tuned-trial lr):

====================  ========  ========  ==========================================
cell                  paper     tuned     so
====================  ========  ========  ==========================================
feedforward/random    1e-6      0.5       claim 2 holds at paper, reversed tuned
feedforward/reps-1    0.05      1e-6      (its best is the paper trial)
feedforward/reps-3    1e-6      2e-6      claim 1 holds (reps-3 cannot learn)
leaky/reps-1          1e-6      2e-6      claim 3 holds (reps-3 learns, reps-1 not)
leaky/reps-3          0.05      1e-6
leaky-reset/random    0.05      1e-6      claim 4: holds at paper; reversed tuned
leaky-reset/reps-1    0.05      1e-6      = feedforward/reps-1 exactly (reset each item)
leaky-reset/reps-3    0.05      1e-6
====================  ========  ========  ==========================================

An autoencoder setting (multiscale-stream: feedforward and multiscale-reset) makes a second
setting, so claim 6 is evaluated and the claims matrix is written: without memory the
feedforward AE's units cannot prefer a timescale, the multiscale units (leaks 0 / 0.3 / 0.6,
reset per feature group) do, so claim 6 holds.

A second study is variant-based (the ``[[variants]]`` of a spec, as in robustness-claims): a
``baseline`` variant (isolated test items) and ``test-reps-1`` (a streamed test at minimum
smoothness, paper A.10), each with feedforward, leaky-reset and an LSTM trained on reps-3 and
reps-5:

====================  ========  ========  ==========================================
cell                  paper     tuned     so, on the reps-1 test stream
====================  ========  ========  ==========================================
feedforward/reps-k    1e-6      2e-6      claim 5a holds at paper and tuned
leaky-reset/reps-k    0.05      1e-6      (its best is the paper trial)
lstm/reps-k           1e-6      2.0       claim 5b holds at paper, reversed tuned
====================  ========  ========  ==========================================
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from study.cells import expand
from study.claims import HOLDS, NOT_SIGNIFICANT, NOT_TESTED, REVERSED, Condition, evaluate
from study.cli import main
from study.playbook import importance, search_distributions
from study.reports import build_report
from study.results import SUMMARY_TAG, CellRecord, StudyResults, TrialRecord
from study.spec import load_spec
from study.tracking import MlflowTracking
from trainables import tune_adapter
from trainables.metrics import bootstrap_ci

STUDY = "report-known"
NONE, MID, GOOD = 1e-6, 0.05, 0.5
CLASSIFY = {
    ("feedforward", "random"): (NONE, GOOD),
    ("feedforward", "reps-1"): (MID, NONE),
    ("feedforward", "reps-3"): (NONE, 2e-6),
    ("leaky", "reps-1"): (NONE, 2e-6),
    ("leaky", "reps-3"): (MID, NONE),
    ("leaky-reset", "random"): (MID, NONE),
    ("leaky-reset", "reps-1"): (MID, NONE),
    ("leaky-reset", "reps-3"): (MID, NONE),
}
AUTOENCODE = {("feedforward", "stream"): (GOOD, MID), ("multiscale-reset", "stream"): (GOOD, MID)}
SYNTH, STREAM = "synthetic-categories", "multiscale-stream"
VARIANT_STUDY = "report-variants"
STREAMED = {"feedforward": (NONE, 2e-6), "leaky-reset": (MID, NONE), "lstm": (NONE, 2.0)}
VARIANTS = {
    (model, ordering, variant): lrs
    for model, lrs in STREAMED.items()
    for ordering in ("reps-3", "reps-5")
    for variant in ("baseline", "test-reps-1")
}


class _Checkpoint:
    """Stands in for ``ray.tune.Checkpoint``: keeps a copy of the reported folder."""

    keep: Path

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, folder: str) -> _Checkpoint:
        target = cls.keep / uuid.uuid4().hex
        shutil.copytree(folder, target)
        return cls(str(target))


def _run_trial(config: dict[str, Any], objective: str) -> list[tuple[dict, Any]]:
    """The real trainable, with Ray's report/checkpoint calls recorded."""
    reports: list[tuple[dict, Any]] = []
    fake_tune = SimpleNamespace(
        get_checkpoint=lambda: None,
        Checkpoint=_Checkpoint,
        report=lambda metrics, checkpoint=None: reports.append((dict(metrics), checkpoint)),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune_adapter, "tune", fake_tune)
        tune_adapter.train(config, objective=objective)
    return reports


def _plan_key(cell: Any) -> tuple[str, ...]:
    """(model, ordering), and the variant for a cell of a variant."""
    key = (cell.model, cell.ordering)
    return (*key, cell.variant) if cell.variant else key


def _write_setting(spec: Any, plan: dict, base_update: dict, unfinished: tuple | None) -> None:
    """Write one setting's cells and trials through the real tracking callback."""
    cells = [c for c in expand(spec) if _plan_key(c) in plan]
    tracking = MlflowTracking(spec, cells)
    tracking.setup()
    trials = []
    for cell in cells:
        base = {**cell.base.to_dict(), **base_update}
        lrs = plan[_plan_key(cell)]
        for number, lr in enumerate(lrs):
            params = {"learning_rate": lr}
            if cell.model in ("leaky", "leaky-reset"):
                params["leak"] = 0.5
            config = {
                "cell": cell.key,
                "base": base,
                "params": params,
                "optuna_trial_number": number,
                "paper_setting": number == 0,
            }
            reports = _run_trial(config, spec.objective)
            trial = SimpleNamespace(
                trial_id=f"{cell.key}#{number}",
                config=config,
                last_result=reports[-1][0],
                checkpoint=reports[-1][1],
                error_file=None,
                status="TERMINATED",
                is_finished=lambda: True,
            )
            tracking.on_trial_start(0, [], trial)
            for result, _ in reports:
                tracking.on_trial_result(0, [], trial, result)
            tracking.on_trial_complete(0, [], trial)
            trials.append(trial)
        if unfinished == _plan_key(cell):  # started, never finished: RUNNING
            config = {
                "cell": cell.key,
                "base": base,
                "params": {"learning_rate": 0.1},
                "optuna_trial_number": len(lrs),
                "paper_setting": False,
            }
            running = SimpleNamespace(trial_id=f"{cell.key}#running", config=config)
            tracking.on_trial_start(0, [], running)
    tracking.on_experiment_end(trials)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The known-outcome study in a SQLite store, and its report."""
    root = tmp_path_factory.mktemp("report")
    _Checkpoint.keep = root / "checkpoints"
    _Checkpoint.keep.mkdir()
    uri = f"sqlite:///{root}/mlflow.db"
    common = [
        f"name={STUDY}",
        "replicates=6",
        "trials_per_cell=2",
        f"tracking_uri='{uri}'",
        f"storage_path='{root / 'ray'}'",
    ]
    classify = load_spec(
        "smoke",
        [*common, "models=feedforward,leaky,leaky-reset", "orderings=random,reps-1,reps-3"],
    )
    _write_setting(classify, CLASSIFY, {}, unfinished=("feedforward", "reps-3"))
    autoencode = load_spec(
        "smoke",
        [
            *common,
            "models=feedforward,multiscale-reset",
            "orderings=stream",
            "datasets=[{name='multiscale-stream', stream_length=120, test_stream_length=60}]",
        ],
    )
    ae = {"task": "reconstruct", "hidden": [3], "reset_scope": "group"}
    _write_setting(autoencode, AUTOENCODE, ae, unfinished=None)
    report = build_report(STUDY, uri, root / "out")
    payload = json.loads(report.json.read_text())
    return {"uri": uri, "root": root, "report": report, "payload": payload}


@pytest.fixture(scope="module")
def variant_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The variant-based known-outcome study, and its report."""
    root = tmp_path_factory.mktemp("report-variants")
    _Checkpoint.keep = root / "checkpoints"
    _Checkpoint.keep.mkdir()
    uri = f"sqlite:///{root}/mlflow.db"
    spec = load_spec(
        "smoke",
        [
            f"name={VARIANT_STUDY}",
            "replicates=6",
            "trials_per_cell=2",
            "models=feedforward,leaky-reset,lstm",
            "orderings=reps-3,reps-5",
            "variants=[{name='baseline'}, {name='test-reps-1', test_protocol='streamed', "
            "test_ordering='reps-1'}]",
            f"tracking_uri='{uri}'",
            f"storage_path='{root / 'ray'}'",
        ],
    )
    _write_setting(spec, VARIANTS, {}, unfinished=None)
    report = build_report(VARIANT_STUDY, uri, root / "out")
    return {"uri": uri, "root": root, "report": report, "payload": report.payload}


def _headline(payload: dict, claim: str, basis: str, group: str = SYNTH) -> dict:
    found = [
        row
        for row in payload["claims"]
        if f"{row['claim']}{row['part']}" == claim
        and row["basis"] == basis
        and row["group"] == group
        and row["headline"]
    ]
    assert len(found) == 1, (claim, basis, group)
    return found[0]


def _curves(client: MlflowClient, run_id: str, folder: Path) -> dict:
    path = client.download_artifacts(run_id, "curves.json", str(folder))
    return json.loads(Path(path).read_text())


def test_files_exist_and_every_figure_decodes(store: dict) -> None:
    report, payload = store["report"], store["payload"]
    assert report.markdown.is_file() and report.json.is_file()
    names = {Path(p).name for p in payload["figures"]}
    for expected in (
        f"curves_paper_{SYNTH}.png",
        f"curves_tuned_{SYNTH}.png",
        f"axes_{SYNTH}.png",
        f"isolation_{SYNTH}.png",
        f"best_trials_{SYNTH}.png",
        f"reconstruction_paper_{STREAM}.png",
        f"timescales_tuned_{STREAM}_stream.png",
    ):
        assert expected in names
    for relative in payload["figures"]:
        image = imread(report.out / relative)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    text = report.markdown.read_text()
    assert "## Claims check" in text and "## Claims matrix" in text
    assert f"figures/curves_paper_{SYNTH}.png" in text


def test_cell_numbers_match_a_recomputation_from_the_stored_curves(
    store: dict, tmp_path: Path
) -> None:
    client = MlflowClient(store["uri"])
    rows = store["payload"]["cells"]
    assert len(rows) == len(CLASSIFY) + len(AUTOENCODE)
    for row in rows:
        for basis in ("paper", "tuned"):
            result = row[basis]
            curves = _curves(client, result["run_id"], tmp_path / result["run_id"])
            values = np.array(curves["per_replicate"]["test_loss_auc"])
            assert result["objective"] == pytest.approx(values.mean(), abs=1e-12)
            assert [result["ci_low"], result["ci_high"]] == pytest.approx(
                list(bootstrap_ci(values)), abs=1e-12
            )
            logged = client.get_run(result["run_id"]).data.metrics["run/test_loss_auc"]
            assert result["objective"] == pytest.approx(logged, rel=1e-9)
        lrs = {**CLASSIFY, **AUTOENCODE}[(row["model"], row["ordering"])]
        assert row["paper"]["params"]["learning_rate"] == pytest.approx(lrs[0])
        # the tuned result is the better of the cell's two trials (loss: lower)
        assert row["tuned"]["objective"] <= row["paper"]["objective"]


def test_known_verdicts_at_paper_and_tuned_settings(store: dict) -> None:
    payload = store["payload"]
    expected = {
        ("1", "paper"): HOLDS,
        ("2", "paper"): HOLDS,
        ("3", "paper"): HOLDS,
        ("4", "paper"): HOLDS,
        ("1", "tuned"): HOLDS,
        ("2", "tuned"): REVERSED,
        ("3", "tuned"): HOLDS,
        ("4", "tuned"): REVERSED,
    }
    for (claim, basis), verdict in expected.items():
        row = _headline(payload, claim, basis)
        assert row["verdict"] == verdict, row
        inside = row["ci_low"] <= row["effect"] <= row["ci_high"]
        assert inside and row["replicates"] == 6
        assert (row["effect"] > 0) == (verdict == HOLDS)


def test_claim_2_effect_is_the_paired_difference_of_the_stored_values(
    store: dict, tmp_path: Path
) -> None:
    client = MlflowClient(store["uri"])
    cells = {(c["model"], c["ordering"]): c for c in store["payload"]["cells"]}
    for basis in ("paper", "tuned"):
        values = {}
        for ordering in ("reps-1", "random"):
            run_id = cells[("feedforward", ordering)][basis]["run_id"]
            curves = _curves(client, run_id, tmp_path / basis / ordering)
            values[ordering] = np.array(curves["per_replicate"]["test_loss_auc"])
        diff = values["random"] - values["reps-1"]  # loss: positive = reps-1 better
        row = _headline(store["payload"], "2", basis)
        assert row["effect"] == pytest.approx(diff.mean(), abs=1e-12)
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(list(bootstrap_ci(diff)))


def test_identical_networks_at_reps_1_give_zero_and_stay_out_of_the_headline(
    store: dict,
) -> None:
    for basis in ("paper", "tuned"):
        level = [
            row
            for row in store["payload"]["claims"]
            if row["claim"] == 4 and row["basis"] == basis and row["level"] == "reps-1"
        ]
        assert len(level) == 1
        row = level[0]
        assert row["effect"] == 0.0 and row["ci_low"] == 0.0 and row["ci_high"] == 0.0
        assert row["verdict"] == NOT_SIGNIFICANT and "identical networks" in row["note"]
        headline = _headline(store["payload"], "4", basis)
        assert "reps-1" not in headline["comparison"]


def test_claims_without_their_cells_are_not_tested(store: dict, tmp_path: Path) -> None:
    payload = store["payload"]
    for basis in ("paper", "tuned"):
        for claim in ("5a", "5b", "6"):
            assert _headline(payload, claim, basis)["verdict"] == NOT_TESTED
        for claim in ("1", "2", "3", "4", "5a", "5b"):
            row = _headline(payload, claim, basis, STREAM)
            assert row["verdict"] == NOT_TESTED and row["effect"] is None and row["note"]
    # claim 6 is measured in the autoencoder setting: selectivity, higher = better
    client = MlflowClient(store["uri"])
    cells = {(c["model"], c["ordering"]): c for c in payload["cells"]}
    for basis in ("paper", "tuned"):
        selectivity = {}
        for model in ("multiscale-reset", "feedforward"):
            run_id = cells[(model, "stream")][basis]["run_id"]
            curves = _curves(client, run_id, tmp_path / basis / model)
            selectivity[model] = np.array(curves["per_replicate"]["timescale_selectivity"])
        row = _headline(payload, "6", basis, STREAM)
        diff = selectivity["multiscale-reset"] - selectivity["feedforward"]  # higher = better
        assert row["effect"] == pytest.approx(diff.mean(), abs=1e-12)
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(list(bootstrap_ci(diff)))
        assert row["verdict"] == HOLDS and row["ci_low"] > 0, row


def test_trial_counts_include_an_unfinished_trial(store: dict) -> None:
    payload = store["payload"]
    cells = {(c["model"], c["ordering"], c["dataset"]): c for c in payload["cells"]}
    counts = cells[("feedforward", "reps-3", SYNTH)]["trials"]
    assert counts == {
        "budget": 2,
        "finished": 2,
        "failed": 0,
        "diverged": 0,
        "pruned": 0,
        "running": 1,
    }
    total = 2 * (len(CLASSIFY) + len(AUTOENCODE)) + 1
    assert payload["trials"]["total"] == total and payload["trials"]["running"] == 1


def test_claims_matrix_holds_the_headline_verdicts_per_setting(store: dict) -> None:
    matrix = store["payload"]["claims_matrix"]
    assert matrix["settings"] == [STREAM, SYNTH] or matrix["settings"] == [SYNTH, STREAM]
    for basis in ("paper", "tuned"):
        for claim, by_setting in matrix["cells"][basis].items():
            for group, entry in by_setting.items():
                row = _headline(store["payload"], claim, basis, group)
                assert entry == {"verdict": row["verdict"], "effect": row["effect"]}


def test_tuning_checks_warn_about_a_best_value_beyond_the_search_range(store: dict) -> None:
    checks = {c["cell"]: c for c in store["payload"]["tuning"]}
    check = checks[f"{SYNTH}/feedforward/reps-3"]
    # its best learning rate (2e-6) lies below the space's lower bound 1e-3 (log scale)
    assert any("learning_rate" in w and "lower bound" in w for w in check["warnings"])
    assert check["infeasible_fraction"] == 0.0
    assert check["importance"] == {} and "outside the space" in check["importance_note"]
    assert check["seed_sd"] > 0 and check["config_sd"] > 0
    assert not checks[f"{SYNTH}/feedforward/random"]["warnings"]


def test_report_again_through_the_cli_updates_the_one_summary_run(
    store: dict, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    assert main(["report", STUDY, "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    assert (out / "report.json").is_file()
    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(STUDY)
    summaries = client.search_runs(
        [experiment.experiment_id], f"tags.{SUMMARY_TAG} = 'true'", max_results=10
    )
    assert len(summaries) == 1
    assert summaries[0].info.run_id == store["report"].summary_run_id
    assert summaries[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summaries[0].info.run_id)}
    assert {"report.md", "report.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(summaries[0].info.run_id, "figures")}
    assert f"figures/curves_tuned_{SYNTH}.png" in figures


def test_an_unknown_study_is_invalid_input(store: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "no-such-study", "--tracking-uri", store["uri"]]) == 2
    assert STUDY in capsys.readouterr().err


def test_claim_1_and_3_slopes_match_a_recomputation_from_the_stored_curves(
    store: dict, tmp_path: Path
) -> None:
    client = MlflowClient(store["uri"])
    cells = {
        (c["model"], c["ordering"]): c for c in store["payload"]["cells"] if c["dataset"] == SYNTH
    }
    for claim, model, sign in (("1", "feedforward", 1.0), ("3", "leaky", -1.0)):
        for basis in ("paper", "tuned"):
            ks, columns = [], []
            for ordering in ("reps-1", "reps-3"):
                run_id = cells[(model, ordering)][basis]["run_id"]
                curves = _curves(client, run_id, tmp_path / claim / basis / ordering)
                ks.append(float(ordering.removeprefix("reps-")))
                columns.append(curves["per_replicate"]["test_loss_auc"])
            values = np.array(columns).T  # [R, K]
            # np.polyfit per replicate: an independent least-squares slope of loss over k;
            # claim 1 counts a rising loss as support, claim 3 a falling one.
            slopes = sign * np.array([np.polyfit(ks, row, 1)[0] for row in values])
            row = _headline(store["payload"], claim, basis)
            assert row["effect"] == pytest.approx(slopes.mean(), abs=1e-12)
            assert [row["ci_low"], row["ci_high"]] == pytest.approx(list(bootstrap_ci(slopes)))
            assert row["comparison"] == f"{model}: slope over k in reps-1, reps-3"


def test_comparisons_are_the_paired_differences_of_the_stored_values(
    store: dict, tmp_path: Path
) -> None:
    client = MlflowClient(store["uri"])
    payload = store["payload"]
    cells = {(c["setting"], c["model"], c["ordering"]): c for c in payload["cells"]}
    rows = [r for r in payload["comparisons"] if r["setting"] == SYNTH]
    expected = set()
    for basis in ("paper", "tuned"):
        for model, ordering in CLASSIFY:
            if ordering != "random" and (model, "random") in CLASSIFY:
                expected.add((basis, f"{model}/{ordering}", f"{model}/random"))
            if model != "feedforward" and ("feedforward", ordering) in CLASSIFY:
                expected.add((basis, f"{model}/{ordering}", f"feedforward/{ordering}"))
    assert {(r["basis"], r["a"], r["b"]) for r in rows} == expected
    values: dict[tuple[str, str], np.ndarray] = {}
    for row in rows:
        for side in (row["a"], row["b"]):
            if (row["basis"], side) not in values:
                run_id = cells[(SYNTH, *side.split("/"))][row["basis"]]["run_id"]
                curves = _curves(client, run_id, tmp_path / row["basis"] / side)
                values[(row["basis"], side)] = np.array(curves["per_replicate"]["test_loss_auc"])
        # loss: A beats B by B - A, replicate by replicate
        diff = values[(row["basis"], row["b"])] - values[(row["basis"], row["a"])]
        assert row["effect"] == pytest.approx(diff.mean(), abs=1e-12)
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(list(bootstrap_ci(diff)))
        assert row["replicates"] == 6 and row["note"] == ""
    # the comparison of a cell with itself by construction: leaky-reset = feedforward at reps-1
    same = [r for r in rows if (r["a"], r["b"]) == ("leaky-reset/reps-1", "feedforward/reps-1")]
    assert same and all(r["effect"] == 0.0 for r in same)


def test_claim_5_verdicts_on_a_streamed_unsmooth_test(variant_store: dict, tmp_path: Path) -> None:
    payload = variant_store["payload"]
    group = f"{SYNTH}/test-reps-1"
    expected = {
        ("5a", "paper"): HOLDS,
        ("5a", "tuned"): HOLDS,
        ("5b", "paper"): HOLDS,
        ("5b", "tuned"): REVERSED,
    }
    client = MlflowClient(variant_store["uri"])
    cells = {(c["model"], c["ordering"], c["variant"]): c for c in payload["cells"]}
    for (claim, basis), verdict in expected.items():
        row = _headline(payload, claim, basis, group)
        assert row["verdict"] == verdict, row
        assert row["comparison"] == "2 levels (reps-3, reps-5)"
        other = "feedforward" if claim == "5a" else "lstm"
        levels = {}
        for ordering in ("reps-3", "reps-5"):
            values = {}
            for model in ("leaky-reset", other):
                run_id = cells[(model, ordering, "test-reps-1")][basis]["run_id"]
                curves = _curves(client, run_id, tmp_path / claim / basis / ordering / model)
                values[model] = np.array(curves["per_replicate"]["test_loss_auc"])
            levels[ordering] = values[other] - values["leaky-reset"]  # loss: positive = holds
            (detail,) = [
                r
                for r in payload["claims"]
                if f"{r['claim']}{r['part']}" == claim
                and r["basis"] == basis
                and r["group"] == group
                and r["level"] == ordering
            ]
            assert detail["effect"] == pytest.approx(levels[ordering].mean(), abs=1e-12)
            assert detail["verdict"] == verdict
        weakest = min(levels.values(), key=lambda d: d.mean())
        assert row["effect"] == pytest.approx(weakest.mean(), abs=1e-12)
        assert row["varied"] == {"test_protocol": "streamed", "test_ordering": "reps-1"}
        assert row["setting"] == (
            f"{basis}: {group} (test_ordering=reps-1, test_protocol=streamed)"
        )
    # the baseline tests isolated items: claim 5 is not tested there, and says why
    for basis in ("paper", "tuned"):
        row = _headline(payload, "5a", basis, f"{SYNTH}/baseline")
        assert row["verdict"] == NOT_TESTED and "isolated items" in row["note"]


def test_a_variant_study_reports_its_settings_and_ends_with_the_claims_matrix(
    variant_store: dict,
) -> None:
    payload, report = variant_store["payload"], variant_store["report"]
    assert payload["settings"] == [
        {
            "setting": f"{SYNTH}/baseline",
            "dataset": SYNTH,
            "variant": "baseline",
            "varied": {},
            "label": "no overrides",
        },
        {
            "setting": f"{SYNTH}/test-reps-1",
            "dataset": SYNTH,
            "variant": "test-reps-1",
            "varied": {"test_protocol": "streamed", "test_ordering": "reps-1"},
            "label": "test_ordering=reps-1, test_protocol=streamed",
        },
    ]
    matrix = payload["claims_matrix"]
    assert matrix["settings"] == [f"{SYNTH}/baseline", f"{SYNTH}/test-reps-1"]
    assert matrix["varied"][f"{SYNTH}/baseline"] == {}
    for basis in ("paper", "tuned"):
        for claim, by_setting in matrix["cells"][basis].items():
            for group, entry in by_setting.items():
                row = _headline(payload, claim, basis, group)
                assert entry == {"verdict": row["verdict"], "effect": row["effect"]}
    assert matrix["cells"]["tuned"]["5b"][f"{SYNTH}/test-reps-1"]["verdict"] == REVERSED
    text = report.markdown.read_text()
    tail = text[text.index("## Claims matrix") :]
    assert "## " not in tail[3:], "the matrix is the report's last section"
    assert "- `test-reps-1`: test_ordering=reps-1, test_protocol=streamed" in tail
    assert f"Tuned (each cell's best trial), {SYNTH}:" in tail
    assert "| claim | baseline | test-reps-1 |" in tail
    effect = matrix["cells"]["tuned"]["5b"][f"{SYNTH}/test-reps-1"]["effect"]
    assert f"| reversed ({effect:+.3g}) |" in tail
    # every cell ran its budget: the paper trial and one tuned trial
    assert all(c["trials"]["budget"] == 2 == c["trials"]["finished"] for c in payload["cells"])


def test_autoencoder_cells_are_never_scored_on_classification_claims() -> None:
    base = [0.30, 0.31, 0.29, 0.30, 0.32, 0.28]
    better = [v - 0.05 for v in base]

    def autoencoder(values: list[float]) -> Condition:
        return Condition({"test_loss_auc": np.array(values)}, 0, task="reconstruct")

    conditions = {
        ("feedforward", "random"): autoencoder(base),
        ("feedforward", "reps-1"): autoencoder(better),
        ("feedforward", "reps-3"): autoencoder(base),
        ("leaky-reset", "random"): autoencoder(better),
        ("leaky-reset", "reps-3"): autoencoder(better),
    }
    rows = evaluate(conditions, "test_loss_auc", "paper", SYNTH, "paper")
    for row in rows:
        if row.claim != "6":
            assert row.verdict == NOT_TESTED and "classification" in row.note, row
    # mixed: classification cells beside autoencoder cells; the latter are named, not used
    conditions[("feedforward", "random")] = _condition(base)
    conditions[("feedforward", "reps-3")] = _condition(base)
    rows = {r.claim: r for r in evaluate(conditions, "test_loss_auc", "paper", SYNTH, "paper")}
    assert rows["2"].verdict == NOT_TESTED
    assert rows["2"].note == "needs cells feedforward/reps-1 (task=reconstruct)"
    assert rows["4"].verdict == NOT_TESTED and rows["4"].effect is None


def test_a_bad_study_name_or_store_creates_nothing(
    store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder is <project root>/reports/<name>
    assert main(["report", "no-such-study", "--tracking-uri", store["uri"]]) == 2
    out = tmp_path / "out"
    args = ["--tracking-uri", store["uri"], "--out", str(out)]
    assert main(["report", "no-such-study", *args]) == 2
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert main(["report", STUDY, "--tracking-uri", missing]) == 2
    err = capsys.readouterr().err
    assert "study: error: name='no-such-study' is invalid" in err and STUDY in err
    assert "study: error: tracking_uri=" in err and "existing MLflow store" in err
    assert list(tmp_path.iterdir()) == [], "no reports/, out/ or store folder left behind"


def test_a_later_report_fixes_an_interrupted_summary_run_and_drops_stale_artifacts(
    variant_store: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    client = MlflowClient(variant_store["uri"])
    run_id = variant_store["report"].summary_run_id
    # as a report killed while logging leaves it: RUNNING, with an earlier report's figure
    # that this report no longer draws, and a stray file
    client.update_run(run_id, status="RUNNING")
    stale = tmp_path / "curves_paper_gone.png"
    stale.write_bytes(b"not a current figure")
    client.log_artifact(run_id, str(stale), "figures")
    client.log_text(run_id, "old", "notes.txt")
    # the summary run is not a trial: the study still lists as complete
    assert main(["list", "--tracking-uri", variant_store["uri"]]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(VARIANT_STUDY)]
    assert line.endswith("complete") and "24 trials" in line, line
    report = build_report(VARIANT_STUDY, variant_store["uri"], tmp_path / "again")
    assert report.summary_run_id == run_id
    logged = set()
    for entry in client.list_artifacts(run_id):
        paths = client.list_artifacts(run_id, entry.path) if entry.is_dir else [entry]
        logged |= {p.path for p in paths}
    assert logged == {"report.md", "report.json", *report.payload["figures"]}
    assert client.get_run(run_id).info.status == "FINISHED"


# -- units without a store ---------------------------------------------------------------------
def _condition(values: list[float], seed: int = 0) -> Condition:
    return Condition({"test_loss_auc": np.array(values)}, seed)


def test_every_level_headline_is_reversed_by_one_reversed_level() -> None:
    base = [0.30, 0.31, 0.29, 0.30, 0.32, 0.28]
    better = [v - 0.05 for v in base]
    worse = [v + 0.05 for v in base]
    conditions = {
        ("feedforward", "random"): _condition(base),
        ("leaky-reset", "random"): _condition(better),  # holds at random
        ("feedforward", "reps-3"): _condition(base),
        ("leaky-reset", "reps-3"): _condition(worse),  # reversed at reps-3
    }
    rows = evaluate(conditions, "test_loss_auc", "paper", SYNTH, "paper")
    claim4 = [r for r in rows if r.claim == "4"]
    headline = next(r for r in claim4 if r.headline)
    assert headline.verdict == REVERSED and headline.effect == pytest.approx(-0.05)
    assert {r.level: r.verdict for r in claim4 if not r.headline} == {
        "random": HOLDS,
        "reps-3": REVERSED,
    }


def test_too_few_replicates_or_unpaired_seeds_are_said_so() -> None:
    conditions = {
        ("feedforward", "random"): _condition([0.3, 0.3, 0.3]),
        ("feedforward", "reps-1"): _condition([0.1, 0.1, 0.1]),
    }
    row = next(
        r for r in evaluate(conditions, "test_loss_auc", "paper", SYNTH, "paper") if r.claim == "2"
    )
    assert row.effect == pytest.approx(0.2) and row.verdict == NOT_SIGNIFICANT
    assert "fewer than 5" in row.note
    conditions[("feedforward", "reps-1")] = _condition([0.1] * 6, seed=7)
    conditions[("feedforward", "random")] = _condition([0.3] * 6, seed=0)
    row = next(
        r for r in evaluate(conditions, "test_loss_auc", "paper", SYNTH, "paper") if r.claim == "2"
    )
    assert row.verdict == HOLDS and "not seed-paired" in row.note


def test_importance_finds_the_parameter_that_matters() -> None:
    rng = np.random.default_rng(0)
    cell = CellRecord("s/leaky/reps-3", "s", "leaky", "reps-3", None, None)
    for number in range(20):
        lr = float(10 ** rng.uniform(-3, 1))
        leak = float(rng.uniform(0, 0.95))
        cell.ranked.append(
            TrialRecord(
                f"r{number}",
                cell.key,
                number,
                "finished",
                False,
                False,
                (np.log10(lr) + 1) ** 2,
                {"learning_rate": lr, "leak": leak},
                {},
            )
        )
    study = StudyResults("s", "sqlite://", "0", "test_loss_auc", "min", None, [cell])
    found, note = importance(study, cell, search_distributions(None, "leaky"))
    assert found["learning_rate"] > 2 * found["leak"] and "20 trials" in note


# -- end to end: real Ray, a real mlflow server ------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_report_of_a_real_study_on_an_mlflow_server(
    mlflow_server: str, ray_local: None, tmp_path: Path
) -> None:
    from study.tuner import run_study

    spec = load_spec(
        "smoke",
        [
            "trials_per_cell=3",
            "replicates=5",
            "name=report-integration",
            f"tracking_uri='{mlflow_server}'",
            f"storage_path='{tmp_path / 'ray'}'",
            # as in test_integration: every tuned leaky-reset trial diverges (NaN)
            "network.output=softmax",
            "network.loss=cross-entropy",
            "search_space.leaky-reset={learning_rate={choices=[1000.0]}, leak={low=0, high=0.9}}",
        ],
    )
    run_study(spec)
    report = build_report(spec.name, mlflow_server, tmp_path / "report")
    payload = report.payload
    assert len(payload["cells"]) == 4 and payload["trials"]["diverged"] == 4
    for cell in payload["cells"]:
        assert cell["trials"]["finished"] == 3
        if cell["model"] == "leaky-reset":
            assert cell["trials"]["diverged"] == 2
            assert cell["tuned"]["run_id"] == cell["paper"]["run_id"]  # diverged never best
    checks = {c["cell"]: c for c in payload["tuning"]}
    assert checks["synthetic-categories/leaky-reset/reps-3"]["infeasible_fraction"] == 2 / 3
    for relative in payload["figures"]:
        assert imread(report.out / relative).ndim == 3
    claim4 = _headline(payload, "4", "paper", "synthetic-categories")
    assert claim4["replicates"] == 5 and claim4["verdict"] != NOT_TESTED
    client = MlflowClient(mlflow_server)
    artifacts = {a.path for a in client.list_artifacts(report.summary_run_id)}
    assert {"report.md", "report.json", "figures"} <= artifacts
    # a figure the next report no longer draws is deleted through the server's artifact proxy
    client.log_text(report.summary_run_id, "stale", "figures/gone.png")
    again = build_report(spec.name, mlflow_server, tmp_path / "report")
    assert again.summary_run_id == report.summary_run_id
    figures = {a.path for a in client.list_artifacts(again.summary_run_id, "figures")}
    assert figures == set(again.payload["figures"])
