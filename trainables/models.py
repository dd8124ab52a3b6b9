"""Memory variants of the paper's hidden layers.

All models share one network (fully connected, ReLU hidden layers, sigmoid/softmax output) and
one update, written out in ``trainables/engine.py``. What distinguishes them is only how much of
the previous hidden state each unit keeps on each step, the leak in

    H(n) = a(n) H(n-1) + (1 - a(n)) ReLU(W I(n) + b)        (paper, Eq. 1)

A model is a :class:`Memory`: it gives every hidden unit its base leak and says on which steps the
memory is reset (a(n) = 0). The engine never branches on the model's name.

Example:
    >>> memory = MEMORIES["leaky-reset"]
    >>> memory.unit_leak(np.array([0.5, 0.2]), 3).tolist()
    [[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]
    >>> memory.resets(np.array([[True, False, True]])).tolist()
    [[True, False, True]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


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


MEMORIES: dict[str, Memory] = {m.name: m for m in (Feedforward(), Leaky(), LeakyReset())}
"""Model name -> memory rule; keys equal ``trainables.config.MODELS``."""
