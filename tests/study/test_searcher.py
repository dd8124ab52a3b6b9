"""CellSearcher: one Optuna study per cell, round robin, paper setting first, exact budgets."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.cells import expand
from study.searcher import CellSearcher
from study.spec import SAMPLERS, load_spec
from trainables.tune_adapter import trial_config


def _searcher(*overrides: str) -> tuple[CellSearcher, list]:
    spec = load_spec("smoke", list(overrides))
    cells = expand(spec)
    return CellSearcher(spec, cells), cells


def test_round_robin_paper_first_and_finished_after_budget() -> None:
    searcher, cells = _searcher("trials_per_cell=3")
    configs = []
    while (config := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
        configs.append(config)
        assert len(configs) <= 12
    assert len(configs) == 3 * len(cells)
    # all cells start before any cell gets its second trial
    assert [c["cell"] for c in configs[: len(cells)]] == [c.key for c in cells]
    for cell in cells:
        mine = [c for c in configs if c["cell"] == cell.key]
        assert [c["optuna_trial_number"] for c in mine] == [0, 1, 2]
        assert [c["paper_setting"] for c in mine] == [True, False, False]
        assert mine[0]["params"] == cell.paper_params()
        for c in mine:
            config = trial_config(c)  # the adapter turns it into a valid TrialConfig
            assert (config.model, config.ordering) == (cell.model, cell.ordering)


def test_results_go_to_the_trials_own_cell() -> None:
    searcher, cells = _searcher("trials_per_cell=2")
    ids = [f"t{i}" for i in range(2 * len(cells))]
    configs = {i: searcher.suggest(i) for i in ids}
    searcher.on_trial_complete(ids[0], {"objective": 0.25, "final": 1})
    searcher.on_trial_complete(ids[1], {"objective": 1e6, "final": 1, "diverged": 1})
    searcher.on_trial_complete(ids[2], None, error=True)
    searcher.on_trial_complete(ids[3], {"objective": 0.5, "final": 0})  # stopped by ASHA
    states = {
        i: searcher.studies[configs[i]["cell"]].trials[configs[i]["optuna_trial_number"]]
        for i in ids[:4]
    }
    assert states[ids[0]].state == TrialState.COMPLETE and states[ids[0]].value == 0.25
    assert states[ids[1]].value == 1e6
    assert states[ids[2]].state == TrialState.FAIL
    assert states[ids[3]].state == TrialState.PRUNED
    searcher.on_trial_complete(ids[0], {"objective": 0.1, "final": 1})  # repeated: ignored
    assert states[ids[0]].value == 0.25
    searcher.on_trial_complete("not-mine", {"objective": 0.1, "final": 1})


def test_save_restore_continues_where_it_was(tmp_path: Path) -> None:
    searcher, cells = _searcher("trials_per_cell=2")
    first = [searcher.suggest(f"t{i}") for i in range(len(cells))]
    searcher.on_trial_complete("t0", {"objective": 0.3, "final": 1})
    searcher.save(str(tmp_path / "s.pkl"))
    restored, _ = _searcher("trials_per_cell=2", "name=other")
    restored.restore(str(tmp_path / "s.pkl"))
    rest = []
    while (config := restored.suggest(f"u{len(rest)}")) != Searcher.FINISHED:
        rest.append(config)
    assert len(first) + len(rest) == 2 * len(cells), "no trial asked twice, none lost"
    assert all(c["optuna_trial_number"] == 1 for c in rest)
    assert restored.studies[cells[0].key].trials[0].value == 0.3
    pickle.dumps(restored)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(sampler: str) -> None:
    searcher, cells = _searcher(f"sampler={sampler}", "trials_per_cell=3", "models=leaky")
    for i in range(3 * len(cells)):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"objective": 0.1 * (i % 4), "final": 1})
        assert 1e-3 <= config["params"]["learning_rate"] <= 10.0


def test_rdb_storage_holds_one_study_per_cell(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    _, cells = _searcher(f"optuna_storage='{url}'")
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {c.optuna_name for c in cells}
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        _searcher(f"optuna_storage='{url}'")
