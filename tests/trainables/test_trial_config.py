"""TrialConfig is a validated, frozen, hashable value object that round-trips (STYLE 2.8)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from trainables.config import MINIBATCH_BATCH_SIZE, ConfigError, DatasetConfig, TrialConfig

BAD_VALUES = [
    ("leak", -0.1),
    ("leak", 1.5),
    ("leak", math.nan),
    ("learning_rate", 0.0),
    ("learning_rate", -0.01),
    ("learning_rate", math.inf),
    ("reset_threshold", math.nan),
    ("reset_threshold", -1.0),
    ("hidden", ()),
    ("hidden", (8, 0)),  # the message names the bad layer size, 0
    ("replicates", 0),
    ("replicates", 2.0),
    ("epochs", 0),
    ("ordering", "foo"),
    ("ordering", "reps-0"),
    ("ordering", "reps--1"),
    ("model", "gru"),
    ("output", "tanh"),
    ("loss", "hinge"),
    ("gradient", "bptt"),
    ("eval_schedule", "cosine"),
    ("dtype", "float16"),
    ("target_accuracy", 1.5),
    ("target_accuracy", 0.0),  # documented range is (0, 1]
    ("seed", -1),
    ("bptt_window", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_invalid_value_is_a_config_error_naming_field_and_value(field: str, value: object) -> None:
    """Construction rejects the value with ConfigError; the message names field and value."""
    with pytest.raises(ConfigError) as error:
        TrialConfig(**{field: value})
    shown = 0 if field == "hidden" and value == (8, 0) else value
    assert f"{field}={shown!r}" in str(error.value)
    assert error.value.field_name == field


@pytest.mark.parametrize(
    ("field", "value"),
    [("categories", 1), ("features", 0), ("train_per_category", 0), ("noise", -0.5),
     ("template", "gaussian"), ("name", "cifar10")],
)
def test_invalid_dataset_value_is_a_config_error(field: str, value: object) -> None:
    """DatasetConfig validates too; the field is named as dataset.<field>."""
    with pytest.raises(ConfigError, match=f"dataset.{field}"):
        DatasetConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("leak", 0.0), ("leak", 1.0), ("learning_rate", 1e-6), ("reset_threshold", 0.0),
     ("target_accuracy", 1.0), ("ordering", "reps-1"), ("ordering", "reps-25"), ("seed", 0)],
)
def test_boundary_values_are_accepted(field: str, value: object) -> None:
    """The closed ends of each documented range are valid."""
    assert getattr(TrialConfig(**{field: value}), field) == value


def test_config_is_frozen() -> None:
    """Fields cannot be reassigned; replace() gives a validated copy."""
    config = TrialConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.leak = 0.1  # type: ignore[misc]
    assert config.replace(leak=0.1).leak == 0.1 and config.leak == 0.5
    with pytest.raises(ConfigError):
        config.replace(leak=2.0)


def test_round_trip_through_dict_and_json() -> None:
    """to_dict -> JSON -> from_dict gives an equal config with an equal hash."""
    config = TrialConfig(
        model="leaky-reset", ordering="reps-3", hidden=(16, 8), leak=0.3, learning_rate=0.02,
        dataset=DatasetConfig(name="mnist", train_per_category=None, data_dir="/data", seed=3),
        output="softmax", loss="cross-entropy", gradient="leak-unscaled", dtype="float64",
    )
    values = json.loads(json.dumps(config.to_dict()))
    assert values["hidden"] == [16, 8] and values["dataset"]["train_per_category"] is None
    again = TrialConfig.from_dict(values)
    assert again == config
    assert hash(again) == hash(config)
    assert again.hidden == (16, 8) and isinstance(again.dataset, DatasetConfig)


def test_hashable_and_usable_as_a_key() -> None:
    """Equal configs hash equal; different configs are different keys."""
    a, b, c = TrialConfig(), TrialConfig(), TrialConfig(leak=0.2)
    assert len({a, b, c}) == 2
    assert {a: 1}[b] == 1
    assert "TrialConfig(" in repr(a) and "leak=0.5" in repr(a)


@pytest.mark.parametrize(
    ("values", "key"),
    [({"leek": 0.3}, "leek"), ({"dataset": {"categories": 3, "colour": 1}}, "dataset.colour")],
)
def test_from_dict_rejects_unknown_keys(values: dict, key: str) -> None:
    """An unknown key (top level or in dataset) is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrialConfig.from_dict(values)


def test_reps_property() -> None:
    """reps is k of 'reps-k' and None for 'random'."""
    assert TrialConfig(ordering="reps-5").reps == 5
    assert TrialConfig(ordering="random").reps is None


def test_minibatch_defaults_to_the_papers_batch_and_rejects_batch_size_one() -> None:
    """batch_size None is the model's default (minibatch: 10, paper A.5; others 1); minibatch with
    batch_size 1 would silently be feedforward, so it is an error naming the field."""
    assert TrialConfig(model="minibatch").batch_size == MINIBATCH_BATCH_SIZE == 10
    assert TrialConfig(model="feedforward").batch_size == 1
    assert TrialConfig(model="minibatch", batch_size=3).batch_size == 3
    config = TrialConfig(model="minibatch")
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for replacing in (lambda: TrialConfig(model="minibatch", batch_size=1),
                      lambda: TrialConfig().replace(model="minibatch")):  # 1 carried over
        with pytest.raises(ConfigError) as error:
            replacing()
        assert error.value.field_name == "batch_size"
        assert "batch_size=1" in str(error.value) and "feedforward" in str(error.value)
    assert TrialConfig().replace(model="minibatch", batch_size=None).batch_size == 10
