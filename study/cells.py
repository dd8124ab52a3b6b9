"""Expansion of a study spec into cells: every (data set, model, ordering[, variant]) combination.

A cell is tuned on its own (own Optuna study, own budget), so conditions are compared fairly,
each at the paper's setting and at its best. All cells share one base seed, so the replicates of
every cell see the same category permutations and item orders: comparisons are paired.

Variants (the spec's ``[[variants]]``, named override sets) are the innermost factor, crossed
with the data sets each applies to; a study without variants has the plain
``<data set>/<model>/<ordering>`` keys.

Example:
    >>> from study.spec import load_spec
    >>> cells = expand(load_spec("smoke"))
    >>> [c.key for c in cells]  # doctest: +NORMALIZE_WHITESPACE
    ['synthetic-categories/feedforward/random', 'synthetic-categories/feedforward/reps-3',
     'synthetic-categories/leaky-reset/random', 'synthetic-categories/leaky-reset/reps-3']
    >>> cells[0].optuna_name
    'smoke::synthetic-categories/feedforward/random'
    >>> cells = expand(load_spec("paper-a10-generalization"))
    >>> cells[0].key, cells[0].variant, cells[0].base.test_ordering
    ('synthetic-categories/feedforward/reps-5/test-reps-1', 'test-reps-1', 'reps-1')
"""

from __future__ import annotations

from dataclasses import dataclass

from search_spaces import field_of, paper_setting
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
    variant: str | None = None
    """Name of the spec variant this cell belongs to (None: the spec has no variants)."""
    pinned: tuple[str, ...] = ()
    """TrialConfig fields the variant sets; searchable ones are fixed in every trial (base)."""
    budget: int = 1
    """Trials the cell runs (``trials_per_cell``; 1 when its search space is empty)."""

    @property
    def key(self) -> str:
        """``<data set>/<model>/<ordering>[/<variant>]``, unique within the study."""
        parts = [self.dataset_label, self.model, self.ordering]
        return "/".join([*parts, self.variant] if self.variant else parts)

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
        """The cell's first point: the paper's values of its model, except those the cell's
        variant fixes (e.g. its learning rate): the base config holds them for every trial."""
        return {
            name: value
            for name, value in paper_setting(self.model).items()
            if field_of(name) not in self.pinned
        }


def expand(spec: StudySpec) -> list[Cell]:
    """The cells of ``spec``: data set-major, then model, ordering, variant (the spec's orders)."""
    return [
        Cell(
            index,
            spec.name,
            design.dataset_label,
            design.config,
            design.variant,
            design.pinned,
            design.budget,
        )
        for index, design in enumerate(spec.design())
    ]
