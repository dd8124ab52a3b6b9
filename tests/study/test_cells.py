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


def test_variants_are_the_innermost_factor_and_tag_the_key() -> None:
    spec = load_spec("paper-a10-generalization")
    cells = expand(spec)
    assert len(cells) == 3 * 2 * 2
    assert len({c.key for c in cells}) == len({c.optuna_name for c in cells}) == len(cells)
    assert [c.key for c in cells[:2]] == [
        "synthetic-categories/feedforward/reps-5/test-reps-1",
        "synthetic-categories/feedforward/reps-5/test-same",
    ]
    for cell in cells:
        assert cell.key.endswith("/" + cell.variant)
        assert cell.base.test_protocol == "streamed"
        expected = "reps-1" if cell.variant == "test-reps-1" else None
        assert cell.base.test_ordering == expected
        assert cell.pinned == (("test_ordering",) if expected else ())


def test_a_study_without_variants_keeps_three_part_keys() -> None:
    for cell in expand(load_spec("paper-fig3-multiscale")):
        assert cell.variant is None and cell.key.count("/") == 2


def test_searched_group_leaks_reach_the_trial_config() -> None:
    # The path a trial's values take: Optuna (searcher) -> Tune config -> TrialConfig (adapter).
    from study.searcher import CellSearcher
    from trainables.tune_adapter import trial_config

    spec = load_spec("paper-fig3-multiscale", ["models=multiscale-reset", "trials_per_cell=2"])
    searcher = CellSearcher(spec, expand(spec))
    paper, tuned = searcher.suggest("t0"), searcher.suggest("t1")
    assert trial_config(paper).group_leaks == (0.0, 0.3, 0.6)
    assert trial_config(paper).reset_threshold == 1.0
    config = trial_config(tuned)
    params = tuned["params"]
    assert config.group_leaks == tuple(params[f"leak_group{g}"] for g in range(3))
    assert config.reset_threshold == params["reset_threshold"]
