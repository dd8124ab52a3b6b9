"""Shared real services for the study tests: a local Ray and an ``mlflow server`` on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with services.mlflow_server(f"sqlite:///{root}/mlflow.db", root) as url:
        yield url


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs shared by the in-process integration tests."""
    import logging

    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real MNIST / Fashion-MNIST IDX folder (:func:`tests.services.shared_data_dir`), or a
    skip saying where it was looked for."""
    found = services.shared_data_dir()
    if found is None:
        pytest.skip(
            "no real MNIST / Fashion-MNIST files: set STUDY_DATA_DIR or put them in shared/data/ "
            f"in a folder above {Path(__file__).resolve().parent}"
        )
    return found
