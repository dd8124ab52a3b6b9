"""MLflow hygiene and outage-proof writes, against real MLflow stores (SQLite) and a real
refused connection (a closed loopback port).

Invariants: names always pass MLflow's own validators and stay distinct; long param values are
truncated to MLflow's limit with the full value in an artifact; a write to a dead server is
tried a bounded number of times, then spooled with no further requests until the probe
interval; replaying a spool (twice, even) leaves exactly one run per key and one point per
(metric, step).
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

from study import tracking
from study.cells import expand
from study.spec import load_spec
from study.tracking import (
    MAX_KEY_LENGTH,
    MAX_PARAM_LENGTH,
    PARAMS_FULL_FILE,
    MlflowTracking,
    TrackingStore,
    param_value,
    valid_key,
    valid_keys,
)

NASTY = [
    "eval/test_loss",
    "eval/test loss (%)",
    "lr:max",
    "a//b",
    "/leading",
    "trailing/",
    "../up",
    "./here",
    "..",
    "ünïcode-ß",
    "tab\tand\nnewline",
    "x" * 400,
    "x" * 399 + "y",
    "",
]


def test_valid_keys_pass_mlflow_validation_and_stay_distinct() -> None:
    keys = valid_keys(NASTY)
    for name, key in keys.items():
        assert validate_param_and_metric_name(key) and not path_not_unique(key), (name, key)
        assert len(key) <= MAX_KEY_LENGTH
        assert ":" not in key  # MLflow on Windows refuses colons
        assert valid_key(name) == valid_key(name)  # deterministic
    assert len(set(keys.values())) == len(keys), "distinct names stay distinct"
    assert keys["eval/test_loss"] == "eval/test_loss", "valid names are kept"


def test_long_param_values_are_truncated_to_mlflows_limit() -> None:
    short, cut = param_value([0.1, 0.2])
    assert (short, cut) == ("[0.1, 0.2]", False)
    text, cut = param_value("v" * 10_000)
    assert cut and len(text) == MAX_PARAM_LENGTH and PARAMS_FULL_FILE in text


def test_trial_run_has_valid_names_and_the_full_long_value_as_an_artifact(
    tmp_path: Path,
) -> None:
    """The real callback, a SQLite MLflow store: a long value and odd searched names."""
    spec = load_spec(
        "smoke",
        [
            "models=leaky",
            "orderings=random",
            f"tracking_uri='sqlite:///{tmp_path}/mlflow.db'",
            f"storage_path='{tmp_path / 'ray'}'",
        ],
    )
    cells = expand(spec)
    callback = MlflowTracking(spec, cells)
    callback.setup()
    long_dir = "/data" * 2000  # 10,000 characters
    base = cells[0].base.to_dict()
    base["dataset"] = {**base["dataset"], "data_dir": long_dir}
    config = {
        "cell": cells[0].key,
        "base": base,
        "params": {"learning_rate": 0.05, "lr (per sample)": 0.01},
        "optuna_trial_number": 0,
        "paper_setting": True,
    }
    trial = SimpleNamespace(
        trial_id="t0",
        config=config,
        last_result={"final": 1, "objective": 0.5, "samples_seen": 20, "diverged": 0},
        checkpoint=None,
        error_file=None,
        is_finished=lambda: True,
    )
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {"samples_seen": 20, "eval/test_loss": 0.5})
    callback.on_trial_complete(0, [], trial)
    callback.on_experiment_end([trial])
    client = MlflowClient(spec.tracking_uri)
    run = client.get_run(callback.run_ids[tracking.trial_run_key(cells[0].key, 0)])
    params = run.data.params
    assert params["searched.lr _per sample_"] == "0.01"
    assert len(params["config.dataset.data_dir"]) == MAX_PARAM_LENGTH
    kept = client.download_artifacts(run.info.run_id, PARAMS_FULL_FILE, str(tmp_path))
    full = json.loads(Path(kept).read_text())
    assert full == {"config.dataset.data_dir": long_dir}
    assert run.info.status == "FINISHED" and run.data.tags["run_key"].startswith("trial:")


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.01, 0.01))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_writes_to_a_dead_server_are_bounded_then_spooled_and_replayed_exactly_once(
    tmp_path: Path, fast_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(tracking.PROBE_ENV, "3600")
    spool = tmp_path / "spool"
    dead = TrackingStore(f"http://127.0.0.1:{_closed_port()}", spool, experiment_id="0")
    dead.create_run("trial:c#0", {"study": "s"}, "c#0")
    # 1 try + 2 retries + 1 health check, then the server counts as down
    assert dead.down and dead.attempts == len(tracking.RETRY_DELAYS_S) + 2
    points = [Metric("eval/test_loss", 0.5 - 0.1 * i, 0, 20 * i) for i in range(3)]
    artifact = tmp_path / "curves.json"
    artifact.write_text('{"x": 1}')
    dead.log_batch("trial:c#0", points[:2], params={"config.lr": "0.1"}, tags={"t": "1"})
    dead.log_batch("trial:c#0", points[1:])  # step 20 a second time (a re-reported point)
    dead.log_artifact("trial:c#0", artifact)
    artifact.unlink()  # the trial's temp folder is gone by replay time
    dead.set_status("trial:c#0", "FINISHED")
    assert dead.attempts == len(tracking.RETRY_DELAYS_S) + 2, "no requests while down"
    assert dead.pending == 5

    store_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = tracking.connect(store_uri)
    experiment = client.create_experiment("s")
    kept = spool / "ops.jsonl"
    copy = tmp_path / "ops-copy.jsonl"
    shutil.copyfile(kept, copy)
    files = tmp_path / "files-copy"
    shutil.copytree(spool / "files", files)
    for round_ in range(2):  # the second replay is of the same spool again: idempotent
        if round_:
            shutil.copyfile(copy, kept)
            shutil.copytree(files, spool / "files", dirs_exist_ok=True)
        back = TrackingStore(store_uri, spool, experiment_id=experiment)
        report = back.replay()
        assert (report.sent, report.rejected, report.left) == (5, 0, 0)
        assert not kept.exists()
    runs = client.search_runs([experiment])
    assert len(runs) == 1, "one run per key, however often the spool is replayed"
    run = runs[0]
    history = client.get_metric_history(run.info.run_id, "eval/test_loss")
    assert sorted(m.step for m in history) == [0, 20, 40], "one point per step"
    assert run.data.params == {"config.lr": "0.1"} and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["curves.json"]
