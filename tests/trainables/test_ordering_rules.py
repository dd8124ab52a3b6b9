"""What each ordering promises beyond the contract: the paper's sampling conditions (4.1.1)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainables.config import ConfigError
from trainables.orderings import (
    RandomOrdering,
    RepsOrdering,
    category_changes,
    epoch_order,
    make_ordering,
)

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
COUNTS = {
    "equal": [30] * 4,
    "unequal": [7, 12, 3, 9, 1, 10],
    "mnist": MNIST_COUNTS,
}
PAIRED = ["random", "reps-1", "reps-3", "reps-5"]


def _labels(counts: list[int]) -> np.ndarray:
    # interleaved on disk, so item index and label are unrelated
    return np.random.default_rng(42).permutation(np.repeat(np.arange(len(counts)), counts))


def _runs(sequence: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of one label: (label, start, length)."""
    starts = [0, *(np.flatnonzero(np.diff(sequence)) + 1).tolist()]
    ends = [*starts[1:], sequence.size]
    return [(int(sequence[s]), s, e - s) for s, e in zip(starts, ends, strict=True)]


def _first_appearance(sequence: np.ndarray) -> list[int]:
    _, first = np.unique(sequence, return_index=True)
    return sequence[np.sort(first)].tolist()


class _SpyRandom(RandomOrdering):
    """Random ordering that records the shared category permutation it was given."""

    def label_sequence(self, counts, category_order, rng):  # type: ignore[no-untyped-def]
        self.category_order = category_order.tolist()
        return super().label_sequence(counts, category_order, rng)


@pytest.mark.parametrize("counts", list(COUNTS.values()), ids=list(COUNTS))
@pytest.mark.parametrize("seed", [(0, 0), (3, 4)])
def test_orderings_are_paired_for_a_seed(counts: list[int], seed: tuple[int, int]) -> None:
    """Same seed: same within-category item order and category permutation in every ordering."""
    labels = _labels(counts)
    orders = {name: epoch_order(labels, make_ordering(name), seed, 0) for name in PAIRED}
    for category in range(len(counts)):
        queues = [order[labels[order] == category] for order in orders.values()]
        for queue in queues[1:]:
            np.testing.assert_array_equal(queue, queues[0])
    spy = _SpyRandom()
    epoch_order(labels, spy, seed, 0)
    for name in PAIRED[1:]:
        assert _first_appearance(labels[orders[name]]) == spy.category_order, name


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_reps_k_runs_have_length_k_when_sizes_divide(k: int) -> None:
    """Equal sizes divisible by k: every run is exactly k long, categories cycle in one order."""
    counts = [30, 30, 30, 30]
    labels = _labels(counts)
    sequence = labels[epoch_order(labels, make_ordering(f"reps-{k}"), (1, 0), 0)]
    runs = _runs(sequence)
    assert {length for _, _, length in runs} == {k}
    cycle = [label for label, _, _ in runs[: len(counts)]]
    assert sorted(cycle) == list(range(len(counts)))
    assert [label for label, _, _ in runs] == cycle * (30 // k)


def test_reps_k_runs_are_exact_also_for_unequal_divisible_sizes() -> None:
    """Unequal sizes, all divisible by k: runs are still exactly k, except one category left."""
    counts = [9, 3, 15, 6]
    labels = _labels(counts)
    sequence = labels[epoch_order(labels, make_ordering("reps-3"), (2, 0), 0)]
    for label, start, length in _runs(sequence):
        if length != 3:
            assert length > 3 and set(sequence[start:].tolist()) == {label}


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("counts", [COUNTS["unequal"], [5, 1, 2], [4, 4, 9]], ids=str)
@pytest.mark.parametrize("seed", [(0, 0), (1, 2), (7, 7)])
def test_reps_k_unequal_sizes(k: int, counts: list[int], seed: tuple[int, int]) -> None:
    """Runs are shorter than k only at a category's end, longer only when one category remains.

    And round-robin: between two runs of c, every category still to be seen after the second
    run appears (no category comes again before all others with items left had their turn).
    """
    labels = _labels(counts)
    sequence = labels[epoch_order(labels, make_ordering(f"reps-{k}"), seed, 0)]
    runs = _runs(sequence)
    for label, start, length in runs:
        later = sequence[start + length:]
        if length < k:
            assert label not in later, f"short run of {label} is not its last"
        if length > k:
            assert later.size == 0 and set(sequence[start:].tolist()) == {label}, (
                f"run of {length} > k={k} while other categories remain"
            )
    for (label, _, _), (label_2, _, _) in itertools.pairwise(runs):
        assert label != label_2
    for category in range(len(counts)):
        mine = [(s, n) for label, s, n in runs if label == category]
        for (s1, n1), (s2, n2) in itertools.pairwise(mine):
            between = set(sequence[s1 + n1 : s2].tolist())
            still_active = set(sequence[s2 + n2 :].tolist()) - {category}
            assert still_active <= between


def test_reps_1_equal_sizes_never_repeats_a_category() -> None:
    """Minimum smoothness: with equal sizes no two consecutive items share a category."""
    labels = _labels([25] * 10)
    for seed in [(0, 0), (1, 3), (9, 9)]:
        for epoch in range(3):
            sequence = labels[epoch_order(labels, make_ordering("reps-1"), seed, epoch)]
            assert np.all(sequence[1:] != sequence[:-1])


def test_reps_mnist_counts_run_structure() -> None:
    """MNIST train counts, reps-5: all runs 5 long except each category's last (and the tail)."""
    labels = _labels(MNIST_COUNTS)
    sequence = labels[epoch_order(labels, make_ordering("reps-5"), (0, 0), 0)]
    runs = _runs(sequence)
    short = [label for label, _, length in runs if length < 5]
    tail_label, tail_start, tail_length = runs[-1]
    assert len(short) == len(set(short))  # at most one short run per category
    assert {length for _, _, length in runs[:-1]} <= {1, 2, 3, 4, 5}
    # the largest category (1: 6742 items) outlasts all others; its surplus is the tail
    assert tail_label == 1 and tail_length > 5
    assert set(sequence[:tail_start].tolist()) == set(range(10))


def test_random_reshuffles_every_epoch() -> None:
    """random: each epoch is a new shuffle (label sequence and items)."""
    labels = _labels([20] * 5)
    sequences = [
        labels[epoch_order(labels, make_ordering("random"), (0, 0), epoch)] for epoch in range(4)
    ]
    for a, b in itertools.pairwise(sequences):
        assert not np.array_equal(a, b)


def test_random_is_roughly_uniform() -> None:
    """random: the first item's category is uniform over seeds, and repeats occur by chance."""
    labels = _labels([10, 10, 10, 10])
    firsts = np.array([
        labels[epoch_order(labels, make_ordering("random"), (seed, 0), 0)[0]]
        for seed in range(800)
    ])
    frequencies = np.bincount(firsts, minlength=4) / firsts.size
    assert np.all(np.abs(frequencies - 0.25) < 0.06)
    sequence = labels[epoch_order(labels, make_ordering("random"), (0, 0), 0)]
    # expected about 40 * 3/4 changes; reps-1 would have 39, reps-10 only 3
    changes = int(category_changes(sequence)[1:].sum())
    assert 20 < changes < 38


def test_docstring_example_reps_2() -> None:
    """The orderings module's example: runs of two, categories in the seed's permutation."""
    labels = np.repeat(np.arange(3), 4)
    order = epoch_order(labels, make_ordering("reps-2"), seed=(0, 0), epoch=0)
    assert labels[order].tolist() == [0, 0, 2, 2, 1, 1, 0, 0, 2, 2, 1, 1]


def test_category_changes_marks_first_item_and_every_switch() -> None:
    """True at the first item and wherever the category differs from the previous item's."""
    stream = np.array([2, 2, 0, 0, 0, 1, 2, 2])
    assert category_changes(stream).tolist() == [
        True, False, True, False, False, True, True, False
    ]
    batched = np.array([[0, 0, 1], [1, 0, 0]])  # [R, T]: along the last axis, per replicate
    assert category_changes(batched).tolist() == [[True, False, True], [True, True, False]]


@pytest.mark.parametrize("name", ["reps-0", "reps--1", "foo", "reps-", "reps-x", "Random"])
def test_make_ordering_rejects_bad_names(name: str) -> None:
    """Unknown or k < 1 names raise ConfigError naming the value."""
    with pytest.raises(ConfigError, match=repr(name)) as error:
        make_ordering(name)
    assert error.value.field_name == "ordering"
    assert error.value.value == name


def test_make_ordering_builds_the_named_kind() -> None:
    """'random' -> RandomOrdering, 'reps-k' -> RepsOrdering with that k."""
    assert isinstance(make_ordering("random"), RandomOrdering)
    reps = make_ordering("reps-4")
    assert isinstance(reps, RepsOrdering) and reps.k == 4 and reps.name == "reps-4"


def test_stream_keeps_the_data_order_for_every_seed_and_epoch() -> None:
    """'stream': every epoch of every replicate is the stored order 0..N-1."""
    labels = _labels([4, 6, 5])
    for seed, epoch in [((0, 0), 0), ((3, 2), 5)]:
        order = epoch_order(labels, make_ordering("stream"), seed, epoch)
        np.testing.assert_array_equal(order, np.arange(labels.size))
