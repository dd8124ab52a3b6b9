"""What the shared stores of a cluster study can take: MLflow on PostgreSQL, Optuna on PostgreSQL.

One run, side by side, against real services on this machine (tests/services.py: a fresh
PostgreSQL database per store on 127.0.0.1:5432, a real ``mlflow server`` on 127.0.0.1):

- MLflow writes through the server (what the study's driver does: one client, requests one after
  another), as requests/s and metric values/s:
    one metric per request (``log_metric``), one evaluation point per request (``log_batch`` of
    ``--point-metrics`` metrics, what an unbatched callback would send), a flush of 1000 metrics
    per request (the cap, what the tracking callback sends), a trial's run lifecycle
    (create_run + params + set_terminated); and the same evaluation-point batches from
    ``--writers`` concurrent clients (several studies on one server);
- Optuna ask+tell per second on PostgreSQL (``RDBStorage``, what the driver's per-cell searcher
  does for every trial) with the random and TPE samplers, early and late in a study, beside the
  in-memory storage;
- artifact and checkpoint bytes per trial of the shipped presets (curves.json, config.json, the
  final checkpoint), which is what the artifact and results volumes grow by.

    python benchmarks/cluster_stores.py [--requests 200] [--trials 300] [--writers 4]
                                        [--out benchmarks/results/cluster_stores.json]

docs/scaling.md turns these figures into limits at 10, 100 and 1000 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/services.py: the same real services the tests start

import mlflow  # noqa: E402
import optuna  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tests.services import fresh_database, mlflow_server  # noqa: E402

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def mlflow_writes(url: str, requests: int, point_metrics: int, writers: int) -> dict[str, Any]:
    """Requests/s and values/s of each write pattern against the server at ``url``."""
    client = MlflowClient(url)
    experiment = client.create_experiment("bench")
    run_id = client.create_run(experiment).info.run_id
    stamp = int(time.time() * 1000)
    out: dict[str, Any] = {}

    start = time.perf_counter()
    for step in range(requests):
        client.log_metric(run_id, "eval/test_loss", 0.5, stamp, step)
    seconds = time.perf_counter() - start
    per_s = _rate(requests, seconds)
    out["log_metric"] = {"requests_per_s": per_s, "values_per_s": per_s}

    def point(step: int) -> list[Metric]:
        return [Metric(f"eval/m{k}", 0.5, stamp, step) for k in range(point_metrics)]

    start = time.perf_counter()
    for step in range(requests):
        client.log_batch(run_id, metrics=point(step))
    seconds = time.perf_counter() - start
    out["log_batch_point"] = {
        "metrics_per_request": point_metrics,
        "requests_per_s": _rate(requests, seconds),
        "values_per_s": _rate(requests * point_metrics, seconds),
    }

    flushes = max(requests // 10, 5)
    start = time.perf_counter()
    for flush in range(flushes):
        metrics = [m for step in range(1000 // point_metrics) for m in point(flush * 1000 + step)]
        client.log_batch(run_id, metrics=metrics[:1000])
    seconds = time.perf_counter() - start
    per_flush = min(1000, (1000 // point_metrics) * point_metrics)
    out["log_batch_1000"] = {
        "metrics_per_request": per_flush,
        "requests_per_s": _rate(flushes, seconds),
        "values_per_s": _rate(flushes * per_flush, seconds),
    }

    lifecycles = max(requests // 4, 10)
    params = [Param(f"config.p{k}", str(k)) for k in range(40)]
    start = time.perf_counter()
    for _ in range(lifecycles):
        trial_run = client.create_run(experiment, tags={"role": "trial"}).info.run_id
        client.log_batch(trial_run, params=params)
        client.set_terminated(trial_run, "FINISHED")
    seconds = time.perf_counter() - start
    out["trial_run_lifecycle"] = {"runs_per_s": _rate(lifecycles, seconds), "requests_per_run": 3}

    per_writer = max(requests // writers, 10)
    errors: list[BaseException] = []

    def writer() -> None:
        own = MlflowClient(url)
        run = own.create_run(experiment).info.run_id
        try:
            for step in range(per_writer):
                own.log_batch(run, metrics=point(step))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    out["log_batch_point_concurrent"] = {
        "writers": writers,
        "requests_per_s": _rate(writers * per_writer, seconds),
        "values_per_s": _rate(writers * per_writer * point_metrics, seconds),
    }
    return out


def optuna_ask_tell(storage: Any, sampler: str, trials: int, window: int) -> dict[str, float]:
    """Ask+tell per second over the first and the last ``window`` trials of one study; with an
    RDB storage also its SQL statements and commits per ask+tell (the same on any machine)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = {"statements": 0, "commits": 0}
    if storage is not None:
        import sqlalchemy

        def count(key: str) -> Any:
            return lambda *args, **kwargs: counts.__setitem__(key, counts[key] + 1)

        sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count("statements"))
        sqlalchemy.event.listen(storage.engine, "commit", count("commits"))
    chosen = (
        optuna.samplers.TPESampler(seed=0)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=0)
    )
    study = optuna.create_study(storage=storage, sampler=chosen, study_name=f"bench-{sampler}")
    counts.update(statements=0, commits=0)
    stamps = []
    for _ in range(trials):
        stamps.append(time.perf_counter())
        trial = study.ask()
        leak = trial.suggest_float("leak", 0.0, 0.95)
        rate = trial.suggest_float("learning_rate", 1e-3, 1.0, log=True)
        study.tell(trial, (leak - 0.6) ** 2 + rate)
    stamps.append(time.perf_counter())
    out = {
        "first_per_s": _rate(window, stamps[window] - stamps[0]),
        "last_per_s": _rate(window, stamps[-1] - stamps[-1 - window]),
        "trials": trials,
    }
    if storage is not None:
        out["statements_per_ask_tell"] = counts["statements"] / trials
        out["commits_per_ask_tell"] = counts["commits"] / trials
    return out


def study_store_load(tracking_uri: str, mlflow_db: str, optuna_db: str) -> dict[str, Any]:
    """Transactions a real study commits per trial in each store (``study run smoke``, local
    Ray, the server and the Optuna database above), read from PostgreSQL's own counters."""
    import psycopg2
    from sqlalchemy.engine import make_url

    def commits(url: str) -> int:
        parts = make_url(url)
        with (
            psycopg2.connect(
                host=parts.host, port=parts.port, user=parts.username, dbname=parts.database
            ) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (parts.database,)
            )
            return int(cursor.fetchone()[0])

    trials = 8  # smoke: 4 cells x 2 trials
    before = {"mlflow": commits(mlflow_db), "optuna": commits(optuna_db)}
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "study"),
                "run",
                "smoke",
                "--name",
                "bench-load",
                "--tracking-uri",
                tracking_uri,
                "--optuna-storage",
                optuna_db,
                "--storage-path",
                scratch,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=scratch,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    time.sleep(11.0)  # a backend idle for 10 s flushes its counters to pg_stat_database
    after = {"mlflow": commits(mlflow_db), "optuna": commits(optuna_db)}
    return {
        "trials": trials,
        "wall_s": seconds,
        **{f"{k}_commits_per_trial": (after[k] - before[k]) / trials for k in before},
    }


def artifact_bytes(data_dir: str | None) -> dict[str, Any]:
    """Bytes one trial adds to the artifact volume and to the shared results volume.

    The checkpoint's size is fixed by the network and R; curves.json grows with R x evaluation
    points: measured by training the small presets, estimated for MNIST at the measured bytes per
    value (its trial trains 60000 samples: hours here).
    """
    from study.spec import load_spec
    from trainables.engine import TrialRun
    from trainables.tune_adapter import curves

    out: dict[str, Any] = {}
    bytes_per_value = []
    presets = ["smoke", "paper-fig2-synthetic"] + (["paper-fig2-mnist"] if data_dir else [])
    for preset in presets:
        spec = load_spec(preset, [f"data_dir='{data_dir}'"] if preset.endswith("mnist") else [])
        config = spec.design()[0].config
        run = TrialRun(config)
        row: dict[str, Any] = {
            "replicates": config.replicates,
            "eval_points": len(run.eval_points),
            "config_json_bytes": len(json.dumps(config.to_dict())),
            "checkpoint_state_bytes": len(pickle.dumps(run.state_dict())),
        }
        values = config.replicates * len(run.eval_points)
        if preset.endswith("mnist"):
            per_value = sum(bytes_per_value) / len(bytes_per_value)
            row["curves_json_bytes_estimate"] = int(per_value * values)
        else:
            for _ in run:
                pass
            row["curves_json_bytes"] = len(json.dumps(curves(run.result())))
            bytes_per_value.append(row["curves_json_bytes"] / values)
        out[preset] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--point-metrics", type=int, default=12)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("STUDY_DATA_DIR", str(ROOT.parent / "shared" / "data")),
        help="MNIST IDX folder, for the MNIST checkpoint size (skipped when missing)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cluster_stores.json"))
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "mlflow": mlflow.__version__,
            "optuna": optuna.__version__,
        },
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory() as scratch:
        with (
            fresh_database("bench_mlflow") as backend,
            fresh_database("bench_study_optuna") as study_optuna,
            mlflow_server(backend, Path(scratch) / "mlflow", workers=args.server_workers) as url,
        ):
            results["mlflow_server_on_postgres"] = mlflow_writes(
                url, args.requests, args.point_metrics, args.writers
            )
            results["study_store_load"] = study_store_load(url, backend, study_optuna)
        with fresh_database("bench_optuna") as url:
            results["optuna_postgres"] = {
                sampler: optuna_ask_tell(
                    optuna.storages.RDBStorage(url), sampler, args.trials, args.window
                )
                for sampler in ("random", "tpe")
            }
        results["optuna_in_memory"] = {
            sampler: optuna_ask_tell(None, sampler, args.trials, args.window)
            for sampler in ("random", "tpe")
        }
    data_dir = args.data_dir if (Path(args.data_dir) / "mnist").is_dir() else None
    results["artifacts_per_trial"] = artifact_bytes(data_dir)

    print("MLflow server on PostgreSQL (one client, sequential unless noted)")
    print(f"  {'pattern':34s} {'requests/s':>11s} {'values/s':>11s}")
    for name, row in results["mlflow_server_on_postgres"].items():
        if "values_per_s" in row:
            label = name + (f" x{row['writers']} writers" if "writers" in row else "")
            print(f"  {label:34s} {row['requests_per_s']:11.1f} {row['values_per_s']:11.1f}")
        else:
            print(f"  {name:34s} {row['runs_per_s']:11.1f} runs/s")
    window = f"trials 1-{args.window} / last {args.window} of {args.trials}"
    print(f"Optuna ask+tell per second ({window})")
    for where in ("optuna_postgres", "optuna_in_memory"):
        for sampler, row in results[where].items():
            print(f"  {where:18s} {sampler:6s} {row['first_per_s']:9.1f} {row['last_per_s']:9.1f}")
    for sampler, row in results["optuna_postgres"].items():
        print(
            f"  postgres {sampler}: {row['statements_per_ask_tell']:.1f} SQL statements, "
            f"{row['commits_per_ask_tell']:.1f} commits per ask+tell"
        )
    load = results["study_store_load"]
    print(
        f"A real study (smoke, {load['trials']} trials, {load['wall_s']:.0f} s): "
        f"{load['mlflow_commits_per_trial']:.1f} MLflow and "
        f"{load['optuna_commits_per_trial']:.1f} Optuna database commits per trial"
    )
    print("Bytes per trial")
    for preset, row in results["artifacts_per_trial"].items():
        curves_bytes = row.get("curves_json_bytes", row.get("curves_json_bytes_estimate"))
        print(
            f"  {preset:22s} R={row['replicates']:<3d} points={row['eval_points']:<4d} "
            f"curves.json={curves_bytes:>9d} checkpoint={row['checkpoint_state_bytes']:>10d}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
