"""The batched engine against plain torch.autograd for the models and settings of issue 3.

The reference re-derives every step from the paper's rules, independently of the engine: base
leaks per unit (one leak, or group leaks 0/0.3/0.6 over contiguous unit groups), resets (label
change, or the input-change rule of A.11 on the whole input or per feature group), the task's
target (one-hot or the input itself), and ``torch.optim.SGD`` / ``torch.optim.RMSprop`` with
gradients averaged over ``batch_size`` samples. The network and its leaky forward are
``ReferenceNet`` from ``reference.py`` (a per-unit tensor leak works there unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import ReferenceNet, stream_order
from torch import nn

from trainables.config import DatasetConfig, TrialConfig
from trainables.data import load_dataset
from trainables.engine import TrialRun

BASE = TrialConfig(
    ordering="reps-3",
    dataset=DatasetConfig(categories=3, features=6, train_per_category=40, test_per_category=5),
    hidden=(6, 6),
    learning_rate=0.05,
    leak=0.6,
    reset_threshold=0.8,
    replicates=1,
    eval_every=1000,
    dtype="float64",
)


def _groups(size: int, groups: int) -> list[np.ndarray]:
    return np.array_split(np.arange(size), groups)


def _input_resets(x: np.ndarray, previous: np.ndarray | None, config: TrialConfig) -> np.ndarray:
    """Reset flag per feature group (or one flag) by the A.11 rule on mean absolute values."""
    groups = config.feature_groups if config.reset_scope == "group" else 1
    if previous is None:
        return np.ones(groups, dtype=bool)
    return np.array([
        np.abs(x[g] - previous[g]).mean()
        > config.reset_threshold * np.abs((x[g] + previous[g]) / 2).mean()
        for g in _groups(x.size, groups)
    ])


def _unit_leak(config: TrialConfig, size: int) -> np.ndarray:
    if config.model in ("feedforward", "minibatch"):
        return np.zeros(size)
    if config.model.startswith("multiscale"):
        leak = np.zeros(size)
        for value, units in zip(config.group_leaks, _groups(size, len(config.group_leaks)),
                                strict=True):
            leak[units] = value
        return leak
    return np.full(size, config.leak)


def reference_weights(config: TrialConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Train replicate 0 of ``config`` with autograd; returns final weights and biases."""
    data = load_dataset(config.dataset)
    start = TrialRun(config)
    net = ReferenceNet([w[0] for w in start.weights], [b[0] for b in start.biases], config)
    if config.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(
            net.parameters(), lr=config.learning_rate, alpha=config.rms_alpha,
            eps=config.rms_eps, momentum=config.momentum,
        )
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate)
    order = stream_order(config, data, 0)
    size = config.hidden[0]
    base = _unit_leak(config, size)
    previous_x, previous_label, pending = None, None, 0
    for n, item in enumerate(order):
        x, label = data.train_x[item].astype(np.float64), int(data.train_y[item])
        keep = np.ones(size)
        if config.model == "leaky-reset" and label != previous_label:
            keep[:] = 0
        if config.model in ("leaky-threshold", "multiscale-reset"):
            flags = _input_resets(x, previous_x, config)
            for flag, units in zip(flags, _groups(size, flags.size), strict=True):
                keep[units] = 0 if flag else 1
        previous_x, previous_label = x, label
        a = torch.as_tensor(base * keep)
        z = net.step_forward(torch.as_tensor(x), a)
        if config.task == "reconstruct":
            loss = nn.MSELoss()(torch.sigmoid(z), torch.as_tensor(x))
        else:
            target = nn.functional.one_hot(torch.tensor(label), data.num_classes).double()
            loss = nn.MSELoss()(torch.sigmoid(z), target)
        loss.backward()  # gradients add up over the batch
        pending += 1
        if pending == config.batch_size or n == len(order) - 1:
            for p in net.parameters():
                p.grad /= pending
            optimizer.step()
            optimizer.zero_grad()
            pending = 0
    return ([layer.weight.detach() for layer in net.layers],
            [layer.bias.detach() for layer in net.layers])


CASES = [
    dict(model="leaky-threshold", reset_scope="input"),
    dict(model="leaky-threshold", reset_scope="group", gradient="leak-unscaled"),
    dict(model="leaky-threshold", reset_scope="group", feature_groups=2),
    dict(model="multiscale"),
    dict(model="multiscale", gradient="leak-unscaled", group_leaks=(0.1, 0.9)),
    dict(model="multiscale-reset", reset_scope="group"),
    dict(model="multiscale-reset", reset_scope="input", gradient="leak-unscaled"),
    dict(model="minibatch", batch_size=7),
    dict(model="leaky-reset", batch_size=4),
    dict(model="feedforward", optimizer="rmsprop", learning_rate=0.003),
    dict(model="leaky-reset", optimizer="rmsprop", learning_rate=0.003, momentum=0.9),
    dict(model="multiscale-reset", optimizer="rmsprop", learning_rate=0.003, batch_size=3),
    dict(model="leaky", task="reconstruct"),
    dict(model="multiscale-reset", task="reconstruct", reset_scope="group",
         gradient="leak-unscaled"),
    dict(model="leaky-threshold", ordering="stream", task="reconstruct", hidden=(3, 3),
         dataset=DatasetConfig(name="multiscale-stream", stream_length=150, noise=0.2)),
    dict(model="multiscale-reset", ordering="stream", task="reconstruct", hidden=(3, 3),
         reset_scope="group",
         dataset=DatasetConfig(name="multiscale-stream", stream_length=150, noise=0.2)),
    dict(model="leaky", ordering="stream",
         dataset=DatasetConfig(name="no-shared-features", categories=3, features=6,
                               train_per_category=40, test_per_category=4)),
]


@pytest.mark.parametrize("changes", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_engine_matches_autograd_reference(changes: dict) -> None:
    """Replicate 0 of the engine equals the autograd reference to 1e-9 after ~120-150 steps."""
    config = BASE.replace(**changes)
    run = TrialRun(config)
    list(run)
    weights, biases = reference_weights(config)
    for mine, theirs in zip([*run.weights, *run.biases], [*weights, *biases], strict=True):
        assert (mine[0] - theirs).abs().max().item() < 1e-9


@pytest.mark.parametrize("changes", CASES[::3], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_replicate_alone_equals_replicate_in_batch(changes: dict) -> None:
    """Replicate 2 of a 3-replicate run, with per-replicate settings, equals it run alone."""
    config = BASE.replace(**changes, replicates=3)
    lrs, thresholds = [0.05, 0.02, 0.03], [0.5, 0.9, 1.3]
    group_leaks = [[0.0, 0.3, 0.6], [0.2, 0.2, 0.2], [0.5, 0.1, 0.9]]
    group_leaks = [g[: len(config.group_leaks)] for g in group_leaks]
    batched = TrialRun(config, learning_rate=lrs, reset_threshold=thresholds,
                       group_leaks=group_leaks)
    list(batched)
    alone = TrialRun(config.replace(replicates=1), replicate_ids=[2], learning_rate=[lrs[2]],
                     reset_threshold=[thresholds[2]], group_leaks=[group_leaks[2]])
    list(alone)
    for mine, theirs in zip(batched.weights, alone.weights, strict=True):
        torch.testing.assert_close(mine[2], theirs[0], rtol=0, atol=1e-12)
