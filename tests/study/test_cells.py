"""Cell expansion: the factorial design, unique keys and Optuna names, paired seeds."""

from __future__ import annotations

from study.cells import expand
from study.spec import load_spec


def test_default_study_has_twelve_cells_with_unique_names() -> None:
    spec = load_spec(None)
    cells = expand(spec)
    assert len(cells) == 12
    assert len({c.key for c in cells}) == 12
    assert len({c.optuna_name for c in cells}) == 12
    assert cells[0].key == "synthetic-categories/feedforward/random"
    assert all(c.optuna_name == f"{spec.name}::{c.key}" for c in cells)
    assert [c.index for c in cells] == list(range(12))


def test_cells_share_the_spec_settings_and_the_seed() -> None:
    spec = load_spec("smoke", ["seed=3", "replicates=4", "network.hidden=12"])
    for cell in expand(spec):
        assert cell.base.seed == 3, "one seed for every cell: replicates are paired"
        assert cell.base.replicates == 4 and cell.base.hidden == (12,)
        assert cell.base.model == cell.model and cell.base.ordering == cell.ordering
        assert cell.paper_params()["learning_rate"] == 0.01


def test_duplicate_dataset_names_get_distinct_labels() -> None:
    spec = load_spec(
        "smoke",
        ["datasets=[{name='synthetic-categories'}, {name='synthetic-categories', noise=0.2}]"],
    )
    keys = [c.key for c in expand(spec)]
    assert len(keys) == len(set(keys)) == 8
    assert keys[0].startswith("synthetic-categories-0/") and keys[-1].startswith(
        "synthetic-categories-1/"
    )
