"""Preflight: everything about a spec that needs the outside world, checked before Ray starts.

Each failure is one :class:`~study.spec.SpecError` naming the field, the value and what is
needed, raised before any trial or MLflow run exists.
"""

from __future__ import annotations

import base64
import os
import socket
import urllib.error
import urllib.parse
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
    """An MLflow server is healthy and answers our API; a local SQLite store's folder is writable.

    ``/health`` alone is not enough: MLflow 3.x answers it for any Host header but refuses API
    calls whose Host header is not in the server's ``--allowed-hosts`` (HTTP 403), which would
    otherwise surface as a failed write in the middle of the study.
    """
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=TIMEOUT_S) as reply:
                if reply.status != 200:
                    raise OSError(f"HTTP {reply.status}")
        except (OSError, urllib.error.URLError) as error:
            raise SpecError(
                "tracking_uri", uri, f"a reachable MLflow server (GET /health failed: {error})"
            ) from None
        _check_tracking_api(base)
        return f"tracking server {uri}: healthy, API answers our Host header"
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SpecError("tracking_uri", uri, f"a writable folder for the store ({folder})")
        return f"tracking store {uri}: writable"
    return f"tracking store {uri}: not checked (no preflight for this scheme)"


def _check_tracking_api(base: str) -> None:
    """One real API call (search experiments), with MLflow's own credential variables."""
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        pair = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:"
        pair += os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
        request.add_header("Authorization", f"Basic {base64.b64encode(pair.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S):
            return
    except urllib.error.HTTPError as error:
        body = error.read(500).decode(errors="replace")
        host = urllib.parse.urlsplit(base).netloc
        if error.code == 403 and "Host header" in body:
            allowed = (
                f"a server started with --allowed-hosts including {host} (it refused our "
                f"Host header {host!r}: {body.strip()})"
            )
        elif error.code in (401, 403):
            allowed = (
                f"credentials the server accepts (HTTP {error.code}; set MLFLOW_TRACKING_TOKEN "
                "or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)"
            )
        else:
            allowed = f"a working MLflow API (search experiments: HTTP {error.code} {body[:200]})"
        raise SpecError("tracking_uri", base, allowed) from None
    except (OSError, urllib.error.URLError) as error:
        raise SpecError(
            "tracking_uri", base, f"a working MLflow API (search experiments failed: {error})"
        ) from None


MLFLOW_TABLES = {"experiments", "runs", "metrics", "alembic_version"}
"""Tables that mark a database as an MLflow tracking store."""


def check_optuna_storage(url: str) -> str:
    """The Optuna RDB answers a connection within the preflight timeout."""
    import sqlalchemy

    # Without a connect timeout an unreachable database host hangs for minutes (TCP retries).
    connect_args = {"connect_timeout": int(TIMEOUT_S)} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
        engine.dispose()
    except Exception as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()
        raise SpecError(
            "optuna_storage",
            _without_password(url),
            f"a reachable database ({type(error).__name__}: {reason[0] if reason else ''})",
        ) from None
    if tables.issuperset(MLFLOW_TABLES):
        # Both use Alembic's version table: Optuna would fail on MLflow's schema version, after
        # creating its own tables in MLflow's database.
        raise SpecError(
            "optuna_storage",
            _without_password(url),
            "a database of its own (this one holds MLflow's tables: give Optuna another "
            "database on the same server)",
        )
    return f"optuna storage {_without_password(url)}: reachable"


def _without_password(url: str) -> str:
    """``url`` fit for messages and logs: a password in it is masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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
