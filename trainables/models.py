"""Memory variants of the paper's hidden layers.

All models share one network (fully connected, ReLU hidden layers, sigmoid/softmax output) and
one update, written out in ``trainables/engine.py``. What distinguishes them is only how much of
the previous hidden state each unit keeps on each step, the leak in

    H(n) = a(n) H(n-1) + (1 - a(n)) ReLU(W I(n) + b)        (paper, Eq. 1)

A model is a :class:`Memory`: it gives every hidden unit its base leak and says on which steps the
memory is reset (a(n) = 0). The engine never branches on the model's name.

Resets are data: a mask [R, T] (the whole layer) or [R, T, G] (per group: hidden units are split
into G contiguous, nearly equal groups, see :func:`unit_groups`). Oracle resets come from the
category stream; unsupervised resets from the inputs (:func:`threshold_resets`, paper A.11).

Example:
    >>> memory = MEMORIES["leaky-reset"]
    >>> memory.unit_leak(np.array([0.5, 0.2]), 3).tolist()
    [[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]
    >>> memory.resets(np.array([[True, False, True]])).tolist()
    [[True, False, True]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class MemoryParams:
    """Per-replicate memory settings of one run (R replicates, G leak groups)."""

    leak: np.ndarray  # [R]
    group_leaks: np.ndarray  # [R, G]
    threshold: np.ndarray  # [R]
    scope: str = "input"
    """'input' (one reset decision per step) or 'group' (one per feature group)."""
    feature_groups: int = 3


ThresholdResets = Callable[[np.ndarray, int | None], np.ndarray]
"""(threshold [R], groups or None) -> resets [R, T] (None) or [R, T, groups] of a stream."""


def unit_groups(size: int, groups: int) -> np.ndarray:
    """Group index of each of ``size`` units (or features): contiguous groups, as
    ``np.array_split`` makes them (the first size % groups groups have one more unit).

    >>> unit_groups(7, 3).tolist()
    [0, 0, 0, 1, 1, 2, 2]
    """
    sizes = [len(part) for part in np.array_split(np.arange(size), groups)]
    return np.repeat(np.arange(groups), sizes)


def threshold_resets(
    previous: torch.Tensor, current: torch.Tensor, threshold: torch.Tensor, groups: int | None
) -> torch.Tensor:
    """The paper's unsupervised reset rule (A.11) on consecutive inputs [R, L, I].

    Reset when |I_t - I_{t-1}| > threshold |(I_t + I_{t-1}) / 2|. The paper states it per
    feature (threshold 1); for a vector we compare means of absolute values over the features,
    of the whole input (``groups=None``, result [R, L]) or of each of ``groups`` contiguous
    feature groups (result [R, L, groups]). ``threshold`` [R] is per replicate.

    >>> x = torch.tensor([[[1.0, 0.0], [1.1, 0.0], [0.0, 1.0]]])  # R=1, L=3, I=2
    >>> threshold_resets(x[:, :-1], x[:, 1:], torch.tensor([1.0]), None).tolist()
    [[False, True]]
    """
    change = (current - previous).abs()
    level = ((current + previous) / 2).abs()
    if groups is not None:
        index = torch.as_tensor(unit_groups(current.shape[-1], groups), device=current.device)
        shape = (*current.shape[:-1], groups)
        change = torch.zeros(shape, dtype=change.dtype, device=change.device).index_add_(
            -1, index, change
        )
        level = torch.zeros(shape, dtype=level.dtype, device=level.device).index_add_(
            -1, index, level
        )  # sums; the group size cancels in the comparison of means
        return change > threshold[:, None, None] * level
    return change.mean(dim=-1) > threshold[:, None] * level.mean(dim=-1)


class Memory(ABC):
    """The memory rule of a model.

    The engine calls :meth:`unit_leak` once per hidden layer when a run is built and
    :meth:`resets` once for the whole training stream; neither may keep state.
    """

    name: str

    @abstractmethod
    def unit_leak(self, leak: np.ndarray, size: int) -> np.ndarray:
        """Base leak of each unit of a hidden layer of ``size`` units, [R, size], from leak [R]."""

    @abstractmethod
    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        """Steps [R, T] on which the memory is cleared (a = 0), or None if it never is."""

    def layer_leak(self, params: MemoryParams, size: int) -> np.ndarray:
        """Base leak [R, size] of a hidden layer from all memory settings (default: unit_leak)."""
        return self.unit_leak(params.leak, size)

    def reset_mask(
        self, category_changes: np.ndarray, input_resets: ThresholdResets, params: MemoryParams
    ) -> np.ndarray | None:
        """Reset steps: None, [R, T] (all units) or [R, T, G] (unit group g; see unit_groups).

        ``input_resets`` evaluates the unsupervised rule on the stream's inputs; the default is
        the oracle rule of :meth:`resets`.
        """
        return self.resets(category_changes)


class Feedforward(Memory):
    """No memory: a = 0, H(n) = ReLU(W I(n) + b)."""

    name = "feedforward"

    def unit_leak(self, leak: np.ndarray, size: int) -> np.ndarray:
        return np.zeros((leak.size, size))

    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        return None


class Leaky(Memory):
    """Leaky memory with one leak a for every hidden unit, never reset."""

    name = "leaky"

    def unit_leak(self, leak: np.ndarray, size: int) -> np.ndarray:
        return np.repeat(leak[:, None], size, axis=1).astype(np.float64)

    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        return None


class LeakyReset(Leaky):
    """Leaky memory, reset (a = 0) on a step whose category differs from the previous step's.

    This is the paper's oracle gating: the reset uses the label stream, not the inputs.
    """

    name = "leaky-reset"

    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        return category_changes


class LeakyThreshold(Leaky):
    """Leaky memory reset without labels, when the input changes enough (paper A.11).

    reset_scope 'input': all units reset when the whole input passes the rule; 'group': hidden-unit
    group g resets when input feature group g passes it (``feature_groups`` groups).
    """

    name = "leaky-threshold"

    def reset_mask(
        self, category_changes: np.ndarray, input_resets: ThresholdResets, params: MemoryParams
    ) -> np.ndarray | None:
        groups = params.feature_groups if params.scope == "group" else None
        return input_resets(params.threshold, groups)


class Multiscale(Memory):
    """Hidden-unit groups with their own leaks (paper 5.2: 0, 0.3, 0.6), never reset.

    Every hidden layer is split into len(group_leaks) contiguous groups (fast first);
    the single ``leak`` is unused.
    """

    name = "multiscale"
    default_group_leaks = (0.0, 0.3, 0.6)

    def unit_leak(self, leak: np.ndarray, size: int) -> np.ndarray:
        defaults = np.asarray(self.default_group_leaks)
        groups = np.broadcast_to(defaults, (leak.size, defaults.size))
        return groups[:, unit_groups(size, groups.shape[1])].astype(np.float64)

    def layer_leak(self, params: MemoryParams, size: int) -> np.ndarray:
        groups = params.group_leaks
        return groups[:, unit_groups(size, groups.shape[1])].astype(np.float64)

    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        return None


class MultiscaleReset(Multiscale):
    """Multiscale leaks with the unsupervised threshold reset of the paper's AE (A.11).

    As :class:`LeakyThreshold`: 'group' scope resets unit group g on a change of feature group g,
    the paper's reading ("the hidden node with long memory will be reset based on the amount of
    change in the slow-changing feature"); it then needs feature_groups == len(group_leaks) for
    leak groups and reset groups to coincide (the engine checks). No oracle variant is offered.
    """

    name = "multiscale-reset"

    def reset_mask(
        self, category_changes: np.ndarray, input_resets: ThresholdResets, params: MemoryParams
    ) -> np.ndarray | None:
        groups = params.feature_groups if params.scope == "group" else None
        return input_resets(params.threshold, groups)


class Minibatch(Feedforward):
    """No memory; the engine averages gradients over ``batch_size`` >= 2 samples (paper A.5/A.6;
    TrialConfig's default for this model: 10)."""

    name = "minibatch"


class Lstm(Memory):
    """No leaky memory and no resets: the LSTM's own gates decide what it keeps.

    The ``lstm`` model replaces the leaky layers by LSTM layers trained with truncated BPTT
    (``trainables/lstm.py``); as a memory rule it is a = 0 everywhere, never reset, so the
    engine's leak and reset machinery is inert for it.
    """

    name = "lstm"

    def unit_leak(self, leak: np.ndarray, size: int) -> np.ndarray:
        return np.zeros((leak.size, size))

    def resets(self, category_changes: np.ndarray) -> np.ndarray | None:
        return None


MEMORIES: dict[str, Memory] = {
    m.name: m
    for m in (
        Feedforward(),
        Leaky(),
        LeakyReset(),
        LeakyThreshold(),
        Multiscale(),
        MultiscaleReset(),
        Minibatch(),
        Lstm(),
    )
}
"""Model name -> memory rule; keys equal ``trainables.config.MODELS``."""
