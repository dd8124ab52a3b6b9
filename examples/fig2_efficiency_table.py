"""The paper's Fig. 2 comparison as one library call per condition, no Ray and no MLflow.

Trains feedforward, leaky and leaky-reset classifiers on synthetic-categories under random and
reps-1/3/5/10 orderings, 100 replicates each (one batched computation per condition), and prints
learning efficiency (mean test loss over the first epoch; lower is better) with 95% bootstrap CIs,
plus the seed-paired difference to `random` for the same model.

    python examples/fig2_efficiency_table.py [--replicates 100] [--learning-rate 0.01]
                                             [--train-per-category 300] [--test-per-category 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from trainables.config import DatasetConfig, TrialConfig
from trainables.engine import run_trial
from trainables.metrics import paired_difference

MODELS = ("feedforward", "leaky", "leaky-reset")
ORDERINGS = ("random", "reps-1", "reps-3", "reps-5", "reps-10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--leak", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-category", type=int, default=300, help="paper A.2: 300")
    parser.add_argument("--test-per-category", type=int, default=100, help="paper A.2: 100")
    args = parser.parse_args()
    dataset = DatasetConfig(
        train_per_category=args.train_per_category, test_per_category=args.test_per_category
    )
    torch.set_num_threads(1)

    started = time.perf_counter()
    header = ("model", "ordering", "efficiency (95% CI)", "minus random (95% CI)")
    print(f"{header[0]:<12} {header[1]:<8} {header[2]:<28} {header[3]:<30}")
    for model in MODELS:
        baseline = None
        for ordering in ORDERINGS:
            config = TrialConfig(
                model=model,
                ordering=ordering,
                dataset=dataset,
                replicates=args.replicates,
                learning_rate=args.learning_rate,
                leak=args.leak,
                seed=args.seed,
                eval_every=40,
            )
            result = run_trial(config)
            auc = result.per_replicate["test_loss_auc"]
            s = result.summary
            low, high = s["test_loss_auc_ci_low"], s["test_loss_auc_ci_high"]
            cell = f"{s['test_loss_auc']:.4f} [{low:.4f}, {high:.4f}]"
            if baseline is None:
                baseline, diff = auc, "(reference)"
            else:
                d = paired_difference(auc, baseline)
                diff = f"{d['effect']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            print(f"{model:<12} {ordering:<8} {cell:<28} {diff:<30}")
    print(f"\n{len(MODELS) * len(ORDERINGS)} conditions x {args.replicates} replicates "
          f"in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
