"""Datasets that need no download, by name, loaded once per process.

Every loader returns a `Data`; its arrays are shared by everyone who loads the same
dataset in the process (functools.cache): treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from flcomp.tasks.idx import read_idx
from flcomp.tasks.synthetic import LINEAR, LOGISTIC, linear_regression, logistic_regression


@dataclass(frozen=True, eq=False)
class Data:
    """A train/test split.

    x_*: float32, shape (n, *input_shape): images as (n, 1, H, W) in [0, 1], vectors as (n, d).
    y_*: int64 class ids for "multiclass" and "binary" problems, float32 targets for "regression".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_outputs: int
    """Model outputs: the number of classes ("multiclass"), else 1."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class DatasetEntry:
    """How to load a dataset and what kind of problem it poses."""

    load: Callable[[int, str | None], Data]
    """(seed, data_dir) → Data."""
    problem: str
    """A key of flcomp.tasks.objective.PROBLEMS: "multiclass", "binary" or "regression"."""
    weight_decay: float = 0.0
    """λ used when TaskConfig.weight_decay is None."""


@cache
def load_digits(seed: int) -> Data:
    """scikit-learn's 1797 8×8 digits (embedded, no download), pixels scaled from 0..16 to [0, 1];
    a stratified 75/25 train/test split shuffled by `seed` (1347 / 450 images)."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return Data(x_train, y_train, x_test, y_test, num_outputs=10)


FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package `dataset-fashion-mnist` installs the IDX files."""

FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
"""Data field → IDX file name (read gzipped "<name>.gz" or plain)."""


def find_fashion_mnist(data_dir: str | None) -> dict[str, Path]:
    """The four Fashion-MNIST IDX files: from `data_dir` when it holds all four, else from
    FASHION_MNIST_DIR. Raises FileNotFoundError naming both options when neither does."""
    candidates = [Path(data_dir)] if data_dir is not None else []
    for directory in [*candidates, FASHION_MNIST_DIR]:
        found = {}
        for field, name in FASHION_MNIST_FILES.items():
            path = next((p for p in (directory / f"{name}.gz", directory / name) if p.is_file()), None)
            if path is not None:
                found[field] = path
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    searched = ", ".join(str(d) for d in [*candidates, FASHION_MNIST_DIR])
    raise FileNotFoundError(
        f"Fashion-MNIST's IDX files ({', '.join(FASHION_MNIST_FILES.values())}, gzipped or not) "
        f"are not in {searched}. Install Debian's package `dataset-fashion-mnist` "
        "(apt-get install dataset-fashion-mnist) or set TaskConfig.data_dir to a directory holding them."
    )


def fashion_or_digits() -> str:
    """The dataset name: "fashion-mnist" where its IDX files are (`find_fashion_mnist`), else "digits"."""
    try:
        find_fashion_mnist(None)
        return "fashion-mnist"
    except FileNotFoundError:
        return "digits"


@cache
def load_fashion_mnist(data_dir: str | None) -> Data:
    """Fashion-MNIST from its IDX files (see find_fashion_mnist): 60 000 train / 10 000 test
    28×28 images scaled from 0..255 to [0, 1], 10 classes; the split is the dataset's own."""
    arrays = {field: read_idx(path) for field, path in find_fashion_mnist(data_dir).items()}
    for field in ("x_train", "x_test"):
        if arrays[field].ndim != 3 or len(arrays[field]) != len(arrays["y" + field[1:]]):
            raise ValueError(f"Fashion-MNIST {field}: images and labels disagree")
        arrays[field] = (arrays[field] / np.float32(255.0)).astype(np.float32)[:, None]
    for field in ("y_train", "y_test"):
        arrays[field] = arrays[field].astype(np.int64)
    return Data(**arrays, num_outputs=10)


def _split(x: np.ndarray, y: np.ndarray, n_train: int, num_outputs: int) -> Data:
    return Data(x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_outputs)


@cache
def load_synthetic_linear(seed: int) -> Data:
    """synthetic.linear_regression: 5000 train / 1000 test samples, d = 1000."""
    return _split(*linear_regression(seed), LINEAR.n_train, num_outputs=1)


@cache
def load_synthetic_logistic(seed: int) -> Data:
    """synthetic.logistic_regression: 5000 train / 1000 test samples, d = 1000, labels {0, 1}."""
    return _split(*logistic_regression(seed), LOGISTIC.n_train, num_outputs=1)


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(lambda seed, data_dir: load_digits(seed), "multiclass"),
    "fashion-mnist": DatasetEntry(lambda seed, data_dir: load_fashion_mnist(data_dir), "multiclass"),
    "synthetic-linear": DatasetEntry(lambda seed, data_dir: load_synthetic_linear(seed), "regression"),
    "synthetic-logistic": DatasetEntry(
        lambda seed, data_dir: load_synthetic_logistic(seed), "binary", weight_decay=1e-3
    ),
}
"""Dataset name → entry. synthetic-logistic defaults to λ = 1e-3 so that its objective is
strongly convex (its optimum is unique and GD converges linearly)."""
