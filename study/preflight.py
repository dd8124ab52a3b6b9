"""Preflight: everything about a spec that needs the outside world, checked before Ray starts.

Each failure is one :class:`~study.spec.SpecError` naming the field, the value and what is
needed, raised before any trial or MLflow run exists.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from study.spec import SpecError, StudySpec
from trainables.config import ConfigError
from trainables.data import DataError, load_dataset

TIMEOUT_S = 3.0


def preflight(spec: StudySpec) -> list[str]:
    """Run every check; returns one line per check passed (``study check`` prints them)."""
    passed: list[str] = [check_storage_path(spec.storage_path)]
    for position, dataset in enumerate(spec.dataset_configs()):
        try:
            data = load_dataset(dataset)
        except DataError as error:
            raise SpecError(f"datasets[{position}]", dataset.name, str(error)) from None
        except ConfigError as error:  # e.g. more items per class than the files hold
            field = error.field_name.removeprefix("dataset.")
            raise SpecError(f"datasets[{position}].{field}", error.value, error.allowed) from None
        passed.append(
            f"data set {dataset.name}: {len(data.train_y)} training / {len(data.test_y)} test "
            f"items, {data.num_features} features, {data.num_classes} classes"
        )
    passed.append(check_tracking(spec.tracking_uri))
    if spec.optuna_storage is not None:
        passed.append(check_optuna_storage(spec.optuna_storage))
    passed.append(check_ray(spec))
    return passed


def check_storage_path(path: str) -> str:
    """The folder for Ray results can be created and written (nothing is created here)."""
    target = Path(path)
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise SpecError(
            "storage_path", path, f"a folder that can be created ({existing} is not a folder)"
        )
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError("storage_path", path, f"a writable folder ({existing} is not writable)")
    return f"storage path {path}: writable"


def check_tracking(uri: str) -> str:
    """An MLflow server answers /health; a local SQLite store's folder is writable."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=TIMEOUT_S) as reply:
                if reply.status != 200:
                    raise OSError(f"HTTP {reply.status}")
        except (OSError, urllib.error.URLError) as error:
            raise SpecError(
                "tracking_uri", uri, f"a reachable MLflow server (GET /health failed: {error})"
            ) from None
        return f"tracking server {uri}: healthy"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SpecError("tracking_uri", uri, f"a writable folder for the store ({folder})")
        return f"tracking store {uri}: writable"
    return f"tracking store {uri}: not checked (no preflight for this scheme)"


def check_optuna_storage(url: str) -> str:
    """The Optuna RDB answers a connection."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
    except Exception as error:
        raise SpecError(
            "optuna_storage", url, f"a reachable database ({type(error).__name__})"
        ) from None
    return f"optuna storage {url.split('@')[-1]}: reachable"


def check_ray(spec: StudySpec) -> str:
    """A remote Ray head accepts connections; a local Ray can hold one trial's resources."""
    if spec.ray_address is None:
        cpus = os.cpu_count() or 1
        if spec.resources.cpu > cpus:
            raise SpecError("resources.cpu", spec.resources.cpu, f"at most {cpus} on this machine")
        if spec.resources.gpu > 0:
            import torch

            if not torch.cuda.is_available():
                raise SpecError("resources.gpu", spec.resources.gpu, "0: this machine has no GPU")
            if spec.resources.gpu > torch.cuda.device_count():
                raise SpecError(
                    "resources.gpu",
                    spec.resources.gpu,
                    f"at most {torch.cuda.device_count()} GPUs on this machine",
                )
        return f"ray: local, {cpus} CPUs"
    if spec.ray_address == "auto":
        return "ray: auto (address resolved when Ray starts)"
    host, port = _host_port(spec.ray_address)
    try:
        speaks = _speaks_http2(host, port)
    except OSError as error:
        raise SpecError(
            "ray_address", spec.ray_address, f"a reachable Ray head ({error})"
        ) from None
    if not speaks:
        # A port that accepts connections may still not be Ray (ray.init would then wait for
        # minutes): the head's GCS and the Ray client server both speak gRPC over HTTP/2.
        raise SpecError(
            "ray_address",
            spec.ray_address,
            f"a Ray head (port {port} accepts connections but answers no gRPC handshake "
            f"within {TIMEOUT_S:g} s)",
        )
    return f"ray: {spec.ray_address} reachable"


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""HTTP/2's client connection preface followed by an empty SETTINGS frame (RFC 9113, 3.4)."""


def _speaks_http2(host: str, port: int) -> bool:
    """Whether ``host:port`` answers an HTTP/2 (gRPC) handshake with a SETTINGS frame in time.

    Raises:
        OSError: the connection itself fails (refused, unreachable, DNS).
    """
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as connection:
        connection.sendall(_HTTP2_PREFACE)
        header = b""
        try:
            while len(header) < 9:
                chunk = connection.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
        except TimeoutError:
            return False
    return header[3] == 4  # the server's first frame is its SETTINGS (type 4)


def _host_port(address: str) -> tuple[str, int]:
    bare = address.split("://", 1)[-1]
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise SpecError("ray_address", address, "host:port, ray://host:port or 'auto'")
    return host, int(port)
