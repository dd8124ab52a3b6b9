"""Data sets: synthetic categories, and the IDX reader on tiny hand-made and on the real files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.services import shared_data_dir
from trainables.config import ConfigError, DatasetConfig
from trainables.data import DATA_DIR_ENV, DataError, Dataset, load_dataset

SHARED_DATA = shared_data_dir() or Path("shared/data (not found)")
needs_real_data = pytest.mark.skipif(
    shared_data_dir() is None,
    reason="real IDX files not found: set STUDY_DATA_DIR or use a checkout next to shared/data",
)
MNIST_TRAIN_HISTOGRAM = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ---------------------------------------------------------------------------------------------
# synthetic-categories
# ---------------------------------------------------------------------------------------------
def _synthetic(**changes: object) -> Dataset:
    values = dict(categories=4, features=16, train_per_category=30, test_per_category=5)
    values.update(changes)
    return load_dataset(DatasetConfig(**values))  # type: ignore[arg-type]


def test_synthetic_shapes_types_and_balance() -> None:
    """C x per-category items of D float32 features, int64 labels, every category equally often."""
    data = _synthetic()
    assert data.name == "synthetic-categories" and data.num_classes == 4
    assert data.train_x.shape == (120, 16) and data.test_x.shape == (20, 16)
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    assert data.num_features == 16
    assert np.bincount(data.train_y).tolist() == [30] * 4
    assert np.bincount(data.test_y).tolist() == [5] * 4


@pytest.mark.parametrize("template", ["blocks", "binary"])
def test_synthetic_is_deterministic_from_its_seed(template: str) -> None:
    """Same config: identical arrays; another data seed: other noise."""
    a, b = _synthetic(template=template), _synthetic(template=template)
    c = _synthetic(template=template, seed=1)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train_x, c.train_x)
    assert not np.array_equal(a.test_x, c.test_x)
    assert not np.array_equal(a.train_x, a.test_x[: len(a.train_x)])


def test_synthetic_blocks_are_templates_plus_bounded_noise() -> None:
    """'blocks': category c is 1 on its own D//C block, 0 elsewhere, plus U(-noise, noise)."""
    data = _synthetic(train_per_category=300, noise=0.3)
    templates = np.kron(np.eye(4), np.ones(4))  # [C, D]: 4 blocks of 4 features
    residual = data.train_x - templates[data.train_y]
    assert np.all(np.abs(residual) <= 0.3 + 1e-6)
    assert np.abs(residual).max() > 0.25  # the noise is really there
    for c in range(4):
        mean = data.train_x[data.train_y == c].mean(axis=0)
        np.testing.assert_allclose(mean, templates[c], atol=0.05)


def test_synthetic_binary_templates_are_zero_one() -> None:
    """'binary': each template is a 0/1 vector; categories have different templates."""
    data = _synthetic(template="binary", noise=0.0)
    assert set(np.unique(data.train_x).tolist()) <= {0.0, 1.0}
    templates = np.stack([data.train_x[data.train_y == c][0] for c in range(4)])
    assert len({t.tobytes() for t in templates}) == 4


def test_synthetic_blocks_need_a_feature_per_category() -> None:
    """'blocks' with fewer features than categories is a DataError naming the field."""
    with pytest.raises(DataError, match="features"):
        _synthetic(categories=5, features=4)


# ---------------------------------------------------------------------------------------------
# IDX reader on tiny hand-made files
# ---------------------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array: magic (0x0000 08 ndim), big-endian dims, data."""
    magic = 0x0800 + array.ndim if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def _tiny_arrays() -> dict[str, np.ndarray]:
    """3 classes; pixel (0, 0) of each image is its index, so rows can be traced."""
    arrays = {}
    for split, n in (("train", 12), ("test", 6)):
        images = np.random.default_rng(n).integers(0, 256, size=(n, 2, 3)).astype(np.uint8)
        images[:, 0, 0] = np.arange(n)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.arange(n, dtype=np.uint8) % 3
    return arrays


def _write(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        raw = _idx_bytes(array)
        if gz:
            (folder / f"{STEMS[key]}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / STEMS[key]).write_bytes(raw)


def _idx_config(root: Path, **changes: object) -> DatasetConfig:
    values: dict[str, object] = dict(
        name="mnist", data_dir=str(root), train_per_category=None, test_per_category=None
    )
    values.update(changes)
    return DatasetConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("in_subfolder", [True, False], ids=["data_dir/mnist", "data_dir"])
def test_idx_reads_tiny_files(tmp_path: Path, gz: bool, in_subfolder: bool) -> None:
    """gz or raw, in <data_dir>/<name>/ or <data_dir>/: images flattened and scaled by 1/255."""
    arrays = _tiny_arrays()
    _write(tmp_path / "mnist" if in_subfolder else tmp_path, arrays, gz)
    data = load_dataset(_idx_config(tmp_path))
    assert data.num_classes == 3 and data.num_features == 6
    assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int64
    np.testing.assert_array_equal(
        data.train_x, (arrays["train_images"].reshape(12, 6) / np.float32(255)).astype(np.float32)
    )
    np.testing.assert_array_equal(data.train_y, arrays["train_labels"])
    np.testing.assert_array_equal(data.test_x * 255, arrays["test_images"].reshape(6, 6))
    np.testing.assert_array_equal(data.test_y, arrays["test_labels"])


def test_idx_reads_the_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No data_dir in the config: $STUDY_DATA_DIR is the folder."""
    _write(tmp_path / "mnist", _tiny_arrays(), gz=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    data = load_dataset(
        DatasetConfig(name="mnist", train_per_category=None, test_per_category=None)
    )
    assert data.train_x.shape == (12, 6)


def test_idx_per_class_subset(tmp_path: Path) -> None:
    """per_category n: n rows of each class, images matching their labels, seed-deterministic."""
    arrays = _tiny_arrays()
    _write(tmp_path / "mnist", arrays, gz=True)
    data = load_dataset(_idx_config(tmp_path, train_per_category=2, test_per_category=1))
    assert np.bincount(data.train_y).tolist() == [2, 2, 2]
    assert np.bincount(data.test_y).tolist() == [1, 1, 1]
    rows = np.rint(data.train_x[:, 0] * 255).astype(int)  # pixel (0, 0) = original index
    assert len(set(rows.tolist())) == 6
    np.testing.assert_array_equal(arrays["train_labels"][rows], data.train_y)
    np.testing.assert_array_equal(data.train_x * 255, arrays["train_images"][rows].reshape(6, 6))
    again = load_dataset(_idx_config(tmp_path, train_per_category=2, test_per_category=1))
    np.testing.assert_array_equal(again.train_x, data.train_x)
    choices = {
        tuple(np.rint(load_dataset(_idx_config(
            tmp_path, train_per_category=2, test_per_category=1, seed=seed
        )).train_x[:, 0] * 255).astype(int).tolist())
        for seed in range(6)
    }
    assert len(choices) > 1  # the data seed picks the subset
    # n above a class size is an error naming the field (a smaller class would silently
    # unbalance the categories); "all" takes every row
    with pytest.raises(ConfigError, match=r"dataset.train_per_category=50 .* at most 4"):
        load_dataset(_idx_config(tmp_path, train_per_category=50))


def test_idx_missing_file_names_every_place_looked(tmp_path: Path) -> None:
    """A missing file is a DataError listing each path it tried."""
    with pytest.raises(DataError) as error:
        load_dataset(_idx_config(tmp_path))
    message = str(error.value)
    for path in (
        tmp_path / "mnist" / "train-images-idx3-ubyte.gz",
        tmp_path / "mnist" / "train-images-idx3-ubyte",
        tmp_path / "train-images-idx3-ubyte.gz",
        tmp_path / "train-images-idx3-ubyte",
    ):
        assert str(path) in message


def _corrupt(tmp_path: Path, key: str, raw: bytes, gz: bool = False) -> DatasetConfig:
    arrays = _tiny_arrays()
    folder = tmp_path / "mnist"
    _write(folder, arrays, gz=False)
    (folder / STEMS[key]).unlink()
    (folder / (STEMS[key] + (".gz" if gz else ""))).write_bytes(raw)
    return _idx_config(tmp_path)


IMAGES = _idx_bytes(_tiny_arrays()["train_images"])
CORRUPTIONS = {
    "bad-magic": ("train_images", (1234).to_bytes(4, "big") + IMAGES[4:], False),
    "truncated": ("train_images", IMAGES[:-5], False),
    "too-long": ("train_images", IMAGES + b"\x00", False),
    "shorter-than-header": ("train_labels", b"\x00\x00\x08", False),
    "truncated-gz": ("train_images", gzip.compress(IMAGES)[:-12], True),
    "not-gzip": ("train_images", IMAGES, True),
    "count-mismatch": ("test_labels", _idx_bytes(np.zeros(5, dtype=np.uint8)), False),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_idx_corrupt_file_is_a_data_error(tmp_path: Path, case: str) -> None:
    """Bad magic, wrong length, broken gzip, mismatched counts, or the wrong kind of file."""
    key, raw, gz = CORRUPTIONS[case]
    config = _corrupt(tmp_path, key, raw, gz)
    with pytest.raises(DataError):
        load_dataset(config)


@pytest.mark.parametrize(
    ("key", "array"),
    [
        ("train_images", np.zeros(12, dtype=np.uint8)),  # a valid label file, 12 labels
        ("train_labels", np.zeros((12, 2, 3), dtype=np.uint8)),  # a valid image file, 12 images
    ],
    ids=["labels-file-as-images", "images-file-as-labels"],
)
def test_idx_file_of_the_wrong_kind_is_a_data_error(
    tmp_path: Path, key: str, array: np.ndarray
) -> None:
    """An intact IDX file of the other kind (label magic 2049 where images 2051 belong, or the
    reverse) is "not what its name promises": DataError, not [N, 1] images or 3-D labels."""
    config = _corrupt(tmp_path, key, _idx_bytes(array))
    with pytest.raises(DataError):
        load_dataset(config)


# ---------------------------------------------------------------------------------------------
# the real MNIST and Fashion-MNIST files
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["mnist", "fashion-mnist"])
def full_dataset(request: pytest.FixtureRequest) -> Dataset:
    return load_dataset(DatasetConfig(
        name=request.param, data_dir=str(SHARED_DATA),
        train_per_category=None, test_per_category=None,
    ))


@needs_real_data
def test_real_full_splits(full_dataset: Dataset) -> None:
    """60000 / 10000 images of 784 pixels in [0, 1], 10 classes, the documented mean pixel."""
    data = full_dataset
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert data.train_y.shape == (60000,) and data.test_y.shape == (10000,)
    assert data.num_classes == 10
    for x in (data.train_x, data.test_x):
        assert x.dtype == np.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    mean = {"mnist": 0.1307, "fashion-mnist": 0.2860}[data.name]
    assert abs(float(data.train_x.mean(dtype=np.float64)) - mean) < 5e-4


@needs_real_data
def test_real_label_histograms(full_dataset: Dataset) -> None:
    """MNIST train histogram as documented; Fashion-MNIST 6000 / 1000 per class."""
    train = np.bincount(full_dataset.train_y, minlength=10).tolist()
    test = np.bincount(full_dataset.test_y, minlength=10).tolist()
    if full_dataset.name == "mnist":
        assert train == MNIST_TRAIN_HISTOGRAM
        assert sum(test) == 10000
    else:
        assert train == [6000] * 10 and test == [1000] * 10


@needs_real_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_per_class_subsets(name: str) -> None:
    """train/test_per_category: exactly that many of each class, deterministic per data seed."""
    config = DatasetConfig(
        name=name, data_dir=str(SHARED_DATA), train_per_category=100, test_per_category=20
    )
    data = load_dataset(config)
    assert np.bincount(data.train_y).tolist() == [100] * 10
    assert np.bincount(data.test_y).tolist() == [20] * 10
    assert data.train_x.shape == (1000, 784)
    np.testing.assert_array_equal(load_dataset(config).train_x, data.train_x)
    other = load_dataset(DatasetConfig(
        name=name, data_dir=str(SHARED_DATA), train_per_category=100, test_per_category=20, seed=1
    ))
    assert not np.array_equal(other.train_x, data.train_x)


@needs_real_data
def test_real_raw_files_equal_gz_files(tmp_path: Path) -> None:
    """Decompressed copies of the MNIST files load to the same arrays as the .gz originals."""
    for stem in STEMS.values():
        with gzip.open(SHARED_DATA / "mnist" / f"{stem}.gz") as source, \
                open(tmp_path / stem, "wb") as target:
            shutil.copyfileobj(source, target)
    raw = load_dataset(DatasetConfig(
        name="mnist", data_dir=str(tmp_path), train_per_category=30, test_per_category=None
    ))
    gz = load_dataset(DatasetConfig(
        name="mnist", data_dir=str(SHARED_DATA), train_per_category=30, test_per_category=None
    ))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(raw, key), getattr(gz, key))
    assert raw.test_x.shape == (10000, 784)
