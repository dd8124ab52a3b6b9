"""Contract every memory model must keep (STYLE 2.7): models join through ``MEMORIES``."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainables.config import MODELS, DatasetConfig, TrialConfig
from trainables.engine import TrialRun
from trainables.models import MEMORIES, Memory, MemoryParams
from trainables.orderings import category_changes

LEAK = np.array([0.5, 0.2, 0.0, 1.0])  # [R]
STREAM = np.array([
    [0, 0, 1, 1, 1, 2, 0, 0],
    [2, 1, 1, 0, 2, 2, 2, 1],
    [0, 1, 2, 0, 1, 2, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
])  # [R, T] labels
SMALL = TrialConfig(
    ordering="reps-2",
    dataset=DatasetConfig(categories=3, features=6, train_per_category=8, test_per_category=4),
    hidden=(5, 4),
    learning_rate=0.1,
    replicates=2,
    eval_every=24,
    dtype="float64",
)


def _params(scope: str) -> MemoryParams:
    return MemoryParams(
        leak=LEAK,
        group_leaks=np.tile([0.0, 0.3, 0.6], (LEAK.size, 1)),
        threshold=np.ones(LEAK.size),
        scope=scope,
        feature_groups=3,
    )


def _input_resets(threshold: np.ndarray, groups: int | None) -> np.ndarray:
    """Stand-in for the engine's unsupervised rule: fixed random masks of the documented shape."""
    shape = STREAM.shape if groups is None else (*STREAM.shape, groups)
    return np.random.default_rng(0).random(shape) < 0.3


@pytest.fixture(params=list(MEMORIES))
def memory(request: pytest.FixtureRequest) -> Memory:
    return MEMORIES[request.param]


def test_registry_matches_config_models() -> None:
    """Every model name a config accepts has a memory rule, and nothing else is registered."""
    assert set(MEMORIES) == set(MODELS)
    assert all(MEMORIES[name].name == name for name in MEMORIES)


class TestMemoryContract:
    """Shapes, value ranges, statelessness and effect on training of every memory rule."""

    @pytest.mark.parametrize("size", [1, 7])
    def test_unit_leak_shape_and_range(self, memory: Memory, size: int) -> None:
        """unit_leak gives [R, H] floats in [0, 1]."""
        leak = memory.unit_leak(LEAK, size)
        assert leak.shape == (LEAK.size, size)
        assert leak.dtype.kind == "f"
        assert np.all((leak >= 0) & (leak <= 1))

    def test_resets_shape(self, memory: Memory) -> None:
        """resets gives None or a [R, T] boolean array."""
        resets = memory.resets(category_changes(STREAM))
        assert resets is None or (resets.shape == STREAM.shape and resets.dtype == bool)

    @pytest.mark.parametrize("scope", ["input", "group"])
    def test_layer_leak_and_reset_mask_shapes(self, memory: Memory, scope: str) -> None:
        """layer_leak: [R, H] in [0, 1]; reset_mask: None, bool [R, T] or bool [R, T, G]."""
        params = _params(scope)
        leak = memory.layer_leak(params, 7)
        assert leak.shape == (LEAK.size, 7)
        assert np.all((leak >= 0) & (leak <= 1))
        mask = memory.reset_mask(category_changes(STREAM), _input_resets, params)
        if mask is not None:
            assert mask.dtype == bool
            assert mask.shape in (STREAM.shape, (*STREAM.shape, params.feature_groups))

    def test_is_stateless_and_picklable(self, memory: Memory) -> None:
        """Calling twice gives the same answer; a pickled copy gives it too."""
        copy = pickle.loads(pickle.dumps(memory))
        for rule in (memory, memory, copy):
            np.testing.assert_array_equal(rule.unit_leak(LEAK, 3), memory.unit_leak(LEAK, 3))
            a, b = rule.resets(category_changes(STREAM)), memory.resets(category_changes(STREAM))
            assert (a is None and b is None) or np.array_equal(a, b)

    def test_gradients_reach_every_parameter(self, memory: Memory) -> None:
        """Training moves every layer's weights and biases (two hidden layers, both replicates)."""
        config = SMALL.replace(model=memory.name, batch_size=None)  # the model's default
        run = TrialRun(config)
        initial = [t.clone() for t in (*run.weights, *run.biases)]
        list(run)
        for before, after in zip(initial, (*run.weights, *run.biases), strict=True):
            moved = (after - before).abs().flatten(1).amax(dim=1)  # per replicate
            assert torch.all(moved > 0)


def test_feedforward_has_zero_leak_and_no_reset() -> None:
    """feedforward: a = 0 on every unit of every replicate, never reset (nothing to reset)."""
    memory = MEMORIES["feedforward"]
    np.testing.assert_array_equal(memory.unit_leak(LEAK, 6), np.zeros((4, 6)))
    assert memory.resets(category_changes(STREAM)) is None


def test_leaky_uses_the_replicate_leak_and_never_resets() -> None:
    """leaky: every unit of replicate r has leak[r]; memory is never reset."""
    memory = MEMORIES["leaky"]
    np.testing.assert_array_equal(memory.unit_leak(LEAK, 3), np.repeat(LEAK[:, None], 3, axis=1))
    assert memory.resets(category_changes(STREAM)) is None


def test_leaky_reset_resets_exactly_on_category_changes() -> None:
    """leaky-reset: leak[r] per unit, a = 0 exactly where the category differs from the last
    (the first item counts as a change); the oracle ignores the input-based rule."""
    memory = MEMORIES["leaky-reset"]
    np.testing.assert_array_equal(memory.unit_leak(LEAK, 3), np.repeat(LEAK[:, None], 3, axis=1))
    expected = np.array([
        [1, 0, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 1, 1, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 0, 0],
    ], dtype=bool)
    np.testing.assert_array_equal(memory.resets(category_changes(STREAM)), expected)
    mask = memory.reset_mask(category_changes(STREAM), _input_resets, _params("input"))
    np.testing.assert_array_equal(mask, expected)


def test_models_differ_only_through_memory() -> None:
    """Same seed: models share init; with leak 0 leaky and leaky-reset train like feedforward."""
    names = ("feedforward", "leaky", "leaky-reset")
    runs = {name: TrialRun(SMALL.replace(model=name, leak=0.0)) for name in names}
    for run in runs.values():
        assert torch.equal(run.weights[0], runs["feedforward"].weights[0])
    for run in runs.values():
        list(run)
    for name in ("leaky", "leaky-reset"):
        for mine, theirs in zip(runs[name].weights, runs["feedforward"].weights, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)
    leaky = TrialRun(SMALL.replace(model="leaky", leak=0.5))
    list(leaky)
    assert not torch.allclose(leaky.weights[0], runs["feedforward"].weights[0])
