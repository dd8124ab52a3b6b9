"""Optuna define-by-run search spaces, one per model family, and the paper's own setting.

A space is a function ``space(trial) -> dict | None``: it calls ``trial.suggest_*`` for every
searched hyperparameter (the names are :class:`~trainables.config.TrialConfig` fields) and may
return constants to merge into the trial's config, the form Ray's ``OptunaSearch`` accepts.

Roles follow the Deep Learning Tuning Playbook: the *scientific* hyperparameters are the ones the
paper's claims are about (``leak``, ``reset_threshold``); the *nuisance* ones (``learning_rate``)
are tuned so that every model is compared at its best.

Example:
    >>> import optuna
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> trial = study.ask()
    >>> SPACES["leaky"](trial) is None
    True
    >>> sorted(trial.params)
    ['leak', 'learning_rate']
    >>> paper_setting("leaky-reset")
    {'learning_rate': 0.01, 'leak': 0.5}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna

from trainables.config import MODELS, TrialConfig

__all__ = [
    "PAPER_SETTING",
    "ROLES",
    "SPACES",
    "Space",
    "default_space",
    "feedforward",
    "inline_space",
    "leaky",
    "leaky_threshold",
    "paper_setting",
]

Space = Callable[[optuna.Trial], dict[str, Any] | None]
"""A define-by-run search space."""

ROLES: dict[str, str] = {
    "leak": "scientific",
    "reset_threshold": "scientific",
    "learning_rate": "nuisance",
}
"""Playbook role of every hyperparameter a space may search."""

PAPER_SETTING: dict[str, float] = {"learning_rate": 0.01, "leak": 0.5, "reset_threshold": 1.0}
"""The paper's own values (Sec. 4-5: lr 0.01 in every condition, leak 0.5)."""

# Which paper values apply to which model: feedforward has no leak; multiscale models use their
# fixed per-group leaks (0 / 0.3 / 0.6, paper 5.2); only leaky-threshold resets on a threshold.
_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "feedforward": ("learning_rate",),
    "leaky": ("learning_rate", "leak"),
    "leaky-reset": ("learning_rate", "leak"),
    "leaky-threshold": ("learning_rate", "leak", "reset_threshold"),
    "multiscale": ("learning_rate",),
    "multiscale-reset": ("learning_rate",),
    "minibatch": ("learning_rate",),
}


def feedforward(trial: optuna.Trial) -> None:
    """Feedforward nets have no memory: only the (nuisance) learning rate is searched."""
    trial.suggest_float("learning_rate", 1e-3, 10.0, log=True)


def leaky(trial: optuna.Trial) -> None:
    """Leaky memory: learning rate (nuisance) and leak a (scientific); a = 0 is feedforward."""
    trial.suggest_float("learning_rate", 1e-3, 10.0, log=True)
    trial.suggest_float("leak", 0.0, 0.95)


def leaky_threshold(trial: optuna.Trial) -> None:
    """Unsupervised reset (paper A.11): leaky's space plus the reset threshold (scientific)."""
    leaky(trial)
    trial.suggest_float("reset_threshold", 0.05, 5.0, log=True)


SPACES: dict[str, Space] = {
    "feedforward": feedforward,
    "leaky": leaky,
    "leaky-reset": leaky,  # the oracle reset adds no parameter; its leak is searched as in leaky
    "leaky-threshold": leaky_threshold,
    # Per-group leaks are fixed at the paper's 0 / 0.3 / 0.6 until a space searches them.
    "multiscale": feedforward,
    "multiscale-reset": feedforward,
    "minibatch": feedforward,
}
"""Named spaces a spec may refer to; by default a model uses the space of its own name."""


def default_space(model: str) -> str:
    """Name of the space a model uses when the spec names none."""
    if model not in SPACES:
        raise KeyError(f"model={model!r} has no default search space; known: {sorted(SPACES)}")
    return model


def paper_setting(model: str) -> dict[str, float]:
    """The paper's own point for ``model``: only the values that model uses."""
    if model not in _MODEL_PARAMS:
        raise KeyError(f"model={model!r} has no paper setting; known: {list(MODELS)}")
    return {name: PAPER_SETTING[name] for name in _MODEL_PARAMS[model]}


_SEARCHABLE = set(ROLES)


def inline_space(table: Mapping[str, Mapping[str, Any]]) -> Space:
    """A define-by-run space from a spec table such as ``{"leak": {"low": 0, "high": 0.9}}``.

    Each entry is ``{low, high, log=false, step=None}`` (a float range) or ``{choices=[...]}``.
    Entries are validated here, so a bad table fails when the spec is read, not in a trial.

    Raises:
        ValueError: an unknown parameter name or malformed bounds (the message names both).
    """
    entries = {str(name): dict(entry) for name, entry in table.items()}
    for name, entry in entries.items():
        _check_entry(name, entry)
    return _InlineSpace(entries)


def _check_entry(name: str, entry: dict[str, Any]) -> None:
    if name not in _SEARCHABLE:
        raise ValueError(f"{name}: unknown searchable parameter; allowed: {sorted(_SEARCHABLE)}")
    if "choices" in entry:
        if set(entry) != {"choices"} or not entry["choices"]:
            raise ValueError(f"{name}={entry!r}: expected {{choices=[...]}} with >= 1 value")
        for value in entry["choices"]:
            _check_value(name, value)
        return
    allowed = {"low", "high", "log", "step"}
    if not {"low", "high"} <= set(entry) or not set(entry) <= allowed:
        raise ValueError(f"{name}={entry!r}: expected keys low, high and optionally log, step")
    low, high = entry["low"], entry["high"]
    if entry.get("log") and isinstance(low, int | float) and low <= 0:
        raise ValueError(f"{name}: a log range needs low > 0, got low={low!r}")
    for value in (low, high):
        _check_value(name, value)
    if not low < high:
        raise ValueError(f"{name}: low < high must hold, got low={low!r}, high={high!r}")


def _check_value(name: str, value: Any) -> None:
    # Building a TrialConfig with the value reuses the engine's own bounds and message.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: expected a number")
    try:
        TrialConfig(**{name: float(value)})
    except ValueError as error:
        raise ValueError(str(error)) from None


class _InlineSpace:
    """Picklable define-by-run function built from a spec table (Ray pickles the searcher)."""

    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self.entries = entries

    def __call__(self, trial: optuna.Trial) -> None:
        for name, entry in self.entries.items():
            if "choices" in entry:
                trial.suggest_categorical(name, list(entry["choices"]))
            else:
                trial.suggest_float(
                    name,
                    float(entry["low"]),
                    float(entry["high"]),
                    log=bool(entry.get("log", False)),
                    step=entry.get("step"),
                )

    def __repr__(self) -> str:
        return f"inline_space({self.entries!r})"
