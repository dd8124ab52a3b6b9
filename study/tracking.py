"""MLflow layout of a study, written by a Ray Tune callback living in the driver.

- one experiment per study (named like the study);
- one parent run per cell (tags: study, cell, dataset, model, ordering), finished at the end;
- one child run per trial (``mlflow.parentRunId``), with tags (also where it ran: Ray node,
  host, device; see :data:`PLACEMENT_TAGS`), the resolved TrialConfig as params, every
  evaluation point as metrics with ``step = samples seen``, the run summary, and the
  per-replicate curves and config as artifacts.

Exactly once. A run's identity is its ``run_key`` tag: ``cell:<cell>`` for a parent,
``trial:<cell>#<Optuna number>`` for a trial (not the Ray trial id, which a trial rerun after a
driver crash does not keep). On start the callback adopts the runs already in the store, skips
the (metric, step) points they hold, reopens runs of trials rerun after an error, and finishes
runs whose trial ended (final checkpoint on disk) while no driver was there to log it.

Outages. Every write goes through :class:`TrackingStore`: a transient failure (connection
refused, timeout, HTTP 5xx/429) is retried a bounded number of times with backoff
(``RETRY_DELAYS_S``; MLflow's own minutes-long retry loop is switched off), then the server is
taken as down: writes go, in order, to a durable spool in the study's results folder
(``tracking_spool/``, fsynced), and the spool is replayed when a probe (every
``STUDY_TRACKING_PROBE_S`` seconds, default 30) finds the server back, on ``study resume``, or by
``study sync NAME``. Replay is idempotent: a run is looked up by its key before it is created,
metric points at a step the run holds are not logged again; params, tags, artifacts and states
are idempotent in MLflow already. A write MLflow refuses for good (e.g. the run's experiment was
deleted) is kept in ``tracking_spool/rejected.jsonl`` with the error, not retried.

Hygiene. Metric, param and tag names are made valid for MLflow deterministically
(:func:`valid_key`); param values over MLflow's 6000 characters are truncated with the full
values in the run's ``params_full.json`` artifact; NaN/inf metric values are never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_spaces import apply_params
from study.cells import Cell
from study.spec import SpecError, StudySpec
from trainables.tune_adapter import (
    CONFIG_FILE,
    CURVES_FILE,
    FINAL_FILE,
    HISTORY_FILE,
    final_checkpoints,
)

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100
"""MLflow's per-request caps of ``log_batch``."""
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
"""MLflow's limits on name length, param values and tag values."""
PLACEMENT_TAGS = {
    "node_id": "ray_node_id",
    "node_ip": "ray_node_ip",
    "hostname": "hostname",
    "device": "device",
    "device_name": "device_name",
}
"""Result keys telling where a trial ran (the trainable's and Tune's own) -> child run tag."""
FLUSH_EVERY_S = 10.0
"""Seconds between flushes of buffered metrics while trials run (so the UI shows live curves)."""
RETRY_DELAYS_S = (0.5, 1.5)
"""Pauses before the retries of a failed write; after the last one the server counts as down."""
PROBE_ENV = "STUDY_TRACKING_PROBE_S"
PROBE_EVERY_S = 30.0
"""Seconds between attempts to replay the spool while the server is down (``$PROBE_ENV``)."""
SPOOL_DIR = "tracking_spool"
RUN_KEY_TAG = "run_key"
PARAMS_FULL_FILE = "params_full.json"
TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}
)
"""MLflow error codes worth retrying (a refused connection comes as INTERNAL_ERROR)."""


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; an SQLite store's folder is created first.

    MLflow's HTTP client retries a failed request 7 times with exponential backoff (minutes);
    the study retries on its own terms (:class:`TrackingStore`), so that loop is switched off
    unless the environment sets it.
    """
    # The client prints a "View run" link per finished run to stdout: hundreds of lines here.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


# ---------------------------------------------------------------------------------------------
# Experiments: one per study; a deleted one is an explicit decision, never a silent restore
# ---------------------------------------------------------------------------------------------
def deleted_experiment_error(spec: StudySpec) -> SpecError:
    """The one error for a study whose MLflow experiment name belongs to a deleted experiment."""
    return SpecError(
        "name",
        spec.name,
        f"a name not held by a deleted MLflow experiment (experiment {spec.name!r} in "
        f"{spec.tracking_uri} is deleted: pass --restore-deleted to restore it and its runs, "
        "choose another --name, or purge it with `mlflow gc`)",
    )


def settle_deleted_experiment(
    client: MlflowClient, spec: StudySpec, restore_deleted: bool
) -> None:
    """If the study's experiment is deleted: restore it when asked to, else the one error.

    Raises:
        SpecError: the experiment is deleted and not ``restore_deleted``.
    """
    found = client.get_experiment_by_name(spec.name)
    if found is None or found.lifecycle_stage != "deleted":
        return
    if not restore_deleted:
        raise deleted_experiment_error(spec)
    client.restore_experiment(found.experiment_id)
    print(f"study: restored the deleted experiment {spec.name!r}", file=sys.stderr)


def experiment_id(client: MlflowClient, spec: StudySpec) -> str:
    """The study's experiment id, created if missing (local artifacts in mlruns/artifacts).

    Raises:
        SpecError: the experiment is deleted (``--restore-deleted`` restores it first).
    """
    found = client.get_experiment_by_name(spec.name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise deleted_experiment_error(spec)
        return found.experiment_id
    location = None
    if spec.tracking_uri.startswith("sqlite:///"):
        db = Path(spec.tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "artifacts" / spec.name).as_uri()
    return client.create_experiment(
        spec.name, artifact_location=location, tags={"study": spec.name}
    )


# ---------------------------------------------------------------------------------------------
# Names and values MLflow accepts
# ---------------------------------------------------------------------------------------------
_INVALID_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-. /]")


def valid_key(name: str) -> str:
    """``name`` as a valid MLflow metric/param/tag name, deterministically.

    Allowed: ASCII letters, digits, ``_ - . /`` and spaces (MLflow's set without the colon,
    which MLflow on Windows refuses); no empty, ``.`` or ``..`` path segments, no leading or
    trailing ``/``; at most 250 characters. A name that had to change keeps a short hash of the
    original at the end when it is shortened, so two long names stay apart.

    >>> valid_key("eval/test loss (%)")
    'eval/test loss ___'
    >>> valid_key("/a//b/../c/")
    'a/b/__/c'
    """
    text = _INVALID_CHARACTERS.sub("_", str(name))
    parts = [part for part in text.split("/") if part]
    text = "/".join("_" * len(part) if part in (".", "..") else part for part in parts) or "_"
    if len(text) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(str(name).encode()).hexdigest()[:8]
        text = f"{text[: MAX_KEY_LENGTH - 9].rstrip('/')}_{digest}"
    return text


def valid_keys(names: Iterable[str]) -> dict[str, str]:
    """Original name -> valid key, distinct for distinct names (a hash suffix settles clashes)."""
    names = sorted(set(names))
    out = {name: valid_key(name) for name in names}
    counts: dict[str, int] = {}
    for key in out.values():
        counts[key] = counts.get(key, 0) + 1
    for name, key in out.items():
        if counts[key] > 1 and key != name:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            out[name] = f"{key[: MAX_KEY_LENGTH - 9]}_{digest}"
    return out


def param_value(value: Any) -> tuple[str, bool]:
    """The text MLflow stores for a param value, and whether it had to be truncated."""
    text = (
        json.dumps(value) if isinstance(value, list | tuple | dict | bool | None) else str(value)
    )
    if len(text) <= MAX_PARAM_LENGTH:
        return text, False
    marker = f"... [truncated; full value in {PARAMS_FULL_FILE}]"
    return text[: MAX_PARAM_LENGTH - len(marker)] + marker, True


def _tag_value(text: str) -> str:
    return text if len(text) <= MAX_TAG_LENGTH else text[: MAX_TAG_LENGTH - 3] + "..."


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``dataset.name``)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trial_run_key(cell: str, number: int) -> str:
    """The ``run_key`` of the trial with Optuna number ``number`` in cell ``cell``."""
    return f"trial:{cell}#{number}"


def cell_run_key(cell: str) -> str:
    """The ``run_key`` of cell ``cell``'s parent run."""
    return f"cell:{cell}"


# ---------------------------------------------------------------------------------------------
# Writes that survive an outage
# ---------------------------------------------------------------------------------------------
def is_transient(error: BaseException) -> bool:
    """Whether a failed MLflow call may succeed later (connection, timeout, overload)."""
    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_CODES
    if isinstance(error, OSError):  # requests' errors are OSErrors too
        return True
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - MLflow depends on SQLAlchemy
        return False
    return isinstance(error, OperationalError)  # e.g. "database is locked"


@dataclass
class SyncReport:
    """What one replay of the spool did."""

    sent: int = 0
    rejected: int = 0
    left: int = 0


class TrackingStore:
    """MLflow writes by run key, with bounded retries, a durable spool and idempotent replay.

    Writes are plain dicts (``{"op": "create_run" | "log_batch" | "log_text" | "log_artifact" |
    "status", "key": <run key>, ...}``) so they can be spooled as JSON lines and replayed by
    another process (``study sync``). While the spool holds anything, new writes join its end,
    so MLflow always sees them in order.

    Args:
        tracking_uri: the MLflow tracking URI.
        spool_dir: the spool's folder (created on first use).
        experiment_id: the study's experiment (``create_run`` and run lookups need it).
    """

    def __init__(self, tracking_uri: str, spool_dir: Path, experiment_id: str = "") -> None:
        self.client = connect(tracking_uri)
        self.tracking_uri = tracking_uri
        self.spool_dir = spool_dir
        self.experiment_id = experiment_id
        self.run_ids: dict[str, str] = {}
        """Run key -> MLflow run id."""
        self.probe_every_s = float(os.environ.get(PROBE_ENV, PROBE_EVERY_S))
        self.down = False
        self.attempts = 0
        """Write attempts and health checks so far (tests check the bound on retries)."""
        self._spooled = len(self._read_spool())
        self.rejected = 0
        """Writes MLflow refused in this session (kept in ``rejected.jsonl``)."""
        self._last_probe = time.monotonic()
        self._warned: set[str] = set()

    # -- the write API -------------------------------------------------------------------------
    def create_run(
        self, key: str, tags: dict[str, str], name: str, parent: str | None = None
    ) -> None:
        """Create the run ``key`` (tagged with it), or adopt one the store already holds;
        ``parent``: the run key of its parent run (linked when the write is applied)."""
        self.write({"op": "create_run", "key": key, "tags": tags, "name": name, "parent": parent})

    def log_batch(
        self,
        key: str,
        metrics: list[Metric] = (),  # type: ignore[assignment]
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        careful: bool = False,
    ) -> None:
        """Metrics, params and tags of run ``key`` (``careful``: drop points it already holds)."""
        if not (metrics or params or tags):
            return
        self.write(
            {
                "op": "log_batch",
                "key": key,
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
                "params": params or {},
                "tags": tags or {},
                "careful": careful,
            }
        )

    def log_text(self, key: str, text: str, path: str) -> None:
        """A text artifact of run ``key``."""
        self.write({"op": "log_text", "key": key, "text": text, "path": path})

    def log_artifact(self, key: str, local_path: Path) -> None:
        """A file artifact of run ``key`` (copied into the spool if it has to wait there)."""
        self.write({"op": "log_artifact", "key": key, "file": str(local_path)})

    def set_status(self, key: str, status: str) -> None:
        """RUNNING, or a terminal status (FINISHED, FAILED) with the end time set."""
        self.write({"op": "status", "key": key, "status": status})

    @property
    def pending(self) -> int:
        """Writes waiting in the spool."""
        return self._spooled

    def write(self, op: dict[str, Any]) -> None:
        """Apply ``op`` now (retried on transient failures) or append it to the spool."""
        if self._spooled or self.down:
            self._spool(op)
            self.maybe_replay()
            return
        error: BaseException | None = None
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            if attempt:
                time.sleep(RETRY_DELAYS_S[attempt - 1])
            try:
                self._apply(op, careful=attempt > 0 or bool(op.get("careful")))
                return
            except Exception as failure:
                error = failure
                if not is_transient(failure):
                    break
        assert error is not None
        if is_transient(error) and not self._healthy():
            self._go_down(error)
            self._spool(op)
        else:
            self._reject(op, error)

    def maybe_replay(self) -> None:
        """While down: replay the spool if the last probe is ``probe_every_s`` old."""
        if self.down and time.monotonic() - self._last_probe >= self.probe_every_s:
            self.replay()

    def requeue_rejected(self) -> int:
        """Put the writes MLflow refused back in front of the spool (``study sync`` tries them
        again: the cause, e.g. a deleted experiment, may be fixed). Returns how many."""
        path = self.spool_dir / "rejected.jsonl"
        if not path.exists():
            return 0
        rejected = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                op = json.loads(line)
                op.pop("error", None)
                rejected.append(op)
        self._rewrite_spool([*rejected, *self._read_spool()])
        path.unlink()
        return len(rejected)

    def replay(self) -> SyncReport:
        """Send the spool in order, idempotently; stop at the first transient failure."""
        ops = self._read_spool()
        report = SyncReport()
        self._last_probe = time.monotonic()
        cache: dict[tuple[str, str], set[int]] = {}
        for index, op in enumerate(ops):
            try:
                self._apply(op, careful=True, history=cache)
            except Exception as error:
                if is_transient(error) and not self._healthy():
                    self._rewrite_spool(ops[index:])
                    self.down = True
                    report.left = len(ops) - index
                    return report
                self._reject(op, error)
                report.rejected += 1
                continue
            report.sent += 1
            if op["op"] == "log_artifact" and self._is_kept(op["file"]):
                shutil.rmtree(Path(op["file"]).parent, ignore_errors=True)
        self._rewrite_spool([])
        if self.down and ops:
            print(
                f"study: tracking server {self.tracking_uri} answers again; "
                f"sent {report.sent} kept writes",
                file=sys.stderr,
            )
        self.down = False
        return report

    # -- implementation ------------------------------------------------------------------------
    def _apply(
        self,
        op: dict[str, Any],
        careful: bool,
        history: dict[tuple[str, str], set[int]] | None = None,
    ) -> None:
        self.attempts += 1
        client, key, kind = self.client, op["key"], op["op"]
        if kind == "create_run":
            found = self._find_run(key) if careful else None
            if found is None:
                tags = {**op["tags"], RUN_KEY_TAG: key}
                if op.get("parent"):
                    tags["mlflow.parentRunId"] = self._run_id(op["parent"])
                run = client.create_run(self.experiment_id, tags=tags, run_name=op["name"])
                found = run.info.run_id
            self.run_ids[key] = found
            return
        run_id = self._run_id(key)
        if kind == "log_batch":
            metrics = [Metric(k, v, t, s) for k, v, t, s in op["metrics"]]
            if careful and metrics:
                metrics = self._new_points(run_id, metrics, {} if history is None else history)
            params = [Param(k, v) for k, v in sorted(op["params"].items())]
            tags = [RunTag(k, v) for k, v in sorted(op["tags"].items())]
            chunks = max(
                math.ceil(len(metrics) / MAX_METRICS),
                math.ceil(len(params) / MAX_PARAMS),
                math.ceil(len(tags) / MAX_TAGS),
                1,
            )
            for i in range(chunks):  # each request within all three caps
                client.log_batch(
                    run_id,
                    metrics=metrics[i * MAX_METRICS : (i + 1) * MAX_METRICS],
                    params=params[i * MAX_PARAMS : (i + 1) * MAX_PARAMS],
                    tags=tags[i * MAX_TAGS : (i + 1) * MAX_TAGS],
                )
            if history is not None:
                for metric in metrics:
                    history.setdefault((run_id, metric.key), set()).add(metric.step)
        elif kind == "log_text":
            client.log_text(run_id, op["text"], op["path"])
        elif kind == "log_artifact":
            client.log_artifact(run_id, op["file"])
        elif kind == "status":
            if op["status"] == "RUNNING":
                client.update_run(run_id, status="RUNNING")
            else:
                client.set_terminated(run_id, op["status"])
        else:
            raise ValueError(f"unknown tracking op {kind!r}")

    def _new_points(
        self, run_id: str, metrics: list[Metric], history: dict[tuple[str, str], set[int]]
    ) -> list[Metric]:
        """The metric points the run does not hold yet (one history request per key)."""
        for name in {m.key for m in metrics}:
            if (run_id, name) not in history:
                steps = self.client.get_metric_history(run_id, name)
                history[(run_id, name)] = {m.step for m in steps}
        return [m for m in metrics if m.step not in history[(run_id, m.key)]]

    def _run_id(self, key: str) -> str:
        run_id = self.run_ids.get(key) or self._find_run(key)
        if run_id is None:
            raise MlflowException(f"no run with {RUN_KEY_TAG}={key!r}", "RESOURCE_DOES_NOT_EXIST")
        self.run_ids[key] = run_id
        return run_id

    def _find_run(self, key: str) -> str | None:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.{RUN_KEY_TAG} = '{key}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def _healthy(self) -> bool:
        """One cheap request: does the store answer at all (so a failure is the write's own)?"""
        try:
            self.attempts += 1
            self.client.search_experiments(max_results=1)
        except Exception:
            return False
        return True

    def _go_down(self, error: BaseException) -> None:
        self.down = True
        self._last_probe = time.monotonic()
        print(
            f"warning: tracking server {self.tracking_uri} unreachable ({_short(error)}); "
            f"trials go on, their MLflow writes are kept in {self.spool_dir} and sent when it "
            f"answers again (checked every {self.probe_every_s:g} s), on `study resume`, or "
            "by `study sync NAME`",
            file=sys.stderr,
        )

    def _reject(self, op: dict[str, Any], error: BaseException) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        op = self._keep_file(op)
        with open(self.spool_dir / "rejected.jsonl", "a") as handle:
            handle.write(json.dumps({**op, "error": _short(error)}) + "\n")
        self.rejected += 1
        kind = getattr(error, "error_code", type(error).__name__)
        if kind not in self._warned:
            self._warned.add(kind)
            print(
                f"warning: MLflow refused a write to {op['key']} ({_short(error)}); "
                f"kept in {self.spool_dir / 'rejected.jsonl'}",
                file=sys.stderr,
            )

    def _spool(self, op: dict[str, Any]) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        op = self._keep_file(op)
        with open(self.spool_dir / "ops.jsonl", "a") as handle:
            handle.write(json.dumps(op) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._spooled += 1

    def _keep_file(self, op: dict[str, Any]) -> dict[str, Any]:
        """An artifact op whose file lives in the spool (the original may be a temp folder)."""
        if op["op"] != "log_artifact" or self._is_kept(op["file"]):
            return op
        folder = self.spool_dir / "files" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        kept = folder / Path(op["file"]).name
        shutil.copyfile(op["file"], kept)
        return {**op, "file": str(kept)}

    def _is_kept(self, file: str) -> bool:
        return Path(file).parent.parent == self.spool_dir / "files"

    def _read_spool(self) -> list[dict[str, Any]]:
        path = self.spool_dir / "ops.jsonl"
        if not path.exists():
            return []
        ops = []
        for line in path.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash while it was written: never applied
        return ops

    def _rewrite_spool(self, ops: list[dict[str, Any]]) -> None:
        path = self.spool_dir / "ops.jsonl"
        if not ops:
            path.unlink(missing_ok=True)
        else:
            scratch = path.with_suffix(".tmp")
            scratch.write_text("".join(json.dumps(op) + "\n" for op in ops))
            os.replace(scratch, path)
        self._spooled = len(ops)


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def spool_dir(spec: StudySpec) -> Path:
    """The tracking spool of a study, next to its Ray results."""
    return spec.results_dir / SPOOL_DIR


def sync_study(spec: StudySpec) -> SyncReport:
    """Send the writes a study kept in its spool while the server was down (``study sync``).

    Raises:
        SpecError: the study's experiment is deleted (restore it with ``--restore-deleted``).
    """
    store = TrackingStore(spec.tracking_uri, spool_dir(spec))
    store.requeue_rejected()
    if not store.pending:
        return SyncReport()
    store.experiment_id = experiment_id(store.client, spec)
    store.down = True  # prints that it answers again once the spool is sent
    return store.replay()


# ---------------------------------------------------------------------------------------------
# The Tune callback
# ---------------------------------------------------------------------------------------------
class MlflowTracking(Callback):
    """Ray Tune callback writing the study's MLflow runs (see the module docstring)."""

    def __init__(self, spec: StudySpec, cells: list[Cell]) -> None:
        self.spec_json = spec.to_json()
        self.study = spec.name
        self.tracking_uri = spec.tracking_uri
        self.results_dir = spec.results_dir
        self.cells = {cell.key: cell for cell in cells}
        self.run_ids: dict[str, str] = {}
        """Run key -> MLflow run id (restored from Tune's state; the store's tags win)."""
        self.closed: dict[str, str] = {}
        """Run key -> terminal status of the trial runs that are finished."""
        self.trial_keys: dict[str, str] = {}
        """Ray trial id -> run key."""
        self._started: set[str] = set()
        """Run keys of trial runs created in this session (their ids may wait in the spool)."""
        self._store: TrackingStore | None = None
        self._buffer: dict[str, list[Metric]] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}
        """Run key -> (metric, step) points the run holds (resumed runs: read from the store)."""
        self._careful: set[str] = set()
        """Run keys whose held points could not be read: their writes check the store first."""
        self._adopted_running: dict[str, str] = {}
        """Run key -> Ray trial id of adopted trial runs still RUNNING (checked at setup)."""
        self._placements: dict[str, dict[str, str]] = {}
        """Run key -> placement tags last written (written again only when they change)."""
        self._last_flush = time.monotonic()

    # -- pickling: Tune stores callbacks with the experiment; clients and buffers stay behind --
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_store=None, _buffer={}, _logged={}, _careful=set(), _placements={})
        state.update(_adopted_running={}, _started=set())
        return state

    def get_state(self) -> dict[str, Any]:
        """Run-id mapping, saved by Tune with its experiment checkpoint."""
        return {"run_ids": dict(self.run_ids), "closed": dict(self.closed)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_state` (on ``Tuner.restore``)."""
        self.run_ids.update(state.get("run_ids", {}))
        self.closed.update(state.get("closed", {}))

    @property
    def store(self) -> TrackingStore:
        """The outage-proof writer (built on first use: the callback travels pickled)."""
        if self._store is None:
            self._store = TrackingStore(self.tracking_uri, self.results_dir / SPOOL_DIR)
            self._store.run_ids = self.run_ids
        return self._store

    @property
    def client(self) -> MlflowClient:
        return self.store.client

    # -- Tune hooks --------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        """Find or create the experiment and one parent run per cell; adopt existing runs."""
        spec = StudySpec.from_dict(json.loads(self.spec_json))
        store = self.store
        store.experiment_id = experiment_id(self.client, spec)
        if store.pending:
            store.replay()  # writes kept during an outage of an earlier session
        self._adopt_existing_runs()
        self._finish_ended_runs()
        provenance = _provenance()
        for key, cell in self.cells.items():
            run_key = cell_run_key(key)
            if run_key in self.run_ids:
                store.log_text(run_key, self.spec_json, "spec.json")  # if a crash came first
                continue
            tags = {
                "study": self.study,
                "cell": key,
                "dataset": cell.dataset_label,
                "model": cell.model,
                "ordering": cell.ordering,
                **({"variant": cell.variant} if cell.variant else {}),
                "role": "cell",
                **provenance,
            }
            store.create_run(run_key, tags, key)
            store.log_text(run_key, self.spec_json, "spec.json")

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Create the trial's child run, or adopt it when the trial is resumed."""
        self._guard(trial, self._start, trial)

    def on_trial_result(
        self,
        iteration: int,
        trials: list[Trial],
        trial: Trial,
        result: dict[str, Any],
        **info: Any,
    ) -> None:
        """Buffer the evaluation point's metrics at step = samples seen."""
        key = self.trial_keys.get(trial.trial_id)
        if key is None or key in self.closed:
            return
        self._guard(trial, self._tag_placement, key, result)
        self._guard(trial, self._buffer_point, key, result)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Flush buffered metrics every FLUSH_EVERY_S seconds (live curves in the UI)."""
        if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            for key in list(self._buffer):
                self._guard(None, self._flush, key)
            self._last_flush = time.monotonic()
        self._guard(None, self.store.maybe_replay)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Log the remaining points, the summary and the artifacts; finish the run."""
        self._guard(trial, self._finish, trial, "FINISHED")

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """Flush what the trial reported, record the error, mark the run FAILED."""
        self._guard(trial, self._finish, trial, "FAILED")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """Finish the cells' parent runs once every trial has ended; send what is kept."""
        if all(t.is_finished() for t in trials):
            for key in self.cells:
                self._guard(None, self.store.set_status, cell_run_key(key), "FINISHED")
        # interrupted: parents stay open until `study resume` finishes the study
        store = self.store
        if store.pending:
            self._guard(None, store.replay)
        if store.pending or store.rejected:
            print(
                f"study: {store.pending} MLflow writes are kept in {store.spool_dir} and "
                f"{store.rejected} were refused (rejected.jsonl there); `study sync "
                f"{self.study}` sends them once {self.tracking_uri} answers",
                file=sys.stderr,
            )

    # -- implementation ------------------------------------------------------------------------
    def _guard(self, trial: Trial | None, action: Any, *args: Any) -> None:
        # A tracking hiccup must not end a sweep of many trials: warn, keep training.
        try:
            action(*args)
        except Exception as error:
            which = f" for trial {trial.trial_id}" if trial is not None else ""
            print(f"warning: MLflow write failed{which}: {error}", file=sys.stderr)

    def _adopt_existing_runs(self) -> None:
        """Map run keys to runs already in the store (a resumed study, or after a crash)."""
        token = None
        while True:
            page = self.client.search_runs(
                [self.store.experiment_id],
                f"tags.study = '{self.study}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                tags = run.data.tags
                key = tags.get(RUN_KEY_TAG)
                if key is None and tags.get("role") == "cell" and "cell" in tags:
                    key = cell_run_key(tags["cell"])  # written before run keys existed
                elif key is None and "optuna_trial_number" in tags:
                    key = trial_run_key(tags["cell"], int(tags["optuna_trial_number"]))
                if key is None:
                    continue
                self.run_ids[key] = run.info.run_id
                if key.startswith("trial:") and run.info.status in ("FINISHED", "FAILED"):
                    self.closed[key] = run.info.status
                elif key.startswith("trial:"):
                    self.closed.pop(key, None)
                    self._adopted_running[key] = tags.get("ray_trial_id", "")
            token = page.token
            if not token:
                break

    def _finish_ended_runs(self) -> None:
        """Finish RUNNING trial runs whose trial ended (final checkpoint on disk) while no
        driver was there to log it: a driver killed between the trial's end and its log."""
        for key, ray_id in sorted(self._adopted_running.items()):
            finals = final_checkpoints(self.results_dir, [ray_id]) if ray_id else []
            if not finals:
                continue
            folder = finals[-1]
            final = json.loads((folder / FINAL_FILE).read_text())
            config = json.loads((folder / CONFIG_FILE).read_text())
            self._load_logged(key)
            self._finish_run(key, final, folder, "FINISHED", config, None)
        self._adopted_running.clear()

    def _load_logged(self, key: str) -> None:
        """The (metric, step) points run ``key`` holds; if unreadable, write it carefully."""
        if key in self._logged:
            return
        try:
            run_id = self.run_ids[key]
            names = self.client.get_run(run_id).data.metrics
            self._logged[key] = {
                (name, m.step)
                for name in names
                for m in self.client.get_metric_history(run_id, name)
            }
        except Exception:
            self._logged[key] = set()
            self._careful.add(key)

    def _start(self, trial: Trial) -> None:
        config = trial.config
        cell = self.cells[config["cell"]]
        key = trial_run_key(cell.key, config["optuna_trial_number"])
        self.trial_keys[trial.trial_id] = key
        store = self.store
        resolved = apply_params(config["base"], config["params"])
        tags = {
            "study": self.study,
            "cell": cell.key,
            "dataset": cell.dataset_label,
            "model": cell.model,
            "ordering": cell.ordering,
            **({"variant": cell.variant} if cell.variant else {}),
            "ray_trial_id": trial.trial_id,
            "optuna_trial_number": str(config["optuna_trial_number"]),
            "paper_setting": str(bool(config["paper_setting"])).lower(),
            "replicates": str(resolved["replicates"]),
            "gradient": resolved["gradient"],
            "role": "trial",
        }
        params = {
            **{f"config.{k}": v for k, v in flatten(resolved).items()},
            **{f"searched.{k}": v for k, v in config["params"].items()},
        }
        names = valid_keys(params)
        values, full = {}, {}
        for name, value in params.items():
            values[names[name]], truncated = param_value(value)
            if truncated:
                full[names[name]] = value
        # adopted: a resumed trial, one run again after a crash, or restarted by Tune (its run
        # may still wait in the spool, so the key, not the run id, says it exists)
        if key in self.run_ids or key in self._started:
            status = self.closed.get(key)
            if status == "FINISHED":
                return  # it ended before a crash; Tune reruns it from a checkpoint: keep as is
            if status is not None:  # rerun after an error (study resume): the run goes on
                del self.closed[key]
                tags["rerun_after_error"] = "true"
            self._load_logged(key)
            # Tags and params again (the same values: idempotent), in case the crash came
            # between creating the run and logging them.
            store.log_batch(key, params=values, tags=tags)
            store.set_status(key, "RUNNING")
        else:
            run_name = f"{cell.key}#{config['optuna_trial_number']}"
            store.create_run(key, tags, run_name, parent=cell_run_key(cell.key))
            self._started.add(key)
            self._logged[key] = set()
            store.log_batch(key, params=values)
        if full:
            store.log_text(key, json.dumps(full, indent=2, default=str), PARAMS_FULL_FILE)

    def _tag_placement(self, key: str, result: dict[str, Any]) -> None:
        tags = {tag: str(result[name]) for name, tag in PLACEMENT_TAGS.items() if name in result}
        if tags and tags != self._placements.get(key):
            # A trial restarted on another node (worker failure) is re-tagged with the new one.
            self.store.log_batch(key, tags=tags)
            self._placements[key] = tags

    def _buffer_point(self, key: str, result: dict[str, Any]) -> None:
        if "samples_seen" not in result:
            return
        step = int(result["samples_seen"])
        stamp = int(time.time() * 1000)
        values = {
            name: float(value)
            for name, value in result.items()
            if name.startswith("eval/") and _is_number(value)
        }
        if _is_number(result.get("objective")):
            values["objective_running"] = float(result["objective"])
        names = valid_keys(values)
        logged = self._logged.setdefault(key, set())
        for name, value in values.items():
            if (names[name], step) not in logged:
                self._buffer.setdefault(key, []).append(Metric(names[name], value, stamp, step))
                logged.add((names[name], step))

    def _flush(self, key: str) -> None:
        metrics = self._buffer.pop(key, [])
        for start in range(0, len(metrics), MAX_METRICS):
            self.store.log_batch(
                key, metrics[start : start + MAX_METRICS], careful=key in self._careful
            )

    def _finish(self, trial: Trial, status: str) -> None:
        key = self.trial_keys.get(trial.trial_id)
        if key is None or key in self.closed:
            return
        final = trial.last_result or {}
        error = str(trial.error_file or "see Ray logs") if status == "FAILED" else None
        with tempfile.TemporaryDirectory() as scratch:
            folder = _final_checkpoint(trial, Path(scratch)) if status == "FINISHED" else None
            self._finish_run(key, final, folder, status, trial.config, error)

    def _finish_run(
        self,
        key: str,
        final: dict[str, Any],
        folder: Path | None,
        status: str,
        config: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        """Log the remaining points, the summary and the artifacts of run ``key``; finish it."""
        store = self.store
        if folder is not None and (folder / HISTORY_FILE).exists():
            # The checkpoint's history has every point, also those reported before a driver
            # crash: log whichever ones this run does not hold yet.
            for point in json.loads((folder / HISTORY_FILE).read_text()):
                self._buffer_point(key, point)
        self._flush(key)
        step = int(final.get("samples_seen", 0))
        stamp = int(time.time() * 1000)
        values = {
            name: float(value)
            for name, value in final.items()
            if (name.startswith(("run/", "perf/")) or name.startswith("objective"))
            and name != "objective_running"
            and _is_number(value)
        }
        names = valid_keys(values)
        summary = [Metric(names[k], v, stamp, step) for k, v in values.items()]
        tags = {"diverged": str(bool(final.get("diverged", 0))).lower()}
        # Stopped early by the scheduler (ASHA): ended without its final report.
        tags["pruned"] = str(status == "FINISHED" and final.get("final") != 1).lower()
        if error is not None:
            tags["error"] = _tag_value(error)
        for start in range(0, max(len(summary), 1), MAX_METRICS):
            store.log_batch(
                key,
                summary[start : start + MAX_METRICS],
                tags=tags if start == 0 else None,
                careful=key in self._careful,
            )
        if config is not None:
            # The resolved config: leak_group<g> folded into group_leaks, as in the params.
            resolved = apply_params(config["base"], config["params"])
            store.log_text(key, json.dumps(resolved, indent=2), "config.json")
        if folder is not None and (folder / CURVES_FILE).exists():
            store.log_artifact(key, folder / CURVES_FILE)
        store.set_status(key, status)
        self.closed[key] = status
        self._logged.pop(key, None)
        self._careful.discard(key)


def _final_checkpoint(trial: Trial, scratch: Path) -> Path | None:
    """A local folder holding the trial's latest checkpoint (downloaded if storage is remote)."""
    checkpoint = trial.checkpoint
    if checkpoint is None:
        return None
    if os.path.isdir(checkpoint.path):
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory(str(scratch / "checkpoint")))


def _is_number(value: Any) -> bool:
    # MLflow stores NaN, but its UI and the Optuna storage do not cope well: drop non-finite.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _provenance() -> dict[str, str]:
    """Git SHA and package versions, tagged on every cell's run."""
    import mlflow
    import optuna
    import ray
    import torch

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return {
        "git_sha": sha or "unknown",
        "version.ray": ray.__version__,
        "version.torch": torch.__version__,
        "version.optuna": optuna.__version__,
        "version.mlflow": mlflow.__version__,
    }
