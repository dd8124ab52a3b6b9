"""Where a study runs and records: flags, spec and environment, in that order of precedence."""

from __future__ import annotations

import pytest

from study.cli import build_parser, load_from_args, main


def spec_from(argv: list[str]):
    return load_from_args(build_parser().parse_args(argv))


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg2://study@postgres:5432/optuna")


def test_environment_names_the_cluster_when_nothing_else_does(cluster_env: None) -> None:
    spec = spec_from(["check", "smoke"])
    assert spec.ray_address == "ray-head:6379"
    assert spec.tracking_uri == "http://mlflow:5000"
    assert spec.optuna_storage == "postgresql+psycopg2://study@postgres:5432/optuna"


def test_flags_beat_the_spec_which_beats_the_environment(cluster_env: None) -> None:
    spec = spec_from(
        [
            "run",
            "smoke",
            "--set",
            "tracking_uri='http://other:5000'",
            "--ray-address",
            "10.0.0.5:6379",
            "--optuna-storage",
            "postgresql+psycopg2://study@db:5432/optuna",
        ]
    )
    assert spec.ray_address == "10.0.0.5:6379"
    assert spec.tracking_uri == "http://other:5000"
    assert spec.optuna_storage == "postgresql+psycopg2://study@db:5432/optuna"


def test_without_flags_or_environment_the_study_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    spec = spec_from(["check", "smoke"])
    assert spec.ray_address is None and spec.optuna_storage is None
    assert spec.tracking_uri.startswith("sqlite:///")


def test_resume_refuses_to_move_a_study_to_other_stores(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.spec import load_spec
    from study.tuner import SPEC_FILE

    spec = load_spec("smoke", [f"storage_path='{tmp_path}'", "name=moved"])
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / SPEC_FILE).write_text(spec.to_json())
    code = main(
        ["resume", "moved", "--storage-path", str(tmp_path), "--tracking-uri", "http://x:5000"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "tracking_uri" in error and "http://x:5000" in error and spec.tracking_uri in error
