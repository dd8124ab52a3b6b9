"""Independent per-sample reference of the paper's network, written from its equations.

Nothing here reuses engine code: one network at a time, ``torch.nn.Linear`` layers, the loss
from ``torch.nn``, gradients from ``loss.backward()``, the update from ``torch.optim.SGD``, batch
size 1.

Hidden layer l on step n (paper, Eq. 1, with the previous state a constant):

    H_l(n) = a(n) H_l(n-1) + (1 - a(n)) ReLU(W_l H_{l-1}(n) + b_l),   H_0(n) = I(n)

a(n) = 0 for ``feedforward`` and on reset steps of ``leaky-reset`` (the item's category differs
from the previous item's; the first item of the stream counts as a change), else the leak.

Gradient conventions:
    ``leak-scaled``:   autograd through a * H(n-1).detach() + (1 - a) * ReLU(pre), which carries
                       the factor (1 - a);
    ``leak-unscaled``: the value of the mixed state, but the gradient of ReLU(pre) alone (the
                       gradient a feedforward net would have at the mixed state).

Test evaluation: each test item alone with memory cleared, H = ReLU(W x + b).
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


@dataclass
class ReferenceResult:
    """Final parameters of one network and its test curve."""

    weights: list[torch.Tensor]  # layer l: [out, in]
    biases: list[torch.Tensor]  # layer l: [out]
    samples_seen: list[int]
    test_loss: list[float]
    test_accuracy: list[float]


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

    def step_forward(self, x: torch.Tensor, a: float) -> torch.Tensor:
        """Output logits for one training item; updates the memory (detached)."""
        h = x
        for index, layer in enumerate(self.layers[:-1]):
            relu = torch.relu(layer(h))
            previous = self.memory[index].detach()
            mixed = a * previous + (1 - a) * relu
            # leak-scaled: d h / d relu = 1 - a; leak-unscaled: value of mixed, d h / d relu = 1
            unscaled = relu + (mixed - relu).detach()
            h = mixed if self.config.gradient == "leak-scaled" else unscaled
            self.memory[index] = h.detach()
        return self.layers[-1](h)

    def isolated_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits for one item with memory cleared: H = ReLU(W x + b); memory untouched."""
        h = x
        for layer in self.layers[:-1]:
            h = torch.relu(layer(h))
        return self.layers[-1](h)


def item_loss(z: torch.Tensor, label: int, num_classes: int, config: TrialConfig) -> torch.Tensor:
    """Loss of one item from its logits z [O], as ``torch.nn`` defines it."""
    onehot = nn.functional.one_hot(torch.tensor(label), num_classes).to(torch.float64)
    if config.loss == "mse":
        y = torch.sigmoid(z) if config.output == "sigmoid" else torch.softmax(z, dim=0)
        return nn.MSELoss()(y, onehot)
    if config.output == "softmax":
        return nn.CrossEntropyLoss()(z[None], torch.tensor([label]))
    return nn.BCEWithLogitsLoss()(z, onehot)


def evaluate(net: ReferenceNet, data: Dataset, config: TrialConfig) -> tuple[float, float]:
    """Mean test loss and accuracy, every test item on its own."""
    losses, correct = [], 0
    with torch.no_grad():
        for x, label in zip(data.test_x, data.test_y, strict=True):
            z = net.isolated_forward(torch.as_tensor(x, dtype=torch.float64))
            losses.append(float(item_loss(z, int(label), data.num_classes, config)))
            correct += int(int(torch.argmax(z)) == int(label))
    return float(np.mean(losses)), correct / len(data.test_y)


def train_reference(
    config: TrialConfig,
    data: Dataset,
    order: np.ndarray,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    *,
    learning_rate: float,
    leak: float,
    eval_at: Sequence[int] = (),
) -> ReferenceResult:
    """Train one network per sample along ``order``, evaluating after ``eval_at`` samples.

    ``config`` supplies model, gradient convention, output and loss; ``weights`` [out, in] and
    ``biases`` [out] are the initial parameters of each layer.
    """
    net = ReferenceNet(weights, biases, config)
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate)
    evals = set(eval_at)
    curve: list[tuple[int, float, float]] = []
    previous_label: int | None = None
    for n in range(len(order) + 1):
        if n in evals:
            curve.append((n, *evaluate(net, data, config)))
        if n == len(order):
            break
        item = int(order[n])
        label = int(data.train_y[item])
        reset = config.model == "leaky-reset" and label != previous_label
        a = 0.0 if config.model == "feedforward" or reset else leak
        previous_label = label
        z = net.step_forward(torch.as_tensor(data.train_x[item], dtype=torch.float64), a)
        loss = item_loss(z, label, data.num_classes, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return ReferenceResult(
        weights=[layer.weight.detach().clone() for layer in net.layers],
        biases=[layer.bias.detach().clone() for layer in net.layers],
        samples_seen=[point[0] for point in curve],
        test_loss=[point[1] for point in curve],
        test_accuracy=[point[2] for point in curve],
    )
