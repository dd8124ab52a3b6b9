"""Whole runs: replicate independence, exact reproducibility and exact resume."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tests.trainables.fast_paths import FAST_PATHS, assert_on_fast_path
from tests.trainables.reference import VARIANTS
from trainables import engine
from trainables.config import DatasetConfig, TrialConfig
from trainables.engine import TrialResult, TrialRun, eval_schedule, run_trial


def _assert_same_result(a: TrialResult, b: TrialResult) -> None:
    np.testing.assert_array_equal(a.samples_seen, b.samples_seen)
    np.testing.assert_array_equal(a.test_loss, b.test_loss)
    np.testing.assert_array_equal(a.test_accuracy, b.test_accuracy)
    assert a.diverged == b.diverged
    assert a.per_replicate.keys() == b.per_replicate.keys()
    for key in a.per_replicate:
        np.testing.assert_array_equal(a.per_replicate[key], b.per_replicate[key])


# every variant of the leaky network, plus an autoencoder, RMSprop with minibatches and the
# streamed test protocol; gradient conventions alternate
REPLICATE_CASES = {
    name: {**settings, "gradient": ("leak-scaled", "leak-unscaled")[i % 2]}
    for i, (name, settings) in enumerate(VARIANTS.items())
}
REPLICATE_CASES.update({
    "reconstruct-multiscale-reset-group": dict(
        model="multiscale-reset", reset_scope="group", task="reconstruct", ordering="stream",
        dataset=DatasetConfig(name="multiscale-stream", stream_length=150, noise=0.2),
    ),
    "rmsprop-minibatch": dict(model="minibatch", batch_size=4, optimizer="rmsprop",
                              learning_rate=0.003, momentum=0.5),
    "streamed-leaky-reset": dict(model="leaky-reset", test_protocol="streamed",
                                 test_ordering="reps-2"),
})
LEARNING_RATES = [0.01, 0.03, 0.05, 0.12]
LEAKS = [0.0, 0.3, 0.7, 0.95]
THRESHOLDS = [0.3, 0.6, 0.9, 1.5]
GROUP_LEAKS = [[0.0, 0.3, 0.6], [0.6, 0.3, 0.0], [0.2, 0.2, 0.2], [0.5, 0.1, 0.9]]


@pytest.mark.parametrize("path", ["default", *FAST_PATHS])
@pytest.mark.parametrize("name", list(REPLICATE_CASES))
def test_replicate_of_batched_run_equals_run_alone(
    tiny_config: TrialConfig, name: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicate r of an R=4 run with per-replicate settings (learning rate, leak, threshold,
    group leaks) equals replicate r trained alone: weights, biases and every test curve. Also
    on the engine's speed paths: queued updates, and the batched run replicate-minor (as the
    engine stores many replicates of small nets) with the lone replicate replicate-major."""
    # Same path: equal to rounding of single ops. Across layouts the products are summed in
    # another order: 1e-16 here for SGD, but RMSprop's normalised steps amplify it (1.2e-8 for
    # rmsprop-minibatch, momentum 0.5, after 180 steps); a wrong rule is off by > 1e-4.
    tolerance = 1e-12
    config = tiny_config.replace(**REPLICATE_CASES[name], replicates=4)
    fused = config.optimizer == "sgd" and config.batch_size == 1
    if path == "replicate-minor":
        monkeypatch.setattr(engine, "REPLICATE_MINOR_REPLICATES", 4)
        tolerance = 1e-7
    elif path == "queued-updates":
        if not fused:
            pytest.skip("queued updates are a path of fused SGD only")
        monkeypatch.setattr(engine, "QUEUE_WEIGHTS", 1)
    batched = TrialRun(config, learning_rate=LEARNING_RATES, leak=LEAKS,
                       reset_threshold=THRESHOLDS, group_leaks=GROUP_LEAKS)
    if path != "default":
        assert_on_fast_path(batched, path)
    batched_result = (list(batched), batched.result())[1]
    for r in range(4):
        alone = TrialRun(
            config.replace(replicates=1),
            replicate_ids=[r],
            learning_rate=[LEARNING_RATES[r]],
            leak=[LEAKS[r]],
            reset_threshold=[THRESHOLDS[r]],
            group_leaks=[GROUP_LEAKS[r]],
        )
        alone_result = (list(alone), alone.result())[1]
        for mine, theirs in zip(
            [*batched.weights, *batched.biases], [*alone.weights, *alone.biases], strict=True
        ):
            np.testing.assert_allclose(mine[r].numpy(), theirs[0].numpy(), rtol=0,
                                       atol=tolerance)
        curves = ["test_loss", "test_accuracy"] + (["group_loss"] if config.task == "reconstruct"
                                                   else [])
        for curve in curves:
            np.testing.assert_allclose(
                getattr(batched_result, curve)[r], getattr(alone_result, curve)[0],
                rtol=0, atol=tolerance, err_msg=curve,
            )
    # the per-replicate settings took effect: replicates ended in different places
    assert len({round(float(loss), 9) for loss in batched_result.test_loss[:, -1]}) == 4


def test_per_replicate_settings_change_the_run(tiny_config: TrialConfig) -> None:
    """A different learning rate or leak for one replicate changes that replicate's weights."""
    config = tiny_config.replace(replicates=1)
    base = TrialRun(config, learning_rate=[0.05], leak=[0.6])
    other_lr = TrialRun(config, learning_rate=[0.02], leak=[0.6])
    other_leak = TrialRun(config, learning_rate=[0.05], leak=[0.2])
    for run in (base, other_lr, other_leak):
        list(run)
    assert not torch.equal(base.weights[0], other_lr.weights[0])
    assert not torch.equal(base.weights[0], other_leak.weights[0])


def test_same_seed_reproduces_curves_exactly(tiny_config: TrialConfig) -> None:
    """Same config and seed, float32 on CPU: identical curves, metrics and weights."""
    config = tiny_config.replace(dtype="float32", model="leaky")
    first, second = TrialRun(config), TrialRun(config)
    result_1 = (list(first), first.result())[1]
    result_2 = (list(second), second.result())[1]
    _assert_same_result(result_1, result_2)
    for a, b in zip([*first.weights, *first.biases], [*second.weights, *second.biases],
                    strict=True):
        assert torch.equal(a, b)


def test_different_seed_gives_different_curves(tiny_config: TrialConfig) -> None:
    """Another base seed gives another init and stream, hence other curves."""
    config = tiny_config.replace(dtype="float32")
    a = run_trial(config)
    b = run_trial(config.replace(seed=1))
    assert not np.array_equal(a.test_loss[:, 1:], b.test_loss[:, 1:])
    assert not np.array_equal(a.test_loss[:, 0], b.test_loss[:, 0])  # init differs too


@pytest.mark.parametrize("path", ["default", *FAST_PATHS])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_from_pickled_state_is_exact(
    tiny_config: TrialConfig, dtype: str, stop_after: int, path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half a run, state_dict, pickle, new run + load_state_dict, finish == uninterrupted run
    (on each of the engine's paths)."""
    if path != "default":
        monkeypatch.setattr(engine, *FAST_PATHS[path])
    config = tiny_config.replace(dtype=dtype, eval_every=25)  # 25: stops mid reps-3 run
    uninterrupted = TrialRun(config, learning_rate=[0.05, 0.1, 0.02], leak=[0.6, 0.3, 0.9])
    list(uninterrupted)

    first = TrialRun(config, learning_rate=[0.05, 0.1, 0.02], leak=[0.6, 0.3, 0.9])
    points = iter(first)
    for _ in range(stop_after + 1):  # eval at 0, then stop_after more
        next(points)
    assert 0 < first.step < first.total_samples
    state = pickle.loads(pickle.dumps(first.state_dict()))
    del first, points

    resumed = TrialRun(config, learning_rate=[0.05, 0.1, 0.02], leak=[0.6, 0.3, 0.9])
    resumed.load_state_dict(state)
    remaining = list(resumed)
    assert len(remaining) == len(uninterrupted.eval_points) - stop_after - 1

    _assert_same_result(resumed.result(), uninterrupted.result())
    for a, b in zip(
        [*resumed.weights, *resumed.biases, *resumed.state_dict()["hidden"]],
        [*uninterrupted.weights, *uninterrupted.biases, *uninterrupted.state_dict()["hidden"]],
        strict=True,
    ):
        assert torch.equal(a, b)


def test_resume_rejects_a_checkpoint_of_another_config(tiny_config: TrialConfig) -> None:
    """load_state_dict refuses a checkpoint of another config or other per-replicate settings."""
    state = TrialRun(tiny_config).state_dict()
    with pytest.raises(ValueError, match="config"):
        TrialRun(tiny_config.replace(seed=5)).load_state_dict(state)
    with pytest.raises(ValueError, match="leak"):
        TrialRun(tiny_config, leak=[0.1, 0.2, 0.3]).load_state_dict(state)


def test_run_visits_every_eval_point_and_stream_is_whole(tiny_config: TrialConfig) -> None:
    """Iterating yields one point per scheduled eval; the stream has epochs x train items."""
    run = TrialRun(tiny_config)
    points = list(run)
    assert run.total_samples == tiny_config.epochs * 90
    assert [p.samples_seen for p in points] == run.eval_points
    assert [p.index for p in points] == list(range(len(points)))
    assert all(p.test_loss.shape == (3,) and p.test_accuracy.shape == (3,) for p in points)
    result = run.result()
    assert result.test_loss.shape == (3, len(points))
    assert set(result.per_replicate) >= {"test_loss_auc", "samples_to_target"}


@pytest.mark.parametrize(
    ("total", "epoch_length", "every", "kind", "expected"),
    [
        (100, 100, 30, "linear", [0, 30, 60, 90, 100]),
        (200, 70, 50, "linear", [0, 50, 70, 100, 140, 150, 200]),
        (1000, 1000, 1, "log", [0, 1, 10, 100, 1000]),
    ],
)
def test_eval_schedule(
    total: int, epoch_length: int, every: int, kind: str, expected: list[int]
) -> None:
    """Evaluations at 0, the schedule's points, every epoch end and the last sample."""
    assert eval_schedule(total, epoch_length, every, kind) == expected


def test_many_replicates_of_small_nets_are_replicate_minor(tiny_config: TrialConfig) -> None:
    """The layout rule: replicate axis innermost from REPLICATE_MINOR_REPLICATES replicates of
    nets whose layers have at most REPLICATE_MINOR_WEIGHTS weights; never for the LSTM."""
    many = engine.REPLICATE_MINOR_REPLICATES
    assert TrialRun(tiny_config.replace(replicates=many)).weights[0].stride(0) == 1
    assert TrialRun(tiny_config.replace(replicates=many - 1)).weights[0].stride(0) > 1
    wide = tiny_config.replace(replicates=many, hidden=(engine.REPLICATE_MINOR_WEIGHTS,))
    assert TrialRun(wide).weights[0].stride(0) > 1  # 6 x 256 weights in the first layer
    lstm = tiny_config.replace(replicates=many, model="lstm")
    assert TrialRun(lstm).weights[0].stride(0) > 1


def test_wide_layers_of_fused_sgd_runs_queue_their_updates(
    tiny_config: TrialConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue rule: a layer with at least QUEUE_WEIGHTS weights over all replicates, in a
    fused-SGD run (per-sample SGD, not RMSprop or minibatches), replicate-major."""
    monkeypatch.setattr(engine, "QUEUE_WEIGHTS", 3 * 6 * 6)  # R x in x out of the first layer
    run = TrialRun(tiny_config)  # 3 replicates, 6-6-3
    assert [q is not None for q in run._queues] == [True, False]
    assert all(q is None for q in TrialRun(tiny_config.replace(optimizer="rmsprop"))._queues)
    assert all(q is None for q in TrialRun(tiny_config.replace(model="minibatch",
                                                               batch_size=None))._queues)
    list(run)  # trains, and leaves no update queued once it stops
    assert all(q is None or q.count == 0 for q in run._queues)
