"""Study throughput: this service vs. a naive Ray Tune + Optuna + MLflow baseline, one run.

The same small study (cells of ``paper-fig2-synthetic``, ``--trials-per-cell`` configurations per
cell, ``--replicates`` R seeds per configuration) is run twice, each part in its own subprocess
with its own local Ray (``ray.init(num_cpus=--cpus)``), temporary sqlite MLflow store and Ray
storage folder:
  (a) service: ``study.tuner.run_study(load_spec("paper-fig2-synthetic", overrides))``: one Tune
      trial per configuration, R replicates batched in the engine, one Optuna study per cell
      (TPE), the study's MLflow tracking callback;
  (b) baseline: what a researcher writes without the service: Ray Tune with ONE seed per trial
      (R trials per configuration, via ``ray.tune.search.Repeater``), each trial a per-sample
      ``torch.nn.Module`` + autograd + ``torch.optim.SGD`` loop reporting every evaluation with
      ``ray.tune.report``, Ray's ``MLflowLoggerCallback``, and Ray's ``OptunaSearch`` (TPE, same
      define-by-run space, the paper setting first). ``OptunaSearch`` holds one Optuna study, so
      the baseline runs one ``Tuner`` per cell, cells one after another. Tune defaults otherwise
      (``reuse_actors=False``).
Both do the same scientific work: the same data set, per-seed item orders (``epoch_order`` with
seed (seed, r)) and initial weights (the engine's per-replicate seeds), network 16-8-4 with the
model's leaky memory (previous state detached: the ``leak-scaled`` gradient), one SGD step per
sample, and a test evaluation (each item alone, no memory) every ``eval_every`` samples.

Units: a *configuration* is one point of a cell's search space trained with R seeds (one service
trial, R baseline trials). Trials per minute = configurations / wall minutes; replicate-samples
per second = networks x training samples / wall seconds. Wall time runs from ``ray.init`` to the
end of ``ray.shutdown`` (Ray start-up, MLflow store creation and all tracking writes included;
Python imports excluded).

Fairness. The baseline's cells run one after another (one ``Tuner`` each, since ``OptunaSearch``
holds one Optuna study), each with ``max_concurrent_trials = --cpus``: that is what a researcher
writes with Ray's own tools, but it leaves CPUs idle at each cell's tail and pays a Tuner start
per cell. So the script also reports the baseline's *lower bound*: the least wall time any
scheduling of the baseline's own measured work could take, i.e. Ray start-up plus the larger of
(a) its driver's seconds in the MLflow callback (one driver thread writes them in turn) and (b)
its in-trial training and evaluation seconds divided by ``--cpus`` (no gaps between cells, no
process starts, no Tune overhead). The ratio against that bound is the part of the service's
advantage that no scheduling of the baseline could remove; the JSON holds both ratios and the
caveat. Small studies are dominated by fixed costs (Ray start-up, MLflow store creation) on both
sides, so the ratio grows with the study's size.

    python benchmarks/study_overhead.py [--trials-per-cell 2] [--replicates 10] [--cells 3]
                                        [--cpus 2] [--out benchmarks/results/study_overhead.json]
    python benchmarks/study_overhead.py --quick   # 3 cells x 1 configuration x 4 seeds, ~2 min
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
import torch
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX
from torch import nn

import study.tuner
from search_spaces import SPACES, paper_setting
from study.cells import Cell, expand
from study.spec import StudySpec, load_spec
from study.tracking import MlflowTracking, connect
from trainables.data import Dataset, load_dataset
from trainables.engine import _replicate_seed, eval_schedule
from trainables.metrics import first_epoch_auc
from trainables.orderings import epoch_order, make_ordering

PRESET = "paper-fig2-synthetic"
CELL_COUNTS = (1, 2, 3, 6, 9, 12)
"""--cells: the first k models (k < 3) or the first k/3 orderings with all three models."""
FULL = {"cells": 3, "trials_per_cell": 2, "replicates": 10}
"""The default study: all three models at one ordering, 2 configurations x 10 seeds each."""
QUICK = {"cells": 3, "trials_per_cell": 1, "replicates": 4}
RESULTS = str(Path(__file__).resolve().parent / "results")

# ---------------------------------------------------------------------------------------------
# Driver time spent in the tracking callbacks (both parts): every Tune hook is timed
# ---------------------------------------------------------------------------------------------
TRACKING_SECONDS = [0.0]
_HOOKS = (
    "setup",
    "on_trial_start",
    "on_trial_result",
    "on_step_end",
    "on_trial_complete",
    "on_trial_error",
    "on_experiment_end",
)


def _timed(method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            TRACKING_SECONDS[0] += time.perf_counter() - started

    return wrapper


class TimedMlflowTracking(MlflowTracking):
    """The service's tracking callback, hooks timed."""


class TimedMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray's MLflow callback, hooks timed."""


for _cls in (TimedMlflowTracking, TimedMLflowLoggerCallback):
    for _name in _HOOKS:
        setattr(_cls, _name, _timed(getattr(_cls.__mro__[1], _name)))


# ---------------------------------------------------------------------------------------------
# The study both parts run
# ---------------------------------------------------------------------------------------------
def study_spec(args: argparse.Namespace, folder: Path, name: str) -> StudySpec:
    """The preset reduced to ``args``' budget, with its stores under ``folder``."""
    base = load_spec(PRESET)
    models, orderings = list(base.models), list(base.orderings)
    if args.cells < len(models):
        models, orderings = models[: args.cells], orderings[:1]
    else:
        orderings = orderings[: args.cells // len(models)]
    return load_spec(
        PRESET,
        [
            f"name={name}",
            f"trials_per_cell={args.trials_per_cell}",
            f"replicates={args.replicates}",
            f"models={','.join(models)}",
            f"orderings={','.join(orderings)}",
            f"tracking_uri=sqlite:///{folder / 'mlflow.db'}",
            f"storage_path={folder / 'ray_results'}",
        ],
    )


def start_ray(cpus: int) -> float:
    """Start a fresh local Ray like the service's own start (quiet); returns the seconds taken."""
    started = time.perf_counter()
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# (a) the service
# ---------------------------------------------------------------------------------------------
def run_service(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec = study_spec(args, folder, "overhead-service")
    study.tuner.MlflowTracking = TimedMlflowTracking  # time the driver's MLflow writes
    started = time.perf_counter()
    ray_init = start_ray(args.cpus)
    rows = study.tuner.run_study(spec)
    ray.shutdown()
    wall = time.perf_counter() - started

    # Checks and the in-trial compute time, read back from the tracking store (not timed).
    client = connect(spec.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id], max_results=10000
    )
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    evals = len(client.get_metric_history(trials[0].info.run_id, "eval/test_loss"))
    return {
        "wall_seconds": wall,
        "ray_init_seconds": ray_init,
        "tracking_seconds": TRACKING_SECONDS[0],
        "compute_seconds": sum(r.data.metrics.get("perf/trial_seconds", 0.0) for r in trials),
        "configurations": sum(row.finished for row in rows),
        "failed": sum(row.failed + row.diverged for row in rows),
        "networks": sum(row.finished for row in rows) * spec.replicates,
        "samples_per_network": len(load_dataset(spec.datasets[0]).train_y) * spec.epochs,
        "evaluations_per_network": evals,
        "mlflow_runs": len(runs),
        "paper_objective": {row.cell: row.paper_objective for row in rows},
    }


# ---------------------------------------------------------------------------------------------
# (b) the naive baseline: one seed per Tune trial, autograd per sample
# ---------------------------------------------------------------------------------------------
class NaiveNet(nn.Module):
    """16-8-4: H(n) = a H(n-1) + (1-a) ReLU(W x + b) with H(n-1) detached, sigmoid output."""

    def __init__(self, sizes: list[int], seed: int, replicate: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))
        # the engine's Xavier-uniform draw for replicate r, so both parts train the same nets
        generator = torch.Generator().manual_seed(_replicate_seed(seed, replicate, 1))
        with torch.no_grad():
            for layer in self.layers:
                bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                w = torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64)
                layer.weight.copy_((w * 2 - 1) * bound)
                layer.bias.zero_()
        self.memory = [torch.zeros(layer.out_features) for layer in self.layers[:-1]]

    def forward(self, x: torch.Tensor, a: float) -> torch.Tensor:
        h = x
        for index, layer in enumerate(self.layers[:-1]):
            h = a * self.memory[index] + (1 - a) * torch.relu(layer(h))
            self.memory[index] = h.detach()
        return self.layers[-1](h)

    @torch.no_grad()
    def test(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every test item alone (no memory), batched: [N, O]."""
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)


def naive_trial(config: dict[str, Any], cell: Cell, data: Dataset) -> None:
    """One seed of one configuration, reported to Tune at every evaluation point."""
    entered = time.perf_counter()
    torch.set_num_threads(1)
    base, replicate = cell.base, config[TRIAL_INDEX]
    leak = 0.0 if cell.model == "feedforward" else config.get("leak", base.leak)
    ordering = make_ordering(cell.ordering)
    order = np.concatenate([
        epoch_order(data.train_y, ordering, (base.seed, replicate), epoch)
        for epoch in range(base.epochs)
    ])
    labels = data.train_y[order].tolist()
    epoch_length = len(data.train_y)
    points = eval_schedule(len(order), epoch_length, base.eval_every, base.eval_schedule)
    x = torch.as_tensor(data.train_x)
    targets = nn.functional.one_hot(torch.as_tensor(data.train_y), data.num_classes).float()
    test_x, test_y = torch.as_tensor(data.test_x), torch.as_tensor(data.test_y)
    test_targets = nn.functional.one_hot(test_y, data.num_classes).float()

    net = NaiveNet([data.num_features, *base.hidden, data.num_classes], base.seed, replicate)
    optimizer = torch.optim.SGD(net.parameters(), lr=config["learning_rate"])
    loss_fn = nn.MSELoss()
    curve: list[float] = []
    compute = 0.0
    previous = None
    step = 0
    for point in points:
        started = time.perf_counter()
        for n in range(step, point):
            a = leak
            if cell.model == "leaky-reset" and labels[n] != previous:
                a = 0.0  # oracle reset on a category change (and on the first item)
            previous = labels[n]
            item = int(order[n])
            loss = loss_fn(torch.sigmoid(net(x[item], a)), targets[item])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        step = point
        z = net.test(test_x)
        test_loss = float(((torch.sigmoid(z) - test_targets) ** 2).mean())
        accuracy = float((z.argmax(dim=1) == test_y).float().mean())
        curve.append(test_loss)
        seen = np.array(points[: len(curve)])
        objective = float(first_epoch_auc(seen, np.array([curve]), epoch_length)[0])
        compute += time.perf_counter() - started
        report = {
            "timesteps_total": point,  # MLflowLoggerCallback's step: samples seen
            "test_loss": test_loss,
            "test_accuracy": accuracy,
            "objective": objective if len(curve) > 1 else test_loss,
        }
        if point == points[-1]:
            report["compute_seconds"] = compute
            report["inside_seconds"] = time.perf_counter() - entered
        tune.report(report)


def run_baseline(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec = study_spec(args, folder, "overhead-baseline")
    cells = expand(spec)
    data = load_dataset(cells[0].dataset)
    r = spec.replicates
    started = time.perf_counter()
    ray_init = start_ray(args.cpus)
    results = []
    cell_seconds: list[float] = []
    for cell in cells:  # OptunaSearch wraps one Optuna study: one Tuner per cell
        search = OptunaSearch(
            space=SPACES[cell.model],
            metric="objective",
            mode="min",
            points_to_evaluate=[paper_setting(cell.model)],
            sampler=optuna.samplers.TPESampler(seed=spec.seed + cell.index),
        )
        tuner = tune.Tuner(
            tune.with_parameters(naive_trial, cell=cell, data=data),
            tune_config=tune.TuneConfig(
                search_alg=Repeater(search, repeat=r, set_index=True),
                num_samples=spec.trials_per_cell * r,
                max_concurrent_trials=args.cpus,
            ),
            run_config=tune.RunConfig(
                name=f"cell{cell.index}",
                storage_path=spec.storage_path,
                callbacks=[
                    TimedMLflowLoggerCallback(
                        tracking_uri=spec.tracking_uri,
                        experiment_name=spec.name,
                        tags={"cell": cell.key},
                    )
                ],
                verbose=0,
            ),
        )
        fit_started = time.perf_counter()
        results.append((cell, tuner.fit()))
        cell_seconds.append(time.perf_counter() - fit_started)
    ray.shutdown()
    wall = time.perf_counter() - started

    done = [(cell, res) for cell, grid in results for res in grid if res.error is None]
    paper = {
        cell.key: float(
            np.mean([
                res.metrics["objective"]
                for c, res in done
                if c is cell and all(res.config[k] == v for k, v in paper_setting(c.model).items())
            ])
        )
        for cell, _ in results
    }
    client = connect(spec.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name).experiment_id
    runs = client.search_runs([experiment], max_results=10000)
    return {
        "wall_seconds": wall,
        "ray_init_seconds": ray_init,
        "tracking_seconds": TRACKING_SECONDS[0],
        "compute_seconds": sum(res.metrics["compute_seconds"] for _, res in done),
        "inside_trial_seconds": sum(res.metrics["inside_seconds"] for _, res in done),
        "cell_tuner_seconds": cell_seconds,
        "configurations": len(done) // r,
        "failed": sum(len(grid) for _, grid in results) - len(done),
        "networks": len(done),
        "samples_per_network": int(done[0][1].metrics["timesteps_total"]),
        "evaluations_per_network": int(done[0][1].metrics["training_iteration"]),
        "mlflow_runs": len(runs),
        "metric_keys_per_result": len(runs[0].data.metrics),
        "paper_objective": paper,
    }


# ---------------------------------------------------------------------------------------------
# Driver: each part in its own process (fresh Ray, no shared state), then the table
# ---------------------------------------------------------------------------------------------
def run_part(part: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out = folder / f"{part}.json"
    log = folder / f"{part}.log"
    command = [
        sys.executable,
        __file__,
        "--part",
        part,
        "--part-out",
        str(out),
        "--trials-per-cell",
        str(args.trials_per_cell),
        "--replicates",
        str(args.replicates),
        "--cells",
        str(args.cells),
        "--cpus",
        str(args.cpus),
    ]
    started = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{part} failed with exit code {code} (log above)")
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-per-cell", type=int, help="configurations per cell (2)")
    parser.add_argument("--replicates", type=int, help="seeds per configuration (10)")
    parser.add_argument("--cells", type=int, choices=CELL_COUNTS, help="cells of the preset (3)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each part's local Ray")
    parser.add_argument(
        "--quick", action="store_true", help="a quick look: 3 cells x 1 configuration x 4 seeds"
    )
    parser.add_argument("--out", help=f"JSON result (default {RESULTS}/study_overhead.json)")
    parser.add_argument("--part", choices=("service", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = f"{RESULTS}/study_overhead{'_quick' if args.quick else ''}.json"
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # what the service sets; same for both

    if args.part:
        with tempfile.TemporaryDirectory(prefix=f"overhead-{args.part}-") as folder:
            run = run_service if args.part == "service" else run_baseline
            result = run(args, Path(folder))
        Path(args.part_out).write_text(json.dumps(result, indent=2))
        return

    device = {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "mlflow": __import__("mlflow").__version__,
        "python": platform.python_version(),
        "logical_cpus": os.cpu_count(),
        "ray_cpus": args.cpus,
        "load_average_1min_before": os.getloadavg()[0],
    }
    print(" ".join(f"{k}={v}" for k, v in device.items()))
    budget = {
        "preset": PRESET,
        "quick": args.quick,
        "cells": args.cells,
        "trials_per_cell": args.trials_per_cell,
        "replicates": args.replicates,
    }
    print(" ".join(f"{k}={v}" for k, v in budget.items()))
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        parts = {part: run_part(part, args, Path(folder)) for part in ("baseline", "service")}
    for values in parts.values():
        wall = values["wall_seconds"]
        values["trials_per_minute"] = values["configurations"] / (wall / 60)
        values["replicate_samples_per_second"] = (
            values["networks"] * values["samples_per_network"] / wall
        )
    service, baseline = parts["service"], parts["baseline"]
    ratio = {
        key: service[key] / baseline[key]
        for key in ("trials_per_minute", "replicate_samples_per_second")
    }
    # The baseline's work scheduled perfectly (see the module docstring, "Fairness").
    lower_bound = baseline["ray_init_seconds"] + max(
        baseline["tracking_seconds"], baseline["compute_seconds"] / args.cpus
    )
    baseline["lower_bound_seconds"] = lower_bound
    baseline["cpu_slot_utilisation"] = baseline["inside_trial_seconds"] / (
        args.cpus * (baseline["wall_seconds"] - baseline["ray_init_seconds"])
    )
    ratio["trials_per_minute_vs_baseline_lower_bound"] = lower_bound / service["wall_seconds"]
    caveat = (
        "The baseline runs its cells one after another (one Tuner per cell: OptunaSearch holds "
        "one Optuna study), with Tune defaults (reuse_actors=False); CPUs idle at each cell's "
        "tail. trials_per_minute_vs_baseline_lower_bound compares against the least wall time "
        "any scheduling of the baseline's measured work could take: ray.init + max(driver MLflow "
        "seconds, in-trial compute seconds / cpus)."
    )

    print(f"\n{'':<30} {'service':>12} {'baseline':>12} {'ratio':>9}")
    rows = [
        ("configurations (R seeds each)", "configurations", "d"),
        ("networks trained", "networks", "d"),
        ("samples / evaluations per net", None, ""),
        ("wall seconds (ray.init..end)", "wall_seconds", ".1f"),
        ("trials per minute", "trials_per_minute", ",.1f"),
        ("replicate-samples per second", "replicate_samples_per_second", ",.0f"),
    ]
    for label, key, form in rows:
        if key is None:
            cells = [f"{p['samples_per_network']}/{p['evaluations_per_network']}"
                     for p in (service, baseline)]
            print(f"{label:<30} {cells[0]:>12} {cells[1]:>12}")
            continue
        line = f"{label:<30} {service[key]:>12{form}} {baseline[key]:>12{form}}"
        if key in ratio:
            line += f" {ratio[key]:>8,.1f}x"
        print(line)
    print("\nwhere the wall time goes (seconds)")
    breakdown = [
        ("ray.init", "ray_init_seconds"),
        ("training + evaluation in trials (sum)", "compute_seconds"),
        ("driver in MLflow callback", "tracking_seconds"),
    ]
    for label, key in breakdown:
        print(f"  {label:<40} {service[key]:>9.1f} {baseline[key]:>9.1f}")
    print(f"  {'inside baseline trial functions (sum)':<40} {'':>9} "
          f"{baseline['inside_trial_seconds']:>9.1f}")
    print(f"  {'baseline Tuner.fit per cell':<40} {'':>9} "
          + " ".join(f"{t:.1f}" for t in baseline["cell_tuner_seconds"]))
    print(f"  {'baseline CPU slots busy in trials':<40} {'':>9} "
          f"{baseline['cpu_slot_utilisation']:>9.0%}")
    print(f"  {'baseline lower bound (any scheduling)':<40} {'':>9} {lower_bound:>9.1f}")
    print(f"  {'whole subprocess (imports included)':<40} {service['process_seconds']:>9.1f} "
          f"{baseline['process_seconds']:>9.1f}")
    print(f"  {'MLflow runs written':<40} {service['mlflow_runs']:>9d} "
          f"{baseline['mlflow_runs']:>9d}")
    failed = service["failed"] + baseline["failed"]
    print(f"  {'failed or diverged trials':<40} {service['failed']:>9d} {baseline['failed']:>9d}")

    # Same science: both parts train the same nets at each cell's paper setting (first trial).
    diffs = [
        abs(service["paper_objective"][key] - baseline["paper_objective"][key])
        for key in service["paper_objective"]
    ]
    print(f"\npaper-setting objective (test_loss_auc), max |service - baseline| over cells: "
          f"{max(diffs):.2e}")
    goal = ratio["trials_per_minute"] >= 10
    print(f"goal service >= 10x baseline trials per minute: {'met' if goal else 'MISSED'} "
          f"({ratio['trials_per_minute']:.1f}x; "
          f"{ratio['trials_per_minute_vs_baseline_lower_bound']:.1f}x against the baseline's "
          f"lower bound)")
    print(f"caveat: {caveat}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": device,
        "budget": budget,
        "service": service,
        "baseline": baseline,
        "ratio": ratio,
        "paper_objective_max_abs_diff": max(diffs),
        "goal_10x_met": goal,
        "failed_trials": failed,
        "caveat": caveat,
    }, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
