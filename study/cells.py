"""Expansion of a study spec into cells: every (data set, model, ordering) combination.

A cell is tuned on its own (own Optuna study, own budget), so conditions are compared fairly,
each at the paper's setting and at its best. All cells share one base seed, so the replicates of
every cell see the same category permutations and item orders: comparisons are paired.

Example:
    >>> from study.spec import load_spec
    >>> cells = expand(load_spec("smoke"))
    >>> [c.key for c in cells]  # doctest: +NORMALIZE_WHITESPACE
    ['synthetic-categories/feedforward/random', 'synthetic-categories/feedforward/reps-3',
     'synthetic-categories/leaky-reset/random', 'synthetic-categories/leaky-reset/reps-3']
    >>> cells[0].optuna_name
    'smoke::synthetic-categories/feedforward/random'
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from search_spaces import paper_setting
from study.spec import StudySpec
from trainables.config import DatasetConfig, TrialConfig


@dataclass(frozen=True)
class Cell:
    """One condition of the factorial design."""

    index: int
    study: str
    dataset_label: str
    """The data set's name, suffixed with its position when a spec lists one name twice."""
    base: TrialConfig
    """Fixed settings of every trial in the cell; searched values override them."""

    @property
    def key(self) -> str:
        """``<data set>/<model>/<ordering>``, unique within the study."""
        return f"{self.dataset_label}/{self.model}/{self.ordering}"

    @property
    def optuna_name(self) -> str:
        """Unique Optuna study name ``<study>::<cell key>``."""
        return f"{self.study}::{self.key}"

    @property
    def model(self) -> str:
        return self.base.model

    @property
    def ordering(self) -> str:
        return self.base.ordering

    @property
    def dataset(self) -> DatasetConfig:
        return self.base.dataset

    def paper_params(self) -> dict[str, float]:
        """The paper's own values of this cell's model (its first trial)."""
        return paper_setting(self.model)


def expand(spec: StudySpec) -> list[Cell]:
    """The cells of ``spec``, data set-major, then model, then ordering (the spec's orders)."""
    datasets = spec.dataset_configs()
    counts = Counter(ds.name for ds in datasets)
    cells: list[Cell] = []
    for position, dataset in enumerate(datasets):
        label = dataset.name if counts[dataset.name] == 1 else f"{dataset.name}-{position}"
        for model in spec.models:
            for ordering in spec.orderings:
                base = TrialConfig(
                    model=model,
                    ordering=ordering,
                    dataset=dataset,
                    hidden=spec.network.hidden,
                    output=spec.network.output,
                    loss=spec.network.loss,
                    optimizer=spec.network.optimizer,
                    learning_rate=spec.network.learning_rate,
                    leak=spec.network.leak,
                    reset_threshold=spec.network.reset_threshold,
                    gradient=spec.network.gradient,
                    replicates=spec.replicates,
                    epochs=spec.epochs,
                    eval_every=spec.eval_every,
                    eval_schedule=spec.eval_schedule,
                    target_accuracy=spec.target_accuracy,
                    seed=spec.seed,
                    dtype=spec.network.dtype,
                    device=spec.device,
                )
                cells.append(Cell(len(cells), spec.name, label, base))
    return cells
