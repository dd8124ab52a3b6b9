"""Independent per-sample reference of the paper's networks, written from their equations.

Nothing here reuses engine code: one network at a time, ``torch.nn.Linear`` layers, losses
from ``torch.nn``, gradients from ``loss.backward()``, updates from ``torch.optim.SGD`` or
``torch.optim.RMSprop``. Only the data, the ordering (public API, tested on its own) and the
initial weights are shared with the engine.

Hidden layer l on step n (paper, Eq. 1, with the previous state a constant):

    H_l(n) = a(n) H_l(n-1) + (1 - a(n)) ReLU(W_l H_{l-1}(n) + b_l),   H_0(n) = I(n)

a(n) is a vector over the layer's units, re-derived here from the model's rules:
    base leak    ``feedforward``, ``minibatch``: 0; ``leaky*``: the leak; ``multiscale*``: the
                 group leaks over contiguous unit groups (``np.array_split``), fast first;
    resets       ``leaky-reset``: the item's category differs from the previous item's (the
                 first item counts as a change); ``leaky-threshold``, ``multiscale-reset``: the
                 A.11 rule mean|I(n) - I(n-1)| > threshold * mean|(I(n) + I(n-1)) / 2| over the
                 whole input (reset_scope 'input', all units) or over feature group g (scope
                 'group', unit group g); the first item resets. A reset sets a = 0.

Gradient conventions:
    ``leak-scaled``:   autograd through a * H(n-1).detach() + (1 - a) * ReLU(pre), which carries
                       the factor (1 - a);
    ``leak-unscaled``: the value of the mixed state, but the gradient of ReLU(pre) alone (the
                       gradient a feedforward net would have at the mixed state).

Targets: the one-hot category (task 'classify') or the input itself (task 'reconstruct').
Updates: the gradients of ``batch_size`` samples are summed by autograd, divided by their
count and applied by the torch optimizer (a last partial batch is applied at the end).

Test evaluation: each test item alone with memory cleared, H = ReLU(W x + b); mean loss,
accuracy (NaN for reconstruction) and, for reconstruction, the MSE of each feature group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.data import Dataset
from trainables.orderings import epoch_order, make_ordering

VARIANTS: dict[str, dict] = {
    "feedforward": dict(model="feedforward"),
    "minibatch": dict(model="minibatch", batch_size=7),
    "leaky": dict(model="leaky"),
    "leaky-reset": dict(model="leaky-reset"),
    "leaky-threshold-input": dict(model="leaky-threshold", reset_scope="input"),
    "leaky-threshold-group": dict(model="leaky-threshold", reset_scope="group"),
    "multiscale": dict(model="multiscale"),
    "multiscale-reset-input": dict(model="multiscale-reset", reset_scope="input"),
    "multiscale-reset-group": dict(model="multiscale-reset", reset_scope="group"),
}
"""Every memory variant of the engine's leaky network by name: the TrialConfig settings that
make it (the tests cover each)."""
MEMORYLESS = ("feedforward", "minibatch")
"""No leaky layer: the gradient convention does not apply."""

@dataclass
class ReferenceResult:
    """Final parameters of one network and its test curves."""

    weights: list[torch.Tensor]  # layer l: [out, in]
    biases: list[torch.Tensor]  # layer l: [out]
    samples_seen: list[int]
    test_loss: list[float]
    test_accuracy: list[float]
    group_loss: list[list[float]]
    """reconstruct: test MSE of each feature group at each evaluation (empty for classify)."""
    reset_fraction: float
    """Fraction of (step, hidden unit) pairs on which the memory was reset."""


def stream_order(config: TrialConfig, data: Dataset, replicate_id: int) -> np.ndarray:
    """Item indices of replicate ``replicate_id``'s whole training stream (public ordering API)."""
    ordering = make_ordering(config.ordering)
    return np.concatenate([
        epoch_order(data.train_y, ordering, (config.seed, replicate_id), epoch)
        for epoch in range(config.epochs)
    ])


class ReferenceNet(nn.Module):
    """Fully connected net with leaky hidden layers; the memory is a plain attribute."""

    def __init__(
        self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], config: TrialConfig
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for w, b in zip(weights, biases, strict=True):
            layer = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                layer.weight.copy_(w.to(torch.float64))
                layer.bias.copy_(b.to(torch.float64))
            self.layers.append(layer)
        self.config = config
        self.memory = [torch.zeros(layer.out_features, dtype=torch.float64)
                       for layer in self.layers[:-1]]

    def step_forward(self, x: torch.Tensor, leaks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Output logits for one training item; ``leaks[l]`` is a(n) of hidden layer l (one
        value per unit). Updates the memory (detached)."""
        h = x
        for index, layer in enumerate(self.layers[:-1]):
            a = leaks[index]
            relu = torch.relu(layer(h))
            previous = self.memory[index].detach()
            mixed = a * previous + (1 - a) * relu
            # leak-scaled: d h / d relu = 1 - a; leak-unscaled: value of mixed, d h / d relu = 1
            unscaled = relu + (mixed - relu).detach()
            h = mixed if self.config.gradient == "leak-scaled" else unscaled
            self.memory[index] = h.detach()
        return self.layers[-1](h)

    def isolated_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits with memory cleared: H = ReLU(W x + b); memory untouched."""
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)


def item_loss(
    z: torch.Tensor, target: torch.Tensor, label: int, config: TrialConfig
) -> torch.Tensor:
    """Loss of one item from its logits z [O], as ``torch.nn`` defines it; ``target`` [O] is
    the one-hot label or (reconstruct) the input."""
    if config.loss == "mse":
        y = torch.sigmoid(z) if config.output == "sigmoid" else torch.softmax(z, dim=0)
        return nn.MSELoss()(y, target)
    if config.output == "softmax":
        return nn.CrossEntropyLoss()(z[None], torch.tensor([label]))
    return nn.BCEWithLogitsLoss()(z, target)


def item_target(config: TrialConfig, data: Dataset, x: np.ndarray, label: int) -> torch.Tensor:
    """Target [O] of one item: its one-hot label, or (reconstruct) its input ``x``."""
    if config.task == "reconstruct":
        return torch.as_tensor(x, dtype=torch.float64)
    return nn.functional.one_hot(torch.tensor(label), data.num_classes).to(torch.float64)


def evaluate(
    net: ReferenceNet, data: Dataset, config: TrialConfig
) -> tuple[float, float, list[float]]:
    """Mean test loss, accuracy (NaN for reconstruct) and per-feature-group MSE (reconstruct),
    every test item on its own."""
    losses, correct, squared = [], 0, []
    with torch.no_grad():
        for x, label in zip(data.test_x, data.test_y, strict=True):
            z = net.isolated_forward(torch.as_tensor(x, dtype=torch.float64))
            target = item_target(config, data, x, int(label))
            losses.append(float(item_loss(z, target, int(label), config)))
            correct += int(int(torch.argmax(z)) == int(label))
            squared.append(((torch.sigmoid(z) - target) ** 2).numpy())
    if config.task != "reconstruct":
        return float(np.mean(losses)), correct / len(data.test_y), []
    error = np.mean(squared, axis=0)  # [O] = [I]
    groups = np.array_split(np.arange(error.size), config.feature_groups)
    return float(np.mean(losses)), float("nan"), [float(error[g].mean()) for g in groups]


def base_leak(config: TrialConfig, size: int) -> np.ndarray:
    """a of each of ``size`` units of a hidden layer before resets."""
    if config.model in ("feedforward", "minibatch"):
        return np.zeros(size)
    if config.model.startswith("multiscale"):
        leak = np.zeros(size)
        groups = np.array_split(np.arange(size), len(config.group_leaks))
        for value, units in zip(config.group_leaks, groups, strict=True):
            leak[units] = value
        return leak
    return np.full(size, config.leak)


def input_resets(x: np.ndarray, previous: np.ndarray | None, config: TrialConfig) -> np.ndarray:
    """A.11 reset flag of each feature group (scope 'group') or one flag (scope 'input')."""
    groups = config.feature_groups if config.reset_scope == "group" else 1
    if previous is None:
        return np.ones(groups, dtype=bool)
    return np.array([
        np.abs(x[g] - previous[g]).mean()
        > config.reset_threshold * np.abs((x[g] + previous[g]) / 2).mean()
        for g in np.array_split(np.arange(x.size), groups)
    ])


def _keep(
    config: TrialConfig, size: int, x: np.ndarray, previous_x: np.ndarray | None,
    label: int, previous_label: int | None,
) -> np.ndarray:
    """1 for the units of a hidden layer of ``size`` that keep their memory this step, else 0."""
    keep = np.ones(size)
    if config.model == "leaky-reset" and label != previous_label:
        keep[:] = 0
    if config.model in ("leaky-threshold", "multiscale-reset"):
        flags = input_resets(x, previous_x, config)
        for flag, units in zip(flags, np.array_split(np.arange(size), flags.size), strict=True):
            keep[units] = 0 if flag else 1
    return keep


def train_reference(
    config: TrialConfig,
    data: Dataset,
    order: np.ndarray,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    *,
    eval_at: Sequence[int] = (),
) -> ReferenceResult:
    """Train one network per sample along ``order``, evaluating after ``eval_at`` samples.

    ``config`` supplies everything else (model, leaks, threshold, gradient convention, task,
    output, loss, optimizer, learning rate, batch size); ``weights`` [out, in] and ``biases``
    [out] are the initial parameters of each layer.
    """
    if config.model == "lstm":
        raise ValueError("the lstm has its own reference (test_lstm.py)")
    net = ReferenceNet(weights, biases, config)
    if config.optimizer == "rmsprop":
        optimizer: torch.optim.Optimizer = torch.optim.RMSprop(
            net.parameters(), lr=config.learning_rate, alpha=config.rms_alpha,
            eps=config.rms_eps, momentum=config.momentum,
        )
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate)
    base = [base_leak(config, size) for size in config.hidden]
    evals = set(eval_at)
    curve: list[tuple[int, float, float, list[float]]] = []
    previous_x: np.ndarray | None = None
    previous_label: int | None = None
    pending, resets = 0, []
    optimizer.zero_grad()
    for n in range(len(order) + 1):
        if n in evals:
            curve.append((n, *evaluate(net, data, config)))
        if n == len(order):
            break
        item = int(order[n])
        x, label = data.train_x[item].astype(np.float64), int(data.train_y[item])
        keeps = [_keep(config, a.size, x, previous_x, label, previous_label) for a in base]
        resets.append(np.mean(np.concatenate(keeps) == 0))
        leaks = [torch.as_tensor(a * keep) for a, keep in zip(base, keeps, strict=True)]
        previous_x, previous_label = x, label
        z = net.step_forward(torch.as_tensor(x), leaks)
        item_loss(z, item_target(config, data, x, label), label, config).backward()  # grads add up
        pending += 1
        if pending == config.batch_size or n == len(order) - 1:
            for p in net.parameters():
                p.grad /= pending  # mean over the batch
            optimizer.step()
            optimizer.zero_grad()
            pending = 0
    return ReferenceResult(
        weights=[layer.weight.detach().clone() for layer in net.layers],
        biases=[layer.bias.detach().clone() for layer in net.layers],
        samples_seen=[point[0] for point in curve],
        test_loss=[point[1] for point in curve],
        test_accuracy=[point[2] for point in curve],
        group_loss=[point[3] for point in curve],
        reset_fraction=float(np.mean(resets)),
    )
