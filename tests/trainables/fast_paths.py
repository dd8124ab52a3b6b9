"""The engine's speed paths, for tests that must cover them (the ``fast_path`` fixture)."""

from __future__ import annotations

from trainables import engine

FAST_PATHS: dict[str, tuple[str, int]] = {
    "replicate-minor": ("REPLICATE_MINOR_REPLICATES", 2),
    "queued-updates": ("QUEUE_WEIGHTS", 1),
}
"""The engine's speed paths, and the trainables.engine setting that switches each on for tiny
runs: the replicate axis innermost from 2 replicates on (small nets), and queued SGD updates
on every layer of fused-SGD runs. Real runs take them only for many replicates of small nets,
and for wide layers."""


def assert_on_fast_path(run: engine.TrialRun, path: str) -> None:
    """``run`` really takes ``path`` (so a test of it is not a test of the default path)."""
    if path == "replicate-minor":
        assert run.weights[0].stride(0) == 1
    else:
        assert all(q is not None for q in run._queues)
