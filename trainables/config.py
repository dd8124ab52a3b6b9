"""Typed configuration of one trial: the data set, the network, the ordering, the engine settings.

A :class:`TrialConfig` is everything the engine needs to train ``replicates`` networks of one
configuration. It is frozen, hashable, validated on construction, and round-trips through plain
dicts (``to_dict`` / ``from_dict``), which is how Ray ships it to workers and MLflow logs it.

Example:
    >>> config = TrialConfig(model="leaky-reset", ordering="reps-3", replicates=4)
    >>> config.leak, config.gradient
    (0.5, 'leak-scaled')
    >>> TrialConfig.from_dict(config.to_dict()) == config
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any

MODELS: tuple[str, ...] = (
    "feedforward",
    "leaky",
    "leaky-reset",
    "leaky-threshold",
    "multiscale",
    "multiscale-reset",
    "minibatch",
    "lstm",
)
"""Model names the engine knows (``trainables/models.py``; ``lstm``: ``trainables/lstm.py``)."""

DATASETS: tuple[str, ...] = (
    "synthetic-categories",
    "multiscale-stream",
    "no-shared-features",
    "mnist",
    "fashion-mnist",
)
"""Data set names the loader knows (see ``trainables/data.py``)."""

OUTPUTS: tuple[str, ...] = ("sigmoid", "softmax")
LOSSES: tuple[str, ...] = ("mse", "cross-entropy")
OPTIMIZERS: tuple[str, ...] = ("sgd", "rmsprop")
"""``sgd``: p -= lr g. ``rmsprop``: torch.optim.RMSprop semantics (``TrialConfig.rms_alpha``)."""
TASKS: tuple[str, ...] = ("classify", "reconstruct")
"""``classify``: one-hot category targets. ``reconstruct``: autoencoder, target = input."""
RESET_SCOPES: tuple[str, ...] = ("input", "group")
"""Where the unsupervised (threshold) reset looks, see ``TrialConfig.reset_scope``."""
TEST_PROTOCOLS: tuple[str, ...] = ("isolated", "streamed")
"""``isolated``: each test item alone, no memory (paper default). ``streamed``: the test set in
``test_ordering`` order with memory and resets on (paper A.9/A.10)."""
ORDERING_NAMES: tuple[str, ...] = ("random", "stream", "reps-k")
"""Ordering names: ``random``, ``stream`` (the data set's natural order) and ``reps-k``, k >= 1."""
GRADIENTS: tuple[str, ...] = ("leak-scaled", "leak-unscaled")
"""Gradient conventions for leaky layers.

``leak-scaled``: H(n-1) is a constant, so dH(n)/dW carries the factor (1 - a) (what autograd gives
with the previous state detached). ``leak-unscaled``: the gradient of a feedforward net evaluated
at the mixed state, without that factor (the paper's "did not account for ... leaky").
"""
MINIBATCH_BATCH_SIZE = 10
"""The minibatch model's default batch size (paper A.5 compares batches of 10 with 10-rep data;
A.6 uses 16)."""
EVAL_SCHEDULES: tuple[str, ...] = ("linear", "log")
DTYPES: tuple[str, ...] = ("float32", "float64")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")

_REPS = re.compile(r"^reps-(-?\d+)$")


class ConfigError(ValueError):
    """An invalid setting: the message names the field, the value and what is allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str) -> None:
        self.field_name = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is invalid: {allowed}")


def check_ordering_name(name: str, field_name: str = "ordering") -> None:
    """Raise :class:`ConfigError` unless ``name`` is random, stream or reps-k with k >= 1."""
    if name in ("random", "stream"):
        return
    match = _REPS.match(name)
    if match is None:
        hint = _closest(str(name), ("random", "stream", "reps-1", "reps-3", "reps-5"))
        raise ConfigError(
            field_name,
            name,
            f"expected 'random', 'stream' or 'reps-k' with an integer k >= 1{hint}",
        )
    if int(match.group(1)) < 1:
        raise ConfigError(field_name, name, "reps-k needs k >= 1 ('reps-1' is minimum smoothness)")


def _check_choice(field_name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = _closest(str(value), allowed)
        raise ConfigError(field_name, value, f"expected one of {', '.join(allowed)}{hint}")


def _closest(value: str, allowed: tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest allowed name, or '' when none is close."""
    close = difflib.get_close_matches(value, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_positive_int(field_name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field_name, value, f"expected an integer >= {minimum}")


def _check_finite(field_name: str, value: float, low: float, high: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field_name, value, f"expected a finite number {what}")
    if not low <= value <= high:
        raise ConfigError(field_name, value, f"expected a number {what}")


@dataclass(frozen=True)
class DatasetConfig:
    """Which data set to build and how (fields a data set does not use are ignored by it)."""

    name: str = "synthetic-categories"
    """One of ``DATASETS``."""
    categories: int = 4
    """synthetic-categories: number of categories C."""
    features: int = 16
    """synthetic-categories: input dimension D."""
    train_per_category: int | None = 300
    """Training items per category; for MNIST-like sets a per-class subset (None = all)."""
    test_per_category: int | None = 100
    """Held-out items per category; for MNIST-like sets a per-class subset (None = all)."""
    noise: float = 0.5
    """synthetic-categories: half-width of the uniform noise added to each template value."""
    template: str = "blocks"
    """synthetic-categories: 'blocks' (disjoint active feature blocks) or 'binary' (random 0/1)."""
    data_dir: str | None = None
    """Folder of IDX files (``<dir>/<name>/`` or ``<dir>``); None = $STUDY_DATA_DIR or ./data."""
    seed: int = 0
    """Seed of the data set itself (synthetic templates and noise, MNIST subset choice)."""
    switch_periods: tuple[int, ...] = (1, 3, 5)
    """multiscale-stream: items between switches of each latent binary state (fast ... slow)."""
    features_per_group: int = 2
    """multiscale-stream: input features driven by each latent state (paper: pairs)."""
    stream_length: int = 1000
    """multiscale-stream: items in the training stream."""
    test_stream_length: int = 200
    """multiscale-stream: items in the (separately drawn) test stream."""
    parts: int = 2
    """no-shared-features: disjoint feature parts of each category block; consecutive items of a
    category use different parts."""
    run_length: int = 3
    """no-shared-features: items of one category in a row in the stored (``stream``) order."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "switch_periods", tuple(self.switch_periods))
        _check_choice("dataset.name", self.name, DATASETS)
        if not self.switch_periods:
            raise ConfigError("dataset.switch_periods", self.switch_periods, "expected a period")
        for period in self.switch_periods:
            _check_positive_int("dataset.switch_periods", period, 1)
        _check_positive_int("dataset.features_per_group", self.features_per_group, 1)
        _check_positive_int("dataset.stream_length", self.stream_length, 2)
        _check_positive_int("dataset.test_stream_length", self.test_stream_length, 1)
        _check_positive_int("dataset.parts", self.parts, 1)
        _check_positive_int("dataset.run_length", self.run_length, 1)
        _check_positive_int("dataset.categories", self.categories, 2)
        _check_positive_int("dataset.features", self.features, 1)
        for name in ("train_per_category", "test_per_category"):
            value = getattr(self, name)
            if value is not None:
                _check_positive_int(f"dataset.{name}", value, 1)
        _check_finite("dataset.noise", self.noise, 0.0, math.inf, ">= 0")
        _check_choice("dataset.template", self.template, ("blocks", "binary"))


@dataclass(frozen=True)
class TrialConfig:
    """One configuration, trained as ``replicates`` independent networks at once."""

    model: str = "feedforward"
    """One of ``MODELS``."""
    ordering: str = "random"
    """'random', 'stream' (the data set's own order) or 'reps-k' (k consecutive items of one
    category; 'reps-1' = minimum smoothness)."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    hidden: tuple[int, ...] = (8,)
    """Hidden layer sizes; every hidden layer carries the model's memory."""
    output: str = "sigmoid"
    """Output nonlinearity, one of ``OUTPUTS``."""
    loss: str = "mse"
    """'mse' (mean over outputs) or 'cross-entropy' (softmax: categorical; sigmoid: binary)."""
    optimizer: str = "sgd"
    """'sgd' or 'rmsprop' (torch.optim.RMSprop semantics); one update per ``batch_size`` items."""
    learning_rate: float = 0.01
    """SGD step size, > 0."""
    leak: float = 0.5
    """Leak a in H(n) = a H(n-1) + (1-a) ReLU(W I(n) + b), in [0, 1]; unused by feedforward."""
    reset_threshold: float = 1.0
    """Input-change threshold for unsupervised reset (models that use one), >= 0."""
    gradient: str = "leak-scaled"
    """Gradient convention for leaky layers, one of ``GRADIENTS``."""
    replicates: int = 5
    """Networks trained together; replicate r seeds its init and ordering with (seed, r)."""
    epochs: int = 1
    """Passes over the training set."""
    eval_every: int = 50
    """Samples between test evaluations (linear schedule) or number of points per decade (log)."""
    eval_schedule: str = "linear"
    """'linear' (every eval_every samples) or 'log' (eval_every points per decade of samples)."""
    target_accuracy: float = 0.9
    """Accuracy for the samples-to-target metric, in (0, 1]."""
    seed: int = 0
    """Base seed; replicate r derives its init and ordering seeds from (seed, r)."""
    dtype: str = "float32"
    device: str = "cpu"
    """'cpu', 'cuda' or 'auto' (CUDA when available)."""
    task: str = "classify"
    """'classify' (one-hot targets) or 'reconstruct' (autoencoder: target = input, sigmoid out)."""
    group_leaks: tuple[float, ...] = (0.0, 0.3, 0.6)
    """multiscale models: leak of each hidden-unit group (contiguous split of every hidden layer,
    fast to slow; paper 5.2: 0, 0.3, 0.6), each in [0, 1]."""
    reset_scope: str = "input"
    """Threshold-reset models: 'input' (one decision per step from the whole input; resets every
    unit) or 'group' (one decision per feature group; resets the matching hidden-unit group)."""
    feature_groups: int = 3
    """Contiguous equal groups of input features (and of hidden units) for reset_scope='group' and
    per-group reconstruction error; multiscale-stream: its number of latent timescales."""
    batch_size: int | None = None
    """Samples whose gradients are averaged per update, >= 1; None = the model's default, set on
    construction: MINIBATCH_BATCH_SIZE for 'minibatch' (paper A.5/A.6; it needs >= 2, with 1 it
    would be 'feedforward'), else 1 (the paper's per-sample SGD)."""
    rms_alpha: float = 0.99
    """rmsprop: smoothing of the squared-gradient average (torch 'alpha'; the paper's beta2)."""
    rms_eps: float = 1e-8
    """rmsprop: added to the root of the squared-gradient average."""
    momentum: float = 0.0
    """rmsprop: torch RMSprop momentum (0 = none; the paper's beta1 = 0.9 may mean 0.9 here)."""
    test_protocol: str = "isolated"
    """'isolated' (each test item alone, no memory) or 'streamed' (test set in ``test_ordering``
    order with memory and resets on, from a cleared memory; paper A.9/A.10)."""
    test_ordering: str | None = None
    """Ordering of the streamed test set (None = the training ordering)."""
    bptt_window: int = 5
    """lstm: steps the gradient flows back through (truncated BPTT, k1 = 1, k2 = window), >= 1."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_leaks", tuple(self.group_leaks))
        _check_choice("model", self.model, MODELS)
        check_ordering_name(self.ordering)
        if not isinstance(self.dataset, DatasetConfig):
            raise ConfigError("dataset", self.dataset, "expected a DatasetConfig")
        if not isinstance(self.hidden, tuple) or not self.hidden:
            raise ConfigError("hidden", self.hidden, "expected a non-empty list of layer sizes")
        for size in self.hidden:
            _check_positive_int("hidden", size, 1)
        _check_choice("output", self.output, OUTPUTS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_finite("learning_rate", self.learning_rate, 0.0, math.inf, "> 0")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate", self.learning_rate, "expected a number > 0")
        _check_finite("leak", self.leak, 0.0, 1.0, "in [0, 1]")
        _check_finite("reset_threshold", self.reset_threshold, 0.0, math.inf, ">= 0")
        _check_choice("gradient", self.gradient, GRADIENTS)
        _check_positive_int("replicates", self.replicates, 1)
        _check_positive_int("epochs", self.epochs, 1)
        _check_positive_int("eval_every", self.eval_every, 1)
        _check_choice("eval_schedule", self.eval_schedule, EVAL_SCHEDULES)
        _check_finite("target_accuracy", self.target_accuracy, 0.0, 1.0, "in (0, 1]")
        if self.target_accuracy <= 0:
            raise ConfigError("target_accuracy", self.target_accuracy, "expected a number > 0")
        _check_positive_int("seed", self.seed, 0)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("task", self.task, TASKS)
        if self.task == "reconstruct" and self.output != "sigmoid":
            raise ConfigError("output", self.output, "task='reconstruct' needs output='sigmoid'")
        if not self.group_leaks:
            raise ConfigError("group_leaks", self.group_leaks, "expected >= 1 leak")
        for value in self.group_leaks:
            _check_finite("group_leaks", value, 0.0, 1.0, "in [0, 1]")
        _check_choice("reset_scope", self.reset_scope, RESET_SCOPES)
        _check_positive_int("feature_groups", self.feature_groups, 1)
        if self.batch_size is None:  # the model's default, resolved once here
            default = MINIBATCH_BATCH_SIZE if self.model == "minibatch" else 1
            object.__setattr__(self, "batch_size", default)
        _check_positive_int("batch_size", self.batch_size, 1)
        if self.model == "minibatch" and self.batch_size < 2:
            raise ConfigError(
                "batch_size",
                self.batch_size,
                "model='minibatch' averages gradients over batch_size >= 2 samples (None: its "
                f"default, {MINIBATCH_BATCH_SIZE}, paper A.5); with 1 it is the feedforward model",
            )
        _check_finite("rms_alpha", self.rms_alpha, 0.0, 1.0, "in [0, 1]")
        _check_finite("rms_eps", self.rms_eps, 0.0, math.inf, ">= 0")
        _check_finite("momentum", self.momentum, 0.0, 1.0, "in [0, 1)")
        if self.momentum >= 1:
            raise ConfigError("momentum", self.momentum, "expected a number in [0, 1)")
        _check_choice("test_protocol", self.test_protocol, TEST_PROTOCOLS)
        if self.test_ordering is not None:
            check_ordering_name(self.test_ordering, "test_ordering")
        _check_positive_int("bptt_window", self.bptt_window, 1)

    @property
    def reps(self) -> int | None:
        """k of a 'reps-k' ordering, None for 'random' and 'stream'."""
        match = _REPS.match(self.ordering)
        return int(match.group(1)) if match else None

    def replace(self, **changes: Any) -> TrialConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; ``dataset`` becomes a nested dict, ``hidden`` a list."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        out["group_leaks"] = list(self.group_leaks)
        out["dataset"]["switch_periods"] = list(self.dataset.switch_periods)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                unknown[0], values[unknown[0]], f"unknown key; known: {sorted(known)}"
            )
        values = dict(values)
        if isinstance(values.get("dataset"), dict):
            dataset = dict(values["dataset"])
            dataset_known = {f.name for f in dataclasses.fields(DatasetConfig)}
            bad = sorted(set(dataset) - dataset_known)
            if bad:
                raise ConfigError(
                    f"dataset.{bad[0]}",
                    dataset[bad[0]],
                    f"unknown key; known: {sorted(dataset_known)}",
                )
            values["dataset"] = DatasetConfig(**dataset)
        if "hidden" in values:
            values["hidden"] = tuple(values["hidden"])
        return cls(**values)
