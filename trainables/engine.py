"""The per-sample SGD engine: R replicate networks of one configuration trained as one computation.

Read top to bottom: resolve the config, build data and orderings, initialise R networks, then the
per-sample loop (forward with leaky memory, hand-written backward, SGD update), evaluation, and
the result. Per-sample SGD cannot be batched over time, so the engine batches over replicates:
every weight carries a leading replicate axis and one step updates all R networks at once.

Shape letters: R replicates, T stream length, L chunk of steps, N test items, I inputs,
H hidden units of a layer, O outputs.

Example:
    >>> from trainables.config import DatasetConfig, TrialConfig
    >>> config = TrialConfig(model="leaky-reset", ordering="reps-3", replicates=3, eval_every=200,
    ...                      dataset=DatasetConfig(train_per_category=100, test_per_category=20))
    >>> run = TrialRun(config)
    >>> points = list(run)            # trains, yielding after each evaluation
    >>> [p.samples_seen for p in points]
    [0, 200, 400]
    >>> result = run.result()
    >>> result.test_loss.shape, "test_loss_auc" in result.summary
    ((3, 3), True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data import Dataset, load_dataset
from trainables.metrics import bootstrap_ci, run_metrics, summarize
from trainables.models import MEMORIES
from trainables.orderings import category_changes, epoch_order, make_ordering

CHUNK_STEPS = 256
"""Steps whose inputs are gathered at once (bounds memory: R x L x I floats)."""


@dataclass
class EvalPoint:
    """Test metrics of all replicates after ``samples_seen`` training samples."""

    index: int
    samples_seen: int
    test_loss: np.ndarray  # [R]
    test_accuracy: np.ndarray  # [R]
    diverged: bool
    """Some replicate's test loss is NaN or infinite; the run stops after this point."""

    def metrics(self) -> dict[str, float]:
        """Replicate means and 95% bootstrap CIs under ``eval/`` names (finite replicates only)."""
        out: dict[str, float] = {}
        for name, values in (("test_loss", self.test_loss), ("test_accuracy", self.test_accuracy)):
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            low, high = bootstrap_ci(finite)
            out[f"eval/{name}"] = float(finite.mean())
            out[f"eval/{name}_ci_low"] = low
            out[f"eval/{name}_ci_high"] = high
        return out


@dataclass
class TrialResult:
    """Curves and run metrics of one trial (all replicates)."""

    config: TrialConfig
    samples_seen: np.ndarray  # [E]
    test_loss: np.ndarray  # [R, E]
    test_accuracy: np.ndarray  # [R, E]
    diverged: bool
    seconds: float
    per_replicate: dict[str, np.ndarray] = field(default_factory=dict)
    """Each run metric per replicate ([R]); empty for a diverged run."""
    summary: dict[str, float] = field(default_factory=dict)
    """Replicate mean and CI of each run metric, plus ``perf/`` throughput."""


def eval_schedule(total: int, epoch_length: int, every: int, kind: str) -> list[int]:
    """Samples seen at each evaluation: 0, the schedule's points, every epoch end, and ``total``.

    ``linear``: every ``every`` samples. ``log``: ``every`` points per decade (1, ..., total).
    """
    if kind == "linear":
        points = set(range(0, total + 1, every))
    else:
        decades = math.log10(max(total, 1))
        exponents = np.linspace(0.0, decades, max(2, int(math.ceil(decades * every)) + 1))
        points = {0, *np.unique(np.round(10.0**exponents).astype(int)).tolist()}
    points.update(range(epoch_length, total + 1, epoch_length))
    points.add(total)
    return sorted(p for p in points if 0 <= p <= total)


def _replicate_seed(seed: int, replicate: int, stream: int) -> int:
    """Independent 63-bit seed for (base seed, replicate, purpose); purpose 0 = ordering, 1 = init."""
    state = np.random.SeedSequence([seed, replicate, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class TrialRun:
    """R replicate networks of one configuration, trained one sample at a time.

    Iterating trains from the current position and yields an :class:`EvalPoint` after each
    evaluation; :meth:`state_dict` / :meth:`load_state_dict` resume exactly (CPU: same numbers).

    Args:
        config: the configuration; ``config.replicates`` networks are trained.
        learning_rate: per-replicate learning rates [R] (default: ``config.learning_rate``).
        leak: per-replicate leaks [R] (default: ``config.leak``).
        replicate_ids: which replicate seeds to train (default 0..R-1); ``[r]`` reproduces
            replicate r of a larger run on its own.
        data: an already loaded data set (default: built from ``config.dataset``).
    """

    def __init__(
        self,
        config: TrialConfig,
        *,
        learning_rate: Sequence[float] | None = None,
        leak: Sequence[float] | None = None,
        replicate_ids: Sequence[int] | None = None,
        data: Dataset | None = None,
    ) -> None:
        # --- resolve the config -----------------------------------------------------------------
        self.config = config
        r = config.replicates
        self.replicate_ids = list(range(r)) if replicate_ids is None else list(replicate_ids)
        if len(self.replicate_ids) != r:
            raise ValueError(f"len(replicate_ids) == replicates must hold, got {self.replicate_ids}")
        self.learning_rate = np.broadcast_to(
            np.asarray(config.learning_rate if learning_rate is None else learning_rate, float), (r,)
        ).copy()
        self.leak = np.broadcast_to(
            np.asarray(config.leak if leak is None else leak, float), (r,)
        ).copy()
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        as_tensor = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731

        # --- data and orderings -----------------------------------------------------------------
        self.data = load_dataset(config.dataset) if data is None else data
        self.epoch_length = len(self.data.train_y)
        ordering = make_ordering(config.ordering)
        # order[r] is replicate r's whole training stream: replicate seeds, not the model, fix it,
        # so replicate r sees the same items in every model and (pairing) every ordering.
        order = np.stack([
            np.concatenate([
                epoch_order(self.data.train_y, ordering, (config.seed, rid), epoch)
                for epoch in range(config.epochs)
            ])
            for rid in self.replicate_ids
        ])  # [R, T]
        self.total_samples = order.shape[1]
        self.eval_points = eval_schedule(
            self.total_samples, self.epoch_length, config.eval_every, config.eval_schedule
        )
        memory = MEMORIES[config.model]
        resets = memory.resets(category_changes(self.data.train_y[order]))  # [R, T] or None
        self._order = torch.as_tensor(order, device=self.device)
        self._keep = None if resets is None else as_tensor(~resets)  # 1 keeps memory, 0 resets
        self._train_x = as_tensor(self.data.train_x)  # [Ntrain, I]
        num_outputs = self.data.num_classes
        self._targets = as_tensor(np.eye(num_outputs)[self.data.train_y])  # one-hot [Ntrain, O]
        self._test_x = as_tensor(self.data.test_x)  # [N, I]
        self._test_y = torch.as_tensor(self.data.test_y, device=self.device)  # [N]
        self._test_targets = as_tensor(np.eye(num_outputs)[self.data.test_y])  # [N, O]

        # --- R networks: Xavier-uniform weights, zero biases, one generator per replicate -------
        sizes = [self.data.num_features, *config.hidden, num_outputs]
        self.weights: list[torch.Tensor] = []  # layer l: [R, out, in]
        self.biases: list[torch.Tensor] = []  # layer l: [R, out]
        generators = [
            torch.Generator().manual_seed(_replicate_seed(config.seed, rid, 1))
            for rid in self.replicate_ids
        ]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            # RNG draw in float64 on CPU, so init is identical for every dtype and device
            w = torch.stack([
                (torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64) * 2 - 1) * bound
                for g in generators
            ])
            self.weights.append(w.to(self.dtype).to(self.device))
            self.biases.append(torch.zeros(r, fan_out, dtype=self.dtype, device=self.device))
        self._unit_leak = [as_tensor(memory.unit_leak(self.leak, size)) for size in config.hidden]
        self._hidden = [torch.zeros(r, size, dtype=self.dtype, device=self.device)
                        for size in config.hidden]  # H(n-1) of each hidden layer, [R, H]
        self._lr = as_tensor(self.learning_rate)[:, None]  # [R, 1]
        self._scaled = config.gradient == "leak-scaled"
        self._output_grad = _output_gradient(config.output, config.loss, num_outputs)

        # --- progress -----------------------------------------------------------------------------
        self.step = 0  # samples seen
        self._next_eval = 0
        self._curve_loss: list[np.ndarray] = []
        self._curve_accuracy: list[np.ndarray] = []
        self._diverged = False
        self._train_seconds = 0.0
        self._seconds = 0.0

    # ------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[EvalPoint]:
        while self._next_eval < len(self.eval_points) and not self._diverged:
            started = time.perf_counter()
            self._train_until(self.eval_points[self._next_eval])
            trained = time.perf_counter()
            point = self._evaluate()
            self._train_seconds += trained - started
            self._seconds += time.perf_counter() - started
            yield point

    @torch.no_grad()
    def _train_until(self, stop: int) -> None:
        """Per-sample SGD on every replicate from ``self.step`` up to ``stop`` samples."""
        weights, biases, hidden = self.weights, self.biases, self._hidden
        depth = len(hidden)
        while self.step < stop:
            start, end = self.step, min(stop, self.step + CHUNK_STEPS)
            items = self._order[:, start:end]  # [R, L]
            chunk_x = self._train_x[items]  # [R, L, I]
            chunk_t = self._targets[items]  # [R, L, O]
            chunk_keep = None if self._keep is None else self._keep[:, start:end]  # [R, L]
            for j in range(end - start):
                x = chunk_x[:, j]  # [R, I]
                # ===== forward: leaky hidden layers, H = a H(n-1) + (1 - a) ReLU(W x + b) ========
                inputs, pres, leaks = [x], [], []
                for layer in range(depth):
                    a = self._unit_leak[layer]  # [R, H]
                    if chunk_keep is not None:
                        a = a * chunk_keep[:, j, None]  # a = 0 on a reset step
                    pre = _linear(weights[layer], biases[layer], inputs[-1])  # [R, H]
                    h = torch.lerp(torch.relu(pre), hidden[layer], a)  # a*H(n-1) + (1-a)*ReLU
                    hidden[layer] = h
                    inputs.append(h)
                    pres.append(pre)
                    leaks.append(a)
                z = _linear(weights[depth], biases[depth], inputs[-1])  # [R, O]
                # ===== backward, by hand: H(n-1) is a constant (no gradient through time) ========
                delta = self._output_grad(z, chunk_t[:, j]) * self._lr  # lr * dL/dz, [R, O]
                for layer in range(depth, -1, -1):
                    if layer < depth:
                        # dL/dpre = dL/dH * ReLU'(pre) * (1 - a)   [leak-scaled]
                        #         = dL/dH * ReLU'(pre)             [leak-unscaled]
                        grad_h = delta
                        if self._scaled:
                            grad_h = grad_h * (1 - leaks[layer])
                        delta = torch.where(pres[layer] > 0, grad_h, 0.0)  # [R, H]
                    if layer > 0:
                        back = torch.bmm(delta[:, None, :], weights[layer])[:, 0, :]  # W^T delta
                    # SGD: W -= lr * delta (x) input, all replicates in one batched outer product
                    weights[layer].addcmul_(delta[:, :, None], inputs[layer][:, None, :], value=-1)
                    biases[layer].sub_(delta)
                    if layer > 0:
                        delta = back
            self.step = end

    @torch.no_grad()
    def _evaluate(self) -> EvalPoint:
        """Test loss and accuracy of every replicate, each test item alone (memory reset)."""
        h = self._test_x  # [N, I], shared by all replicates
        depth = len(self._hidden)
        for layer in range(depth + 1):
            # [N, I] @ [R, I, H] -> [R, N, H]; a lone item has no memory: H = ReLU(W x + b)
            z = torch.matmul(h, self.weights[layer].transpose(1, 2)) + self.biases[layer][:, None]
            h = torch.relu(z) if layer < depth else z
        loss = _item_loss(z, self._test_targets, self._test_y, self.config)  # [R, N]
        test_loss = loss.mean(dim=1).double().cpu().numpy()  # host sync
        accuracy = (z.argmax(dim=2) == self._test_y).double().mean(dim=1).cpu().numpy()
        self._diverged = not bool(np.isfinite(test_loss).all())
        self._curve_loss.append(test_loss)
        self._curve_accuracy.append(accuracy)
        point = EvalPoint(self._next_eval, self.step, test_loss, accuracy, self._diverged)
        self._next_eval += 1
        return point

    # ------------------------------------------------------------------------------------------
    def result(self) -> TrialResult:
        """Curves so far and run metrics (replicate values, means and CIs)."""
        samples = np.array(self.eval_points[: len(self._curve_loss)], dtype=np.int64)
        loss = np.stack(self._curve_loss, axis=1) if self._curve_loss else np.zeros((0, 0))
        accuracy = np.stack(self._curve_accuracy, axis=1) if self._curve_accuracy else loss
        result = TrialResult(self.config, samples, loss, accuracy, self._diverged, self._seconds)
        if self._diverged or samples.size < 2:
            return result
        result.per_replicate = run_metrics(
            samples, loss, accuracy, self.epoch_length, self.config.target_accuracy
        )
        result.summary = summarize(result.per_replicate)
        if self._train_seconds > 0:
            replicate_samples = self.config.replicates * int(samples[-1])
            result.summary["perf/replicate_samples_per_second"] = (
                replicate_samples / self._train_seconds
            )
        return result

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, memory state, position, curves."""
        return {
            "config": self.config.to_dict(),
            "replicate_ids": list(self.replicate_ids),
            "learning_rate": self.learning_rate.tolist(),
            "leak": self.leak.tolist(),
            "step": self.step,
            "next_eval": self._next_eval,
            "weights": [w.cpu().clone() for w in self.weights],
            "biases": [b.cpu().clone() for b in self.biases],
            "hidden": [h.cpu().clone() for h in self._hidden],
            "curve_loss": [c.copy() for c in self._curve_loss],
            "curve_accuracy": [c.copy() for c in self._curve_accuracy],
            "diverged": self._diverged,
            "train_seconds": self._train_seconds,
            "seconds": self._seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a run of the same config and replicates."""
        mismatch = [
            (key, state[key], mine)
            for key, mine in (
                ("config", self.config.to_dict()),
                ("replicate_ids", list(self.replicate_ids)),
                ("learning_rate", self.learning_rate.tolist()),
                ("leak", self.leak.tolist()),
            )
            if state[key] != mine
        ]
        if mismatch:
            key, theirs, mine = mismatch[0]
            raise ValueError(f"checkpoint {key} must equal this run's, got {theirs} vs {mine}")
        put = lambda t: t.to(dtype=self.dtype, device=self.device).clone()  # noqa: E731
        self.weights = [put(w) for w in state["weights"]]
        self.biases = [put(b) for b in state["biases"]]
        self._hidden = [put(h) for h in state["hidden"]]
        self.step = int(state["step"])
        self._next_eval = int(state["next_eval"])
        self._curve_loss = [np.asarray(c) for c in state["curve_loss"]]
        self._curve_accuracy = [np.asarray(c) for c in state["curve_accuracy"]]
        self._diverged = bool(state["diverged"])
        self._train_seconds = float(state["train_seconds"])
        self._seconds = float(state["seconds"])


def _linear(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W x + b per replicate: [R, O, I], [R, O], [R, I] -> [R, O].

    Written as the row vector x^T W^T: on CPU, bmm with a column vector on the right takes a
    slow path (about 13x slower for 8 x 392 x 784, measured with torch 2.13).
    """
    return torch.baddbmm(bias[:, None, :], x[:, None, :], weight.transpose(1, 2))[:, 0, :]


def run_trial(config: TrialConfig, **kwargs: Any) -> TrialResult:
    """Train ``config`` to the end and return its result (``kwargs`` go to :class:`TrialRun`)."""
    run = TrialRun(config, **kwargs)
    for _ in run:
        pass
    return run.result()


# ---------------------------------------------------------------------------------------------
# output layer: gradient of the per-sample loss w.r.t. the output pre-activation z, and test loss
# ---------------------------------------------------------------------------------------------
def _output_gradient(output: str, loss: str, num_outputs: int) -> Any:
    """dL/dz [R, O] for a per-sample loss; MSE and binary CE are means over the O outputs."""
    scale = 1.0 / num_outputs

    def sigmoid_mse(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(z)
        return (2 * scale) * (y - t) * y * (1 - y)

    def softmax_mse(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(z, dim=1)
        g = (2 * scale) * (y - t)  # dL/dy
        return y * (g - (y * g).sum(dim=1, keepdim=True))  # softmax Jacobian^T g

    def sigmoid_ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return scale * (torch.sigmoid(z) - t)

    def softmax_ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=1) - t

    table = {
        ("sigmoid", "mse"): sigmoid_mse,
        ("softmax", "mse"): softmax_mse,
        ("sigmoid", "cross-entropy"): sigmoid_ce,
        ("softmax", "cross-entropy"): softmax_ce,
    }
    return table[(output, loss)]


def _item_loss(
    z: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, config: TrialConfig
) -> torch.Tensor:
    """Loss of each test item [R, N] from logits z [R, N, O] (same definitions as training)."""
    if config.loss == "mse":
        y = torch.sigmoid(z) if config.output == "sigmoid" else torch.softmax(z, dim=2)
        return ((y - targets) ** 2).mean(dim=2)
    if config.output == "softmax":
        return -torch.log_softmax(z, dim=2).gather(2, labels.expand(z.shape[0], -1)[:, :, None])[
            :, :, 0
        ]
    return torch.nn.functional.binary_cross_entropy_with_logits(
        z, targets.expand_as(z), reduction="none"
    ).mean(dim=2)
