"""Bad input through the real CLI: every row of the table is rejected by `study check` and by
`study run` with exit code 2 and one line naming the field, the value and what is allowed.

Invariant of every row: both commands exit 2 within the subprocess timeout (so an unreachable
service is answered in seconds, not minutes), print nothing on stdout and exactly one line on
stderr containing the row's words, and leave nothing behind: no MLflow store (so no experiment
or run), no Ray results folder, no path the row names.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

STUDY = str(Path(sys.executable).parent / "study")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TIMEOUT_S = 45
"""Far above the 3 s preflight timeouts, far below MLflow's and Ray's own minutes of retries."""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


# (id, arguments after the command; "{tmp}", "{closed}", "{silent}" are filled in, words)
CASES: list[tuple[str, list[str], list[str]]] = [
    ("leak>1", ["--set", "network.leak=1.5"], ["network.leak=1.5", "[0, 1]"]),
    (
        "leak-range>1",
        ["--set", "search_space.leaky-reset={leak={low=0,high=1.5}}"],
        ["search_space.leaky-reset", "leak=1.5", "[0, 1]"],
    ),
    (
        "group-leak>1",
        ["--set", "models=multiscale", "--set", "network.group_leaks=0,1.5"],
        ["network.group_leaks=1.5", "[0, 1]"],
    ),
    ("lr=0", ["--set", "network.learning_rate=0"], ["network.learning_rate=0.0", "> 0"]),
    ("lr<0", ["--set", "network.learning_rate=-0.1"], ["network.learning_rate=-0.1", "> 0"]),
    (
        "lr-log-range-from-0",
        ["--set", "search_space.leaky-reset={learning_rate={low=0,high=1,log=true}}"],
        ["search_space.leaky-reset", "log range needs low > 0"],
    ),
    (
        "threshold=nan",
        ["--set", "network.reset_threshold=nan"],
        ["network.reset_threshold=nan", "finite number >= 0"],
    ),
    (
        "threshold=inf",
        ["--set", "network.reset_threshold=inf"],
        ["network.reset_threshold=inf", "finite number >= 0"],
    ),
    (
        "threshold<0",
        ["--set", "network.reset_threshold=-1"],
        ["network.reset_threshold=-1.0", ">= 0"],
    ),
    ("model", ["--set", "models=leeky"], ["models='leeky'", "did you mean 'leaky'"]),
    ("ordering", ["--set", "orderings=rnadom"], ["orderings='rnadom'", "did you mean 'random'"]),
    (
        "dataset",
        ["--set", "datasets=mnsit"],
        ["datasets[0].name='mnsit'", "did you mean 'mnist'"],
    ),
    ("sampler", ["--set", "sampler=tpee"], ["sampler='tpee'", "did you mean 'tpe'"]),
    ("preset", ["@smok"], ["spec='smok'", "did you mean 'smoke'"]),
    ("reps-0", ["--set", "orderings=reps-0"], ["orderings='reps-0'", "k >= 1"]),
    ("reps--2", ["--set", "orderings=reps--2"], ["orderings='reps--2'", "k >= 1"]),
    (
        "dataset-too-small",
        [
            "--set",
            "datasets=mnist",
            "--data-dir",
            str(DATA),
            "--set",
            "datasets.mnist.train_per_category=10000",
        ],
        ["datasets[0].train_per_category=10000", "at most"],
    ),
    ("hidden-empty", ["--set", "network.hidden=[]"], ["network.hidden", "non-empty"]),
    ("hidden=0", ["--set", "network.hidden=0"], ["network.hidden=0", ">= 1"]),
    ("hidden<0", ["--set", "network.hidden=8,-1"], ["network.hidden=-1", ">= 1"]),
    ("replicates=0", ["--set", "replicates=0"], ["replicates=0", ">= 1"]),
    ("trials=0", ["--set", "trials_per_cell=0"], ["trials_per_cell=0", ">= 1"]),
    ("cpus>cluster", ["--set", "resources.cpu=512"], ["resources.cpu=512.0", "at most"]),
    ("gpu-none", ["--set", "resources.gpu=1"], ["resources.gpu=1.0", "no GPU"]),
    ("key-typo", ["--set", "modles=leaky"], ["modles", "did you mean 'models'"]),
    ("nested-key-typo", ["--set", "network.hiden=8"], ["network.hiden", "'network.hidden'"]),
    ("file-key-typo", ["@{tmp}/typo.toml"], ["trials_per_cel", "'trials_per_cell'"]),
    (
        "checkpoint-interval<0",
        ["--set", "checkpoint_every_s=-1"],
        ["checkpoint_every_s=-1.0", ">= 0"],
    ),
    (
        "tracking-refused",
        ["--tracking-uri", "http://127.0.0.1:{closed}"],
        ["tracking_uri='http://127.0.0.1:", "reachable MLflow server"],
    ),
    (
        "tracking-silent",
        ["--tracking-uri", "http://127.0.0.1:{silent}"],
        ["tracking_uri='http://127.0.0.1:", "timed out"],
    ),
    (
        "tracking-unwritable",
        ["--tracking-uri", "sqlite:///{tmp}/a-file/mlflow.db"],
        ["tracking_uri=", "writable folder"],
    ),
    (
        "tracking-scheme-typo",
        ["--tracking-uri", "sqlit:///{tmp}/mlflow.db"],
        ["tracking_uri='sqlit:///", "did you mean 'sqlite'"],
    ),
    (
        "tracking-file-store",
        ["--tracking-uri", "{tmp}/mlruns"],
        ["tracking_uri=", "file store"],
    ),
    (
        "ray-refused",
        ["--ray-address", "127.0.0.1:{closed}"],
        ["ray_address='127.0.0.1:", "reachable Ray head"],
    ),
    (
        "ray-silent",
        ["--ray-address", "127.0.0.1:{silent}"],
        ["ray_address='127.0.0.1:", "no gRPC handshake"],
    ),
    (
        "storage-unwritable",
        ["--storage-path", "{tmp}/a-file/ray"],
        ["storage_path=", "a-file is not a folder"],
    ),
]


def _arguments(command: str, args: list[str], tmp: Path, silent: int) -> list[str]:
    values = {"{tmp}": str(tmp), "{closed}": str(_closed_port()), "{silent}": str(silent)}
    filled = []
    for arg in args:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        filled.append(arg.removeprefix("@"))
    source = [] if args and args[0].startswith("@") else ["smoke"]
    return [STUDY, command, *source, *filled]


@pytest.mark.slow  # two CLI processes per row (each pays Python + torch start-up, ~2 s)
@pytest.mark.parametrize(("args", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(
    tmp_path: Path, silent_port: int, args: list[str], words: list[str]
) -> None:
    if "datasets.mnist.train_per_category=10000" in args and not (DATA / "mnist").exists():
        pytest.skip(f"no MNIST files in {DATA}")
    if "resources.gpu=1" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    (tmp_path / "a-file").write_text("a file where a folder would have to be\n")
    (tmp_path / "typo.toml").write_text('name = "typo"\ntrials_per_cel = 3\n')
    before = set(tmp_path.iterdir())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # check and run side by side (two cores): the same preflight, two entry points
    processes = {
        command: subprocess.Popen(
            _arguments(command, args, tmp_path, silent_port),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for command in ("check", "run")
    }
    for command, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail(f"study {command} took over {TIMEOUT_S} s to reject {args}")
        assert process.returncode == 2, (command, stderr)
        assert stdout == "", (command, stdout)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (command, stderr)
        assert lines[0].startswith("study: error: "), lines[0]
        for word in words:
            assert word in lines[0], (command, word, lines[0])
    assert set(tmp_path.iterdir()) == before, "nothing is created before input is valid"


def test_relative_paths_are_accepted_and_made_absolute(tmp_path: Path) -> None:
    """Invariant: relative storage and tracking paths resolve against the working directory,
    are reported absolute by `study check`, and `check` creates neither."""
    done = subprocess.run(
        [
            STUDY,
            "check",
            "smoke",
            "--storage-path",
            "rel/ray",
            "--tracking-uri",
            "sqlite:///rel/mlruns/mlflow.db",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert f"storage path {tmp_path}/rel/ray: writable" in done.stdout
    assert f"tracking store sqlite:///{tmp_path}/rel/mlruns/mlflow.db: writable" in done.stdout
    assert not (tmp_path / "rel").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_ray_head_passes_the_handshake_check(ray_local: None) -> None:
    """Invariant: the gRPC handshake that rejects a silent port accepts a real Ray head."""
    import ray

    from study.preflight import check_ray
    from study.spec import load_spec

    address = ray.get_runtime_context().gcs_address
    spec = load_spec("smoke", [f"ray_address='{address}'"])
    assert check_ray(spec) == f"ray: {address} reachable"


def test_a_deleted_experiment_is_one_clear_error_or_an_explicit_restore(tmp_path: Path) -> None:
    """Invariant: `study run` with the name of a deleted MLflow experiment exits 2 with one line
    naming the name and --restore-deleted, creating nothing and changing no experiment;
    with restore_deleted the experiment comes back and the new study takes a fresh name."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from study.spec import load_spec
    from study.tuner import unique_name

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("smoke"))
    before = {(e.name, e.lifecycle_stage) for e in client.search_experiments(ViewType.ALL)}
    done = subprocess.run(
        [STUDY, "run", "smoke", "--tracking-uri", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    for word in ("name='smoke'", "is deleted", "--restore-deleted"):
        assert word in line, line
    assert not (tmp_path / ".study").exists()
    assert {(e.name, e.lifecycle_stage) for e in client.search_experiments(ViewType.ALL)} == before

    spec = load_spec("smoke", [f"tracking_uri='{uri}'", f"storage_path='{tmp_path / 'ray'}'"])
    assert unique_name(spec, restore_deleted=True) == "smoke-2"
    assert client.get_experiment_by_name("smoke").lifecycle_stage == "active"
