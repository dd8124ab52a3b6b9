"""The per-sample SGD engine: R replicate networks of one configuration trained as one computation.

Read top to bottom: resolve the config, build data and orderings, initialise R networks, then the
per-sample loop (forward with leaky memory, hand-written backward, SGD update), evaluation, and
the result. Per-sample SGD cannot be batched over time, so the engine batches over replicates:
every weight carries a leading replicate axis and one step updates all R networks at once.
Many replicates of small nets are stored with that axis innermost in memory (same shapes and
numbers, faster: see ``_replicate_minor``).

Shape letters: R replicates, T stream length, L chunk of steps, N test items, I inputs,
H hidden units of a layer, O outputs, G groups (of hidden units / input features).

Variants are data, not branches on model names: the memory rule gives each unit's base leak and
a reset mask ([R, T] or [R, T, G]); the task gives the targets (one-hot or the input itself); the
optimizer is either the fused per-sample SGD update (the paper's setting) or gradient buffers
applied every ``batch_size`` samples by SGD or RMSprop.

One model brings its own network: ``lstm`` (paper A.8-A.10, ``trainables/lstm.py``) is chosen
once, when a run is built, as a strategy object (``self._recurrent``) that supplies the init,
the per-sample gradient (truncated BPTT, autograd) and the test forward; data, orderings, the
evaluation schedule, the optimizer step, metrics and checkpoints are the same code for it.

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

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data import Dataset, load_dataset
from trainables.lstm import LSTMNetwork
from trainables.metrics import (
    bootstrap_ci,
    group_metrics,
    run_metrics,
    summarize,
    timescale_metrics,
    timescale_r2,
)
from trainables.models import MEMORIES, MemoryParams, threshold_resets, unit_groups
from trainables.orderings import category_changes, epoch_order, make_ordering

REPLICATE_MINOR_REPLICATES = 128
"""Runs of at least this many replicates of nets with at most REPLICATE_MINOR_WEIGHTS weights
(in x out) per layer store the replicate axis innermost (see ``TrialRun._replicate_minor``).
Measured (CPU time, 1 thread, minor / major): 16-8-4 at R = 64, 128, 256, 1024: 1.09, 1.15,
1.28, 1.39; at R = 1024 layers of 16 x 16: 1.24, 16 x 32 and 24 x 24: 1.0, 32 x 16: 0.87,
64 x 32: 0.67."""
REPLICATE_MINOR_WEIGHTS = 256
QUEUE_WEIGHTS = 1 << 21
"""Layers with at least this many weights over all replicates (R x in x out; 8 MiB of float32,
more than the caches hold) queue their per-sample SGD updates (``_QueuedUpdates``), in
replicate-major runs of the fused SGD path. Measured (CPU time, queued / immediate):
784-392-10 at R = 1: 0.9, R = 8: 1.6, R = 64: 2.4; 256-256-10 at R = 8 (0.5M): 0.93."""
QUEUE_STEPS = 16
"""Queued rank-1 updates applied at once (one bmm of inner size QUEUE_STEPS)."""
CHUNK_STEPS = 256
"""Most steps whose inputs are gathered at once."""
CHUNK_VALUES = 1 << 18
"""Most input values gathered at once (L x R x I <= this, but at least one step): 1 MiB of
float32 stays in cache (16-8-4 at R = 1024 ran about 1.2x faster than with 2^22), and a
784-input net at R = 1024 gathers one step at a time, not 256 (800 MiB)."""


@dataclass
class EvalPoint:
    """Test metrics of all replicates after ``samples_seen`` training samples."""

    index: int
    samples_seen: int
    test_loss: np.ndarray  # [R]
    test_accuracy: np.ndarray  # [R]
    diverged: bool
    """Some replicate's test loss is NaN or infinite; the run stops after this point."""
    group_loss: np.ndarray | None = None
    """reconstruct: test loss of each feature group, [R, G] (None for classify)."""

    def metrics(self) -> dict[str, float]:
        """Replicate means and 95% bootstrap CIs under ``eval/`` names (finite replicates only)."""
        out: dict[str, float] = {}
        curves = [("test_loss", self.test_loss), ("test_accuracy", self.test_accuracy)]
        if self.group_loss is not None:
            curves += [(f"test_loss_group{g}", v) for g, v in enumerate(self.group_loss.T)]
        for name, values in curves:
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
    group_loss: np.ndarray | None = None
    """reconstruct: per-feature-group test loss curves [R, E, G]."""
    timescale_r2: np.ndarray | None = None
    """Data with latent states: squared Pearson r of each first-layer hidden unit with each
    latent over the test stream run with memory on, [R, H, G]."""


def eval_schedule(total: int, epoch_length: int, every: int, kind: str) -> list[int]:
    """Samples seen at each evaluation: 0, the schedule's points, every epoch end, and ``total``.

    ``linear``: every ``every`` samples. ``log``: ``every`` points per decade (1, ..., total).
    """
    if kind == "linear":
        points = set(range(0, total + 1, every))
    else:
        decades = math.log10(max(total, 1))
        exponents = np.linspace(0.0, decades, max(2, math.ceil(decades * every) + 1))
        points = {0, *np.unique(np.round(10.0**exponents).astype(int)).tolist()}
    points.update(range(epoch_length, total + 1, epoch_length))
    points.add(total)
    return sorted(p for p in points if 0 <= p <= total)


def _replicate_seed(seed: int, replicate: int, stream: int) -> int:
    """Independent 63-bit seed for (base seed, replicate, purpose): 0 = ordering, 1 = init."""
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
        reset_threshold: per-replicate reset thresholds [R] (default: ``config.reset_threshold``).
        group_leaks: per-replicate group leaks [R, G] or [G] (default: ``config.group_leaks``).
    """

    def __init__(
        self,
        config: TrialConfig,
        *,
        learning_rate: Sequence[float] | None = None,
        leak: Sequence[float] | None = None,
        replicate_ids: Sequence[int] | None = None,
        data: Dataset | None = None,
        reset_threshold: Sequence[float] | None = None,
        group_leaks: Sequence[Sequence[float]] | Sequence[float] | None = None,
    ) -> None:
        # --- resolve the config -----------------------------------------------------------------
        self.config = config
        r = config.replicates
        self.replicate_ids = list(range(r)) if replicate_ids is None else list(replicate_ids)
        if len(self.replicate_ids) != r:
            raise ValueError(
                f"len(replicate_ids) == replicates must hold, got {self.replicate_ids}"
            )
        per_replicate = lambda v, d: np.broadcast_to(  # noqa: E731
            np.asarray(d if v is None else v, float), (r,)
        ).copy()
        self.learning_rate = per_replicate(learning_rate, config.learning_rate)
        self.leak = per_replicate(leak, config.leak)
        self.reset_threshold = per_replicate(reset_threshold, config.reset_threshold)
        leaks = np.asarray(config.group_leaks if group_leaks is None else group_leaks, float)
        self.group_leaks = np.broadcast_to(leaks, (r, leaks.shape[-1])).copy()  # [R, G]
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        as_tensor = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        memory = MEMORIES[config.model]
        if (
            config.reset_scope == "group"
            and config.model == "multiscale-reset"
            and config.feature_groups != self.group_leaks.shape[1]
        ):
            raise ValueError(
                "feature_groups == len(group_leaks) must hold for multiscale-reset with "
                f"reset_scope='group', got feature_groups={config.feature_groups}, "
                f"group_leaks={config.group_leaks}"
            )

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
        self._train_x = as_tensor(self.data.train_x)  # [Ntrain, I]
        self._test_x = as_tensor(self.data.test_x)  # [N, I]
        self._test_y = torch.as_tensor(self.data.test_y, device=self.device)  # [N]
        self._reconstruct = config.task == "reconstruct"
        if self._reconstruct:  # autoencoder: the target is the input itself
            num_outputs = self.data.num_features
            self._targets = self._train_x
            self._test_targets = self._test_x
        else:
            num_outputs = self.data.num_classes
            self._targets = as_tensor(np.eye(num_outputs)[self.data.train_y])  # one-hot [Ntr, O]
            self._test_targets = as_tensor(np.eye(num_outputs)[self.data.test_y])  # [N, O]
        self._memory = memory
        self._memory_params = MemoryParams(
            self.leak, self.group_leaks, self.reset_threshold, config.reset_scope,
            config.feature_groups,
        )
        # step-major [T, R], so a chunk of steps is one contiguous block of item indices
        self._order = torch.as_tensor(np.ascontiguousarray(order.T), device=self.device)
        self._keep = self._keep_mask(order, self.data.train_x, self.data.train_y)  # [T, R, 1|G]

        # --- R networks: Xavier-uniform weights, zero biases, one generator per replicate -------
        sizes = [self.data.num_features, *config.hidden, num_outputs]
        # Memory layout of the replicate axis (speed only; shapes and numbers do not depend on
        # it). Replicate-major (contiguous [R, out, in]) suits wide layers: one bmm per step.
        # Many replicates of narrow layers are faster replicate-minor (R has stride 1): every
        # product and update is then an elementwise op along R, where bmm would loop over R
        # tiny matrices (16-8-4 at R = 1024: about 1.4x; 784-392-10 at R = 8: 3-4x slower).
        self._replicate_minor = (
            config.model != "lstm"
            and r >= REPLICATE_MINOR_REPLICATES
            and max(i * o for i, o in itertools.pairwise(sizes)) <= REPLICATE_MINOR_WEIGHTS
        )
        self._linear, self._linear_t = (
            (_linear_replicate_minor, _linear_t_replicate_minor)
            if self._replicate_minor
            else (_linear, _linear_t)
        )
        # what _gather reads per chunk: [N, F] rows, or feature-major [F, N] when replicate-minor
        source = (lambda t: t.T.contiguous()) if self._replicate_minor else (lambda t: t)
        self._sources = {
            "train": source(self._train_x), "targets": source(self._targets),
            "test": source(self._test_x),
        }
        self.weights: list[torch.Tensor] = []  # layer l: [R, out, in]
        self.biases: list[torch.Tensor] = []  # layer l: [R, out]
        generators = [
            torch.Generator().manual_seed(_replicate_seed(config.seed, rid, 1))
            for rid in self.replicate_ids
        ]
        # lstm: LSTM layers instead of leaky ones, with their own weight and state layout
        self._recurrent: LSTMNetwork | None = None
        if config.model == "lstm":
            output_grad = _output_gradient(config.output, config.loss, num_outputs)
            self._recurrent = LSTMNetwork(sizes, config.bptt_window, output_grad)
            self.weights, self.biases = self._recurrent.init_params(
                generators, self.dtype, self.device
            )
        else:
            for fan_in, fan_out in itertools.pairwise(sizes):
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w = self._layout(torch.empty(r, fan_out, fan_in, dtype=self.dtype), axis=0)
                for replicate, g in enumerate(generators):  # one replicate at a time: peak memory
                    # RNG draw in float64 on CPU, so init is identical for every dtype and device
                    draw = torch.rand(fan_out, fan_in, generator=g, dtype=torch.float64)
                    w[replicate] = (draw * 2 - 1) * bound
                self.weights.append(w.to(self.device))
                self.biases.append(
                    self._layout(torch.zeros(r, fan_out, dtype=self.dtype, device=self.device))
                )
        self._unit_leak = [
            self._layout(as_tensor(memory.layer_leak(self._memory_params, size)))
            for size in config.hidden
        ]  # [R, H] per layer
        if self._recurrent is not None:  # lstm: rings of the last K (h, c) of each layer
            self._hidden = self._recurrent.init_state(r, self.dtype, self.device)  # [K, R, H]
        else:
            self._hidden = [
                self._layout(torch.zeros(r, size, dtype=self.dtype, device=self.device))
                for size in config.hidden
            ]  # H(n-1) of each hidden layer, [R, H]
        self._lr = as_tensor(self.learning_rate)[:, None]  # [R, 1]
        self._scaled = config.gradient == "leak-scaled"
        self._output_grad = _output_gradient(config.output, config.loss, num_outputs)
        # fused: W -= (lr dL/dz) (x) input in place, per sample (the paper's SGD, fastest path);
        # otherwise gradients go to buffers applied every batch_size samples (minibatch, rmsprop)
        self._fused = (
            config.optimizer == "sgd" and config.batch_size == 1 and self._recurrent is None
        )
        zeros = lambda t: torch.zeros_like(t)  # noqa: E731
        params = [*self.weights, *self.biases]
        self._grads = [] if self._fused else [zeros(p) for p in params]
        self._square_avg = [zeros(p) for p in params] if config.optimizer == "rmsprop" else []
        self._momentum_buf = (
            [zeros(p) for p in params] if config.optimizer == "rmsprop" and config.momentum else []
        )
        self._pending = 0  # samples in the gradient buffers
        # fused SGD on wide layers: updates queued, applied QUEUE_STEPS at a time (and always
        # before anything outside the training loop reads the weights)
        queued = self._fused and not self._replicate_minor
        self._queues = [
            _QueuedUpdates(w, QUEUE_STEPS)
            if queued and w.numel() >= QUEUE_WEIGHTS
            else None
            for w in self.weights
        ]
        self._chunk_steps = max(1, min(CHUNK_STEPS, CHUNK_VALUES // (r * self.data.num_features)))
        streamed = config.test_protocol == "streamed"
        self._test_streams = self._test_stream_order() if streamed else None

        # --- progress -------------------------------------------------------------------------
        self.step = 0  # samples seen
        self._next_eval = 0
        self._curve_loss: list[np.ndarray] = []
        self._curve_accuracy: list[np.ndarray] = []
        self._curve_group: list[np.ndarray] = []
        self._diverged = False
        self._train_seconds = 0.0
        self._seconds = 0.0

    # ------------------------------------------------------------------------------------------
    def _gather(self, source: str, items: torch.Tensor, steps: int) -> torch.Tensor:
        """Rows ``items`` [L * R] (step-major) of a data tensor as [L, R, F] in this run's layout.

        Replicate-minor runs gather from a feature-major copy [F, N] along N, which puts R
        innermost at once; transposing an [L, R, F] gather instead costs about 30x more.
        """
        rows, r = self._sources[source], len(self.replicate_ids)
        if self._replicate_minor:
            return rows.index_select(1, items).view(-1, steps, r).permute(1, 2, 0)  # [F, L, R]
        return rows.index_select(0, items).view(steps, r, -1)

    def _layout(self, t: torch.Tensor, axis: int = -2) -> torch.Tensor:
        """``t`` with its replicate axis ``axis`` laid out as this run stores it: stride 1 when
        replicate-minor (a copy if it is not), else contiguous. Same shape and values."""
        if not self._replicate_minor:
            return t.contiguous()
        return t.movedim(axis, -1).contiguous().movedim(-1, axis)

    def _keep_mask(
        self, order: np.ndarray, inputs: np.ndarray, labels: np.ndarray
    ) -> torch.Tensor | None:
        """1 keeps memory, 0 resets, step-major: [T, R, 1] (whole layer) or [T, R, G] (unit
        groups); None when the model never resets. ``order`` is [R, T]."""
        x = torch.as_tensor(inputs, dtype=self.dtype, device=self.device)
        order_t = torch.as_tensor(order, device=self.device)

        def input_resets(thresholds: np.ndarray, groups: int | None) -> np.ndarray:
            # the rule on consecutive items of each replicate's stream, in chunks (MNIST-sized
            # streams would not fit at once); the first item of the stream always resets
            threshold_t = torch.as_tensor(thresholds, dtype=self.dtype, device=self.device)
            parts = []
            for start in range(0, order.shape[1], 4096):
                index = order_t[:, max(start - 1, 0) : start + 4096]
                chunk = x.index_select(0, index.reshape(-1)).view(*index.shape, -1)
                resets = threshold_resets(chunk[:, :-1], chunk[:, 1:], threshold_t, groups)
                if start == 0:
                    first = torch.ones_like(resets[:, :1])
                    resets = torch.cat([first, resets], dim=1)
                parts.append(resets.cpu().numpy())
            return np.concatenate(parts, axis=1)

        resets = self._memory.reset_mask(
            category_changes(labels[order]), input_resets, self._memory_params
        )
        if resets is None:
            return None
        keep = ~np.asarray(resets, dtype=bool)  # [R, T] or [R, T, G]
        keep = keep[:, :, None] if keep.ndim == 2 else keep
        keep = np.ascontiguousarray(keep.transpose(1, 0, 2))  # [T, R, 1|G]: step j contiguous
        return torch.as_tensor(keep, dtype=self.dtype, device=self.device)

    def _leaks(self, keep: torch.Tensor | None, steps: int) -> list[torch.Tensor]:
        """a of each hidden layer on each of ``steps`` steps: [L, R, H] per layer.

        ``keep`` [L, R, 1|G] (None: never reset, the base leaks expanded without a copy).
        """
        if keep is None:
            return [a.expand(steps, -1, -1) for a in self._unit_leak]  # [L, R, H] views
        leaks = []
        for a in self._unit_leak:
            if keep.shape[2] == 1:
                leak = a * keep  # [R, H] * [L, R, 1] -> [L, R, H]; a = 0 on a reset step
            else:  # per-group resets: unit group g follows keep[..., g]
                index = torch.as_tensor(unit_groups(a.shape[1], keep.shape[2]), device=a.device)
                leak = a * keep[:, :, index]  # [L, R, H]
            leaks.append(self._layout(leak))
        return leaks

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

    def _forward(
        self, x: torch.Tensor, leaks: list[torch.Tensor], hidden: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """One step of every replicate: inputs of each layer, hidden pre-activations, output z.

        Hidden layers H = a H(n-1) + (1 - a) ReLU(W x + b) with ``leaks`` a [R, H]; ``hidden``
        holds H(n-1) and is updated in place.
        """
        depth = len(hidden)
        inputs, pres = [x], []
        for layer in range(depth):
            pre = self._product(layer, inputs[-1])  # [R, H]
            # a H(n-1) + (1 - a) ReLU(pre), in the fresh ReLU tensor (lerp_: r + a (H(n-1) - r))
            h = torch.relu(pre).lerp_(hidden[layer], leaks[layer])
            hidden[layer] = h
            inputs.append(h)
            pres.append(pre)
        return inputs, pres, self._product(depth, inputs[-1])  # z [R, O]

    def _product(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """W x + b of ``layer`` for every replicate, [R, in] -> [R, out], with queued updates."""
        out = self._linear(self.weights[layer], self.biases[layer], x)
        queue = self._queues[layer]
        return out if queue is None or not queue.count else out.sub_(queue.times(x))

    def _product_t(self, layer: int, delta: torch.Tensor) -> torch.Tensor:
        """W^T delta of ``layer`` for every replicate, [R, out] -> [R, in], with queued updates."""
        out = self._linear_t(self.weights[layer], delta)
        queue = self._queues[layer]
        return out if queue is None or not queue.count else out.sub_(queue.times_t(delta))

    @torch.no_grad()
    def _train_until(self, stop: int) -> None:
        """Per-sample SGD on every replicate from ``self.step`` up to ``stop`` samples."""
        if self._recurrent is not None:
            self._train_recurrent_until(stop)
            return
        weights, biases, hidden = self.weights, self.biases, self._hidden
        depth = len(hidden)
        while self.step < stop:
            start, end = self.step, min(stop, self.step + self._chunk_steps)
            steps = end - start
            # step-major gather: chunk_x[j] is one contiguous [R, I] block (slicing step j out of
            # an [R, L, I] chunk strides over R rows: about 1.5x slower on 16-8-4 at R = 1024)
            items = self._order[start:end].reshape(-1)  # [L * R], a view
            chunk_x = self._gather("train", items, steps)  # [L, R, I]
            chunk_t = self._gather("targets", items, steps)  # [L, R, O]
            keep = None if self._keep is None else self._keep[start:end]  # [L, R, 1|G]
            chunk_a = self._leaks(keep, steps)  # a, [L, R, H] per layer
            for j in range(steps):
                # ===== forward: leaky hidden layers, H = a H(n-1) + (1 - a) ReLU(W x + b) ========
                leaks = [a[j] for a in chunk_a]  # [R, H] per layer
                inputs, pres, z = self._forward(chunk_x[j], leaks, hidden)
                # ===== backward, by hand: H(n-1) is a constant (no gradient through time) ========
                delta = self._output_grad(z, chunk_t[j])  # dL/dz, [R, O] (a fresh tensor)
                if self._fused:
                    delta.mul_(self._lr)  # lr * dL/dz
                for layer in range(depth, -1, -1):
                    if layer < depth:
                        # dL/dpre = dL/dH * ReLU'(pre) * (1 - a)   [leak-scaled]
                        #         = dL/dH * ReLU'(pre)             [leak-unscaled]
                        # threshold_backward is autograd's own ReLU' (dL/dH where pre > 0, else
                        # 0); torch.where with a scalar 0 costs about 8x more at R = 1024
                        delta = torch.ops.aten.threshold_backward(delta, pres[layer], 0)  # [R, H]
                        if self._scaled:  # delta * (1 - a), as delta - delta * a in place
                            delta.addcmul_(delta, leaks[layer], value=-1)
                    if layer > 0:  # W^T delta with the weights before this step's update
                        back = self._product_t(layer, delta)  # [R, in]
                    if self._fused and self._queues[layer] is not None:  # wide layer: queued
                        self._queues[layer].push(delta, inputs[layer], weights[layer])
                        biases[layer].sub_(delta)
                    elif self._fused:
                        # SGD: W -= lr * delta (x) input, one batched outer product
                        weights[layer].addcmul_(
                            delta[:, :, None], inputs[layer][:, None, :], value=-1
                        )
                        biases[layer].sub_(delta)
                    else:  # accumulate dL/dW, dL/db
                        self._grads[layer].addcmul_(delta[:, :, None], inputs[layer][:, None, :])
                        self._grads[depth + 1 + layer].add_(delta)
                    if layer > 0:
                        delta = back
                if not self._fused:
                    self._sample_done(start + j + 1)
            self.step = end
        for queue, weight in zip(self._queues, weights, strict=True):
            if queue is not None:
                queue.apply(weight)  # evaluation and checkpoints read the weights

    def _train_recurrent_until(self, stop: int) -> None:
        """lstm: per-sample truncated-BPTT gradients into the buffers, from ``self.step``."""
        net, r = self._recurrent, len(self.replicate_ids)
        while self.step < stop:
            n = self.step
            window = self._order[max(n + 1 - net.window, 0) : n + 1].T  # [R, L] items
            x = self._train_x.index_select(0, window.reshape(-1)).view(r, window.shape[1], -1)
            target = self._targets.index_select(0, self._order[n])  # [R, O]
            grads = net.gradients(self.weights, self.biases, self._hidden, n, x, target)
            for buffer, grad in zip(self._grads, grads, strict=True):
                buffer.add_(grad)
            self.step = n + 1
            self._sample_done(self.step)

    def _sample_done(self, at: int) -> None:
        """One more sample in the buffers; apply them after ``batch_size`` or at the end."""
        self._pending += 1
        if self._pending == self.config.batch_size or at == self.total_samples:
            self._apply_gradients()

    def _apply_gradients(self) -> None:
        """One optimizer step with the mean of the buffered per-sample gradients."""
        config = self.config
        params = [*self.weights, *self.biases]
        for index, (param, grad) in enumerate(zip(params, self._grads, strict=True)):
            if self._pending > 1:
                grad.div_(self._pending)  # mean over the batch
            lr = self._lr if param.dim() == 2 else self._lr[:, :, None]  # [R, 1(, 1)]
            if config.optimizer == "rmsprop":
                # torch.optim.RMSprop: v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)
                square_avg = self._square_avg[index]
                square_avg.mul_(config.rms_alpha).addcmul_(grad, grad, value=1 - config.rms_alpha)
                step = grad / square_avg.sqrt().add_(config.rms_eps)
                if self._momentum_buf:
                    step = self._momentum_buf[index].mul_(config.momentum).add_(step)
                param.sub_(lr * step)
            else:
                param.sub_(lr * grad)
            grad.zero_()
        self._pending = 0

    # ------------------------------------------------------------------------------------------
    def _test_stream_order(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Streamed protocol: test item order per replicate [R, N], its keep mask [N, R, 1|G]."""
        name = self.config.test_ordering or self.config.ordering
        ordering = make_ordering(name)
        # seed (seed, replicate, 7): its own stream, the same in every model (paired)
        order = np.stack([
            epoch_order(self.data.test_y, ordering, (self.config.seed, rid, 7), 0)
            for rid in self.replicate_ids
        ])
        keep = self._keep_mask(order, self.data.test_x, self.data.test_y)
        return torch.as_tensor(order, device=self.device), keep

    def _stream_hidden(
        self, order: torch.Tensor, keep: torch.Tensor | None, record: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run test items through every replicate in ``order`` [R, N] with memory (resets from
        ``keep`` [N, R, 1|G]), from a cleared memory, no learning. Returns logits [R, N, O] and,
        if ``record``, first-layer H [R, N, H].
        """
        r, n = order.shape
        if self._recurrent is not None:  # lstm: from the zero state, state carried, no resets
            x = self._test_x.index_select(0, order.reshape(-1)).view(r, n, -1)  # [R, N, I]
            return self._recurrent.stream(self.weights, self.biases, x, record)
        x = self._gather("test", order.T.reshape(-1), n)  # [N, R, I]
        hidden = [torch.zeros_like(h) for h in self._hidden]
        leaks = self._leaks(keep, n)  # [N, R, H] per layer
        outputs, states = [], []
        for j in range(n):
            _, _, z = self._forward(x[j], [a[j] for a in leaks], hidden)
            outputs.append(z)
            if record:
                states.append(hidden[0])
        return torch.stack(outputs, dim=1), torch.stack(states, dim=1) if record else None

    @torch.no_grad()
    def _evaluate(self) -> EvalPoint:
        """Test loss and accuracy of every replicate (isolated items, or streamed with memory)."""
        if self._test_streams is None and self._recurrent is not None:
            z = self._recurrent.isolated_logits(self.weights, self.biases, self._test_x)
            targets, labels = self._test_targets, self._test_y
        elif self._test_streams is None:
            h = self._test_x  # [N, I], shared by all replicates
            depth = len(self._hidden)
            for layer in range(depth + 1):
                # [N, I] @ [R, I, H] -> [R, N, H]; a lone item has no memory: H = ReLU(W x + b)
                z = torch.matmul(h, self.weights[layer].transpose(1, 2))
                z = z + self.biases[layer][:, None]
                h = torch.relu(z) if layer < depth else z
            targets, labels = self._test_targets, self._test_y
        else:
            order, keep = self._test_streams
            z, _ = self._stream_hidden(order, keep, record=False)  # [R, N, O] in stream order
            targets, labels = self._test_targets[order], self._test_y[order]
        loss = _item_loss(z, targets, labels, self.config)  # [R, N]
        test_loss = loss.mean(dim=1).double().cpu().numpy()  # host sync
        if self._reconstruct:  # no categories to get right
            accuracy = np.full_like(test_loss, np.nan)
            group_loss = _group_loss(z, targets, self.config.feature_groups)
            self._curve_group.append(group_loss)
        else:
            accuracy = (z.argmax(dim=2) == labels).double().mean(dim=1).cpu().numpy()
            group_loss = None
        self._diverged = not bool(np.isfinite(test_loss).all())
        self._curve_loss.append(test_loss)
        self._curve_accuracy.append(accuracy)
        point = EvalPoint(
            self._next_eval, self.step, test_loss, accuracy, self._diverged, group_loss
        )
        self._next_eval += 1
        return point

    @torch.no_grad()
    def timescale_correlations(self) -> np.ndarray | None:
        """Squared Pearson r [R, H, G] of first-layer hidden units with the test latents.

        The test stream runs in its natural order (where its timescales live) with memory and
        resets on, from a cleared memory; None when the data set has no latent states.
        """
        if self.data.test_latent is None:
            return None
        n = len(self.data.test_y)
        order = torch.arange(n, device=self.device).expand(len(self.replicate_ids), n)
        keep = self._keep_mask(order.cpu().numpy(), self.data.test_x, self.data.test_y)
        _, states = self._stream_hidden(order, keep, record=True)
        return timescale_r2(states.double().cpu().numpy(), self.data.test_latent)

    # ------------------------------------------------------------------------------------------
    def result(self) -> TrialResult:
        """Curves so far and run metrics (replicate values, means and CIs)."""
        samples = np.array(self.eval_points[: len(self._curve_loss)], dtype=np.int64)
        loss = np.stack(self._curve_loss, axis=1) if self._curve_loss else np.zeros((0, 0))
        accuracy = np.stack(self._curve_accuracy, axis=1) if self._curve_accuracy else loss
        result = TrialResult(self.config, samples, loss, accuracy, self._diverged, self._seconds)
        if self._curve_group:
            result.group_loss = np.stack(self._curve_group, axis=1)  # [R, E, G]
        if self._diverged or samples.size < 2:
            return result
        result.per_replicate = run_metrics(
            samples, loss, accuracy, self.epoch_length, self.config.target_accuracy
        )
        if result.group_loss is not None:
            result.per_replicate.update(
                group_metrics(samples, result.group_loss, self.epoch_length)
            )
        result.timescale_r2 = self.timescale_correlations()
        if result.timescale_r2 is not None:
            first_layer_leak = self._unit_leak[0].double().cpu().numpy()  # [R, H], memory order
            result.per_replicate.update(timescale_metrics(result.timescale_r2, first_layer_leak))
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
            "reset_threshold": self.reset_threshold.tolist(),
            "group_leaks": self.group_leaks.tolist(),
            "step": self.step,
            "next_eval": self._next_eval,
            "weights": [w.cpu().clone() for w in self.weights],
            "biases": [b.cpu().clone() for b in self.biases],
            "hidden": [h.cpu().clone() for h in self._hidden],
            "optimizer": {
                "grads": [g.cpu().clone() for g in self._grads],
                "square_avg": [v.cpu().clone() for v in self._square_avg],
                "momentum_buf": [m.cpu().clone() for m in self._momentum_buf],
                "pending": self._pending,
            },
            "curve_loss": [c.copy() for c in self._curve_loss],
            "curve_accuracy": [c.copy() for c in self._curve_accuracy],
            "curve_group": [c.copy() for c in self._curve_group],
            "diverged": self._diverged,
            "train_seconds": self._train_seconds,
            "seconds": self._seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a run of the same config and replicates."""
        mismatch = [
            (key, state.get(key, mine), mine)
            for key, mine in (
                ("config", self.config.to_dict()),
                ("replicate_ids", list(self.replicate_ids)),
                ("learning_rate", self.learning_rate.tolist()),
                ("leak", self.leak.tolist()),
                ("reset_threshold", self.reset_threshold.tolist()),
                ("group_leaks", self.group_leaks.tolist()),
            )
            if state.get(key, mine) != mine
        ]
        if mismatch:
            key, theirs, mine = mismatch[0]
            raise ValueError(f"checkpoint {key} must equal this run's, got {theirs} vs {mine}")
        # into new tensors laid out as this run's own (device, dtype, replicate layout)
        put = lambda saved, mine: [  # noqa: E731
            torch.empty_like(m).copy_(s) for s, m in zip(saved, mine, strict=True)
        ]
        self.weights = put(state["weights"], self.weights)
        self.biases = put(state["biases"], self.biases)
        self._hidden = put(state["hidden"], self._hidden)
        optimizer = state.get("optimizer")
        if optimizer is not None:
            self._grads = put(optimizer["grads"], self._grads)
            self._square_avg = put(optimizer["square_avg"], self._square_avg)
            self._momentum_buf = put(optimizer["momentum_buf"], self._momentum_buf)
            self._pending = int(optimizer["pending"])
        self.step = int(state["step"])
        self._next_eval = int(state["next_eval"])
        self._curve_loss = [np.asarray(c) for c in state["curve_loss"]]
        self._curve_accuracy = [np.asarray(c) for c in state["curve_accuracy"]]
        self._curve_group = [np.asarray(c) for c in state.get("curve_group", [])]
        self._diverged = bool(state["diverged"])
        self._train_seconds = float(state["train_seconds"])
        self._seconds = float(state["seconds"])


# ---------------------------------------------------------------------------------------------
# batched layer products, one pair per replicate layout (TrialRun._replicate_minor)
# ---------------------------------------------------------------------------------------------
def _linear(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W x + b per replicate: [R, O, I], [R, O], [R, I] -> [R, O].

    Written as the row vector x^T W^T: on CPU, bmm with a column vector on the right takes a
    slow path (about 13x slower for 8 x 392 x 784, measured with torch 2.13). bmm then add_
    is faster than baddbmm for small layers (about 1.3x on 16 x 8 at R = 1024).
    """
    return torch.bmm(x[:, None, :], weight.transpose(1, 2))[:, 0, :].add_(bias)  # [R, 1, O]


def _linear_t(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W^T delta per replicate: [R, O, I], [R, O] -> [R, I] (the row vector delta^T W)."""
    return torch.bmm(delta[:, None, :], weight)[:, 0, :]  # [R, 1, I]


def _linear_replicate_minor(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """:func:`_linear` for replicate-minor tensors: sum over I of [O, I, R] * [I, R] (views of
    the storage, R innermost), so every operation runs along R."""
    return (weight.permute(1, 2, 0) * x.T).sum(dim=1).T.add_(bias)  # [O, R] -> [R, O]


def _linear_t_replicate_minor(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """:func:`_linear_t` for replicate-minor tensors: sum over O of [O, I, R] * [O, 1, R]."""
    return (weight.permute(1, 2, 0) * delta.T[:, None, :]).sum(dim=0).T  # [I, R] -> [R, I]


class _QueuedUpdates:
    """Per-sample SGD updates W -= d x^T of one wide layer, queued and applied K at a time.

    Per-sample SGD on a wide layer is memory-bound: each step reads W for the forward pass and
    reads and writes it again for the update. With the updates queued, the layer's weights are
    W - D^T X (queued lr * delta rows D [R, K, out] and inputs X [R, K, in]): products with them
    subtract a rank-k correction, and one bmm applies the queue every K steps (784-392-10 at
    R = 8: about 1.5x faster). Same update as the paper's, summed in another order.
    """

    def __init__(self, weight: torch.Tensor, steps: int) -> None:
        r, fan_out, fan_in = weight.shape
        self.deltas = weight.new_zeros(r, steps, fan_out)  # D
        self.inputs = weight.new_zeros(r, steps, fan_in)  # X
        self.count = 0

    def times(self, x: torch.Tensor) -> torch.Tensor:
        """D^T (X x): what the queue takes off W x, [R, in] -> [R, out]."""
        k = self.count
        projections = torch.bmm(x[:, None, :], self.inputs[:, :k].transpose(1, 2))  # [R, 1, k]
        return torch.bmm(projections, self.deltas[:, :k])[:, 0, :]

    def times_t(self, delta: torch.Tensor) -> torch.Tensor:
        """X^T (D delta): what the queue takes off W^T delta, [R, out] -> [R, in]."""
        k = self.count
        projections = torch.bmm(delta[:, None, :], self.deltas[:, :k].transpose(1, 2))
        return torch.bmm(projections, self.inputs[:, :k])[:, 0, :]  # [R, 1, k] -> [R, in]

    def push(self, delta: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
        """Queue W -= delta x^T ([R, out], [R, in]); apply the queue to ``weight`` when full."""
        self.deltas[:, self.count] = delta
        self.inputs[:, self.count] = x
        self.count += 1
        if self.count == self.deltas.shape[1]:
            self.apply(weight)

    def apply(self, weight: torch.Tensor) -> None:
        """W -= D^T X in place (one bmm), and empty the queue."""
        if self.count:
            k = self.count
            weight.baddbmm_(self.deltas[:, :k].transpose(1, 2), self.inputs[:, :k], alpha=-1)
            self.count = 0


def _group_loss(z: torch.Tensor, targets: torch.Tensor, groups: int) -> np.ndarray:
    """reconstruct: mean squared error of sigmoid(z) per feature group, [R, G]."""
    error = (torch.sigmoid(z) - targets) ** 2  # [R, N, O]
    index = torch.as_tensor(unit_groups(error.shape[2], groups), device=error.device)
    sums = torch.zeros(*error.shape[:2], groups, dtype=error.dtype, device=error.device)
    sums.index_add_(2, index, error)
    sizes = torch.bincount(index, minlength=groups).to(error.dtype)
    return (sums.mean(dim=1) / sizes).double().cpu().numpy()


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
        # dL/dy * y (1 - y); sigmoid_backward is autograd's own kernel for that product
        return torch.ops.aten.sigmoid_backward((y - t).mul_(2 * scale), y)

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
