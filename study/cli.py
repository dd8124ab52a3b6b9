"""The ``study`` command: run, check, resume and list studies; list presets.

Exit codes: 0 success, 2 invalid input (one message on stderr, before Ray starts or any MLflow
run exists), 1 anything else.

Where a study runs and records comes from, highest first: the flag (``--ray-address``,
``--tracking-uri``, ``--optuna-storage``), the spec (file or ``--set``), the environment
(``RAY_ADDRESS``, ``MLFLOW_TRACKING_URI``, ``OPTUNA_STORAGE``: the variables Ray, MLflow and
Optuna's own CLI read), then the embedded default (local Ray, SQLite store, an Optuna journal
file in the study's results folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from study.spec import (
    DEFAULT_PRESET,
    StudySpec,
    apply_override,
    default_storage_path,
    default_tracking_uri,
    preset_names,
    preset_text,
    read_source,
    resolve_tracking_uri,
)
from trainables.config import ConfigError
from trainables.data import DataError

if TYPE_CHECKING:
    from study.progress import CellSummary  # imports Ray: only after the input is valid

# Flags that override one spec field each (taken as plain strings, not TOML literals).
_FIELD_FLAGS = (
    "name",
    "tracking_uri",
    "ray_address",
    "optuna_storage",
    "storage_path",
    "data_dir",
)
ENV_DEFAULTS = {
    "ray_address": "RAY_ADDRESS",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "optuna_storage": "OPTUNA_STORAGE",
}
"""Spec field -> the environment variable that sets it when neither a flag nor the spec does."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other invalid input (argparse would add a usage block).
        self.exit(2, f"study: error: {message} (see study --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``study`` command."""
    parser = _Parser(prog="study", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def cluster_arguments(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--ray-address", help="Ray cluster, host:port (default: $RAY_ADDRESS, else local Ray)"
        )
        sub.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or SQLite)"
        )
        sub.add_argument(
            "--optuna-storage",
            help="Optuna RDB URL, e.g. postgresql+psycopg2://... (default: $OPTUNA_STORAGE, "
            "else a journal file in the study's results folder)",
        )

    def spec_arguments(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "spec",
            nargs="?",
            default=None,
            help=f"TOML file or preset name (default: {DEFAULT_PRESET})",
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec key (repeatable)",
        )
        sub.add_argument("--name", help="study name")
        cluster_arguments(sub)
        sub.add_argument("--storage-path", help="folder for Ray results and checkpoints")
        sub.add_argument("--data-dir", help="folder with MNIST / Fashion-MNIST IDX files")

    restore_help = "restore the study's MLflow experiment if it was deleted (else: an error)"
    run = commands.add_parser("run", help="run a study (default preset: the paper's Fig. 2)")
    spec_arguments(run)
    run.add_argument("--summary-json", metavar="PATH", help="write the summary as JSON")
    run.add_argument("--restore-deleted", action="store_true", help=restore_help)
    check = commands.add_parser("check", help="validate a spec and run the preflight checks")
    spec_arguments(check)
    commands.add_parser("presets", help="list the shipped presets")
    listing = commands.add_parser("list", help="list studies in the tracking store")
    listing.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    resume = commands.add_parser("resume", help="continue an interrupted study")
    resume.add_argument("name")
    resume.add_argument("--storage-path", default=None)
    cluster_arguments(resume)
    resume.add_argument("--summary-json", metavar="PATH")
    resume.add_argument("--restore-deleted", action="store_true", help=restore_help)
    sync = commands.add_parser(
        "sync", help="send the MLflow writes a study kept while its tracking server was down"
    )
    sync.add_argument("name")
    sync.add_argument("--storage-path", default=None)
    sync.add_argument("--tracking-uri", default=None, help="send them here instead")
    sync.add_argument("--restore-deleted", action="store_true", help=restore_help)
    report = commands.add_parser("report", help="write a study's report and claims check")
    report.add_argument("name")
    report.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)"
    )
    report.add_argument("--out", default=None, help="output folder (default: reports/NAME)")
    report.add_argument(
        "--optuna-storage", default=None, help="Optuna RDB URL (default: $OPTUNA_STORAGE)"
    )
    return parser


def load_from_args(args: argparse.Namespace) -> StudySpec:
    """The spec named by ``args``: source, ``--set`` overrides, then the field flags."""
    values = read_source(args.spec)
    for item in args.overrides:
        apply_override(values, item)
    for name in _FIELD_FLAGS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    for name, variable in ENV_DEFAULTS.items():
        if name not in values and os.environ.get(variable):
            values[name] = os.environ[variable]
    return StudySpec.from_dict(values)


def from_env(value: str | None, field: str) -> str | None:
    """``value``, else the environment variable of ``field`` (see :data:`ENV_DEFAULTS`)."""
    return value or os.environ.get(ENV_DEFAULTS[field]) or None


def tracking_uri_of(args: argparse.Namespace) -> str:
    """The store a reading command (list, report) opens: the flag, the environment, the
    default; checked like a study's (a dead or refusing server is one message, exit 2)."""
    from study.preflight import check_tracking

    given = from_env(args.tracking_uri, "tracking_uri")
    uri = resolve_tracking_uri(given or default_tracking_uri())
    check_tracking(uri)
    return uri


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``study`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, DataError) as error:
        print(f"study: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("study: interrupted; continue with `study resume NAME`", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from study.preflight import preflight

    spec = load_from_args(args)
    preflight(spec)
    # Ray and MLflow are imported once the input is valid (seconds saved on every bad input).
    from study.tuner import run_study, unique_name

    name = unique_name(spec, restore_deleted=args.restore_deleted)
    if name != spec.name:
        print(f"study: {spec.name!r} exists; this run is {name!r}", file=sys.stderr)
        spec = dataclasses.replace(spec, name=name)
    return _finished(spec, run_study(spec, args.summary_json))


def _finished(spec: StudySpec, rows: list[CellSummary]) -> int:
    """The closing line of ``run`` and ``resume``: 0 when every cell used its budget, else 130.

    Tune catches Ctrl-C (and SIGTERM) itself and returns from ``fit`` with the trials it
    stopped unfinished, so an interrupt is told by the budget left, not by an exception.
    """
    left = sum(r.budget - r.finished - r.failed - r.pruned for r in rows)
    if left:
        print(
            f"study {spec.name} interrupted with {left} of {sum(r.budget for r in rows)} trials "
            f"not done; continue with `study resume {spec.name}`",
            file=sys.stderr,
        )
        return 130
    if spec.tracking_uri.startswith(("http://", "https://")):
        view = f"open {spec.tracking_uri}"  # the server is the UI
    else:
        view = f"mlflow ui --backend-store-uri {spec.tracking_uri}"
    print(f"study {spec.name} done; view: {view}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from study.cells import expand
    from study.preflight import preflight

    spec = load_from_args(args)
    for line in preflight(spec):
        print(f"ok  {line}")
    if spec.ray_address is not None:
        print(f"ok  {_cluster_fit(spec)}")
    cells = expand(spec)
    single = sum(cell.budget < spec.trials_per_cell for cell in cells)
    note = f" ({single} cells with nothing to search run 1)" if single else ""
    print(
        f"ok  {len(cells)} cells x {spec.trials_per_cell} trials{note} = "
        f"{sum(cell.budget for cell in cells)} trials, objective {spec.objective} "
        f"({spec.direction})"
    )
    return 0


def _cluster_fit(spec: StudySpec) -> str:
    """Join the cluster briefly: does one trial fit a node, and how many run at once."""
    import ray

    from study.tuner import check_cluster, start_ray

    started = start_ray(spec)
    try:
        at_once = check_cluster(spec)
        # Nodes that can take trials (a driver's own node joins with no CPUs).
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0))
    finally:
        if started:
            ray.shutdown()
    return f"ray cluster: {nodes} nodes with CPUs, {at_once} trials at once"


def _presets(args: argparse.Namespace) -> int:
    width = max(map(len, preset_names()))
    for name in preset_names():
        first = preset_text(name).splitlines()[0].lstrip("# ").strip()
        print(f"{name:{width}s} {first}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from study.results import SUMMARY_TAG, list_runs
    from study.tracking import connect

    uri = tracking_uri_of(args)
    client = connect(uri)
    rows: list[tuple[str, ...]] = []
    for experiment in client.search_experiments(filter_string="tags.study != ''"):
        # The summary run holds the report, not a trial: it never makes a study "running".
        runs = [
            r
            for r in list_runs(client, experiment.experiment_id)
            if r.data.tags.get(SUMMARY_TAG) != "true"
        ]
        cells = [r for r in runs if r.data.tags.get("role") == "cell"]
        trials = [r for r in runs if r.data.tags.get("role") == "trial"]
        counts = {s: sum(r.info.status == s for r in trials) for s in ("FINISHED", "FAILED")}
        open_runs = any(r.info.status == "RUNNING" for r in runs)
        rows.append(
            (
                experiment.name,
                f"{len(cells)} cells",
                f"{len(trials)} trials",
                f"{counts['FINISHED']} finished, {counts['FAILED']} failed",
                "running or interrupted" if open_runs else "complete",
            )
        )
    if not rows:
        print(f"no studies in {uri}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        print("  ".join(col.ljust(w) for col, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _resume(args: argparse.Namespace) -> int:
    import dataclasses

    from study.preflight import preflight
    from study.spec import SpecError
    from study.tuner import check_resumable, load_stored_spec, resume_study

    spec = load_stored_spec(args.name, args.storage_path or default_storage_path())
    # Tune restores the tracking callback and the Optuna studies from its own state, bound to
    # the stores the study started with: those cannot move, only the Ray cluster can.
    for name in ("tracking_uri", "optuna_storage"):
        given = getattr(args, name)
        if given is not None and given != getattr(spec, name):
            raise SpecError(
                name, given, f"the store study {spec.name} started with ({getattr(spec, name)})"
            )
    address = from_env(args.ray_address, "ray_address")
    if address is not None:
        spec = dataclasses.replace(spec, ray_address=address)
    preflight(spec)
    check_resumable(spec, restore_deleted=args.restore_deleted)
    return _finished(spec, resume_study(spec, args.summary_json))


def _sync(args: argparse.Namespace) -> int:
    import dataclasses

    from study.preflight import check_tracking
    from study.tracking import sync_study
    from study.tuner import check_resumable, load_stored_spec

    spec = load_stored_spec(args.name, args.storage_path or default_storage_path())
    if args.tracking_uri is not None:
        spec = dataclasses.replace(spec, tracking_uri=args.tracking_uri)
    check_tracking(spec.tracking_uri)
    check_resumable(spec, restore_deleted=args.restore_deleted)
    report = sync_study(spec)
    print(
        f"study {spec.name}: sent {report.sent} kept MLflow writes to {spec.tracking_uri}, "
        f"{report.rejected} refused (see its tracking_spool/rejected.jsonl), {report.left} left"
    )
    return 0 if report.left == 0 and report.rejected == 0 else 1


def _report(args: argparse.Namespace) -> int:
    from study.reports import build_report

    report = build_report(
        args.name,
        tracking_uri_of(args),
        args.out,
        from_env(args.optuna_storage, "optuna_storage"),
    )
    held = [c for c in report.payload["claims"] if c["headline"]]
    width = max((len(row["setting"]) for row in held), default=0)
    for row in held:
        part = f"{row['claim']}{row['part']}"
        effect = f" ({row['effect']:+.3g})" if row["effect"] is not None else ""
        print(f"claim {part:3s} {row['setting']:{width}s} {row['verdict']}{effect}")
    print(f"study: report written to {report.markdown}", file=sys.stderr)
    return 0


_COMMANDS = {
    "run": _run,
    "check": _check,
    "presets": _presets,
    "list": _list,
    "resume": _resume,
    "sync": _sync,
    "report": _report,
}


if __name__ == "__main__":
    sys.exit(main())
