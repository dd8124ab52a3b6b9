"""The study spec: typed, frozen, validated at construction, read from TOML or a preset.

A spec names everything a study needs; ``--set key=value`` overrides go through the same parser
as the file (dotted keys reach into tables, values are TOML literals with a string fallback, and
``a,b`` is a list for list fields). Every error is one :class:`SpecError` naming the field, the
value and what is allowed.

Every TrialConfig field has one place: the design's factors (``datasets``, ``models``,
``orderings``), top-level keys shared by all cells (``replicates``, ``epochs``...), and the rest
in ``[network]``, overridable per model (``[network.<model>]``) and per variant
(``[[variants]]``, named override sets crossed with the other factors). Validation builds the
TrialConfig of every cell, so the engine's own checks run before anything starts, and their
messages name the spec field that set the value.

Example:
    >>> spec = load_spec("smoke", ["trials_per_cell=3", "models=feedforward,leaky"])
    >>> spec.trials_per_cell, spec.models, spec.direction
    (3, ('feedforward', 'leaky'), 'min')
    >>> StudySpec.from_dict(spec.to_dict()) == spec
    True
    >>> load_spec("smoke", ["network.minibatch.batch_size=0"])
    Traceback (most recent call last):
    ...
    study.spec.SpecError: network.minibatch.batch_size=0 is invalid: expected an integer >= 1
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import functools
import json
import math
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import optuna

from search_spaces import (
    SPACES,
    Space,
    field_of,
    fixed_space,
    inline_space,
    paper_setting,
    point_config,
    probe,
)
from trainables.config import (
    EVAL_SCHEDULES,
    MODELS,
    ConfigError,
    DatasetConfig,
    TrialConfig,
    check_ordering_name,
)
from trainables.metrics import ACCURACY_OBJECTIVES, LATENT_OBJECTIVES, OBJECTIVES

DEFAULT_PRESET = "paper-fig2-synthetic"
SAMPLERS: tuple[str, ...] = ("tpe", "random", "cmaes", "gp", "qmc")
SCHEDULERS: tuple[str, ...] = ("none", "asha")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

OBJECTIVE_DIRECTIONS: dict[str, str] = {**OBJECTIVES, **LATENT_OBJECTIVES}
"""Every run metric a spec may name as its objective, with its direction."""
LATENT_DATASETS: tuple[str, ...] = ("multiscale-stream",)
"""Data sets that keep latent states (``Dataset.test_latent``), so timescale metrics exist.
Mirrors ``trainables.data``; tests/study/test_spec.py checks the two agree."""

# TrialConfig fields by where a spec sets them: the factors of the design (one value per cell),
# top-level keys shared by every cell, and the rest, in the `network` table (NETWORK_FIELDS,
# defined after NetworkSpec; tests/study/test_spec.py checks the three cover TrialConfig).
FACTOR_FIELDS: tuple[str, ...] = ("model", "ordering", "dataset")
STUDY_FIELDS: tuple[str, ...] = (
    "replicates",
    "epochs",
    "eval_every",
    "eval_schedule",
    "target_accuracy",
    "seed",
)


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


TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql")
"""URI schemes of the MLflow tracking stores a study can write to (an RDB scheme may name its
driver: ``postgresql+psycopg2``). MLflow 3's file store (``file:``, a plain folder) is left out:
it is in maintenance mode and refuses to create experiments."""


def resolve_tracking_uri(uri: str) -> str:
    """``uri`` checked against :data:`TRACKING_SCHEMES`, a relative SQLite path made absolute.

    Checked without importing MLflow, so a typo (``sqlit:///...``) is one clear error before
    anything starts, not MLflow's traceback from inside the first trial.

    Example:
        >>> resolve_tracking_uri("http://127.0.0.1:5000")
        'http://127.0.0.1:5000'
    """
    scheme = uri.partition("://")[0].partition("+")[0] if "://" in uri else ""
    if scheme not in TRACKING_SCHEMES:
        close = difflib.get_close_matches(scheme, TRACKING_SCHEMES, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
        elif scheme in ("", "file"):
            hint = " (MLflow 3's file store, file: or a plain folder, refuses new experiments)"
        else:
            hint = ""
        raise SpecError(
            "tracking_uri",
            uri,
            f"a URI with one of the schemes {', '.join(TRACKING_SCHEMES)}{hint}, "
            "e.g. sqlite:///mlruns/mlflow.db or http://HOST:5000",
        )
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise SpecError("tracking_uri", uri, "sqlite:///PATH (three slashes, then the path)")
    return _absolute_uri(uri)


def default_storage_path() -> str:
    """Where Ray Tune keeps trial results and checkpoints: ``<root>/.study/ray_results``."""
    return str(project_root() / ".study" / "ray_results")


# ---------------------------------------------------------------------------------------------
# The typed spec
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkSpec:
    """Architecture and training settings of every cell (the fixed hyperparameters).

    Field names and meanings are :class:`~trainables.config.TrialConfig`'s (see its docstrings
    for units and ranges); values are validated by building a TrialConfig, so the engine's own
    rules apply and messages name the spec field (``network.<field>``). ``per_model`` holds
    overrides for one model only, written ``[network.<model>]`` in TOML (e.g. the minibatch
    model's ``batch_size``, the LSTM's ``bptt_window``).
    """

    hidden: tuple[int, ...] = (8,)
    """Hidden layer sizes; the input and output sizes come from the data set."""
    output: str = "sigmoid"
    loss: str = "mse"
    optimizer: str = "sgd"
    """'sgd' (the paper's per-sample SGD) or 'rmsprop' (with rms_alpha, rms_eps, momentum)."""
    learning_rate: float = 0.01
    """Value used when a model's search space does not search it."""
    leak: float = 0.5
    """Value used when a model's search space does not search it."""
    reset_threshold: float = 1.0
    """Threshold-reset models, when their space does not search it."""
    gradient: str = "leak-scaled"
    """Gradient convention for leaky layers (logged with every run), one of GRADIENTS."""
    dtype: str = "float32"
    device: str | None = None
    """'cpu', 'cuda', 'auto'; None ('none' in TOML): CUDA when resources.gpu > 0, else CPU."""
    task: str = "classify"
    """'classify' or 'reconstruct' (autoencoders: target = input, sigmoid output)."""
    group_leaks: tuple[float, ...] = (0.0, 0.3, 0.6)
    """Multiscale models: leak of each hidden-unit group (fast to slow), when not searched."""
    reset_scope: str = "input"
    feature_groups: int = 3
    batch_size: int | None = None
    """Samples per update; None ('none' in TOML): the model's default (minibatch: 10, paper A.5;
    others: 1). Set it for the minibatch model only in [network.minibatch]."""
    rms_alpha: float = 0.99
    rms_eps: float = 1e-8
    momentum: float = 0.0
    test_protocol: str = "isolated"
    """'isolated' (each test item alone) or 'streamed' (in test_ordering, memory on)."""
    test_ordering: str | None = None
    """Streamed test order; None ('none' in TOML) = the cell's training ordering."""
    bptt_window: int = 5
    """lstm: steps of truncated BPTT (usually set in [network.lstm])."""
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model -> overrides of the fields above for that model's cells."""

    def __post_init__(self) -> None:
        for name in NETWORK_FIELDS:
            object.__setattr__(self, name, _coerce(f"network.{name}", name, getattr(self, name)))
        _check_type("network.per_model", self.per_model, dict)
        per_model: dict[str, dict[str, Any]] = {}
        for model, table in self.per_model.items():
            _check_choice("network", model, MODELS)
            table = _as_table(f"network.{model}", table)
            _reject_unknown(f"network.{model}.", table, list(NETWORK_FIELDS))
            per_model[model] = {k: _coerce(f"network.{model}.{k}", k, v) for k, v in table.items()}
        object.__setattr__(self, "per_model", per_model)
        # The engine's own validation covers the values; its messages name network.* fields.
        values = self.values()
        _build_config(values, {name: f"network.{name}" for name in values})
        for model, table in per_model.items():
            sources = {name: f"network.{name}" for name in values}
            sources.update({name: f"network.{model}.{name}" for name in table})
            _build_config({**values, **table, "model": model}, sources)

    def values(self, model: str | None = None) -> dict[str, Any]:
        """The TrialConfig values of these fields (``model``'s overrides applied if given)."""
        out = {name: getattr(self, name) for name in NETWORK_FIELDS}
        if model is not None:
            out.update(self.per_model.get(model, {}))
        if out["device"] is None:
            del out["device"]  # the study decides (resources.gpu), see StudySpec.device
        return out

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form: the fields, then one table per model with overrides."""
        out = {name: _plain(getattr(self, name)) for name in NETWORK_FIELDS}
        for model, table in self.per_model.items():
            out[model] = {k: _plain(v) for k, v in table.items()}
        return out


NETWORK_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(NetworkSpec) if f.name != "per_model"
)
"""TrialConfig fields a spec sets in ``[network]``, ``[network.<model>]`` or a variant."""


@dataclass(frozen=True)
class VariantSpec:
    """A named set of overrides: one setting of the study, crossed with its models and orderings.

    Written ``[[variants]]`` in TOML, with

    - ``name``;
    - any network field (``gradient = "leak-unscaled"``, ``hidden = [16, 16]``,
      ``learning_rate = 0.1``, ``test_ordering = "reps-1"``...);
    - ``dataset``: DatasetConfig overrides (``dataset = {noise = 0.2}``);
    - ``datasets``: the data sets (names or labels) the variant applies to; default: every one.
      Each ``dataset`` override must be a field that every data set the variant applies to
      uses (MNIST has no ``noise``: a noise variant must name the data sets that do);
    - ``search_space``: per model, a space replacing the study's for the variant's cells (a
      space name or an inline table, as in the study's ``search_space``).

    A variant's value of a searchable parameter (``learning_rate``, ``leak``,
    ``reset_threshold``, ``group_leaks``) is *fixed* in every trial of its cells, the paper
    trial included: the cells search only the rest of their space (a learning-rate variant
    tunes the leak at that rate instead of searching the rate again). A cell left with nothing
    to search runs one trial, as more would repeat it exactly.

    The intended use is one factor at a time from a baseline: a variant without overrides is
    the baseline, each other variant changes one thing, and the report's claims matrix shows
    what each change does to each claim.
    """

    name: str
    network: dict[str, Any] = field(default_factory=dict)
    """Overrides of network fields (after ``[network]`` and ``[network.<model>]``)."""
    dataset: dict[str, Any] = field(default_factory=dict)
    """Overrides of DatasetConfig fields (``name`` excluded)."""
    datasets: tuple[str, ...] = ()
    """Data set names or labels the variant applies to; empty = all of the study's."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """Model -> space name or inline table, replacing the study's ``search_space`` entry."""

    def __post_init__(self) -> None:
        _check_type("variants.name", self.name, str)
        if not _NAME.match(self.name):
            raise SpecError(
                "variants.name", self.name, "letters, digits, '_', '.', '-' (no spaces)"
            )
        prefix = f"variants.{self.name}."
        network = _as_table(prefix + "network", self.network)
        # The tables are listed for the did-you-mean hint only: they live in their own fields.
        _reject_unknown(prefix, network, [*NETWORK_FIELDS, *VARIANT_TABLES])
        for name in VARIANT_TABLES:
            if name in network:
                raise SpecError(prefix + name, network[name], f"VariantSpec.{name}")
        object.__setattr__(
            self, "network", {k: _coerce(prefix + k, k, v) for k, v in network.items()}
        )
        dataset_fields = [f for f in _field_names(DatasetConfig) if f != "name"]
        dataset = _as_table(prefix + "dataset", self.dataset)
        _reject_unknown(prefix + "dataset.", dataset, dataset_fields)
        dataset = _dataset_values(prefix + "dataset.", dataset)
        object.__setattr__(self, "dataset", dataset)
        with _relabel(prefix + "dataset."):
            DatasetConfig(**dataset)  # the values alone; each data set is checked per cell
        datasets = tuple(_as_list(prefix + "datasets", self.datasets))
        for name in datasets:
            _check_type(prefix + "datasets", name, str)
        if len(set(datasets)) != len(datasets):
            raise SpecError(prefix + "datasets", list(datasets), "each data set at most once")
        object.__setattr__(self, "datasets", datasets)
        spaces = _as_table(prefix + "search_space", self.search_space)
        for model, space in spaces.items():
            _check_choice(prefix + "search_space", model, MODELS)
            searched = probe(resolve_space(f"{prefix}search_space.{model}", space))
            fixed = sorted({field_of(n) for n in searched} & set(self.network))
            if fixed:
                raise SpecError(
                    f"{prefix}search_space.{model}",
                    space,
                    f"a space without {', '.join(fixed)}, which the variant fixes "
                    f"({', '.join(prefix + name for name in fixed)})",
                )
        object.__setattr__(self, "search_space", spaces)

    def applies_to(self, dataset: DatasetConfig, label: str) -> bool:
        """True when the variant's cells include data set ``dataset`` (labelled ``label``)."""
        return not self.datasets or dataset.name in self.datasets or label in self.datasets

    def overrides(self) -> dict[str, Any]:
        """What this setting changes, as flat ``field: value`` (``dataset.<field>`` for data
        set fields; the search-space entries as ``search_space.<model>``)."""
        out = {k: _plain(v) for k, v in self.network.items()}
        out.update({f"dataset.{k}": _plain(v) for k, v in self.dataset.items()})
        out.update({f"search_space.{k}": v for k, v in self.search_space.items()})
        return out

    @classmethod
    def from_dict(cls, table: dict[str, Any], where: str = "variants") -> VariantSpec:
        """A variant from its TOML/JSON table (the inverse of :meth:`to_dict`)."""
        table = dict(table)
        if "name" not in table:
            raise SpecError(where, table, "a table with a name")
        name = table.pop("name")
        tables = {key: table.pop(key) for key in VARIANT_TABLES if key in table}
        return cls(name=name, network=table, **tables)

    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON form: name, network keys inline, then the tables that are set."""
        out: dict[str, Any] = {"name": self.name}
        out.update({k: _plain(v) for k, v in self.network.items()})
        if self.dataset:
            out["dataset"] = {k: _plain(v) for k, v in self.dataset.items()}
        if self.datasets:
            out["datasets"] = list(self.datasets)
        if self.search_space:
            out["search_space"] = dict(self.search_space)
        return out


VARIANT_TABLES: tuple[str, ...] = ("dataset", "datasets", "search_space")
"""Keys of a ``[[variants]]`` entry that are not network fields."""

DATASET_USES: dict[str, tuple[str, ...]] = {
    "synthetic-categories": (
        "categories",
        "features",
        "train_per_category",
        "test_per_category",
        "noise",
        "template",
        "seed",
    ),
    "multiscale-stream": (
        "noise",
        "seed",
        "switch_periods",
        "features_per_group",
        "stream_length",
        "test_stream_length",
    ),
    "no-shared-features": (
        "categories",
        "features",
        "train_per_category",
        "test_per_category",
        "noise",
        "seed",
        "parts",
        "run_length",
    ),
    "mnist": ("train_per_category", "test_per_category", "data_dir", "seed"),
    "fashion-mnist": ("train_per_category", "test_per_category", "data_dir", "seed"),
}
"""DatasetConfig fields each data set's loader reads (the others it ignores). Mirrors
``trainables.data``; tests/study/test_spec.py checks it by changing each field."""


class CellDesign(NamedTuple):
    """One cell of the design, as the spec builds and validates it (see study.cells)."""

    dataset_label: str
    variant: str | None
    pinned: tuple[str, ...]
    """Network fields the cell's variant sets (searchable ones are fixed in all its trials)."""
    config: TrialConfig
    budget: int
    """Trials the cell runs: ``trials_per_cell``, or 1 when its space searches nothing."""


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
    variants: tuple[VariantSpec, ...] = ()
    """Named override sets crossed with the other factors; cell key gains ``/<variant>``."""
    replicates: int = 10
    """Networks (init seeds) trained at once per trial; metrics are their mean and 95% CI."""
    epochs: int = 1
    eval_every: int = 50
    eval_schedule: str = "linear"
    target_accuracy: float = 0.9
    """Accuracy defining the samples_to_target metric."""
    objective: str = "test_loss_auc"
    """Run metric each cell's Optuna study optimises (direction follows from it); one of
    OBJECTIVES, or for autoencoders on data with latents LATENT_OBJECTIVES."""
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
    """Optuna RDB URL (e.g. postgresql+psycopg2://...); None = a journal file
    ``<results_dir>/optuna.journal`` (crash-safe, one machine)."""
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
    checkpoint_every_s: float = 30.0
    """Seconds of training between a trial's intermediate checkpoints (a dead worker's trial
    restarts from its last one); 0 = at every evaluation point. The end is always checkpointed."""
    keep_checkpoints: int = 0
    """Checkpoints kept per trial; 0 = all. Resume needs only the newest, so a cluster with long
    trials may keep 1 to bound disk use, but then Ray Tune snapshots its whole experiment state
    after every trial checkpoint (slower studies of many short trials)."""

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
        _check_type("variants", self.variants, tuple)
        for variant in self.variants:
            _check_type("variants", variant, VariantSpec)
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise SpecError("variants", names, "distinct variant names")
        known = list(dict.fromkeys([*(ds.name for ds in self.datasets), *self.dataset_labels()]))
        for variant in self.variants:
            for name in variant.datasets:
                if name not in known:
                    raise SpecError(
                        f"variants.{variant.name}.datasets",
                        list(variant.datasets),
                        f"names or labels of the study's data sets: {', '.join(known)}",
                    )
        for position, (label, dataset) in enumerate(
            zip(self.dataset_labels(), self.datasets, strict=True)
        ):
            if self.variants and not any(v.applies_to(dataset, label) for v in self.variants):
                raise SpecError(
                    f"datasets[{position}]",
                    label,
                    "a data set some variant applies to (every variant names other data "
                    "sets): add a variant without `datasets`, or drop the data set",
                )
        _check_int("replicates", self.replicates, 1)
        _check_int("epochs", self.epochs, 1)
        _check_int("eval_every", self.eval_every, 1)
        _check_choice("eval_schedule", self.eval_schedule, EVAL_SCHEDULES)
        _check_number("target_accuracy", self.target_accuracy, "in (0, 1]", lambda v: 0 < v <= 1)
        _check_choice("objective", self.objective, tuple(OBJECTIVE_DIRECTIONS))
        _check_type("search_space", self.search_space, dict)
        for model, space in self.search_space.items():
            _check_choice("search_space", model, MODELS)
            resolve_space(f"search_space.{model}", space)
        _check_choice("sampler", self.sampler, SAMPLERS)
        _check_int("trials_per_cell", self.trials_per_cell, 1)
        _check_int("max_concurrent_trials", self.max_concurrent_trials, 0)
        _check_int("keep_checkpoints", self.keep_checkpoints, 0)
        _check_type("resources", self.resources, ResourcesSpec)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        for name in ("tracking_uri", "storage_path"):
            _check_type(name, getattr(self, name), str)
        for name in ("optuna_storage", "ray_address", "data_dir"):
            if getattr(self, name) is not None:
                _check_type(name, getattr(self, name), str)
        _check_int("seed", self.seed, 0)
        _check_type("paper_setting_first", self.paper_setting_first, bool)
        _check_number(
            "checkpoint_every_s",
            self.checkpoint_every_s,
            "a number of seconds >= 0",
            lambda v: v >= 0,
        )
        if self.network.device == "cuda" and self.resources.gpu == 0:
            raise SpecError(
                "network.device",
                "cuda",
                "'cpu' or 'auto' unless resources.gpu > 0 "
                "(Ray hides the GPUs from trials that hold no GPU share)",
            )
        if self.scheduler == "asha" and self.objective in LATENT_OBJECTIVES:
            raise SpecError(
                "scheduler",
                "asha",
                "'none' with a timescale objective (it exists only at the "
                "end of a trial, so ASHA has nothing to compare at matched samples)",
            )
        self._check_cells()
        # Defaults and relative paths are resolved once, here, so the spec logged to MLflow and
        # stored for resume names the exact stores, whatever the working directory later is.
        set_ = object.__setattr__
        set_(
            self, "tracking_uri", resolve_tracking_uri(self.tracking_uri or default_tracking_uri())
        )
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
        return OBJECTIVE_DIRECTIONS[self.objective]

    @property
    def results_dir(self) -> Path:
        """The study's folder of Ray results: checkpoints, Optuna journal, tracking spool."""
        return Path(self.storage_path) / self.name

    @property
    def device(self) -> str:
        """The engine's device: ``network.device``, else CUDA for trials with a GPU share."""
        if self.network.device is not None:
            return self.network.device
        return "cuda" if self.resources.gpu > 0 else "cpu"

    def design(self) -> list[CellDesign]:
        """Every cell's TrialConfig: data set-major, then model, ordering and variant.

        This is the one place cell configs are built; construction validates them, and a
        failure names the spec field that set the bad value (``network.<model>.batch_size``,
        ``variants.<name>.test_ordering``, ``datasets[0].noise``...). A variant crosses only
        the data sets it applies to (``variants.<name>.datasets``).

        Raises:
            SpecError: a cell whose settings the engine rejects, or a variant overriding a data
                set field that one of its data sets does not use.
        """
        cells: list[CellDesign] = []
        budgets: dict[tuple[str, str | None], int] = {}
        for position, (label, dataset) in enumerate(
            zip(self.dataset_labels(), self.dataset_configs(), strict=True)
        ):
            variants = [v for v in self.variants if v.applies_to(dataset, label)]
            for variant in variants:
                _check_dataset_fields(variant, dataset, label)
            for model in self.models:
                for ordering in self.orderings:
                    for variant in variants or [None]:
                        config = self._cell_config(position, dataset, model, ordering, variant)
                        name = variant.name if variant else None
                        if (model, name) not in budgets:
                            searched = probe(self.space_for(model, name))
                            budgets[(model, name)] = self.trials_per_cell if searched else 1
                        pinned = tuple(variant.network) if variant else ()
                        cells.append(
                            CellDesign(label, name, pinned, config, budgets[(model, name)])
                        )
        return cells

    def dataset_labels(self) -> list[str]:
        """Each data set's label in cell keys: its name, suffixed with its position when the
        spec lists one name twice."""
        counts = collections.Counter(ds.name for ds in self.datasets)
        return [
            ds.name if counts[ds.name] == 1 else f"{ds.name}-{position}"
            for position, ds in enumerate(self.datasets)
        ]

    def _cell_config(
        self,
        position: int,
        dataset: DatasetConfig,
        model: str,
        ordering: str,
        variant: VariantSpec | None,
    ) -> TrialConfig:
        values = self.network.values(model)
        sources = {name: f"network.{name}" for name in values}
        sources.update(
            {name: f"network.{model}.{name}" for name in self.network.per_model.get(model, {})}
        )
        if variant is not None:
            values.update(variant.network)
            sources.update({name: f"variants.{variant.name}.{name}" for name in variant.network})
            if variant.dataset:
                with _relabel(f"variants.{variant.name}.dataset."):
                    dataset = dataclasses.replace(dataset, **variant.dataset)
        values.setdefault("device", self.device)
        values.update(
            model=model,
            ordering=ordering,
            dataset=dataset,
            replicates=self.replicates,
            epochs=self.epochs,
            eval_every=self.eval_every,
            eval_schedule=self.eval_schedule,
            target_accuracy=self.target_accuracy,
            seed=self.seed,
        )
        sources.update(model="models", ordering="orderings", dataset=f"datasets[{position}]")
        return _build_config(values, sources)

    def _check_cells(self) -> None:
        """Checks of each cell beyond TrialConfig's: objective, group counts, search spaces."""
        samples: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for cell in self.design():
            config = cell.config
            key = "/".join(
                filter(None, (cell.dataset_label, config.model, config.ordering, cell.variant))
            )
            if config.task == "reconstruct" and self.objective in ACCURACY_OBJECTIVES:
                usable = [o for o in OBJECTIVE_DIRECTIONS if o not in ACCURACY_OBJECTIVES]
                raise SpecError(
                    "objective",
                    self.objective,
                    f"an objective without accuracy, as cell {key} "
                    f"has task='reconstruct' (no accuracy): one of {', '.join(usable)}",
                )
            if self.objective in LATENT_OBJECTIVES and (
                config.task != "reconstruct" or config.dataset.name not in LATENT_DATASETS
            ):
                raise SpecError(
                    "objective",
                    self.objective,
                    "task='reconstruct' on data with latent states "
                    f"({', '.join(LATENT_DATASETS)}), but cell {key} has "
                    f"task={config.task!r} on {config.dataset.name}",
                )
            if config.test_ordering is not None and config.test_protocol != "streamed":
                raise SpecError(
                    "network.test_protocol",
                    config.test_protocol,
                    f"'streamed' when test_ordering is set "
                    f"(cell {key} has test_ordering={config.test_ordering!r})",
                )
            # The engine checks this only when a trial starts (TrialRun); fail before any does.
            groups = len(config.group_leaks)
            if (
                config.model == "multiscale-reset"
                and config.reset_scope == "group"
                and config.feature_groups != groups
            ):
                raise SpecError(
                    "network.feature_groups",
                    config.feature_groups,
                    f"== len(group_leaks) = "
                    f"{groups} for multiscale-reset with reset_scope='group' (cell {key}): "
                    "reset groups and leak groups must coincide",
                )
            # The searched points must fit the cell too (e.g. leak_group2 needs 3 groups).
            where = (config.model, cell.variant)
            if where not in samples:
                samples[where] = [
                    paper_setting(config.model),
                    _sample(self.space_for(config.model, cell.variant)),
                ]
            for point in samples[where]:
                try:
                    point_config(config, point)
                except ValueError as error:
                    raise SpecError(
                        self._space_field(config.model, cell.variant),
                        self.space_name(config.model, cell.variant),
                        f"a space whose values fit cell {key} ({error})",
                    ) from None

    def variant(self, name: str | None) -> VariantSpec | None:
        """The variant called ``name`` (None for None)."""
        if name is None:
            return None
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(f"variant {name!r}; known: {[v.name for v in self.variants]}")

    def _space_entry(self, model: str, variant: str | None) -> Any:
        found = self.variant(variant)
        if found is not None and model in found.search_space:
            return found.search_space[model]
        return self.search_space.get(model, model)

    def _space_field(self, model: str, variant: str | None) -> str:
        found = self.variant(variant)
        if found is not None and model in found.search_space:
            return f"variants.{variant}.search_space.{model}"
        return f"search_space.{model}"

    def space_name(self, model: str, variant: str | None = None) -> str:
        """'inline' or the name of the space ``model`` is searched with (in ``variant``)."""
        space = self._space_entry(model, variant)
        return space if isinstance(space, str) else "inline"

    def space_for(self, model: str, variant: str | None = None) -> Space:
        """The define-by-run function searching ``model``'s hyperparameters in ``variant``'s
        cells: the variant's space for the model, else the study's, with the searchable values
        the variant sets held fixed."""
        space = resolve_space(self._space_field(model, variant), self._space_entry(model, variant))
        found = self.variant(variant)
        if found is None or not found.network:
            return space
        fixed = {}
        for name in probe(space):
            value = found.network.get(field_of(name))
            if value is None:
                continue
            if field_of(name) == "group_leaks":
                group = int(name.removeprefix("leak_group"))
                if group < len(value):
                    fixed[name] = value[group]
            else:
                fixed[name] = value
        return fixed_space(space, fixed)

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
        out["datasets"] = [
            {k: _plain(v) for k, v in dataclasses.asdict(ds).items()} for ds in self.datasets
        ]
        out["models"] = list(self.models)
        out["orderings"] = list(self.orderings)
        out["network"] = self.network.to_dict()
        out["variants"] = [variant.to_dict() for variant in self.variants]
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
            per_model = {m: network.pop(m) for m in list(network) if m in MODELS}
            _reject_unknown("network.", network, [*NETWORK_FIELDS, *MODELS])
            values["network"] = NetworkSpec(**network, per_model=per_model)
        if "variants" in values:
            values["variants"] = tuple(
                _variant(i, v) for i, v in enumerate(_as_list("variants", values["variants"]))
            )
        if "resources" in values:
            res = _as_table("resources", values["resources"])
            _reject_unknown("resources.", res, _field_names(ResourcesSpec))
            values["resources"] = ResourcesSpec(
                **{k: _as_float(f"resources.{k}", v) for k, v in res.items()}
            )
        for name in ("target_accuracy", "checkpoint_every_s"):
            if name in values:
                values[name] = _as_float(name, values[name])
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


_LIST_FIELDS = {"models", "orderings", "datasets", "hidden", "group_leaks", "switch_periods"}


def apply_override(values: dict[str, Any], item: str) -> None:
    """Apply one ``key=value`` to raw spec ``values`` in place.

    Dotted keys reach into tables (``network.hidden=16,8``, ``network.minibatch.batch_size=10``);
    ``datasets.<i, name or *>.<field>`` reaches into data sets and
    ``variants.<i, name or *>.<field>`` (or ``.dataset.<field>``) into variants. The value is
    a TOML literal (``3``, ``0.5``, ``true``, ``[16, 8]``, ``{low=0, high=0.9}``) or else a
    string; ``a,b`` is a list for list fields.
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
    if path[0] == "variants" and len(path) > 1:
        _set_in_variant(values, path, value)
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
    if len(path) != 3:
        raise SpecError(
            ".".join(path), value, f"datasets.<index, name or *>.<field> with names {names}"
        )
    if not chosen:
        raise SpecError(
            ".".join(path),
            value,
            f"a key of one of this spec's data sets {names}; {selector!r} is not one of them "
            f"(add it with an earlier --set datasets={','.join([*names, selector])})",
        )
    _reject_unknown(f"datasets.{selector}.", {path[2]: value}, _field_names(DatasetConfig))
    for i in chosen:
        datasets[i][path[2]] = value
    values["datasets"] = datasets


def _set_in_variant(values: dict[str, Any], path: list[str], value: Any) -> None:
    variants = [dict(v) for v in _as_list("variants", values.get("variants", []))]
    names = [str(v.get("name")) for v in variants]
    # A variant name may contain dots (lr-0.1): take the longest name the key starts with.
    rest = path[1:]
    for name in sorted(names, key=len, reverse=True):
        parts = name.split(".")
        if len(parts) > 1 and rest[: len(parts)] == parts:
            path = [path[0], name, *rest[len(parts) :]]
            break
    selector = path[1]
    if selector.isdigit() and int(selector) < len(variants):
        chosen = [int(selector)]
    elif selector == "*":
        chosen = list(range(len(variants)))
    else:
        chosen = [i for i, name in enumerate(names) if name == selector]
    nested = len(path) == 4 and path[2] in ("dataset", "search_space")
    if not chosen or not (len(path) == 3 or nested):
        raise SpecError(
            ".".join(path),
            value,
            "variants.<index, name or *>.<field> (or .dataset.<field>, "
            f".search_space.<model>) with names {names}",
        )
    for i in chosen:
        if nested:
            table = path[2]
            variants[i][table] = {**_as_table(table, variants[i].get(table, {}))}
            variants[i][table][path[3]] = value
        else:
            variants[i][path[2]] = value
    values["variants"] = variants


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
    table = _dataset_values(f"datasets[{index}].", table)
    with _relabel(f"datasets[{index}]."):
        return DatasetConfig(**table)


def _dataset_values(prefix: str, table: dict[str, Any]) -> dict[str, Any]:
    """DatasetConfig values in canonical form (floats, tuples, None, absolute paths)."""
    table = dict(table)
    for key in ("train_per_category", "test_per_category"):
        # TOML has no null: "all" (or "none") asks for every item of a class.
        if isinstance(table.get(key), str) and table[key].lower() in ("all", "none"):
            table[key] = None
    if "noise" in table:
        table["noise"] = _as_float(f"{prefix}noise", table["noise"])
    if "switch_periods" in table:
        table["switch_periods"] = tuple(
            _as_list(f"{prefix}switch_periods", table["switch_periods"])
        )
    if table.get("data_dir") is not None:
        table["data_dir"] = str(Path(str(table["data_dir"])).expanduser().absolute())
    for key, kind in (("name", str), ("template", str)):
        if key in table:
            _check_type(f"{prefix}{key}", table[key], kind)
    return table


def _variant(index: int, value: Any) -> VariantSpec:
    if isinstance(value, VariantSpec):
        return value
    return VariantSpec.from_dict(_as_table(f"variants[{index}]", value), f"variants[{index}]")


@functools.cache
def _field_kinds() -> dict[str, tuple[str, bool]]:
    """Network field -> (type without None, optional): from NetworkSpec's annotations."""
    kinds = {}
    for f in dataclasses.fields(NetworkSpec):
        text = str(f.type)
        kinds[f.name] = (text.replace("| None", "").strip(), "None" in text)
    return kinds


def _coerce(name: str, field_name: str, value: Any) -> Any:
    """A network value in canonical form (int -> float, list -> tuple, 'none' -> None).

    Only shapes are fixed here; TrialConfig judges the values. Strings are checked because
    the engine's choice checks assume them.
    """
    kind, optional = _field_kinds()[field_name]
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind.startswith("tuple["):
        items = list(value) if isinstance(value, list | tuple) else [value]
        if "float" in kind:
            items = [
                float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in items
            ]
        return tuple(items)
    if kind == "str":
        _check_type(name, value, str)
    return value


def _plain(value: Any) -> Any:
    """JSON/TOML form of a value: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


def resolve_space(name: str, space: Any) -> Space:
    """The space a spec entry ``name`` names: a key of SPACES or an inline table of ranges."""
    if isinstance(space, str):
        if space not in SPACES:
            raise SpecError(name, space, f"one of {', '.join(SPACES)} or a table")
        return SPACES[space]
    if isinstance(space, dict):
        try:
            return inline_space(space)
        except ValueError as error:
            raise SpecError(name, space, str(error)) from None
    raise SpecError(name, space, "a space name or a table of ranges")


def _check_dataset_fields(variant: VariantSpec, dataset: DatasetConfig, label: str) -> None:
    """A variant's data set override must change data set ``dataset``: else its cells would
    silently repeat the baseline's (MNIST has no noise)."""
    used = DATASET_USES[dataset.name]
    for key, value in variant.dataset.items():
        if key in used:
            continue
        users = [name for name, fields in DATASET_USES.items() if key in fields]
        raise SpecError(
            f"variants.{variant.name}.dataset.{key}",
            value,
            f"a field every data set of the variant uses, but {label} ignores {key} "
            f"(used by {', '.join(users) or 'no data set'}): restrict the variant with "
            f"variants.{variant.name}.datasets = [...]",
        )


def _build_config(values: dict[str, Any], sources: dict[str, str]) -> TrialConfig:
    """TrialConfig(**values); its ConfigError is re-raised naming the spec field (sources)."""
    try:
        return TrialConfig(**values)
    except ConfigError as error:
        if isinstance(error, SpecError):
            raise
        name = sources.get(error.field_name, error.field_name)
        raise SpecError(name, error.value, error.allowed) from None


def _sample(space: Space) -> dict[str, Any]:
    """One point of a space (a scratch study), to check that its parameter names fit cells."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        constants = space(trial) or {}
    return {**trial.params, **constants}


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
    """Make a SQLite URI's relative path absolute; leave other URLs alone."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path.startswith("/") or path == ":memory:":
            return uri
        return f"sqlite:///{Path(path).absolute()}"
    return uri
