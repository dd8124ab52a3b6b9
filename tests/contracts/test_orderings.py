"""Contracts of orderings (STYLE 2.7): add a new ordering to ``ORDERINGS`` to join.

``TestOrderingContract``: every ordering (valid, deterministic, picklable, pure).
``TestShufflingOrderingContract``: orderings that draw (all but ``KEEPS_DATA_ORDER``) also differ
across seeds and epochs and are paired with ``random``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from trainables.orderings import Ordering, RandomOrdering, epoch_order, make_ordering

SHUFFLING = ["random", "reps-1", "reps-2", "reps-3", "reps-5", "reps-7"]
KEEPS_DATA_ORDER = ["stream"]
ORDERINGS = SHUFFLING + KEEPS_DATA_ORDER

LABEL_SETS = {
    "equal": np.repeat(np.arange(4), 15),
    "unequal": np.repeat(np.arange(5), [7, 12, 3, 9, 1]),
    "shuffled-unequal": np.random.default_rng(0).permutation(np.repeat(np.arange(3), [4, 11, 6])),
    "empty-category": np.repeat(np.array([0, 2, 3]), [5, 6, 4]),  # label 1 has no items
}


@pytest.fixture(params=ORDERINGS)
def ordering(request: pytest.FixtureRequest) -> Ordering:
    return make_ordering(request.param)


@pytest.fixture(params=SHUFFLING)
def shuffling(request: pytest.FixtureRequest) -> Ordering:
    return make_ordering(request.param)


@pytest.fixture(params=list(LABEL_SETS))
def labels(request: pytest.FixtureRequest) -> np.ndarray:
    return LABEL_SETS[request.param]


class TestOrderingContract:
    """Valid, deterministic, picklable and pure."""

    def test_name_round_trips(self, ordering: Ordering) -> None:
        """make_ordering(ordering.name) builds the same kind of ordering."""
        again = make_ordering(ordering.name)
        assert type(again) is type(ordering)
        assert again.name == ordering.name
        assert ordering.name in repr(ordering)

    def test_label_sequence_keeps_counts(self, ordering: Ordering, labels: np.ndarray) -> None:
        """label_sequence has label c exactly counts[c] times."""
        counts = np.bincount(labels)
        rng = np.random.default_rng(3)
        sequence = ordering.label_sequence(counts, rng.permutation(counts.size), rng)
        assert sequence.shape == (counts.sum(),)
        np.testing.assert_array_equal(np.bincount(sequence, minlength=counts.size), counts)

    @pytest.mark.parametrize("epoch", [0, 1, 4])
    def test_epoch_is_a_permutation_of_all_items(
        self, ordering: Ordering, labels: np.ndarray, epoch: int
    ) -> None:
        """Every epoch presents every training item exactly once."""
        order = epoch_order(labels, ordering, (7, 2), epoch)
        assert order.dtype.kind == "i"
        np.testing.assert_array_equal(np.sort(order), np.arange(labels.size))

    def test_deterministic_per_seed(self, ordering: Ordering, labels: np.ndarray) -> None:
        """Same (seed, epoch): same order, also from a fresh ordering object."""
        a = epoch_order(labels, ordering, (3, 1), 2)
        b = epoch_order(labels, make_ordering(ordering.name), (3, 1), 2)
        np.testing.assert_array_equal(a, b)

    def test_survives_pickling(self, ordering: Ordering, labels: np.ndarray) -> None:
        """Ray ships orderings to workers: a pickled copy orders identically."""
        copy = pickle.loads(pickle.dumps(ordering))
        np.testing.assert_array_equal(
            epoch_order(labels, ordering, (5, 0), 1), epoch_order(labels, copy, (5, 0), 1)
        )

    def test_label_sequence_is_pure(self, ordering: Ordering, labels: np.ndarray) -> None:
        """Same arguments and generator state: same sequence; inputs not mutated, no state kept."""
        counts = np.bincount(labels)
        category_order = np.random.default_rng(1).permutation(counts.size)
        counts_before, order_before = counts.copy(), category_order.copy()
        first = ordering.label_sequence(counts, category_order, np.random.default_rng(9))
        np.testing.assert_array_equal(counts, counts_before)
        np.testing.assert_array_equal(category_order, order_before)
        ordering.label_sequence(counts, category_order[::-1].copy(), np.random.default_rng(4))
        second = ordering.label_sequence(counts, category_order, np.random.default_rng(9))
        np.testing.assert_array_equal(first, second)


class TestShufflingOrderingContract:
    """Orderings that draw: a new order per seed and epoch, paired with 'random'."""

    def test_differs_across_seeds(self, shuffling: Ordering) -> None:
        """Other base seed or other replicate: another order."""
        labels = LABEL_SETS["equal"]
        base = epoch_order(labels, shuffling, (0, 0), 0)
        assert not np.array_equal(base, epoch_order(labels, shuffling, (1, 0), 0))
        assert not np.array_equal(base, epoch_order(labels, shuffling, (0, 1), 0))

    def test_differs_across_epochs(self, shuffling: Ordering) -> None:
        """Each epoch draws new within-category orders (and a new category permutation)."""
        labels = LABEL_SETS["equal"]
        assert not np.array_equal(
            epoch_order(labels, shuffling, (0, 0), 0), epoch_order(labels, shuffling, (0, 0), 1)
        )

    def test_paired_within_category_order(self, shuffling: Ordering, labels: np.ndarray) -> None:
        """The items of each category come in the same order as under 'random' (pairing)."""
        mine = epoch_order(labels, shuffling, (11, 3), 0)
        theirs = epoch_order(labels, RandomOrdering(), (11, 3), 0)
        for category in np.unique(labels):
            np.testing.assert_array_equal(
                mine[labels[mine] == category], theirs[labels[theirs] == category]
            )
