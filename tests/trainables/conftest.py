"""Shared fixtures of the trainables tests: one tiny configuration that trains in milliseconds."""

from __future__ import annotations

import pytest
import torch

from tests.trainables.fast_paths import FAST_PATHS
from trainables import engine
from trainables.config import DatasetConfig, TrialConfig

# As in every trial (tune_adapter): these tensors are tiny, and intra-op threads only add
# overhead (torch's BCE-with-logits on 3 values: about 8x slower with 2 threads, loaded machine).
torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> TrialConfig:
    """3 categories x 30 training items of 6 features, one hidden layer of 6, 3 replicates."""
    return TrialConfig(
        model="leaky-reset",
        ordering="reps-3",
        dataset=DatasetConfig(
            categories=3, features=6, train_per_category=30, test_per_category=8
        ),
        hidden=(6,),
        learning_rate=0.05,
        leak=0.6,
        replicates=3,
        epochs=2,
        eval_every=30,
        dtype="float64",
    )


@pytest.fixture(params=list(FAST_PATHS))
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each speed path in turn, switched on (see FAST_PATHS); the value is its name."""
    setting, value = FAST_PATHS[request.param]
    monkeypatch.setattr(engine, setting, value)
    return request.param
