"""Data sets: the paper's synthetic sets (A.2, 5.2, A.7) and MNIST / Fashion-MNIST from IDX files.

Every data set is a :class:`Dataset` of float32 inputs in roughly [0, 1] and integer labels,
deterministic given its :class:`~trainables.config.DatasetConfig` (including its seed).

Example:
    >>> from trainables.config import ConfigError, DatasetConfig
    >>> config = DatasetConfig(categories=4, train_per_category=30, test_per_category=5)
    >>> data = load_dataset(config)
    >>> data.train_x.shape, data.test_x.shape, data.num_classes
    ((120, 16), (20, 16), 4)
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.config import ConfigError, DatasetConfig

DATA_DIR_ENV = "STUDY_DATA_DIR"
"""Environment variable naming the folder with IDX files when the spec gives none."""

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049


class DataError(RuntimeError):
    """A data file is missing, unreadable or not what its name promises."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays of one data set (inputs float32 [N, D], labels int64 [N])."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    train_latent: np.ndarray | None = None
    """Latent states behind the training items, [N, G] (multiscale-stream; None elsewhere)."""
    test_latent: np.ndarray | None = None
    """Latent states behind the test items, [N, G]."""

    @property
    def num_features(self) -> int:
        return int(self.train_x.shape[1])


def load_dataset(config: DatasetConfig) -> Dataset:
    """Build or read the data set ``config`` names.

    Raises:
        DataError: an IDX file is missing or corrupt (the message says where it looked).
    """
    if config.name == "synthetic-categories":
        return synthetic_categories(config)
    if config.name == "multiscale-stream":
        return multiscale_stream(config)
    if config.name == "no-shared-features":
        return no_shared_features(config)
    return idx_dataset(config)


# ---------------------------------------------------------------------------------------------
# synthetic-categories (paper A.2): C category templates + uniform noise
# ---------------------------------------------------------------------------------------------
def synthetic_categories(config: DatasetConfig) -> Dataset:
    """C categories of ``features``-dim items: a category template plus U(-noise, noise) noise.

    Templates have low between-category overlap: with ``template='blocks'`` category c is 1 on its
    own block of D // C features and 0 elsewhere (no overlap at all); with ``'binary'`` each
    template is a random 0/1 vector (about half the features shared by chance).
    """
    rng = np.random.default_rng([config.seed, 0xA2])
    c, d = config.categories, config.features
    if config.template == "blocks":
        if d < c:
            raise DataError(f"dataset.features={d} is too small: 'blocks' templates need >= {c}")
        templates = np.zeros((c, d))
        block = d // c
        for category in range(c):
            templates[category, category * block : (category + 1) * block] = 1.0
    else:
        templates = rng.integers(0, 2, size=(c, d)).astype(float)
    n_train = config.train_per_category or 300
    n_test = config.test_per_category or 100

    def draw(per_category: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(c), per_category)
        noise = rng.uniform(-config.noise, config.noise, size=(labels.size, d))
        return (templates[labels] + noise).astype(np.float32), labels.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset("synthetic-categories", train_x, train_y, test_x, test_y, c)


# ---------------------------------------------------------------------------------------------
# multiscale-stream (paper 5.2, A.12): feature groups driven by binary latents at 3 timescales
# ---------------------------------------------------------------------------------------------
def multiscale_stream(config: DatasetConfig) -> Dataset:
    """A stream whose feature group g follows a binary latent state that flips every p_g items.

    G = len(switch_periods) groups (paper: fast, medium, slow = 1, 3, 5) of
    ``features_per_group`` features (paper: 2). Each latent flips deterministically every p_g
    items from a seeded phase and start value. Interpretation (the paper only says each
    two-element subcomponent "changed feature-category"): state 0 shows the group's pattern
    (1, 0), state 1 its complement (0, 1) (for F features: first ceil(F/2) on, then the
    complement), plus U(-noise, noise) noise per feature. The test stream continues the same
    latent schedule after the training stream, with fresh noise.

    Label of an item = its latent code sum_g state_g 2^g (2^G classes); used by orderings and the
    oracle reset, not as a target. ``train_latent`` / ``test_latent`` keep the states [N, G].
    Use the ``stream`` ordering to keep the temporal structure.
    """
    rng = np.random.default_rng([config.seed, 0x512])
    periods = np.array(config.switch_periods)
    g, f = periods.size, config.features_per_group
    phase = np.array([rng.integers(0, p) for p in periods])
    start = rng.integers(0, 2, size=g)
    pattern = np.zeros(f)
    pattern[: (f + 1) // 2] = 1.0

    def draw(first: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.arange(first, first + length)[:, None]
        latent = ((t + phase) // periods + start) % 2  # [N, G]
        clean = np.abs(latent[:, :, None] - pattern).reshape(length, g * f)  # state 1: complement
        x = clean + rng.uniform(-config.noise, config.noise, size=clean.shape)
        labels = (latent * (2 ** np.arange(g))).sum(axis=1)
        return x.astype(np.float32), labels.astype(np.int64), latent.astype(np.float32)

    train_x, train_y, train_latent = draw(0, config.stream_length)
    test_x, test_y, test_latent = draw(config.stream_length, config.test_stream_length)
    return Dataset(
        "multiscale-stream", train_x, train_y, test_x, test_y, 2**g, train_latent, test_latent
    )


# ---------------------------------------------------------------------------------------------
# no-shared-features (paper A.7): consecutive items share no local features
# ---------------------------------------------------------------------------------------------
def no_shared_features(config: DatasetConfig) -> Dataset:
    """Categories on disjoint feature blocks, each block split into ``parts`` disjoint parts.

    An item of category c is 1 on one part of c's block (0 elsewhere) plus U(-noise, noise)
    noise. The training set is stored as a stream (use the ``stream`` ordering): categories are
    visited in a seeded permutation, ``run_length`` items per visit, and successive items of a
    category cycle through the parts, so consecutive items never share an active feature
    (``parts`` >= 2). The paper does not give its construction; this is our reading of A.7.
    Other orderings shuffle the items and lose that guarantee. Test items cycle through the parts
    too, ``test_per_category`` per category, grouped by category.
    """
    rng = np.random.default_rng([config.seed, 0xA7])
    c, d, parts = config.categories, config.features, config.parts
    part = d // c // parts
    if part < 1:
        raise DataError(
            f"dataset.features={d} is too small: no-shared-features needs >= categories x parts "
            f"= {c * parts} features"
        )
    n_train = config.train_per_category or 300
    n_test = config.test_per_category or 100

    def items(labels: np.ndarray, index_in_category: np.ndarray) -> np.ndarray:
        clean = np.zeros((labels.size, d))
        first = labels * (d // c) + (index_in_category % parts) * part
        for offset in range(part):
            clean[np.arange(labels.size), first + offset] = 1.0
        noise = rng.uniform(-config.noise, config.noise, size=clean.shape)
        return (clean + noise).astype(np.float32)

    # stream order: runs of run_length per category in a cycle of the category permutation
    left, cycle, train_y = np.full(c, n_train), list(rng.permutation(c)), []
    while cycle:
        for category in cycle:
            take = min(config.run_length, int(left[category]))
            train_y.extend([category] * take)
            left[category] -= take
        cycle = [k for k in cycle if left[k] > 0]
    train_y = np.array(train_y, dtype=np.int64)
    seen = np.zeros(c, dtype=np.int64)
    index = np.empty_like(train_y)
    for n, label in enumerate(train_y):
        index[n], seen[label] = seen[label], seen[label] + 1
    test_y = np.repeat(np.arange(c), n_test).astype(np.int64)
    test_index = np.tile(np.arange(n_test), c)
    return Dataset(
        "no-shared-features",
        items(train_y, index),
        train_y,
        items(test_y, test_index),
        test_y,
        c,
    )


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST from IDX files (.gz or raw)
# ---------------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$STUDY_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data")).expanduser().absolute()


def idx_dataset(config: DatasetConfig) -> Dataset:
    """Read ``config.name`` (mnist or fashion-mnist) and take the per-class subsets it asks for."""
    root = Path(config.data_dir).expanduser().absolute() if config.data_dir else default_data_dir()
    files = {key: _find_idx(root, config.name, stem) for key, stem in _IDX_FILES.items()}
    arrays = {key: _read_idx(path) for key, path in files.items()}
    for key, array in arrays.items():
        wanted = 1 if key.endswith("labels") else 3
        if array.ndim != wanted:
            raise DataError(
                f"{config.name} {key} file is not what its name promises: a {array.ndim}-D IDX "
                f"array where a {wanted}-D one belongs ({files[key]})"
            )
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataError(
                f"{config.name} {split} split is corrupt: {n_images} images but {n_labels} labels "
                f"(in {root})"
            )
    rng = np.random.default_rng([config.seed, 0x1D8])
    train = _subset(arrays["train_labels"], config.train_per_category, rng, config, "train")
    test = _subset(arrays["test_labels"], config.test_per_category, rng, config, "test")

    def images(split: str, rows: np.ndarray) -> np.ndarray:
        pixels = arrays[f"{split}_images"][rows]
        return (pixels.reshape(len(rows), -1) / np.float32(255.0)).astype(np.float32)

    return Dataset(
        config.name,
        images("train", train),
        arrays["train_labels"][train].astype(np.int64),
        images("test", test),
        arrays["test_labels"][test].astype(np.int64),
        int(arrays["train_labels"].max()) + 1,
    )


def _subset(
    labels: np.ndarray,
    per_class: int | None,
    rng: np.random.Generator,
    config: DatasetConfig,
    split: str,
) -> np.ndarray:
    """Row indices: all rows, or ``per_class`` rows of each class drawn without replacement.

    Raises:
        ConfigError: a class of the split has fewer than ``per_class`` items (a silently smaller
            class would unbalance the categories the orderings cycle through).
    """
    if per_class is None:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    if per_class > counts.min():
        raise ConfigError(
            f"dataset.{split}_per_category",
            per_class,
            f"at most {counts.min()} (class {classes[counts.argmin()]} of {config.name}'s "
            f"{split} split has {counts.min()} items) or 'all'",
        )
    rows = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        rows.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.sort(np.concatenate(rows))


def _find_idx(root: Path, name: str, stem: str) -> Path:
    candidates = [
        folder / file
        for folder in (root / name, root)
        for file in (f"{stem}.gz", stem)
    ]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise DataError(
        f"{name}: file {stem}[.gz] not found; looked in: {looked}. Put the four standard IDX "
        f"files "
        f"(train-images/train-labels/t10k-images/t10k-labels, .gz or raw) in <data_dir>/{name}/ "
        f"and pass --data-dir <data_dir> or set ${DATA_DIR_ENV}. In this workspace they are in "
        f"../shared/data; on Debian, 'apt-get install dataset-fashion-mnist' provides "
        f"Fashion-MNIST."
    )


@functools.lru_cache(maxsize=16)
def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file, checking magic number and size; cached because trials reuse workers."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read {path}: {error}; replace it with an intact copy") from error
    if len(raw) < 8:
        raise DataError(f"{path} is corrupt: {len(raw)} bytes is shorter than an IDX header")
    magic = int.from_bytes(raw[0:4], "big")
    if magic not in (_IMAGE_MAGIC, _LABEL_MAGIC):
        raise DataError(
            f"{path} is corrupt: magic number {magic}, expected {_IMAGE_MAGIC} (images) "
            f"or {_LABEL_MAGIC} (labels)"
        )
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataError(
            f"{path} is corrupt: header promises {dims} = {expected} bytes of data, "
            f"file has {len(raw) - offset}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
