"""Real local services for tests and benchmarks: processes started here, stopped by their PID.

- :func:`fresh_database`: a new database on the machine's PostgreSQL (127.0.0.1:5432, trust auth;
  ``$STUDY_TEST_POSTGRES`` names another server), dropped afterwards;
- :func:`mlflow_server`: ``mlflow server`` on 127.0.0.1 with proxied artifacts;
- :func:`ray_cluster`: ``ray start --head`` plus nodes joining it, each its own raylet, all on
  127.0.0.1 with token authentication (the compose deployment's topology, without Docker).

Every port is asked from the kernel (never Ray's defaults: Redis listens on 6379 here, and other
Ray instances may run on this machine at the same time).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

VENV_BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get(
    "STUDY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A database on the server that may create and drop databases."""


def shared_data_dir() -> Path | None:
    """The real MNIST / Fashion-MNIST IDX folder: ``$STUDY_DATA_DIR`` if it holds both, else the
    nearest ``<ancestor>/shared/data`` of this file that does (``../shared/data`` from a checkout
    next to ``shared/``, e.g. /work/main; ``/work/shared/data`` from a worktree in /work/wt/).
    """
    candidates = [Path(os.environ["STUDY_DATA_DIR"])] if os.environ.get("STUDY_DATA_DIR") else []
    candidates += [folder / "shared" / "data" for folder in Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "mnist").is_dir() and (candidate / "fashion-mnist").is_dir():
            return candidate
    return None


def trial_runs_in(db: Path, status: str = "FINISHED") -> int:
    """Trial runs (tag role=trial) in state ``status`` in a SQLite MLflow store, read directly
    (no MLflow import, safe while a study writes to it); 0 while the store does not exist."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute(
                "SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                "WHERE t.key = 'role' AND t.value = 'trial' AND r.status = ?",
                (status,),
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(ready: Callable[[], bool], what: str, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s\n{tail}")
        time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; a process-group leader takes its group along."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # Started with start_new_session: whatever it spawned and left behind shares its group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# -- PostgreSQL -------------------------------------------------------------------------------
@contextmanager
def fresh_database(prefix: str = "study_test") -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL (``postgresql+psycopg2://``)."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(POSTGRES_ADMIN_URL)
        url = urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
        try:
            yield url
        finally:
            with admin.cursor() as cursor:
                # FORCE: a server process still holding a connection must not keep it alive.
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


# -- MLflow -----------------------------------------------------------------------------------
@contextmanager
def mlflow_server(
    backend_uri: str, root: Path, allowed_hosts: str | None = None, workers: int = 1
) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (artifacts proxied into ``root/artifacts``); yields its URL.

    ``allowed_hosts`` (``{port}`` is filled in) defaults to ``127.0.0.1:{port},localhost:{port}``.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--backend-store-uri",
                backend_uri,
                "--serve-artifacts",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--allowed-hosts",
                (allowed_hosts or "127.0.0.1:{port},localhost:{port}").format(port=port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        # A fresh PostgreSQL backend runs MLflow's schema migrations first (tens of seconds).
        _wait(healthy, "mlflow server", 120, log_path)
        yield url
    finally:
        _stop(process, grace_s=10)


# -- Ray --------------------------------------------------------------------------------------
@dataclass
class RayCluster:
    """A running local Ray cluster started by :func:`ray_cluster`."""

    address: str
    """host:port of the head's GCS (what ``--ray-address`` takes)."""
    env: dict[str, str]
    """Environment a driver needs: token auth mode and the token file."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


def _node_ports() -> list[str]:
    # Every port a raylet opens, so two nodes (and other Ray instances here) never collide.
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-grpc-port",
        "--dashboard-agent-listen-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
    )
    return [arg for name in names for arg in (name, str(free_port()))]


@contextmanager
def ray_cluster(root: Path, nodes: int = 2, cpus_per_node: int = 1) -> Iterator[RayCluster]:
    """``ray start --head`` and ``nodes - 1`` nodes joining it, each with ``cpus_per_node`` CPUs.

    Token authentication is on, as in the compose deployment: ``RAY_AUTH_MODE=token`` with the
    token in a file named by ``RAY_AUTH_TOKEN_PATH``, the same on every node and the driver.
    """
    root.mkdir(parents=True, exist_ok=True)
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    port = free_port()
    cluster = RayCluster(address=f"127.0.0.1:{port}", env=env)
    # Ray's session folder holds AF_UNIX sockets (107-byte path limit): keep it short.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus_per_node)]
    commands = [
        [
            "--head",
            "--port",
            str(port),
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(free_port()),
            "--temp-dir",
            temp_dir,
        ]
    ] + [["--address", cluster.address]] * (nodes - 1)
    try:
        for number, extra in enumerate(commands):
            log_path = root / f"node{number}.log"
            with open(log_path, "w") as log:
                process = subprocess.Popen(
                    [str(VENV_BIN / "ray"), "start", *common, *extra, *_node_ports()],
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            cluster.processes.append(process)
            cluster.logs.append(log_path)

            def started(process: subprocess.Popen[bytes] = process, log: Path = log_path) -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"ray start exited:\n{log.read_text()[-4000:]}")
                # Printed once the node's raylet has registered with the head.
                return "Ray runtime started" in log.read_text()

            _wait(started, f"ray node {number}", 90, log_path)
        yield cluster
    finally:
        # Joined nodes first: a node stopping after its head waits for a GCS that is gone.
        for process in reversed(cluster.processes):
            _stop(process, grace_s=60)
        shutil.rmtree(temp_dir, ignore_errors=True)
