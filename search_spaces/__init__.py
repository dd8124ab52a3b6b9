"""Optuna define-by-run search spaces, one per model family, and the paper's own setting.

A space is a function ``space(trial) -> dict | None``: it calls ``trial.suggest_*`` for every
searched hyperparameter and may return constants to merge into the trial's config, the form
Ray's ``OptunaSearch`` accepts. Parameter names are :class:`~trainables.config.TrialConfig`
fields, except ``leak_group<g>``: the leak of hidden-unit group g of the multiscale models, a
distinct name per group because Optuna searches scalars; :func:`apply_params` writes them into
``group_leaks``.

Roles follow the Deep Learning Tuning Playbook: the *scientific* hyperparameters are the ones the
paper's claims are about (``leak``, ``leak_group<g>``, ``reset_threshold``); the *nuisance* ones
(``learning_rate``) are tuned so that every model is compared at its best. Everything else
(``batch_size``, ``bptt_window``, ...) is *fixed* by the spec.

Example:
    >>> import optuna
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> trial = study.ask()
    >>> SPACES["multiscale-reset"](trial) is None
    True
    >>> sorted(trial.params)
    ['leak_group0', 'leak_group1', 'leak_group2', 'learning_rate', 'reset_threshold']
    >>> paper_setting("multiscale")
    {'learning_rate': 0.01, 'leak_group0': 0.0, 'leak_group1': 0.3, 'leak_group2': 0.6}
    >>> base = {"model": "multiscale", "group_leaks": [0.0, 0.3, 0.6], "learning_rate": 0.01}
    >>> apply_params(base, {"leak_group2": 0.9, "learning_rate": 0.1})
    {'model': 'multiscale', 'group_leaks': [0.0, 0.3, 0.9], 'learning_rate': 0.1}
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from trainables.config import TrialConfig

__all__ = [
    "GROUP_LEAK",
    "PAPER_GROUP_LEAKS",
    "PAPER_SETTING",
    "ROLES",
    "SPACES",
    "Space",
    "apply_params",
    "default_space",
    "feedforward",
    "field_of",
    "fixed_space",
    "inline_space",
    "leaky",
    "leaky_threshold",
    "multiscale",
    "multiscale_reset",
    "paper_setting",
    "params_of",
    "point_config",
    "probe",
    "role",
]

Space = Callable[[optuna.Trial], dict[str, Any] | None]
"""A define-by-run search space."""

GROUP_LEAK = re.compile(r"^leak_group(\d+)$")
"""Name of a per-group leak parameter; group g is the g-th entry of ``group_leaks``."""

ROLES: dict[str, str] = {
    "leak": "scientific",
    "reset_threshold": "scientific",
    "learning_rate": "nuisance",
}
"""Playbook role of every hyperparameter a space may search (``leak_group<g>``: see role)."""

PAPER_GROUP_LEAKS: tuple[float, ...] = (0.0, 0.3, 0.6)
"""Paper 5.2: leaks of the short-, medium- and long-memory hidden units of the multiscale AEs."""

PAPER_SETTING: dict[str, float] = {
    "learning_rate": 0.01,
    "leak": 0.5,
    "reset_threshold": 1.0,
    **{f"leak_group{g}": value for g, value in enumerate(PAPER_GROUP_LEAKS)},
}
"""The paper's own values (Sec. 4-5: lr 0.01 in every condition, leak 0.5; A.11: threshold 1)."""

# Which paper values apply to which model: feedforward-like nets (and the LSTM, whose gates are
# learned) have only a learning rate; the multiscale models use per-group leaks, not `leak`.
_GROUPS = tuple(f"leak_group{g}" for g in range(len(PAPER_GROUP_LEAKS)))
_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "feedforward": ("learning_rate",),
    "leaky": ("learning_rate", "leak"),
    "leaky-reset": ("learning_rate", "leak"),
    "leaky-threshold": ("learning_rate", "leak", "reset_threshold"),
    "multiscale": ("learning_rate", *_GROUPS),
    "multiscale-reset": ("learning_rate", *_GROUPS, "reset_threshold"),
    "minibatch": ("learning_rate",),
    "lstm": ("learning_rate",),
}


def role(name: str) -> str:
    """Playbook role of a searchable parameter; KeyError names the searchable ones."""
    if GROUP_LEAK.match(name):
        return "scientific"
    if name not in ROLES:
        raise KeyError(f"{name}: unknown searchable parameter; allowed: {_searchable()}")
    return ROLES[name]


def _searchable() -> list[str]:
    return [*sorted(ROLES), "leak_group<g>"]


# ---------------------------------------------------------------------------------------------
# The spaces
# ---------------------------------------------------------------------------------------------
def feedforward(trial: optuna.Trial) -> None:
    """No memory (also minibatch and LSTM): only the (nuisance) learning rate is searched."""
    trial.suggest_float("learning_rate", 1e-3, 10.0, log=True)


def leaky(trial: optuna.Trial) -> None:
    """Leaky memory: learning rate (nuisance) and leak a (scientific); a = 0 is feedforward."""
    feedforward(trial)
    trial.suggest_float("leak", 0.0, 0.95)


def leaky_threshold(trial: optuna.Trial) -> None:
    """Unsupervised reset (paper A.11): leaky's space plus the reset threshold (scientific)."""
    leaky(trial)
    trial.suggest_float("reset_threshold", 0.05, 5.0, log=True)


def multiscale(trial: optuna.Trial) -> None:
    """Multiscale memory: learning rate and the leak of each of the paper's 3 unit groups.

    Each group's leak is searched on its own range, so the search may reorder the groups' speeds;
    the timescale selectivity keeps the units in position order (fast, medium, slow groups), as
    the paper's measure does, and its ``_best`` variant does not depend on the order.
    """
    feedforward(trial)
    for name in _GROUPS:
        trial.suggest_float(name, 0.0, 0.95)


def multiscale_reset(trial: optuna.Trial) -> None:
    """Multiscale memory with the unsupervised reset: multiscale's space plus the threshold."""
    multiscale(trial)
    trial.suggest_float("reset_threshold", 0.05, 5.0, log=True)


SPACES: dict[str, Space] = {
    "feedforward": feedforward,
    "leaky": leaky,
    "leaky-reset": leaky,  # the oracle reset adds no parameter; its leak is searched as in leaky
    "leaky-threshold": leaky_threshold,
    "multiscale": multiscale,
    "multiscale-reset": multiscale_reset,
    "minibatch": feedforward,  # batch_size is fixed by the spec: it defines the condition
    "lstm": feedforward,  # bptt_window is fixed by the spec, as the paper compares one LSTM
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
        raise KeyError(f"model={model!r} has no paper setting; known: {sorted(_MODEL_PARAMS)}")
    return {name: PAPER_SETTING[name] for name in _MODEL_PARAMS[model]}


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` (a ``TrialConfig.to_dict()``) with searched ``params`` written into it.

    ``leak_group<g>`` sets entry g of ``group_leaks`` (the other groups keep the base's values);
    every other name replaces the field of that name.

    Raises:
        ValueError: a ``leak_group<g>`` with g >= len(group_leaks) (the message names both).
    """
    out = dict(base)
    given = tuple(out.get("group_leaks", TrialConfig.group_leaks))
    leaks = list(given)
    for name, value in params.items():
        match = GROUP_LEAK.match(name)
        if match is None:
            out[name] = value
            continue
        group = int(match.group(1))
        if group >= len(leaks):
            raise ValueError(
                f"{name}: group < len(group_leaks) must hold, got group={group}, "
                f"group_leaks={list(given)}"
            )
        leaks[group] = value
        out["group_leaks"] = leaks
    return out


def point_config(base: TrialConfig, params: Mapping[str, Any]) -> TrialConfig:
    """The TrialConfig of a searched point: ``base`` with ``params`` applied (validated)."""
    return TrialConfig.from_dict(apply_params(base.to_dict(), params))


def params_of(config: TrialConfig, names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The values of searchable parameters ``names`` in ``config`` (inverse of apply_params)."""
    out: dict[str, float] = {}
    for name in names:
        match = GROUP_LEAK.match(name)
        if match is None:
            out[name] = getattr(config, name)
        elif int(match.group(1)) < len(config.group_leaks):
            out[name] = config.group_leaks[int(match.group(1))]
    return out


def field_of(name: str) -> str:
    """The TrialConfig field a searchable parameter sets (``leak_group<g>`` -> ``group_leaks``)."""
    return "group_leaks" if GROUP_LEAK.match(name) else name


def probe(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions ``space`` searches, from one ask on a scratch study ({} = none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        space(trial)
    return dict(trial.distributions)


def fixed_space(space: Space, fixed: Mapping[str, Any]) -> Space:
    """``space`` with the parameters named in ``fixed`` held at their values, not searched.

    The space still runs (define-by-run code may branch on a value) but its ``suggest_*`` call
    for a fixed name returns the fixed value without recording a parameter, so the Optuna study
    never searches it and the trial's config keeps the value it already holds.

    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> trial = study.ask()
    >>> fixed_space(leaky, {"learning_rate": 0.1})(trial) is None
    True
    >>> sorted(trial.params)
    ['leak']
    """
    return _FixedSpace(space, dict(fixed)) if fixed else space


# ---------------------------------------------------------------------------------------------
# Spaces written in a spec
# ---------------------------------------------------------------------------------------------
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
    try:
        role(name)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
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
        if GROUP_LEAK.match(name):
            TrialConfig(group_leaks=(float(value),))
        else:
            TrialConfig(**{name: float(value)})
    except ValueError as error:
        raise ValueError(f"{name}: {error}" if GROUP_LEAK.match(name) else str(error)) from None


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


class _FixedSpace:
    """Picklable ``fixed_space``: runs the space on a trial whose fixed names are answered."""

    def __init__(self, space: Space, fixed: dict[str, Any]) -> None:
        self.space = space
        self.fixed = fixed

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        return self.space(_HoldingTrial(trial, self.fixed))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"fixed_space({self.space!r}, {self.fixed!r})"


class _HoldingTrial:
    """An Optuna trial whose ``suggest_*`` returns the fixed value for a fixed name."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]) -> None:
        self._trial = trial
        self._fixed = fixed

    def __getattr__(self, attribute: str) -> Any:
        found = getattr(self._trial, attribute)
        if not attribute.startswith("suggest_"):
            return found

        def suggest(name: str, *args: Any, **kwargs: Any) -> Any:
            return self._fixed[name] if name in self._fixed else found(name, *args, **kwargs)

        return suggest
