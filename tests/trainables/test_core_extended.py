"""Data sets, ordering, protocols and metrics of issue 3 (models: test_engine_reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.config import ConfigError, DatasetConfig, TrialConfig
from trainables.data import load_dataset
from trainables.engine import TrialRun, run_trial
from trainables.metrics import timescale_metrics, timescale_r2
from trainables.orderings import epoch_order, make_ordering

STREAM = DatasetConfig(name="multiscale-stream", stream_length=120, test_stream_length=60,
                       noise=0.2)
AE = TrialConfig(model="multiscale-reset", ordering="stream", task="reconstruct", dataset=STREAM,
                 hidden=(3,), reset_scope="group", replicates=4, eval_every=40, dtype="float64")


def test_multiscale_stream_latents_switch_at_their_periods() -> None:
    """Latent g flips every p_g items; features are the group pattern plus bounded noise."""
    data = load_dataset(STREAM)  # default switch periods 1, 3, 5
    latent = np.concatenate([data.train_latent, data.test_latent])  # test continues the stream
    for g, period in enumerate((1, 3, 5)):
        flips = np.flatnonzero(np.diff(latent[:, g]) != 0) + 1
        assert np.all(np.diff(flips) == period)
    clean = np.abs(data.train_latent[:, :, None] - np.array([1.0, 0.0])).reshape(-1, 6)
    assert np.abs(data.train_x - clean).max() <= 0.2 + 1e-6
    assert data.num_classes == 8 and data.train_x.shape == (120, 6)


def test_no_shared_features_consecutive_items_share_no_active_feature() -> None:
    """In the stored (stream) order no two consecutive training items share an active feature."""
    config = DatasetConfig(name="no-shared-features", categories=3, features=12, parts=2,
                           train_per_category=20, run_length=4, noise=0.0)
    data = load_dataset(config)
    active = data.train_x > 0.5
    assert not np.any(active[1:] & active[:-1])
    assert np.array_equal(np.bincount(data.train_y), [20, 20, 20])
    runs = np.diff(np.flatnonzero(np.diff(data.train_y) != 0))
    assert np.all(runs == 4)


def test_stream_ordering_keeps_the_data_order() -> None:
    labels = np.array([2, 0, 0, 1, 2, 1])
    assert epoch_order(labels, make_ordering("stream"), (3, 1), 2).tolist() == list(range(6))
    with pytest.raises(ConfigError):
        TrialConfig(ordering="streams")


def test_config_round_trip_with_new_fields() -> None:
    config = AE.replace(group_leaks=(0.1, 0.5), optimizer="rmsprop", test_protocol="streamed",
                        test_ordering="reps-2", batch_size=3)
    again = TrialConfig.from_dict(config.to_dict())
    assert again == config and hash(again) == hash(config)
    for bad in (dict(group_leaks=(1.5,)), dict(reset_scope="unit"), dict(task="x"),
                dict(task="reconstruct", output="softmax"), dict(batch_size=0),
                dict(momentum=1.0), dict(test_protocol="x"), dict(test_ordering="nope")):
        with pytest.raises(ConfigError):
            AE.replace(**bad)


def test_autoencoder_reports_group_losses_and_timescale_metrics() -> None:
    result = run_trial(AE)
    assert result.group_loss.shape == (4, len(result.samples_seen), 3)
    assert np.all(np.isnan(result.test_accuracy))
    np.testing.assert_allclose(result.group_loss.mean(axis=2), result.test_loss, rtol=1e-12)
    assert result.timescale_r2.shape == (4, 3, 3)
    for key in ("timescale_selectivity", "timescale_selectivity_best",
                "test_loss_auc_group0", "final_test_loss_group2", "timescale_r2_unit2_latent2"):
        assert key in result.summary and key in result.per_replicate
    for key in ("samples_to_target", "target_reached", "final_test_accuracy", "test_error_auc"):
        assert key not in result.per_replicate and key not in result.summary  # no accuracy
    best = result.per_replicate["timescale_selectivity_best"]
    assert np.all(best >= result.per_replicate["timescale_selectivity"] - 1e-12)


def test_timescale_selectivity_of_a_perfectly_unmixed_net() -> None:
    """Unit group g equal to latent g: selectivity 1; reversed units: best-permutation still 1."""
    t = np.arange(60.0)
    latent = np.stack([t % 2, (t // 3) % 2, (t // 5) % 2], axis=1)
    metrics = timescale_metrics(timescale_r2(latent[None], latent))
    reversed_ = timescale_metrics(timescale_r2(latent[None, :, ::-1], latent))
    assert metrics["timescale_selectivity"][0] > 0.9
    assert reversed_["timescale_selectivity"][0] < 0.5
    assert reversed_["timescale_selectivity_best"][0] == pytest.approx(
        metrics["timescale_selectivity_best"][0])


def test_timescale_selectivity_orders_units_by_their_leak() -> None:
    """Non-ascending group leaks (as a tuned trial may have): memory order sorts the unit
    groups by leak, per replicate, before matching them to latents fast -> slow."""
    t = np.arange(60.0)
    latent = np.stack([t % 2, (t // 3) % 2, (t // 5) % 2], axis=1)  # fast, medium, slow
    # replicate 0: units 0-1 follow the slow latent, 2-3 the fast, 4-5 the medium one, and their
    # leaks say so (0.6, 0, 0.3); replicate 1: ascending leaks, units in latent order
    states = np.stack([latent[:, [2, 2, 0, 0, 1, 1]], latent[:, [0, 0, 1, 1, 2, 2]]])
    leaks = np.array([[0.6, 0.6, 0.0, 0.0, 0.3, 0.3], [0.0, 0.0, 0.3, 0.3, 0.6, 0.6]])
    r2 = timescale_r2(states, latent)
    by_leak = timescale_metrics(r2, leaks)
    by_position = timescale_metrics(r2)
    assert by_leak["timescale_selectivity"][0] > 0.9  # read in memory order: perfectly matched
    assert by_position["timescale_selectivity"][0] < 0.5  # by position it looks unmatched
    np.testing.assert_allclose(by_leak["timescale_selectivity"][1],
                               by_position["timescale_selectivity"][1])  # ascending: the same
    np.testing.assert_allclose(by_leak["timescale_selectivity_best"],
                               by_position["timescale_selectivity_best"])
    assert by_leak["timescale_r2_unit0_latent0"][0] > 0.9  # unit group 0 = the fastest units
    # equal leaks keep positions (stable), as without leaks
    uniform = timescale_metrics(r2, np.full((2, 6), 0.5))
    np.testing.assert_array_equal(uniform["timescale_selectivity"],
                                  by_position["timescale_selectivity"])


def test_engine_reports_selectivity_in_memory_order() -> None:
    """The engine passes each replicate's own first-layer leaks: a replicate with permuted group
    leaks gets the selectivity of its r^2 read in leak order."""
    config = AE.replace(model="multiscale", hidden=(6,), replicates=2)
    leaks = [[0.0, 0.3, 0.6], [0.6, 0.0, 0.3]]
    result = run_trial(config, group_leaks=leaks)
    units = [[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 0, 1]]  # each replicate's units, fast to slow
    for r in range(2):
        expected = timescale_metrics(result.timescale_r2[r : r + 1, units[r]])
        for key in ("timescale_selectivity", "timescale_selectivity_best",
                    "timescale_r2_unit2_latent0"):
            np.testing.assert_allclose(result.per_replicate[key][r], expected[key][0],
                                       rtol=1e-12)
    by_position = timescale_metrics(result.timescale_r2)["timescale_selectivity"]
    assert abs(result.per_replicate["timescale_selectivity"][1] - by_position[1]) > 1e-3


def test_streamed_protocol_matches_a_manual_stream() -> None:
    """Streamed test loss at step 0 equals running the test stream by hand with memory on."""
    config = TrialConfig(model="leaky-reset", ordering="reps-3", test_protocol="streamed",
                         test_ordering="reps-2", replicates=2, hidden=(5,), leak=0.7,
                         dataset=DatasetConfig(categories=3, features=6, train_per_category=10,
                                               test_per_category=6), dtype="float64")
    run = TrialRun(config)
    first = next(iter(run))
    data = run.data
    for r in range(2):
        order = epoch_order(data.test_y, make_ordering("reps-2"), (0, r, 7), 0)
        w0, b0, w1, b1 = (t[r] for t in (run.weights[0], run.biases[0], run.weights[1],
                                          run.biases[1]))
        h, previous, losses = torch.zeros(5, dtype=torch.float64), None, []
        for item in order:
            x = torch.as_tensor(data.test_x[item], dtype=torch.float64)
            a = 0.0 if data.test_y[item] != previous else 0.7
            previous = data.test_y[item]
            h = a * h + (1 - a) * torch.relu(w0 @ x + b0)
            y = torch.sigmoid(w1 @ h + b1)
            target = torch.nn.functional.one_hot(torch.tensor(int(data.test_y[item])), 3)
            losses.append(float(((y - target) ** 2).mean()))
        assert first.test_loss[r] == pytest.approx(np.mean(losses), abs=1e-12)


@pytest.mark.parametrize("changes", [dict(optimizer="rmsprop", momentum=0.5),
                                     dict(model="minibatch", batch_size=7)])
def test_resume_mid_batch_gives_the_same_numbers(changes: dict) -> None:
    config = AE.replace(**changes, eval_every=25)  # 25: evaluations fall inside batches
    whole = TrialRun(config)
    list(whole)
    first = TrialRun(config)
    points = iter(first)
    next(points), next(points)
    second = TrialRun(config)
    second.load_state_dict(first.state_dict())
    list(second)
    for mine, theirs in zip(second.weights, whole.weights, strict=True):
        assert torch.equal(mine, theirs)
    np.testing.assert_array_equal(second.result().test_loss, whole.result().test_loss)
