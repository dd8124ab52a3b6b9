"""The cluster deployment's topology from real processes on loopback, without Docker.

``ray start --head`` plus a second Ray node joining it (token authentication on, as in
docker-compose.yml), ``mlflow server`` on a fresh PostgreSQL database, the Optuna studies on
another fresh PostgreSQL database. A small study submitted by address (``study run
--ray-address``, the other stores through the environment as in the compose runner) must run
trials on both nodes and land every run in the Postgres-backed MLflow. Then the preflight's
cluster checks: refused Host header, unreachable Optuna storage, a trial larger than any node.

Every process listens on this machine only (MLflow on 127.0.0.1; Ray resolves 127.0.0.1 to the
host's own interface address, which Linux delivers locally).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg2
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from tests.services import RayCluster, free_port, fresh_database, mlflow_server, ray_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDY = Path(sys.executable).parent / "study"
TRIALS_PER_CELL = 2
CELLS = 4  # the smoke preset: 2 models x 2 orderings


@dataclass
class Topology:
    ray: RayCluster
    tracking_uri: str
    mlflow_db: str
    optuna_db: str
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A driver's environment: the cluster's token, the stores as the compose runner has."""
        return {
            **os.environ,
            **self.ray.env,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "OPTUNA_STORAGE": self.optuna_db,
            **extra,
        }


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    root = tmp_path_factory.mktemp("cluster")
    with (
        fresh_database("study_it_mlflow") as mlflow_db,
        fresh_database("study_it_optuna") as optuna_db,
        ray_cluster(root / "ray", nodes=2, cpus_per_node=1) as ray,
        # Only the loopback address is allowed, so "localhost" shows a refused Host header.
        mlflow_server(mlflow_db, root / "mlflow", allowed_hosts="127.0.0.1:{port}") as uri,
    ):
        yield Topology(ray, uri, mlflow_db, optuna_db, root)


def _study(topology: Topology, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STUDY), *args],
        env=topology.env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=topology.root,
    )


@pytest.fixture(scope="module")
def submitted(topology: Topology) -> subprocess.CompletedProcess[str]:
    return _study(
        topology,
        "run",
        "smoke",
        "--name",
        "cluster-it",
        "--set",
        f"trials_per_cell={TRIALS_PER_CELL}",
        # Trials of ~2 s of compute, so the second node's actor (a cold start of a few seconds)
        # gets trials before the first node's reused actor has run them all.
        "--set",
        "datasets.synthetic-categories.train_per_category=100",
        "--set",
        "epochs=30",
        "--set",
        "eval_every=400",
        "--ray-address",
        topology.ray.address,
        "--storage-path",
        str(topology.root / "results"),
    )


def test_study_runs_on_both_nodes_and_every_run_lands_in_postgres(
    topology: Topology, submitted: subprocess.CompletedProcess[str]
) -> None:
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    client = MlflowClient(topology.tracking_uri)
    experiment = client.get_experiment_by_name("cluster-it")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(trials) == CELLS * TRIALS_PER_CELL
    assert all(r.info.status == "FINISHED" for r in runs)
    nodes = {r.data.tags["ray_node_id"] for r in trials}
    # The cluster has exactly two nodes and the driver runs no trial: both nodes trained.
    assert len(nodes) == 2, nodes
    assert {r.data.tags["device"] for r in trials} == {"cpu"}
    # One machine: both nodes share an address (Ray maps 127.0.0.1 to this host's own address).
    assert len({r.data.tags["ray_node_ip"] for r in trials}) == 1
    assert all("eval/test_loss" in r.data.metrics for r in trials)

    # The server's backend really is the fresh PostgreSQL database: count the rows there.
    url = make_url(topology.mlflow_db)
    with (
        psycopg2.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT count(*) FROM runs WHERE experiment_id = %s AND status = 'FINISHED'",
            (int(experiment.experiment_id),),
        )
        assert cursor.fetchone()[0] == len(runs) == CELLS + CELLS * TRIALS_PER_CELL

    # Artifacts went through the server's proxy into its artifact folder.
    first = trials[0]
    names = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert {"curves.json", "config.json"} <= names
    assert experiment.artifact_location.startswith("mlflow-artifacts:")


def test_optuna_studies_live_in_postgres_one_per_cell(
    topology: Topology, submitted: subprocess.CompletedProcess[str]
) -> None:
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    summaries = optuna.get_all_study_summaries(storage=topology.optuna_db)
    mine = [s for s in summaries if s.study_name.startswith("cluster-it")]
    assert len(mine) == CELLS
    for summary in mine:
        study = optuna.load_study(study_name=summary.study_name, storage=topology.optuna_db)
        states = [t.state for t in study.trials]
        assert states == [optuna.trial.TrialState.COMPLETE] * TRIALS_PER_CELL


def test_check_reports_the_cluster_and_its_capacity(topology: Topology) -> None:
    done = _study(topology, "check", "smoke", "--ray-address", topology.ray.address)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "API answers our Host header" in done.stdout
    assert "optuna storage" in done.stdout and "reachable" in done.stdout
    assert "ray cluster: 2 nodes with CPUs, 2 trials at once" in done.stdout


def test_a_trial_larger_than_every_node_fails_before_any_run(topology: Topology) -> None:
    done = _study(
        topology,
        "check",
        "smoke",
        "--set",
        "resources.cpu=2",
        "--ray-address",
        topology.ray.address,
    )
    assert done.returncode == 2
    assert "resources.cpu" in done.stderr and "1 CPU/0 GPU, 1 CPU/0 GPU" in done.stderr


def test_a_host_header_the_server_refuses_names_allowed_hosts(topology: Topology) -> None:
    # The same server under a name outside its --allowed-hosts: /health answers, the API not.
    port = topology.tracking_uri.rsplit(":", 1)[1]
    refused = f"http://localhost:{port}"
    done = _study(topology, "check", "smoke", "--tracking-uri", refused)
    assert done.returncode == 2, done.stderr
    assert "--allowed-hosts" in done.stderr and f"localhost:{port}" in done.stderr


def test_an_unreachable_optuna_storage_is_one_clear_message(topology: Topology) -> None:
    closed = f"postgresql+psycopg2://postgres:secret@127.0.0.1:{free_port()}/none"
    done = _study(topology, "check", "smoke", "--optuna-storage", closed)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and "optuna_storage" in message[0]
    assert "secret" not in done.stderr  # the password never reaches a message


def test_optuna_in_mlflows_own_database_is_refused_before_anything_is_created(
    topology: Topology,
) -> None:
    """Invariant: one database for both stores (Optuna would fail on MLflow's Alembic version
    after adding its tables) is one message, exit 2, and Optuna's tables are never created."""
    import sqlalchemy

    for command in ("check", "run"):
        done = _study(topology, command, "smoke", "--optuna-storage", topology.mlflow_db)
        assert done.returncode == 2, done.stderr
        message = done.stderr.strip().splitlines()
        assert len(message) == 1 and "a database of its own" in message[0], message
    engine = sqlalchemy.create_engine(topology.mlflow_db)
    with engine.connect() as connection:
        tables = set(sqlalchemy.inspect(connection).get_table_names())
    engine.dispose()
    assert "experiments" in tables and "studies" not in tables
