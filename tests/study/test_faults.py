"""Faults injected into real processes: a Ray worker killed mid-trial, the `study run` driver
killed with SIGKILL and resumed, the `mlflow server` stopped mid-study and restarted.

Every test runs the real CLI as a subprocess against a real local Ray (started by the CLI on
free ports), a real MLflow store (SQLite, or a real `mlflow server`) and the study's real
Optuna journal, and states the invariant it checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study.cells import expand
from study.searcher import TUNE_ATTR, asked_trials, optuna_storage, restored_tune_trials
from study.tuner import load_stored_spec
from tests.services import trial_runs_in

pytestmark = [pytest.mark.slow, pytest.mark.integration]

VENV_BIN = Path(sys.executable).parent
STUDY = str(VENV_BIN / "study")
SCHEDULE = [0, 20, 40, 60, 80, 100, 120]
"""The smoke preset's evaluation points (samples seen)."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _wait(condition: Callable[[], Any], timeout: float, what: str, process: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the study ended (rc {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def _is_ray_process(pid: int) -> bool:
    try:
        return b"ray" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _is_trial_worker(pid: int) -> bool:
    """A Ray worker running a trial (Ray titles it after the trainable's actor class)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc")
    except OSError:
        return False


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _descendants(ancestor: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != ancestor and _descends_from(pid, ancestor)]


def _study(args: list[str], cwd: Path, env: dict[str, str] | None = None, **popen: Any) -> Any:
    return subprocess.Popen(
        [STUDY, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        text=True,
        **popen,
    )


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the line being written
    return out


def _runs(client: MlflowClient, name: str) -> list[Any]:
    experiment = client.get_experiment_by_name(name)
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def _assert_exactly_one_finished_run_per_trial(
    client: MlflowClient, name: str, cells: int, budget: int
) -> list[Any]:
    """One FINISHED parent per cell with exactly ``budget`` FINISHED children numbered 0..
    budget-1, every child's metric history holding each evaluation point once; nothing
    RUNNING."""
    runs = _runs(client, name)
    assert not [r for r in runs if r.info.status != "FINISHED"], "no run left RUNNING or FAILED"
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("role") == "cell"}
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == cells
    assert len(children) == cells * budget, "exactly one run per trial"
    assert len({c.data.tags["run_key"] for c in children}) == len(children)
    for parent_id in parents:
        numbers = sorted(
            int(c.data.tags["optuna_trial_number"])
            for c in children
            if c.data.tags["mlflow.parentRunId"] == parent_id
        )
        assert numbers == list(range(budget)), "no Optuna trial lost or asked twice"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/test_loss")]
        assert sorted(steps) == SCHEDULE, "every point once, none duplicated"
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {
            "config.json",
            "curves.json",
        }
        assert "objective" in child.data.metrics
    return children


# ---------------------------------------------------------------------------------------------
# a Ray worker dies mid-trial
# ---------------------------------------------------------------------------------------------
WORKER_SPEC = """# study run worker-death.toml   (a trial long enough to be killed mid-way)
name = "worker-death"
models = ["leaky-reset", "lstm"]
orderings = ["reps-3"]
replicates = 2
trials_per_cell = 1
epochs = 4
eval_every = 300
checkpoint_every_s = 0      # a checkpoint at every evaluation point

[[datasets]]
name = "synthetic-categories"
train_per_category = 300
test_per_category = 10

[network.leaky-reset]
hidden = [512]
optimizer = "rmsprop"
momentum = 0.5
learning_rate = 0.001

[network.lstm]
bptt_window = 3
"""


def test_killed_workers_resume_from_checkpoints_with_identical_numbers(tmp_path: Path) -> None:
    """Invariant: the worker processes of both trials are SIGKILLed mid-trial three times (each
    time after a new checkpoint, before the end): after each kill the trial goes on in a new
    process from a checkpoint (its first result there is past 0 samples); the third kill is one
    more than `max_failures` allows, so the trial errors, its run is FAILED and Optuna is told
    FAIL; `study resume` reruns it from its checkpoint. Every trial then ends with exactly
    (CPU, bit for bit) the curves, run metrics and metric history of the same configuration
    trained without interruption; its run is FINISHED (tagged rerun_after_error) and its Optuna
    study holds the rerun's result in one `retry_of` record."""
    import numpy as np
    import torch

    from trainables.engine import TrialRun
    from trainables.tune_adapter import trial_config

    kills = 3  # FailureConfig(max_failures=2): the third failure ends the trial with an error
    (tmp_path / "worker-death.toml").write_text(WORKER_SPEC)
    driver = _study(
        ["run", "worker-death.toml"],
        tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "driver.log", "w"),  # noqa: SIM115 - closed with the process
    )
    folder = tmp_path / ".study" / "ray_results" / "worker-death"
    killed: dict[str, list[int]] = {}
    """Trial folder -> its checkpoints at each kill of its worker."""
    try:

        def kill_workers_past_a_new_checkpoint() -> bool:
            # Checkpoints are written by the workers themselves (result.json by the driver,
            # which may lag): a trial's worker is killed once the trial has two checkpoints,
            # then each time it has one more than at the last kill. Tune runs each trial in
            # its own working directory: that says which worker runs which trial.
            for trial_dir in folder.glob("trial_*"):
                kills_so_far = killed.setdefault(trial_dir.name, [])
                if len(kills_so_far) == kills:
                    continue
                assert not list(trial_dir.glob("checkpoint_*/final.json")), "killed too late"
                # Tune keeps only the newest checkpoint folder (num_to_keep=1): its index says
                # how many the trial has written.
                written = [int(p.name[11:]) for p in trial_dir.glob("checkpoint_*")]
                count = 1 + max(written, default=-1)
                if count < (kills_so_far[-1] + 1 if kills_so_far else 2):
                    continue
                for pid in _descendants(driver.pid):
                    if _is_trial_worker(pid) and _cwd(pid).endswith(trial_dir.name):
                        os.kill(pid, signal.SIGKILL)
                        kills_so_far.append(count)
            return len(killed) == 2 and all(len(k) == kills for k in killed.values())

        _wait(kill_workers_past_a_new_checkpoint, 300, f"{kills} kills per trial", driver)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = [r for r in _runs(client, "worker-death") if r.data.tags.get("role") == "trial"]
    assert sorted(r.info.status for r in runs) == ["FAILED", "FAILED"], "both trials errored"
    spec = load_stored_spec("worker-death", str(tmp_path / ".study" / "ray_results"))
    studies = {
        c.key: optuna.load_study(study_name=c.optuna_name, storage=optuna_storage(spec))
        for c in expand(spec)
    }
    assert all(s.trials[0].state.name == "FAIL" for s in studies.values())

    resume = subprocess.run(
        [STUDY, "resume", "worker-death"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (tmp_path / "resume.log").write_text(resume.stderr)
    assert resume.returncode == 0, resume.stderr[-3000:]
    runs = {
        r.data.tags["ray_trial_id"]: r
        for r in _runs(client, "worker-death")
        if r.data.tags.get("role") == "trial"
    }
    assert len(runs) == 2, "one run per trial, also after the error and the rerun"
    torch.set_num_threads(1)  # as in the trainable: the same reduction order
    for trial_dir in folder.glob("trial_*"):
        results = _results(trial_dir)
        pids = list(dict.fromkeys(r["pid"] for r in results))
        # (a process killed right after its checkpoint may not have got a result to the driver)
        assert len(pids) >= 3, "killed processes and the rerun's"
        for pid in pids[1:]:
            first = next(r for r in results if r["pid"] == pid)
            assert first["samples_seen"] > 0, "continued from a checkpoint, not from 0"
        config = json.loads((trial_dir / "params.json").read_text())
        reference = TrialRun(trial_config(config))
        points = list(reference)
        expected = reference.result()
        run = runs[trial_dir.name.removeprefix("trial_")]
        assert run.info.status == "FINISHED" and run.data.tags["rerun_after_error"] == "true"
        assert run.data.tags["diverged"] == "false"
        path = client.download_artifacts(run.info.run_id, "curves.json", str(tmp_path))
        curves = json.loads(Path(path).read_text())
        assert curves["samples_seen"] == expected.samples_seen.tolist()
        assert curves["test_loss"] == expected.test_loss.tolist(), "identical numbers"
        assert curves["test_accuracy"] == expected.test_accuracy.tolist()
        for name, value in expected.summary.items():
            if not name.startswith("perf/") and np.isfinite(value):
                assert run.data.metrics[f"run/{name}"] == value, name
        history = client.get_metric_history(run.info.run_id, "eval/test_loss")
        assert sorted((m.step, m.value) for m in history) == [
            (p.samples_seen, p.metrics()["eval/test_loss"]) for p in points
        ], "each point once, with the uninterrupted value"
        trials = studies[config["cell"]].trials
        assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
        assert trials[1].user_attrs["retry_of"] == 0
        assert trials[1].value == run.data.metrics["objective"], "Optuna knows the rerun"


# ---------------------------------------------------------------------------------------------
# the driver dies (SIGKILL) and `study resume` finishes the study
# ---------------------------------------------------------------------------------------------
def test_sigkilled_driver_resumes_with_exact_budgets_runs_and_optuna_results(
    tmp_path: Path,
) -> None:
    """Invariant: after SIGKILL of `study run` (with Tune's experiment snapshot left ~all the
    study behind) and `study resume`, each cell has exactly its budget of Optuna trials, all
    complete, each with exactly one FINISHED MLflow run whose objective equals the Optuna
    value; no finished configuration was run again; nothing is left RUNNING."""
    budget, cells = 6, 2
    name = "killed"
    args = [
        "run",
        "smoke",
        "--name",
        name,
        "--set",
        "models=leaky-reset",
        "--set",
        f"trials_per_cell={budget}",
    ]
    # Tune snapshots its state at the start and then only every 1000 s: at the kill, every
    # trial asked after the start exists only in the durable stores (the hard case).
    driver = _study(
        args,
        tmp_path,
        env={"TUNE_GLOBAL_CHECKPOINT_S": "1000"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "mlruns" / "mlflow.db"
    try:
        _wait(lambda: trial_runs_in(db) >= 4, 240, "4 finished trials", driver)
        ray_processes = _descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # Ray's own processes share the driver's fate; any straggler is stopped by its PID.
    deadline = time.monotonic() + 30
    while alive := [p for p in ray_processes if _is_ray_process(p)]:
        if time.monotonic() > deadline:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)

    spec = load_stored_spec(name, str(tmp_path / ".study" / "ray_results"))
    storage = optuna_storage(spec)
    studies = {
        c.key: optuna.load_study(study_name=c.optuna_name, storage=storage) for c in expand(spec)
    }
    snapshot = restored_tune_trials(spec.results_dir) or {}
    asked = {(k, t.number) for k, s in studies.items() for t in asked_trials(s)}
    assert len(asked - set(snapshot)) >= 3, "the crash left trials Tune's snapshot never saw"
    assert trial_runs_in(db) < cells * budget, "the kill came too late to test resume"
    ended = {  # trials whose final checkpoint exists: their evaluation points so far
        d: [r for r in _results(d) if not r.get("final")]
        for d in spec.results_dir.glob("trial_*")
        if list(d.glob("checkpoint_*/final.json"))
    }

    resume = subprocess.run(
        [STUDY, "resume", name], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    # Trials only the durable stores saw end count as done in the live table and the summary.
    assert f"[{cells * budget}/{cells * budget} trials" in resume.stderr
    assert resume.stderr.count(f" {budget}/{budget} ") >= 2 * cells

    client = MlflowClient(f"sqlite:///{db}")
    children = _assert_exactly_one_finished_run_per_trial(client, name, cells, budget)
    objective = {
        (c.data.tags["cell"], int(c.data.tags["optuna_trial_number"])): c.data.metrics["objective"]
        for c in children
    }
    for trial_dir, points in ended.items():
        after = [r for r in _results(trial_dir) if not r.get("final")]
        assert after == points, f"{trial_dir.name} had ended: it is not trained again"
    studies = {
        c.key: optuna.load_study(study_name=c.optuna_name, storage=optuna_storage(spec))
        for c in expand(spec)
    }
    for key, study in studies.items():
        trials = asked_trials(study)
        assert sorted(t.number for t in trials) == list(range(budget)), "exact budget"
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        for trial in trials:
            assert trial.value == objective[(key, trial.number)], "Optuna knows every result"
            # the Ray trials that ran this configuration: one, or more if it was cut short
            ray_ids = trial.user_attrs[TUNE_ATTR]["ray_trial_ids"]
            finals = [i for i in ray_ids if list(spec.results_dir.glob(f"trial_{i}/*/final.json"))]
            assert len(finals) == 1, "a configuration that ended is not run again"
        params = [tuple(sorted(t.params.items())) for t in trials]
        assert len(set(params)) == len(params), "no configuration asked twice"


# ---------------------------------------------------------------------------------------------
# the tracking server goes away mid-study
# ---------------------------------------------------------------------------------------------
class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts) that can be stopped and
    started again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = root / "mlflow.db"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--allowed-hosts",
                f"127.0.0.1:{self.port},localhost:{self.port}",
            ],
            env=env,
            stdout=open(self.root / "server.log", "a"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                    return reply.status == 200
            except OSError:
                return False

        _wait(healthy, 90, "the mlflow server", self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    root = tmp_path / "server"
    root.mkdir()
    served = MlflowServer(root)
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_tracking_outage_keeps_training_spools_and_loses_or_duplicates_nothing(
    tmp_path: Path, server: MlflowServer
) -> None:
    """Invariant: with the server stopped mid-study, trials keep finishing; the driver warns
    once (no retry storm) and keeps the writes in its spool; after the server is back,
    `study sync` sends them: every trial has exactly one FINISHED run with each point once,
    the parents are FINISHED, and a second `study sync` has nothing left to send."""
    budget, cells, name = 6, 2, "outage"
    log = tmp_path / "driver.log"
    driver = _study(
        [
            "run",
            "smoke",
            "--name",
            name,
            "--tracking-uri",
            server.url,
            "--set",
            "models=leaky-reset",
            "--set",
            f"trials_per_cell={budget}",
            "--set",
            "max_concurrent_trials=1",
        ],
        tmp_path,
        env={"STUDY_TRACKING_PROBE_S": "1"},
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115
    )
    folder = tmp_path / ".study" / "ray_results" / name
    spool = folder / "tracking_spool" / "ops.jsonl"
    try:
        _wait(lambda: trial_runs_in(server.db) >= 2, 240, "2 finished runs", driver)
        server.stop()
        at_stop = trial_runs_in(server.db)
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert text.count("unreachable") == 1, "one warning, no retry storm: " + text[-3000:]
    assert f"study sync {name}" in text
    assert spool.exists(), "the writes wait in the spool"
    finals = list(folder.glob("trial_*/checkpoint_*/final.json"))
    assert len(finals) == cells * budget > at_stop, "trials went on while the server was down"

    server.start()
    synced = subprocess.run(
        [STUDY, "sync", name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr[-3000:]
    assert not spool.exists()
    client = MlflowClient(server.url)
    _assert_exactly_one_finished_run_per_trial(client, name, cells, budget)
    again = subprocess.run(
        [STUDY, "sync", name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "sent 0" in again.stdout, again.stdout + again.stderr


def test_a_study_sends_its_spool_itself_when_the_server_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: writes spooled while nothing answered at the tracking URI are sent, in order
    and exactly once, by the next probe after a real `mlflow server` starts there."""
    from study import tracking

    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)  # not started yet: its port refuses connections
    monkeypatch.setenv(tracking.PROBE_ENV, "0")
    store = tracking.TrackingStore(server.url, tmp_path / "spool")
    try:
        store.create_run("trial:c#0", {"study": "s"}, "c#0")  # no experiment id yet
        assert store.down and store.pending == 1
        server.start()
        client = MlflowClient(server.url)
        store.experiment_id = client.create_experiment("s")
        store.log_batch("trial:c#0", [tracking.Metric("eval/test_loss", 0.5, 0, 0)])
        assert not store.down and store.pending == 0, "the probe sent the spool"
        store.set_status("trial:c#0", "FINISHED")
        (run,) = client.search_runs([store.experiment_id])
        assert run.info.status == "FINISHED" and run.data.metrics == {"eval/test_loss": 0.5}
    finally:
        server.stop()
