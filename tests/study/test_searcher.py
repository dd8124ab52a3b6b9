"""CellSearcher: one Optuna study per cell, round robin, paper setting first, exact budgets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from study.cells import expand
from study.searcher import CellSearcher, optuna_storage, recover
from study.spec import SAMPLERS, load_spec
from trainables.tune_adapter import FINAL_FILES, trial_config


def _searcher(*overrides: str) -> tuple[CellSearcher, list]:
    spec = load_spec("smoke", list(overrides))
    cells = expand(spec)
    storage = optuna_storage(spec) if spec.optuna_storage else None
    return CellSearcher(spec, cells, storage), cells


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


# -- crash safety: a durable journal, reconciled with what Tune restores -----------------------
def _journal_searcher(tmp_path: Path, budget: int = 3, **kwargs: int) -> tuple[CellSearcher, list]:
    spec = load_spec(
        "smoke",
        [f"trials_per_cell={budget}", "models=leaky", f"storage_path='{tmp_path / 'ray'}'"],
    )
    cells = expand(spec)
    return CellSearcher(spec, cells, optuna_storage(spec), **kwargs), cells


def _tune_state(folder: Path, known: dict[tuple[str, int], str]) -> None:
    """An experiment state file as Tune writes it (only the fields the searcher reads)."""
    trial_data = [
        [json.dumps({"config": {"cell": c, "optuna_trial_number": n}, "status": s}), "{}"]
        for (c, n), s in known.items()
    ]
    (folder / "experiment_state-2000-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": trial_data})
    )


def test_restore_hands_out_forgotten_trials_and_counts_forgotten_results(tmp_path: Path) -> None:
    """Invariant: after a crash whose snapshot predates trials t1..t3, each cell still gets
    exactly its budget, no Optuna number is asked twice, a forgotten unfinished trial comes back
    with its number and config, and a forgotten finished one is not run again."""
    searcher, cells = _journal_searcher(tmp_path)
    t0 = searcher.suggest("t0")  # known to the snapshot
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    searcher.save(str(snapshot / "searcher-state.pkl"))
    _tune_state(snapshot, {(t0["cell"], t0["optuna_trial_number"]): "RUNNING"})
    t1, t2 = searcher.suggest("t1"), searcher.suggest("t2")  # after the snapshot
    searcher.on_trial_complete("t1", {"objective": 0.4, "final": 1})
    # the driver dies here: t0 and t2 unfinished, t1 finished, only t0 in Tune's snapshot

    restored, _ = _journal_searcher(tmp_path / "unused")
    restored.restore(str(snapshot / "searcher-state.pkl"))
    again = restored.suggest("t2-again")
    assert again == {**t2, "previous_trials": ["t2"]}, "the forgotten trial, same config"
    rest = []
    while (config := restored.suggest(f"u{len(rest)}")) != Searcher.FINISHED:
        rest.append(config)
    numbers = {c: [] for c in (x.key for x in cells)}
    for config in [t0, t1, again, *rest]:
        numbers[config["cell"]].append(config["optuna_trial_number"])
    assert all(sorted(n) == [0, 1, 2] for n in numbers.values()), numbers
    for cell in cells:  # the snapshot's sampler state must not draw t1/t2's points again
        points = [
            tuple(sorted(c["params"].items()))
            for c in [t0, t1, again, *rest]
            if c["cell"] == cell.key
        ]
        assert len(set(points)) == len(points), "no configuration asked twice"
    restored.on_trial_complete("t0", {"objective": 0.2, "final": 1})  # Tune resumes t0
    restored.on_trial_complete("t2-again", {"objective": 0.3, "final": 1})
    values = {
        (cell, t.number): t.value
        for cell, study in restored.studies.items()
        for t in study.trials
        if t.value is not None
    }
    assert values == {
        (c["cell"], c["optuna_trial_number"]): v for c, v in ((t0, 0.2), (t1, 0.4), (t2, 0.3))
    }


def test_a_rerun_after_an_error_reaches_the_study_as_a_retry_record(tmp_path: Path) -> None:
    """Invariant: the study knows the result of a trial rerun after an error: the failed
    trial stays FAIL and one COMPLETE record with the same params says retry_of=<number>."""
    searcher, _ = _journal_searcher(tmp_path, budget=1)
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)
    searcher.on_trial_complete("t0", {"objective": 0.25, "final": 1})  # rerun by resume
    searcher.on_trial_complete("t0", {"objective": 0.25, "final": 1})  # told twice: one record
    trials = searcher.studies[config["cell"]].trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].value == 0.25
    assert trials[1].params == trials[0].params


def test_recover_tells_results_a_killed_driver_never_told(tmp_path: Path) -> None:
    """Invariant: a trial RUNNING in the journal whose final checkpoint is on disk gets its
    objective; one Tune recorded TERMINATED without a final checkpoint is PRUNED."""
    searcher, cells = _journal_searcher(tmp_path, budget=2)
    spec = load_spec(
        "smoke", ["trials_per_cell=2", "models=leaky", f"storage_path='{tmp_path / 'ray'}'"]
    )
    first, second = searcher.suggest("aaa"), searcher.suggest("bbb")
    folder = spec.results_dir / "trial_aaa" / "checkpoint_000003"
    folder.mkdir(parents=True)
    for name in FINAL_FILES:  # a complete final checkpoint (its contents: see tune_adapter)
        (folder / name).write_text("{}")
    (folder / "final.json").write_text(json.dumps({"objective": 0.125, "final": 1}))
    _tune_state(spec.results_dir, {(second["cell"], second["optuna_trial_number"]): "TERMINATED"})
    assert recover(spec, cells) == 2
    study = optuna.load_study(study_name=cells[0].optuna_name, storage=optuna_storage(spec))
    assert study.trials[first["optuna_trial_number"]].value == 0.125
    other = optuna.load_study(
        study_name=f"{spec.name}::{second['cell']}", storage=optuna_storage(spec)
    )
    assert other.trials[second["optuna_trial_number"]].state == TrialState.PRUNED
    assert recover(spec, cells) == 0, "idempotent"


def test_the_searcher_limits_trials_in_flight(tmp_path: Path) -> None:
    """Invariant: with max_concurrent=2 a third suggestion waits (None) until one completes."""
    searcher, _ = _journal_searcher(tmp_path, max_concurrent=2)
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", {"objective": 0.1, "final": 1})
    assert isinstance(searcher.suggest("c"), dict)


def test_a_trial_the_driver_died_asking_is_finished_with_its_number(tmp_path: Path) -> None:
    """Invariant: a trial created in the journal whose config was never written (the driver
    died inside ask) is completed under its own number: the cell's numbers stay 0..budget-1."""
    searcher, cells = _journal_searcher(tmp_path, budget=2)
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    searcher.save(str(snapshot / "searcher-state.pkl"))
    _tune_state(snapshot, {})
    half = searcher.studies[cells[0].key].ask()  # the paper trial, its config never written
    restored, _ = _journal_searcher(tmp_path / "unused", budget=2)
    restored.restore(str(snapshot / "searcher-state.pkl"))
    first = restored.suggest("t0")
    assert (first["cell"], first["optuna_trial_number"]) == (cells[0].key, half.number)
    assert first["paper_setting"] and first["params"] == cells[0].paper_params()
    configs = [first]
    while (config := restored.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
        configs.append(config)
    for cell in cells:
        numbers = sorted(c["optuna_trial_number"] for c in configs if c["cell"] == cell.key)
        assert numbers == [0, 1]


def test_a_journal_cut_short_by_a_crash_is_repaired(tmp_path: Path) -> None:
    """Invariant: after a kill inside an append (a cut last record, a left lock), the journal
    reads as before the append and takes new writes (it would be unreadable otherwise)."""
    from study.searcher import JOURNAL_FILE, repair_journal

    searcher, cells = _journal_searcher(tmp_path, budget=2)
    config = searcher.suggest("t0")
    journal = tmp_path / "ray" / "smoke" / JOURNAL_FILE
    whole = journal.read_bytes()
    with open(journal, "ab") as handle:
        handle.write(b'{"op_code":6,"worker_id":"x","trial_id"')  # the record cut short
    Path(f"{journal}.lock").symlink_to(journal)
    repair_journal(journal)
    assert journal.read_bytes() == whole and not Path(f"{journal}.lock").exists()
    spec = load_spec("smoke", ["models=leaky", f"storage_path='{tmp_path / 'ray'}'"])
    study = optuna.load_study(study_name=cells[0].optuna_name, storage=optuna_storage(spec))
    study.tell(config["optuna_trial_number"], 0.5)  # a new write after the repair
    again = optuna.load_study(study_name=cells[0].optuna_name, storage=optuna_storage(spec))
    assert again.trials[config["optuna_trial_number"]].value == 0.5
