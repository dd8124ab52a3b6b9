"""Study spec: presets, TOML files, --set overrides, one-message validation, JSON round trip."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from search_spaces import probe
from study.cells import expand
from study.spec import (
    DATASET_USES,
    DEFAULT_PRESET,
    FACTOR_FIELDS,
    LATENT_DATASETS,
    NETWORK_FIELDS,
    STUDY_FIELDS,
    NetworkSpec,
    SpecError,
    StudySpec,
    apply_override,
    load_spec,
    preset_names,
    preset_text,
    resolve_tracking_uri,
)
from trainables.config import DATASETS, DatasetConfig, TrialConfig


def test_presets_load_and_round_trip() -> None:
    assert {"paper-fig2-synthetic", "paper-fig2-mnist", "paper-fig2-fashion", "smoke"} <= set(
        preset_names()
    )
    for name in preset_names():
        spec = load_spec(name)
        assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
        assert preset_text(name).startswith("# study run"), "first line shows the command"


def test_default_preset_is_the_paper_fig2_synthetic_study() -> None:
    spec = load_spec(None)
    assert spec.name == DEFAULT_PRESET == "paper-fig2-synthetic"
    assert spec.models == ("feedforward", "leaky", "leaky-reset")
    assert spec.orderings == ("random", "reps-1", "reps-3", "reps-5")
    (dataset,) = spec.datasets
    assert (dataset.name, dataset.categories, dataset.train_per_category) == (
        "synthetic-categories",
        4,
        300,
    )
    assert spec.network.hidden == (8,) and spec.network.learning_rate == 0.01
    assert spec.network.leak == 0.5 and spec.paper_setting_first


def test_overrides_parse_toml_literals_lists_and_nested_keys() -> None:
    spec = load_spec(
        "smoke",
        [
            "trials_per_cell=5",
            "replicates=3",
            "max_concurrent_trials=1",
            "seed=7",
            "models=feedforward,leaky",
            "orderings=random,reps-2",
            "network.hidden=16,8",
            "network.learning_rate=0.05",
            "datasets.synthetic-categories.train_per_category=40",
            "datasets.0.noise=0.25",
            "search_space.leaky={leak={low=0, high=0.9}}",
            "paper_setting_first=false",
            "name=my-study",
        ],
    )
    assert (spec.trials_per_cell, spec.replicates, spec.max_concurrent_trials, spec.seed) == (
        5,
        3,
        1,
        7,
    )
    assert spec.models == ("feedforward", "leaky")
    assert spec.orderings == ("random", "reps-2")
    assert spec.network.hidden == (16, 8) and spec.network.learning_rate == 0.05
    assert spec.datasets[0].train_per_category == 40 and spec.datasets[0].noise == 0.25
    assert spec.space_name("leaky") == "inline" and spec.space_name("feedforward") == "feedforward"
    assert not spec.paper_setting_first and spec.name == "my-study"


def test_toml_file_and_relative_paths_become_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(
        'name = "t"\nmodels = ["leaky"]\ntracking_uri = "sqlite:///store/m.db"\n'
        'storage_path = "results"\ndata_dir = "data"\n'
        '[[datasets]]\nname = "mnist"\ntrain_per_category = "all"\n'
        '[search_space]\nleaky = "leaky"\n'
    )
    spec = load_spec("s.toml")
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/store/m.db"
    assert spec.storage_path == str(tmp_path / "results")
    assert spec.data_dir == str(tmp_path / "data")
    assert spec.datasets[0].train_per_category is None
    assert spec.dataset_configs()[0].data_dir == str(tmp_path / "data")


def test_defaults_live_in_the_project_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = load_spec("smoke")
    assert spec.tracking_uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert spec.storage_path == str(tmp_path / ".study" / "ray_results")


BAD = [
    (["replicates=abc"], "replicates", "integer"),
    (["replicates=0"], "replicates", ">= 1"),
    (["trials_per_cell=1.5"], "trials_per_cell", "integer"),
    (["replicat=3"], "replicat", "did you mean 'replicates'"),
    (["network.hiden=3"], "network.hiden", "did you mean 'network.hidden'"),
    (["datasets.0.nam=x"], "datasets.0.nam", "did you mean 'datasets.0.name'"),
    (["datasets.mnist.noise=1"], "datasets.mnist.noise", "data sets ['synthetic-categories']"),
    (["datasets.0.name=cifar"], "datasets[0].name", "mnist"),
    (["models=ff"], "models", "feedforward"),
    (["models=leaky,leaky"], "models", "at most once"),
    (["orderings=reps-0"], "orderings", "k >= 1"),
    (["orderings=sorted"], "orderings", "reps-k"),
    (["objective=auc"], "objective", "test_loss_auc"),
    (["sampler=tpee"], "sampler", "did you mean 'tpe'"),
    (["scheduler=hyperband"], "scheduler", "asha"),
    (["resources.gpu=1.5"], "resources.gpu", "fraction"),
    (["resources.cpu=0"], "resources.cpu", "> 0"),
    (["network.learning_rate=-1"], "network.learning_rate", "> 0"),
    (["network.leak=1.5"], "network.leak", "[0, 1]"),
    (["network.output=tanh"], "network.output", "sigmoid"),
    (["search_space.leaky=nope"], "search_space.leaky", "feedforward"),
    (["search_space.leaky={leak={low=0, high=2}}"], "search_space.leaky", "[0, 1]"),
    (["search_space.gru=leaky"], "search_space", "leaky-reset"),
    (["name=a b"], "name", "no spaces"),
    (["paper_setting_first=yes"], "paper_setting_first", "boolean"),
    (["seed"], "--set", "key=value"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), BAD)
def test_bad_input_gives_one_message_naming_field_value_and_allowed(
    overrides: list[str], field: str, allowed: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("smoke", overrides)
    message = str(caught.value)
    assert message.startswith(field), message
    assert "is invalid:" in message and allowed in message, message
    assert "\n" not in message


def test_unknown_spec_source_lists_presets() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("paper-fig2-synth")
    assert "did you mean 'paper-fig2-synthetic'" in str(caught.value)
    with pytest.raises(SpecError, match="existing TOML file"):
        load_spec("missing.toml")


def test_bad_toml_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(SpecError, match="valid TOML"):
        load_spec(str(path))


def test_apply_override_creates_tables() -> None:
    values: dict = {}
    apply_override(values, "resources.cpu=2")
    assert values == {"resources": {"cpu": 2}}
    assert StudySpec.from_dict(values).resources.cpu == 2.0


# ---------------------------------------------------------------------------------------------
# The core's fields in the spec
# ---------------------------------------------------------------------------------------------
def test_every_trial_config_field_has_one_place_in_the_spec() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(TrialConfig)}
    places = [*FACTOR_FIELDS, *STUDY_FIELDS, *NETWORK_FIELDS]
    assert sorted(places) == sorted(fields), "expose a new TrialConfig field in NetworkSpec"
    network = NetworkSpec()
    for name in NETWORK_FIELDS:
        if name != "device":  # None: decided by resources.gpu
            assert getattr(network, name) == fields[name], name


def test_latent_datasets_are_the_ones_with_latent_states() -> None:
    from trainables.data import load_dataset

    small = {"train_per_category": 5, "test_per_category": 2, "stream_length": 20}
    for name in DATASETS:
        if name in ("mnist", "fashion-mnist"):
            continue  # real files, no latents
        data = load_dataset(DatasetConfig(name=name, **small))
        assert (data.test_latent is not None) == (name in LATENT_DATASETS), name


def test_new_network_fields_reach_every_cell() -> None:
    spec = load_spec(
        "smoke",
        [
            "network.optimizer=rmsprop",
            "network.rms_alpha=0.9",
            "network.rms_eps=1e-6",
            "network.momentum=0.9",
            "network.group_leaks=0,0.2,0.4,0.8",
            "network.reset_scope=group",
            "network.feature_groups=4",
            "network.test_protocol=streamed",
            "network.test_ordering=reps-1",
            "network.bptt_window=3",
            "network.dtype=float64",
            "network.device=cpu",
            "network.gradient=leak-unscaled",
            "network.task=reconstruct",
            "network.batch_size=2",
        ],
    )
    for cell in expand(spec):
        base = cell.base
        assert (base.optimizer, base.rms_alpha, base.rms_eps, base.momentum) == (
            "rmsprop",
            0.9,
            1e-6,
            0.9,
        )
        assert base.group_leaks == (0.0, 0.2, 0.4, 0.8)
        assert (base.reset_scope, base.feature_groups) == ("group", 4)
        assert (base.test_protocol, base.test_ordering) == ("streamed", "reps-1")
        assert (base.bptt_window, base.dtype, base.device) == (3, "float64", "cpu")
        assert (base.gradient, base.task, base.batch_size) == ("leak-unscaled", "reconstruct", 2)


def test_per_model_settings_apply_to_that_model_only() -> None:
    spec = load_spec(
        "smoke",
        [
            "models=feedforward,minibatch,lstm",
            "network.minibatch.batch_size=10",
            "network.lstm.bptt_window=7",
        ],
    )
    by_model = {c.model: c.base for c in expand(spec)}
    assert by_model["minibatch"].batch_size == 10 and by_model["feedforward"].batch_size == 1
    assert by_model["lstm"].bptt_window == 7 and by_model["minibatch"].bptt_window == 5
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
    assert json.loads(spec.to_json())["network"]["minibatch"] == {"batch_size": 10}


def test_minibatch_cells_get_the_papers_batch_unless_set() -> None:
    """No [network.minibatch] table: minibatch cells train with batches of 10 (paper A.5), the
    other models per sample; a batch size of 1 for minibatch is an error naming its field."""
    spec = load_spec("smoke", ["models=feedforward,minibatch"])
    by_model = {c.model: c.base for c in expand(spec)}
    assert by_model["minibatch"].batch_size == 10 and by_model["feedforward"].batch_size == 1
    for overrides, field in (
        (["network.minibatch.batch_size=1"], "network.minibatch.batch_size"),
        (["network.batch_size=1"], "network.batch_size"),
    ):
        with pytest.raises(SpecError) as caught:
            load_spec("smoke", ["models=feedforward,minibatch", *overrides])
        message = str(caught.value)
        assert message.startswith(f"{field}=1 is invalid") and "minibatch" in message, message


def test_variants_cross_the_design_and_name_the_cells() -> None:
    spec = load_spec(
        "smoke",
        [
            "network.test_protocol=streamed",
            "variants=[{name='test-reps-1', test_ordering='reps-1'}, {name='same'}]",
            "variants.same.dataset.noise=0.25",
            "variants.*.hidden=4",
        ],
    )
    cells = expand(spec)
    assert len(cells) == 8 and len({c.key for c in cells}) == 8
    assert cells[0].key == "synthetic-categories/feedforward/random/test-reps-1"
    assert cells[1].key == "synthetic-categories/feedforward/random/same"
    assert cells[0].base.test_ordering == "reps-1" and cells[1].base.test_ordering is None
    assert cells[1].base.dataset.noise == 0.25 and cells[0].base.dataset.noise == 0.5
    assert all(c.base.hidden == (4,) for c in cells)
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec


def test_a_variant_fixes_the_searchable_values_it_sets() -> None:
    spec = load_spec(
        "smoke",
        [
            "models=feedforward,leaky,multiscale",
            "orderings=random",
            "trials_per_cell=4",
            "variants=[{name='lr-0.1', learning_rate=0.1},"
            " {name='slow', group_leaks=[0, 0.5, 0.9]}]",
        ],
    )
    cells = {c.key.split("/", 1)[1]: c for c in expand(spec)}
    # the paper trial takes the paper's values except the fixed ones, which the base holds
    assert cells["leaky/random/lr-0.1"].paper_params() == {"leak": 0.5}
    assert cells["leaky/random/lr-0.1"].base.learning_rate == 0.1
    assert cells["leaky/random/slow"].paper_params() == {"learning_rate": 0.01, "leak": 0.5}
    assert cells["multiscale/random/slow"].paper_params() == {"learning_rate": 0.01}
    assert cells["multiscale/random/slow"].base.group_leaks == (0.0, 0.5, 0.9)
    # ... and the search leaves them out: a cell with nothing left to search runs one trial
    searched = {key: sorted(probe(spec.space_for(c.model, c.variant))) for key, c in cells.items()}
    assert searched["leaky/random/lr-0.1"] == ["leak"]
    assert searched["multiscale/random/slow"] == ["learning_rate"]
    assert searched["feedforward/random/lr-0.1"] == []
    assert searched["feedforward/random/slow"] == ["learning_rate"]
    budgets = {key: c.budget for key, c in cells.items()}
    assert budgets["feedforward/random/lr-0.1"] == 1
    assert {b for k, b in budgets.items() if k != "feedforward/random/lr-0.1"} == {4}


def test_tuned_trials_of_a_fixed_learning_rate_variant_keep_it() -> None:
    from study.searcher import CellSearcher
    from trainables.tune_adapter import trial_config

    spec = load_spec(
        "smoke",
        [
            "models=feedforward,leaky",
            "orderings=random",
            "trials_per_cell=3",
            "variants=[{name='lr-0.1', learning_rate=0.1}]",
        ],
    )
    cells = expand(spec)
    searcher = CellSearcher(spec, cells)
    configs = []
    while (suggested := searcher.suggest(f"t{len(configs)}")) != CellSearcher.FINISHED:
        configs.append(suggested)
    by_cell = collections.Counter(c["cell"] for c in configs)
    assert by_cell == {
        "synthetic-categories/feedforward/random/lr-0.1": 1,
        "synthetic-categories/leaky/random/lr-0.1": 3,
    }
    leaky = [c for c in configs if "/leaky/" in c["cell"]]
    assert all(trial_config(c).learning_rate == 0.1 for c in configs)
    assert all("learning_rate" not in c["params"] for c in configs)
    assert len({trial_config(c).leak for c in leaky}) == 3, "the leak is still searched"


def test_a_variant_search_space_replaces_the_studys_for_its_cells() -> None:
    spec = load_spec(
        "smoke",
        [
            "models=feedforward,leaky-reset",
            "orderings=random",
            "variants=[{name='base'}, {name='broad'}]",
            "variants.broad.search_space.leaky-reset={leak={low=0, high=0.99}, "
            "learning_rate={low=0.0001, high=100, log=true}}",
        ],
    )
    assert probe(spec.space_for("leaky-reset", "broad"))["leak"].high == 0.99
    assert probe(spec.space_for("leaky-reset", "base"))["leak"].high == 0.95
    assert probe(spec.space_for("feedforward", "broad"))["learning_rate"].high == 10.0
    assert spec.space_name("leaky-reset", "broad") == "inline"
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec


def test_a_variant_applies_only_to_the_data_sets_it_names() -> None:
    spec = load_spec(
        "smoke",
        [
            "datasets=[{name='synthetic-categories'}, {name='mnist', train_per_category=5}]",
            "variants=[{name='base'}, {name='noisy', dataset={noise=1.0}, "
            "datasets=['synthetic-categories']}]",
        ],
    )
    variants = collections.defaultdict(set)
    for cell in expand(spec):
        variants[cell.dataset_label].add(cell.variant)
        if cell.variant == "noisy":
            assert cell.base.dataset.noise == 1.0
    assert variants == {"synthetic-categories": {"base", "noisy"}, "mnist": {"base"}}
    assert StudySpec.from_dict(json.loads(spec.to_json())) == spec
    assert spec.variant("noisy").overrides() == {"dataset.noise": 1.0}


def test_a_data_set_field_override_on_a_data_set_without_it_is_rejected() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(
            "smoke",
            [
                "datasets=[{name='synthetic-categories'}, {name='mnist'}]",
                "variants=[{name='noisy', dataset={noise=1.0}}]",
            ],
        )
    message = str(caught.value)
    assert message.startswith("variants.noisy.dataset.noise=1.0 is invalid"), message
    assert "mnist ignores noise" in message and "variants.noisy.datasets" in message


@pytest.mark.parametrize("name", sorted(DATASET_USES))
def test_dataset_uses_lists_exactly_the_fields_each_loader_reads(
    name: str, real_data_dir: Path
) -> None:
    from trainables.data import load_dataset

    changed = {
        "categories": 3,
        "features": 12,
        "train_per_category": 7,
        "test_per_category": 6,
        "noise": 0.1,
        "template": "binary",
        "seed": 5,
        "switch_periods": (2, 4, 6),
        "features_per_group": 3,
        "stream_length": 50,
        "test_stream_length": 30,
        "parts": 3,
        "run_length": 2,
    }
    small = {"train_per_category": 8, "test_per_category": 5, "stream_length": 40}
    data_dir = str(real_data_dir) if name in ("mnist", "fashion-mnist") else None
    base = DatasetConfig(name=name, data_dir=data_dir, **small)
    reference = load_dataset(base)
    for key, value in changed.items():
        other = load_dataset(dataclasses.replace(base, **{key: value}))
        same = all(
            np.array_equal(getattr(reference, part), getattr(other, part))
            for part in ("train_x", "train_y", "test_x", "test_y")
        )
        assert same == (key not in DATASET_USES[name]), (name, key)
    # data_dir: where the IDX files are, so only the IDX data sets read it
    assert ("data_dir" in DATASET_USES[name]) == (name in ("mnist", "fashion-mnist"))


def test_bad_variant_restrictions_give_one_message() -> None:
    cases = [
        (["variants=[{name='a', datasets=['mnist']}]"], "variants.a.datasets", "study's data"),
        (["variants=[{name='a', datasets=['synthetic-categories', 'synthetic-categories']}]"],
         "variants.a.datasets", "at most once"),
        (["variants=[{name='a', search_space={lstmm='feedforward'}}]"],
         "variants.a.search_space", "did you mean 'lstm'"),
        (["variants=[{name='a', search_space={leaky='nope'}}]"],
         "variants.a.search_space.leaky", "one of"),
        (["variants=[{name='a', learning_rate=0.1, search_space={leaky='leaky'}}]"],
         "variants.a.search_space.leaky", "fixes (variants.a.learning_rate)"),
        (["variants=[{name='a', datasets=3}]"], "variants.a.datasets", "a list"),
        (
            [
                "datasets=[{name='synthetic-categories'}, {name='mnist'}]",
                "variants=[{name='a', datasets=['synthetic-categories']}]",
            ],
            "datasets[1]",
            "some variant applies to",
        ),
    ]
    for overrides, field_name, allowed in cases:
        with pytest.raises(SpecError) as caught:
            load_spec("smoke", overrides)
        message = str(caught.value)
        assert message.startswith(field_name) and allowed in message, message
        assert "\n" not in message


def test_test_ordering_none_means_the_training_ordering() -> None:
    spec = load_spec(
        "paper-a10-generalization",
        ["network.test_ordering=reps-1", "variants.test-same.test_ordering=none"],
    )
    same = [c for c in expand(spec) if c.variant == "test-same"]
    assert same and all(c.base.test_ordering is None for c in same)


def test_latent_objectives_for_autoencoders_on_latent_data() -> None:
    spec = load_spec("paper-fig3-multiscale", ["objective=timescale_selectivity"])
    assert spec.direction == "max"
    spec = load_spec("paper-fig3-multiscale", ["objective=final_test_loss"])
    assert spec.direction == "min"


NEW_BAD = [
    (["network.task=regress"], "network.task", "classify, reconstruct"),
    (["network.optimizer=adam"], "network.optimizer", "sgd, rmsprop"),
    (["network.batch_size=0"], "network.batch_size", ">= 1"),
    (["network.batch_size=two"], "network.batch_size", "integer"),
    (["network.group_leaks=0,1.5"], "network.group_leaks", "[0, 1]"),
    (["network.group_leaks=[]"], "network.group_leaks", ">= 1 leak"),
    (["network.reset_scope=unit"], "network.reset_scope", "input, group"),
    (["network.feature_groups=0"], "network.feature_groups", ">= 1"),
    (["network.test_protocol=live"], "network.test_protocol", "isolated, streamed"),
    (["network.test_ordering=reps-0"], "network.test_ordering", "k >= 1"),
    (["network.test_ordering=3"], "network.test_ordering", "a string"),
    (["network.bptt_window=0"], "network.bptt_window", ">= 1"),
    (["network.dtype=float16"], "network.dtype", "float32"),
    (["network.device=tpu"], "network.device", "cpu"),
    (["network.device=cuda"], "network.device", "resources.gpu > 0"),
    (["network.rms_alpha=2"], "network.rms_alpha", "[0, 1]"),
    (["network.momentum=1"], "network.momentum", "[0, 1)"),
    (["network.rms_eps=-1"], "network.rms_eps", ">= 0"),
    (["network.task=reconstruct", "network.output=softmax"], "network.output", "sigmoid"),
    (["network.minibatch.batch_size=0"], "network.minibatch.batch_size", ">= 1"),
    (["network.minibach.batch_size=2"], "network.minibach", "did you mean 'network.minibatch'"),
    (
        ["network.lstm.bptt_windw=3"],
        "network.lstm.bptt_windw",
        "did you mean 'network.lstm.bptt_window'",
    ),
    (["network.test_ordering=reps-1"], "network.test_protocol", "'streamed' when test_ordering"),
    (["variants=[{test_ordering='reps-1'}]"], "variants[0]", "with a name"),
    (["variants=[{name='a b'}]"], "variants.name", "no spaces"),
    (["variants=[{name='a'}, {name='a'}]"], "variants", "distinct"),
    (["variants=[{name='a', leek=0.3}]"], "variants.a.leek", "did you mean 'variants.a.leak'"),
    (["variants=[{name='a', leak=3}]"], "variants.a.leak", "[0, 1]"),
    (["variants=[{name='a', dataset={noise=-1}}]"], "variants.a.dataset.noise", ">= 0"),
    (["variants=[{name='a', dataset={name='mnist'}}]"], "variants.a.dataset.name", "unknown"),
    (["variants.b.leak=0.2"], "variants.b.leak", "variants.<index, name or *>"),
    (["network.task=reconstruct", "objective=test_error_auc"], "objective", "without accuracy"),
    (["network.task=reconstruct", "objective=samples_to_target"], "objective", "test_loss_auc"),
    (["objective=timescale_selectivity"], "objective", "latent states"),
    (["objective=timescale_selectivty"], "objective", "did you mean 'timescale_selectivity'"),
    (["datasets.0.switch_periods=[]"], "datasets[0].switch_periods", "a period"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), NEW_BAD)
def test_bad_new_field_values_give_one_message(
    overrides: list[str], field: str, allowed: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("smoke", overrides)
    message = str(caught.value)
    assert message.startswith(field), message
    assert "is invalid:" in message and allowed in message, message
    assert "\n" not in message


FIG3_BAD = [
    (["objective=final_test_accuracy"], "objective", "without accuracy"),
    (["objective=timescale_selectivity", "network.task=classify"], "objective", "latent"),
    (["objective=timescale_selectivity", "scheduler=asha"], "scheduler", "timescale"),
    (
        ["network.group_leaks=0,0.5", "network.feature_groups=2"],
        "search_space.multiscale",
        "leak_group2",
    ),
    (["network.group_leaks=0,0.5,0.7,0.9"], "network.feature_groups", "multiscale-reset"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), FIG3_BAD)
def test_bad_autoencoder_settings_give_one_message(
    overrides: list[str], field: str, allowed: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec("paper-fig3-multiscale", overrides)
    message = str(caught.value)
    assert message.startswith(field) and allowed in message, message
    assert "\n" not in message


def test_set_reaches_a_variant_whose_name_has_dots() -> None:
    spec = load_spec(
        "smoke",
        [
            "variants=[{name='lr-0.1', learning_rate=0.1}, {name='lr-0.01'}]",
            "variants.lr-0.1.learning_rate=0.2",
            "variants.lr-0.01.dataset.noise=0.3",
        ],
    )
    assert spec.variant("lr-0.1").network == {"learning_rate": 0.2}
    assert spec.variant("lr-0.01").dataset == {"noise": 0.3}


def test_a_dataset_override_for_a_dataset_the_spec_lacks_says_how_to_add_it() -> None:
    with pytest.raises(SpecError) as error:
        load_spec("smoke", ["datasets.mnist.train_per_category=10"])
    message = str(error.value)
    assert "datasets.mnist.train_per_category=10" in message
    assert "'mnist' is not one of them" in message
    assert "--set datasets=synthetic-categories,mnist" in message


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("sqlit:///x.db", "did you mean 'sqlite'"),
        ("postgres://h/db", "did you mean 'postgresql'"),
        ("mlruns", "file store"),
        ("file:///tmp/mlruns", "file store"),
        ("sqlite://x.db", "three slashes"),
    ],
)
def test_tracking_uris_no_mlflow_store_takes_are_rejected(uri: str, words: str) -> None:
    with pytest.raises(SpecError) as error:
        load_spec("smoke", [f"tracking_uri='{uri}'"])
    assert f"tracking_uri={uri!r}" in str(error.value) and words in str(error.value)


def test_tracking_uris_of_every_store_pass_and_sqlite_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for uri in (
        "http://mlflow:5000",
        "https://host/mlflow",
        "postgresql+psycopg2://u@h/db",
        "mysql://u@h/db",
    ):
        assert resolve_tracking_uri(uri) == uri
    assert resolve_tracking_uri("sqlite:///m/x.db") == f"sqlite:///{tmp_path}/m/x.db"
