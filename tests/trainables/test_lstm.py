"""The ``lstm`` model (paper A.8-A.10) against an independent torch.nn.LSTM reference, and runs.

The reference trains one network with ``torch.nn.LSTM`` layers (one module per layer, so stacked
layers may differ in size) and an ``nn.Linear`` readout, per sample, with the truncated-BPTT rule
of ``trainables/lstm.py`` written out directly: on step n re-run the last K items from the stored
(detached) state after item n - K, loss on item n, ``loss.backward()``, ``torch.optim`` step, and
store the window's final state as the state after item n. The engine's single bias per layer is
torch's ``bias_ih``; ``bias_hh`` stays at zero and is not trained.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from tests.trainables.reference import item_loss, item_target, stream_order
from trainables.config import ConfigError, DatasetConfig, TrialConfig
from trainables.data import Dataset, load_dataset
from trainables.engine import TrialRun
from trainables.orderings import epoch_order, make_ordering

BASE = TrialConfig(
    model="lstm",
    ordering="reps-3",
    dataset=DatasetConfig(categories=3, features=6, train_per_category=40, test_per_category=5),
    hidden=(6,),
    learning_rate=0.1,
    replicates=1,
    epochs=2,
    eval_every=100,
    bptt_window=5,
    dtype="float64",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny ops: intra-op threads only cost here, and much more when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ReferenceLSTM(nn.Module):
    """Stacked one-layer ``nn.LSTM`` modules and an ``nn.Linear`` readout, from engine weights."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for layer, b in enumerate(biases[:-1]):
            w_ih, w_hh = weights[2 * layer], weights[2 * layer + 1]
            lstm = nn.LSTM(w_ih.shape[1], w_hh.shape[1], batch_first=True, dtype=torch.float64)
            with torch.no_grad():
                lstm.weight_ih_l0.copy_(w_ih)
                lstm.weight_hh_l0.copy_(w_hh)
                lstm.bias_ih_l0.copy_(b)
                lstm.bias_hh_l0.zero_()
            lstm.bias_hh_l0.requires_grad_(False)  # the engine has one bias per layer
            self.layers.append(lstm)
        self.readout = nn.Linear(weights[-1].shape[1], weights[-1].shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.readout.weight.copy_(weights[-1])
            self.readout.bias.copy_(biases[-1])

    def forward(
        self, x: torch.Tensor, start: list[tuple[torch.Tensor, torch.Tensor]] | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """x [1, L, I] from ``start`` ((h, c) per layer; None = zeros): logits [L, O], final."""
        final = []
        for index, lstm in enumerate(self.layers):
            state = None if start is None else tuple(t[None, None] for t in start[index])
            x, (h, c) = lstm(x, state)
            final.append((h[0, 0], c[0, 0]))
        return self.readout(x[0]), final

    def parameters_in_engine_order(self) -> list[torch.Tensor]:
        weights = [w for lstm in self.layers for w in (lstm.weight_ih_l0, lstm.weight_hh_l0)]
        biases = [lstm.bias_ih_l0 for lstm in self.layers]
        return [*weights, self.readout.weight, *biases, self.readout.bias]


def _loss(z: torch.Tensor, item: int, data: Dataset, config: TrialConfig) -> torch.Tensor:
    label = int(data.train_y[item])
    return item_loss(z, item_target(config, data, data.train_x[item], label), label, config)


def _evaluate(net: ReferenceLSTM, data: Dataset, config: TrialConfig) -> float:
    """Mean test loss: each item alone from zeros, or the stream the engine documents."""
    x = torch.as_tensor(data.test_x, dtype=torch.float64)
    if config.test_protocol == "isolated":
        z = torch.stack([net(x[i][None, None], None)[0][0] for i in range(len(x))])
        order = np.arange(len(x))
    else:  # test stream: the test ordering with seed (seed, replicate, 7), from zeros
        ordering = make_ordering(config.test_ordering or config.ordering)
        order = epoch_order(data.test_y, ordering, (config.seed, 0, 7), 0)
        z, _ = net(x[order][None], None)
    if config.task == "reconstruct":
        return float(((torch.sigmoid(z) - x[order]) ** 2).mean())
    losses = [
        item_loss(z[i], item_target(config, data, data.test_x[j], int(data.test_y[j])),
                  int(data.test_y[j]), config)
        for i, j in enumerate(order)
    ]
    return float(torch.stack(losses).mean())


def reference_run(config: TrialConfig) -> tuple[list[torch.Tensor], list[float]]:
    """Replicate 0 trained by the reference: final parameters (engine order) and test curve."""
    data = load_dataset(config.dataset)
    start = TrialRun(config)
    net = ReferenceLSTM([w[0] for w in start.weights], [b[0] for b in start.biases])
    trained = [p for p in net.parameters() if p.requires_grad]
    if config.optimizer == "rmsprop":
        optimizer = torch.optim.RMSprop(trained, lr=config.learning_rate, alpha=config.rms_alpha,
                                        eps=config.rms_eps, momentum=config.momentum)
    else:
        optimizer = torch.optim.SGD(trained, lr=config.learning_rate)
    order = stream_order(config, data, 0)
    k = config.bptt_window
    states: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # after item m, detached
    curve, evals = [], set(start.eval_points)
    for n in range(len(order) + 1):
        if n in evals:
            with torch.no_grad():
                curve.append(_evaluate(net, data, config))
        if n == len(order):
            break
        first = max(0, n - k + 1)
        window = torch.as_tensor(data.train_x[order[first : n + 1]], dtype=torch.float64)
        z, final = net(window[None], states[first - 1] if first > 0 else None)
        loss = _loss(z[-1], int(order[n]), data, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        states.append([(h.detach(), c.detach()) for h, c in final])
    return [p.detach() for p in net.parameters_in_engine_order()], curve


CASES = {
    "sigmoid-mse-window5": dict(),
    "window1": dict(bptt_window=1),
    "stacked-softmax-ce-streamed-other-ordering": dict(
        hidden=(5, 4), bptt_window=3, output="softmax", loss="cross-entropy",
        test_protocol="streamed", test_ordering="reps-1"),
    "sigmoid-ce-random-streamed": dict(
        output="sigmoid", loss="cross-entropy", ordering="random", test_protocol="streamed"),
    "rmsprop-momentum-softmax-mse": dict(
        optimizer="rmsprop", learning_rate=0.003, momentum=0.9, output="softmax"),
    "reconstruct-multiscale-stream": dict(
        task="reconstruct", hidden=(3,), ordering="stream", epochs=1, bptt_window=4,
        dataset=DatasetConfig(name="multiscale-stream", stream_length=200, noise=0.2)),
}


@pytest.mark.parametrize("changes", CASES.values(), ids=CASES.keys())
def test_engine_matches_torch_lstm_reference(changes: dict) -> None:
    """Replicate 0 equals nn.LSTM + TBPTT + torch.optim to 1e-9 (weights and test curve)."""
    config = BASE.replace(**changes)
    run = TrialRun(config)
    result = (list(run), run.result())[1]
    params, curve = reference_run(config)
    assert run.step >= 200
    for mine, theirs in zip([*run.weights, *run.biases], params, strict=True):
        assert (mine[0] - theirs).abs().max().item() < 1e-9
    np.testing.assert_allclose(result.test_loss[0], curve, rtol=0, atol=1e-9)
    assert float((run.weights[1][0] - TrialRun(config).weights[1][0]).abs().max()) > 1e-4


def test_replicate_of_batched_run_equals_run_alone() -> None:
    """Replicate r of an R=3 run with per-replicate learning rates equals r trained alone."""
    config = BASE.replace(replicates=3, epochs=1, test_protocol="streamed")
    rates = [0.1, 0.03, 0.2]
    batched = TrialRun(config, learning_rate=rates)
    batched_result = (list(batched), batched.result())[1]
    for r in (0, 2):
        alone = TrialRun(config.replace(replicates=1), replicate_ids=[r], learning_rate=[rates[r]])
        alone_result = (list(alone), alone.result())[1]
        for mine, theirs in zip([*batched.weights, *batched.biases],
                                [*alone.weights, *alone.biases], strict=True):
            torch.testing.assert_close(mine[r], theirs[0], rtol=0, atol=1e-12)
        for mine, theirs in zip(batched._hidden, alone._hidden, strict=True):  # rings [K, R, H]
            torch.testing.assert_close(mine[:, r], theirs[:, 0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(batched_result.test_loss[r], alone_result.test_loss[0],
                                   rtol=0, atol=1e-12)
    assert len({round(float(v), 9) for v in batched_result.test_loss[:, -1]}) == 3


@pytest.mark.parametrize(
    "changes",
    [dict(), dict(optimizer="rmsprop", batch_size=2, learning_rate=0.003, dtype="float32")],
    ids=["sgd-float64", "rmsprop-batch2-float32"],
)
def test_resume_from_pickled_state_is_exact(changes: dict) -> None:
    """Stop mid-window, pickle state_dict, load into a new run, finish == uninterrupted run."""
    config = BASE.replace(eval_every=37, replicates=2, **changes)  # 37: not a window multiple
    whole = TrialRun(config)
    whole_result = (list(whole), whole.result())[1]
    first = TrialRun(config)
    points = iter(first)
    for _ in range(4):
        next(points)
    assert first.step % config.bptt_window != 0
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = TrialRun(config)
    resumed.load_state_dict(state)
    list(resumed)
    result = resumed.result()
    np.testing.assert_array_equal(result.test_loss, whole_result.test_loss)
    np.testing.assert_array_equal(result.test_accuracy, whole_result.test_accuracy)
    for a, b in zip([*resumed.weights, *resumed.biases, *resumed._hidden],
                    [*whole.weights, *whole.biases, *whole._hidden], strict=True):
        assert torch.equal(a, b)


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    """float32 on CPU: same config, same curves and weights; another seed, other weights."""
    config = BASE.replace(dtype="float32", replicates=2, epochs=1)
    runs = [TrialRun(config), TrialRun(config), TrialRun(config.replace(seed=1))]
    results = [(list(run), run.result())[1] for run in runs]
    np.testing.assert_array_equal(results[0].test_loss, results[1].test_loss)
    for key, value in results[0].per_replicate.items():
        np.testing.assert_array_equal(value, results[1].per_replicate[key])
    for a, b in zip([*runs[0].weights, *runs[0].biases], [*runs[1].weights, *runs[1].biases],
                    strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0].weights[0], runs[2].weights[0])


def test_streamed_and_isolated_protocols_differ_and_are_finite() -> None:
    """Same training (identical weights), different test curves; streamed reps-1 vs reps-5
    differ too; every curve finite; the run metrics exist."""
    config = BASE.replace(ordering="reps-5", replicates=2, epochs=1)
    results, weights = {}, {}
    for name, changes in {
        "isolated": dict(),
        "streamed-same": dict(test_protocol="streamed"),
        "streamed-reps-1": dict(test_protocol="streamed", test_ordering="reps-1"),
    }.items():
        run = TrialRun(config.replace(**changes))
        results[name] = (list(run), run.result())[1]
        weights[name] = run.weights
        assert np.isfinite(results[name].test_loss).all()
        assert "test_loss_auc" in results[name].summary
    for name in ("streamed-same", "streamed-reps-1"):
        assert all(torch.equal(a, b) for a, b in zip(weights[name], weights["isolated"],
                                                      strict=True))
        streamed, isolated = results[name].test_loss, results["isolated"].test_loss
        assert not np.allclose(streamed[:, 1:], isolated[:, 1:])
    assert not np.allclose(results["streamed-same"].test_loss[:, 1:],
                           results["streamed-reps-1"].test_loss[:, 1:])


def test_window_changes_training_and_latents_are_analysed() -> None:
    """K=1 and K=5 train differently; on multiscale-stream the first layer's units get
    timescale correlations [R, H, G] like the leaky models."""
    config = BASE.replace(task="reconstruct", hidden=(3,), ordering="stream", epochs=1,
                          replicates=2,
                          dataset=DatasetConfig(name="multiscale-stream", stream_length=120))
    runs = [TrialRun(config.replace(bptt_window=k)) for k in (1, 5)]
    results = [(list(run), run.result())[1] for run in runs]
    assert not torch.equal(runs[0].weights[1], runs[1].weights[1])
    assert results[1].timescale_r2 is not None and results[1].timescale_r2.shape == (2, 3, 3)
    assert np.isfinite(results[1].timescale_r2).all()


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_bptt_window_is_validated(window: object) -> None:
    with pytest.raises(ConfigError, match="bptt_window"):
        BASE.replace(bptt_window=window)
