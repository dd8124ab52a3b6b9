"""The study spec: typed, frozen, validated at construction, read from TOML or a preset.

A spec names everything a study needs; ``--set key=value`` overrides go through the same parser
as the file (dotted keys reach into tables, values are TOML literals with a string fallback, and
``a,b`` is a list for list fields). Every error is one :class:`SpecError` naming the field, the
value and what is allowed.

Example:
    >>> spec = load_spec("smoke", ["trials_per_cell=3", "models=feedforward,leaky"])
    >>> spec.trials_per_cell, spec.models, spec.direction
    (3, ('feedforward', 'leaky'), 'min')
    >>> StudySpec.from_dict(spec.to_dict()) == spec
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from search_spaces import SPACES, Space, inline_space
from trainables.config import (
    DTYPES,
    EVAL_SCHEDULES,
    GRADIENTS,
    LOSSES,
    MODELS,
    OPTIMIZERS,
    OUTPUTS,
    ConfigError,
    DatasetConfig,
    TrialConfig,
    check_ordering_name,
)
from trainables.metrics import OBJECTIVES

DEFAULT_PRESET = "paper-fig2-synthetic"
SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp", "qmc")
SCHEDULERS: tuple[str, ...] = ("none", "asha")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecError(ConfigError):
    """An invalid spec: one message naming the field, the value and what is allowed."""


def project_root() -> Path:
    """The git checkout holding the working directory, else the working directory itself.

    Default stores (``mlruns/``, ``.study/``) live here, so ``study run`` from a subfolder of the
    repository still writes to the one store the README's ``mlflow ui`` command reads.
    """
    cwd = Path.cwd().absolute()
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder
    return cwd


def default_tracking_uri() -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` (artifacts go next to it, in ``mlruns/artifacts``)."""
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def default_storage_path() -> str:
    """Where Ray Tune keeps trial results and checkpoints: ``<root>/.study/ray_results``."""
    return str(project_root() / ".study" / "ray_results")


# ---------------------------------------------------------------------------------------------
# The typed spec
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkSpec:
    """Architecture and training settings shared by every cell (the fixed hyperparameters)."""

    hidden: tuple[int, ...] = (8,)
    """Hidden layer sizes; the input and output sizes come from the data set."""
    output: str = "sigmoid"
    loss: str = "mse"
    optimizer: str = "sgd"
    gradient: str = "leak-scaled"
    """Gradient convention for leaky layers (logged with every run), one of GRADIENTS."""
    learning_rate: float = 0.01
    """Value used when a model's search space does not search it."""
    leak: float = 0.5
    """Value used when a model's search space does not search it."""
    reset_threshold: float = 1.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_type("network.hidden", self.hidden, tuple)
        _check_choice("network.output", self.output, OUTPUTS)
        _check_choice("network.loss", self.loss, LOSSES)
        _check_choice("network.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("network.gradient", self.gradient, GRADIENTS)
        _check_choice("network.dtype", self.dtype, DTYPES)
        # The engine's own validation covers the numbers; re-label its field as network.*.
        with _relabel("network."):
            TrialConfig(
                hidden=self.hidden,
                learning_rate=self.learning_rate,
                leak=self.leak,
                reset_threshold=self.reset_threshold,
            )


@dataclass(frozen=True)
class ResourcesSpec:
    """Resources of one trial: CPUs and a GPU fraction (0.25 packs four trials on one GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        _check_number("resources.cpu", self.cpu, "a number > 0", lambda v: v > 0)
        _check_number(
            "resources.gpu",
            self.gpu,
            "0, a fraction in (0, 1] or a whole number of GPUs",
            lambda v: v >= 0 and (v <= 1 or float(v).is_integer()),
        )


@dataclass(frozen=True)
class StudySpec:
    """One study: a factorial design of cells, each tuned by its own Optuna study."""

    name: str = DEFAULT_PRESET
    """Study name: the MLflow experiment, the Ray run and the Optuna study prefix."""
    datasets: tuple[DatasetConfig, ...] = (DatasetConfig(),)
    models: tuple[str, ...] = ("feedforward", "leaky", "leaky-reset")
    orderings: tuple[str, ...] = ("random", "reps-1", "reps-3", "reps-5")
    network: NetworkSpec = field(default_factory=NetworkSpec)
    replicates: int = 10
    """Networks (init seeds) trained at once per trial; metrics are their mean and 95% CI."""
    epochs: int = 1
    eval_every: int = 50
    eval_schedule: str = "linear"
    target_accuracy: float = 0.9
    """Accuracy defining the samples_to_target metric."""
    objective: str = "test_loss_auc"
    """Run metric each cell's Optuna study optimises (direction follows from it)."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Per model: a named space from search_spaces.SPACES or an inline table; default: own name."""
    sampler: str = "tpe"
    trials_per_cell: int = 4
    """Optuna budget of every cell, the paper setting included."""
    max_concurrent_trials: int = 0
    """0 = as many as the cluster's resources allow."""
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    scheduler: str = "none"
    """'asha' stops weak trials early, comparing the objective at matched samples seen."""
    tracking_uri: str = ""
    """MLflow tracking URI; empty = sqlite:///<repo>/mlruns/mlflow.db."""
    optuna_storage: str | None = None
    """Optuna RDB URL (e.g. postgresql://...); None = in memory, saved with the Ray run."""
    ray_address: str | None = None
    """None = start a local Ray sized to this machine; else ray://host:port or host:port."""
    storage_path: str = ""
    """Ray Tune results and checkpoints; empty = <repo>/.study/ray_results."""
    data_dir: str | None = None
    """IDX folder for data sets naming none; None = $STUDY_DATA_DIR or ./data."""
    seed: int = 0
    """Base seed: trial seeds (the same in every cell, so cells are paired) and sampler seeds."""
    paper_setting_first: bool = True
    """Enqueue the paper's own setting as each cell's first trial."""

    def __post_init__(self) -> None:
        _check_type("name", self.name, str)
        if not _NAME.match(self.name):
            raise SpecError("name", self.name, "letters, digits, '_', '.', '-' (no spaces)")
        _check_list("datasets", self.datasets, DatasetConfig)
        _check_list("models", self.models, str)
        for model in self.models:
            _check_choice("models", model, MODELS)
        _check_list("orderings", self.orderings, str)
        for ordering in self.orderings:
            with _relabel(""):
                check_ordering_name(ordering, "orderings")
        for name in ("models", "orderings"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise SpecError(name, list(values), "each value at most once")
        _check_type("network", self.network, NetworkSpec)
        _check_int("replicates", self.replicates, 1)
        _check_int("epochs", self.epochs, 1)
        _check_int("eval_every", self.eval_every, 1)
        _check_choice("eval_schedule", self.eval_schedule, EVAL_SCHEDULES)
        _check_number("target_accuracy", self.target_accuracy, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_choice("objective", self.objective, tuple(OBJECTIVES))
        _check_type("search_space", self.search_space, dict)
        for model, space in self.search_space.items():
            _check_choice("search_space", model, MODELS)
            self._resolve_space(model, space)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_int("trials_per_cell", self.trials_per_cell, 1)
        _check_int("max_concurrent_trials", self.max_concurrent_trials, 0)
        _check_type("resources", self.resources, ResourcesSpec)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        for name in ("tracking_uri", "storage_path"):
            _check_type(name, getattr(self, name), str)
        for name in ("optuna_storage", "ray_address", "data_dir"):
            if getattr(self, name) is not None:
                _check_type(name, getattr(self, name), str)
        _check_int("seed", self.seed, 0)
        _check_type("paper_setting_first", self.paper_setting_first, bool)
        # Defaults and relative paths are resolved once, here, so the spec logged to MLflow and
        # stored for resume names the exact stores, whatever the working directory later is.
        set_ = object.__setattr__
        set_(self, "tracking_uri", _absolute_uri(self.tracking_uri or default_tracking_uri()))
        set_(
            self, "storage_path", str(Path(self.storage_path or default_storage_path()).absolute())
        )
        if self.data_dir is not None:
            set_(self, "data_dir", str(Path(self.data_dir).expanduser().absolute()))
        if self.optuna_storage is not None:
            set_(self, "optuna_storage", _absolute_uri(self.optuna_storage))

    # -- derived values ------------------------------------------------------------------------
    @property
    def direction(self) -> str:
        """'min' or 'max': the direction of ``objective``."""
        return OBJECTIVES[self.objective]

    @property
    def device(self) -> str:
        """The engine's device: trials with a GPU share run on CUDA."""
        return "cuda" if self.resources.gpu > 0 else "cpu"

    def space_name(self, model: str) -> str:
        """'inline' or the name of the space ``model`` is searched with."""
        space = self.search_space.get(model, model)
        return space if isinstance(space, str) else "inline"

    def space_for(self, model: str) -> Space:
        """The define-by-run function searching ``model``'s hyperparameters."""
        return self._resolve_space(model, self.search_space.get(model, model))

    def _resolve_space(self, model: str, space: Any) -> Space:
        if isinstance(space, str):
            if space not in SPACES:
                raise SpecError(
                    f"search_space.{model}", space, f"one of {', '.join(SPACES)} or a table"
                )
            return SPACES[space]
        if isinstance(space, dict):
            try:
                return inline_space(space)
            except ValueError as error:
                raise SpecError(f"search_space.{model}", space, str(error)) from None
        raise SpecError(f"search_space.{model}", space, "a space name or a table of ranges")

    def dataset_configs(self) -> tuple[DatasetConfig, ...]:
        """The data sets with the spec-wide ``data_dir`` filled in where they name none."""
        return tuple(
            ds
            if ds.data_dir is not None or self.data_dir is None
            else dataclasses.replace(ds, data_dir=self.data_dir)
            for ds in self.datasets
        )

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` turns back into an equal spec."""
        out = dataclasses.asdict(self)
        out["datasets"] = [dataclasses.asdict(ds) for ds in self.datasets]
        out["models"] = list(self.models)
        out["orderings"] = list(self.orderings)
        out["network"]["hidden"] = list(self.network.hidden)
        return out

    def to_json(self) -> str:
        """The resolved spec as indented JSON (logged to MLflow, stored for resume)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudySpec:
        """A spec from plain (TOML / JSON) values; unknown keys name the closest valid one."""
        values = dict(values)
        _reject_unknown("", values, _field_names(cls))
        if "datasets" in values:
            values["datasets"] = tuple(
                _dataset(i, v) for i, v in enumerate(_as_list("datasets", values["datasets"]))
            )
        for name in ("models", "orderings"):
            if name in values:
                values[name] = tuple(_as_list(name, values[name]))
        if "network" in values:
            network = _as_table("network", values["network"])
            _reject_unknown("network.", network, _field_names(NetworkSpec))
            if "hidden" in network:
                network["hidden"] = tuple(_as_list("network.hidden", network["hidden"]))
            for name in ("learning_rate", "leak", "reset_threshold"):
                if name in network:
                    network[name] = _as_float(f"network.{name}", network[name])
            values["network"] = NetworkSpec(**network)
        if "resources" in values:
            res = _as_table("resources", values["resources"])
            _reject_unknown("resources.", res, _field_names(ResourcesSpec))
            values["resources"] = ResourcesSpec(
                **{k: _as_float(f"resources.{k}", v) for k, v in res.items()}
            )
        if "target_accuracy" in values:
            values["target_accuracy"] = _as_float("target_accuracy", values["target_accuracy"])
        if "search_space" in values:
            values["search_space"] = _as_table("search_space", values["search_space"])
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Loading: file or preset, then --set overrides
# ---------------------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """Names of the presets shipped in ``study/presets``."""
    folder = resources.files("study") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def preset_text(name: str) -> str:
    """The TOML text of preset ``name``."""
    return (resources.files("study") / "presets" / f"{name}.toml").read_text()


def read_source(source: str | None) -> dict[str, Any]:
    """Raw values of a TOML file path or a preset name (None = the default preset)."""
    source = source or DEFAULT_PRESET
    path = Path(source).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(
                "spec", source, "an existing TOML file or a preset: " + ", ".join(preset_names())
            )
        text = path.read_text()
    elif source in preset_names():
        text = preset_text(source)
    else:
        close = difflib.get_close_matches(source, preset_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(
            "spec", source, f"a TOML file or a preset: {', '.join(preset_names())}{hint}"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SpecError("spec", source, f"valid TOML ({error})") from None


def load_spec(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
    """Read ``source`` (file, preset or None for the default), apply ``key=value`` overrides."""
    values = read_source(source)
    for item in overrides:
        apply_override(values, item)
    return StudySpec.from_dict(values)


_LIST_FIELDS = {"models", "orderings", "datasets", "hidden"}


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` to raw spec ``values`` in place.

    Dotted keys reach into tables (``network.hidden=16,8``); ``datasets.<i or name>.<field>``
    reaches into one data set. The value is a TOML literal (``3``, ``0.5``, ``true``,
    ``[16, 8]``, ``{low=0, high=0.9}``) or else a string; ``a,b`` is a list for list fields.
    """
    if "=" not in item:
        raise SpecError("--set", item, "key=value")
    key, text = (part.strip() for part in item.split("=", 1))
    path = key.split(".")
    if not all(path):
        raise SpecError("--set", item, "a dotted key such as network.hidden=16,8")
    value = _parse_literal(text, as_list=path[-1] in _LIST_FIELDS)
    _reject_unknown("", {path[0]: value}, _field_names(StudySpec))
    if path[0] == "datasets" and len(path) > 1:
        _set_in_dataset(values, path, value)
        return
    target = values
    for depth, part in enumerate(path[:-1]):
        node = target.get(part)
        if node is None:
            node = target[part] = {}
        if not isinstance(node, dict):
            raise SpecError(".".join(path[: depth + 1]), node, "a table to set keys in")
        target = node
    target[path[-1]] = value


def _set_in_dataset(values: dict[str, Any], path: list[str], value: Any) -> None:
    datasets = [
        {"name": d} if isinstance(d, str) else dict(d)
        for d in _as_list(
            "datasets", values.get("datasets", [dataclasses.asdict(DatasetConfig())])
        )
    ]
    names = [d.get("name", DatasetConfig.name) for d in datasets]
    selector = path[1]
    if selector.isdigit() and int(selector) < len(datasets):
        chosen = [int(selector)]
    elif selector == "*":
        chosen = list(range(len(datasets)))
    else:
        chosen = [i for i, name in enumerate(names) if name == selector]
    if not chosen or len(path) != 3:
        raise SpecError(
            ".".join(path), value, f"datasets.<index, name or *>.<field> with names {names}"
        )
    _reject_unknown(f"datasets.{selector}.", {path[2]: value}, _field_names(DatasetConfig))
    for i in chosen:
        datasets[i][path[2]] = value
    values["datasets"] = datasets


def _parse_literal(text: str, as_list: bool) -> Any:
    """A TOML literal, else the string itself; ``a,b`` is a list when the field is one."""
    if as_list and not text.startswith("["):
        return [_parse_literal(part.strip(), as_list=False) for part in text.split(",") if part]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ---------------------------------------------------------------------------------------------
# Validation helpers: every one raises a single SpecError(field, value, allowed)
# ---------------------------------------------------------------------------------------------
class _relabel:
    """Re-raise a trainables ConfigError as a SpecError with the field under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> bool:
        if isinstance(error, ConfigError) and not isinstance(error, SpecError):
            # DatasetConfig names its fields dataset.*; the spec's prefix already says which one.
            name = error.field_name.removeprefix("dataset.")
            raise SpecError(self.prefix + name, error.value, error.allowed) from None
        return False


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _reject_unknown(prefix: str, values: dict[str, Any], known: list[str]) -> None:
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {prefix + close[0]!r}? " if close else ""
            raise SpecError(
                f"{prefix}{key}", values[key], f"unknown key; {hint}known: " + ", ".join(known)
            )


def _dataset(index: int, value: Any) -> DatasetConfig:
    if isinstance(value, DatasetConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    table = _as_table(f"datasets[{index}]", value)
    _reject_unknown(f"datasets[{index}].", table, _field_names(DatasetConfig))
    for key in ("train_per_category", "test_per_category"):
        # TOML has no null: "all" (or "none") asks for every item of a class.
        if isinstance(table.get(key), str) and table[key].lower() in ("all", "none"):
            table[key] = None
    if "noise" in table:
        table["noise"] = _as_float(f"datasets[{index}].noise", table["noise"])
    if table.get("data_dir") is not None:
        table["data_dir"] = str(Path(str(table["data_dir"])).expanduser().absolute())
    with _relabel(f"datasets[{index}]."):
        for key, kind in (("name", str), ("template", str)):
            if key in table:
                _check_type(f"datasets[{index}].{key}", table[key], kind)
        return DatasetConfig(**table)


def _as_list(name: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise SpecError(name, value, "a list (or a comma-separated string)")
    return list(value)


def _as_table(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(name, value, "a table")
    return dict(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(name, value, "a number")
    return float(value)


def _check_type(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SpecError(name, value, f"a {_KIND_NAMES.get(kind, kind.__name__)}")


_KIND_NAMES = {str: "string", bool: "boolean (true/false)", tuple: "list", dict: "table"}


def _check_list(name: str, value: Any, kind: type) -> None:
    if not isinstance(value, tuple) or not value:
        raise SpecError(name, value, "a non-empty list")
    for item in value:
        _check_type(name, item, kind)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(name, value, f"one of {', '.join(allowed)}{hint}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(name, value, f"an integer >= {minimum}")


def _check_number(name: str, value: Any, allowed: str, ok: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(name, value, allowed)
    if not ok(value):
        raise SpecError(name, value, allowed)


def _absolute_uri(uri: str) -> str:
    """Make sqlite/file URIs and plain paths absolute; leave server URLs alone."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path.startswith("/") or path == ":memory:":
            return uri
        return f"sqlite:///{Path(path).absolute()}"
    if uri.startswith("file:"):
        path = uri.removeprefix("file://").removeprefix("file:")
        return f"file://{Path(path).absolute()}"
    if "://" not in uri:
        return str(Path(uri).expanduser().absolute())
    return uri
