"""Orderings (the paper's samplers): in which order one epoch presents the training items.

Every ordering is built on two draws shared by all orderings of the same (seed, epoch):
the order of items *within* each category and the *category permutation*. An ordering only
decides the sequence of category labels; the items of category c are then taken from c's
within-category queue in order. So, for one seed, ``random``, ``reps-1`` and ``reps-5`` present
the same items of each category in the same order: comparisons between conditions are paired.

``random`` draws a uniformly shuffled label sequence; together with the shuffled within-category
queues this is exactly a uniform random permutation of the items (without replacement).

Example:
    >>> labels = np.repeat(np.arange(3), 4)
    >>> order = epoch_order(labels, make_ordering("reps-2"), seed=(0, 0), epoch=0)
    >>> labels[order].tolist()  # runs of 2, categories in a per-seed permutation
    [0, 0, 2, 2, 1, 1, 0, 0, 2, 2, 1, 1]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from trainables.config import check_ordering_name


class Ordering(ABC):
    """Decides the category-label sequence of one epoch.

    The engine calls :meth:`label_sequence` once per epoch (through :func:`epoch_order`) before
    training starts; implementations must be pure functions of their arguments and picklable,
    because Ray ships them to workers.
    """

    name: str
    keeps_data_order: bool = False
    """True: an epoch is the data set's own order (a stream); :meth:`label_sequence` is unused."""

    @abstractmethod
    def label_sequence(
        self, counts: np.ndarray, category_order: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Category label of each position of the epoch.

        Args:
            counts: items per category (index = label).
            category_order: this epoch's category permutation (shared by all orderings).
            rng: generator for any further randomness (drawn after the shared draws).

        Returns:
            int array of length ``counts.sum()`` in which label c occurs exactly counts[c] times.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RandomOrdering(Ordering):
    """Uniformly random order without replacement, a new shuffle every epoch."""

    name = "random"

    def label_sequence(
        self, counts: np.ndarray, category_order: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        return rng.permutation(np.repeat(np.arange(counts.size), counts))


class StreamOrdering(Ordering):
    """The data set's natural order, the same in every epoch (streams such as multiscale-stream).

    Stream data sets store their items in presentation order and carry their own temporal
    structure, so reordering them would destroy it. Nothing is drawn: every replicate and every
    epoch sees the same sequence (replicates still differ in their initial weights).
    """

    name = "stream"
    keeps_data_order = True

    def label_sequence(
        self, counts: np.ndarray, category_order: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        # not used by epoch_order (keeps_data_order); labels grouped, to honour the contract
        return np.repeat(np.arange(counts.size), counts)


class RepsOrdering(Ordering):
    """k consecutive items of one category, categories visited in the category permutation.

    A category with fewer than k items left gives what it has and then leaves the cycle
    (unequal category sizes, as in MNIST). ``reps-1`` is the paper's minimum smoothness.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"reps-k needs k >= 1, got k={k}")
        self.k = k
        self.name = f"reps-{k}"

    def label_sequence(
        self, counts: np.ndarray, category_order: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        left = counts.copy()
        sequence: list[np.ndarray] = []
        cycle = [int(c) for c in category_order if left[c] > 0]
        while cycle:
            for category in cycle:
                take = min(self.k, int(left[category]))
                sequence.append(np.full(take, category))
                left[category] -= take
            cycle = [c for c in cycle if left[c] > 0]
        return np.concatenate(sequence) if sequence else np.zeros(0, dtype=np.int64)


def make_ordering(name: str) -> Ordering:
    """The ordering called ``name`` ('random', 'stream' or 'reps-k')."""
    check_ordering_name(name)
    if name == "random":
        return RandomOrdering()
    if name == "stream":
        return StreamOrdering()
    return RepsOrdering(int(name.split("-", 1)[1]))


def epoch_order(
    labels: np.ndarray, ordering: Ordering, seed: Sequence[int], epoch: int
) -> np.ndarray:
    """Item indices of one epoch in presentation order.

    ``seed`` (e.g. (base seed, replicate)) and ``epoch`` fix the shared draws: first the
    within-category item order of every category, then the category permutation. Only after
    them may the ordering draw, so its extra draws cannot disturb the pairing. An ordering that
    keeps the data order (``stream``) gives 0..N-1.
    """
    if ordering.keeps_data_order:
        return np.arange(labels.size, dtype=np.int64)
    rng = np.random.default_rng([*seed, epoch])
    num_classes = int(labels.max()) + 1
    queues = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    category_order = rng.permutation(num_classes)
    counts = np.array([q.size for q in queues])
    sequence = ordering.label_sequence(counts, category_order, rng)
    order = np.empty(sequence.size, dtype=np.int64)
    for category, queue in enumerate(queues):
        order[sequence == category] = queue  # positions of c, filled in c's queue order
    return order


def category_changes(stream_labels: np.ndarray) -> np.ndarray:
    """True where an item's category differs from the previous item's (and at the first item)."""
    changes = np.ones(stream_labels.shape, dtype=bool)
    changes[..., 1:] = stream_labels[..., 1:] != stream_labels[..., :-1]
    return changes
