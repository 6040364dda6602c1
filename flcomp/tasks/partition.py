"""Split a training set among clients with flwr-datasets' partitioners."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def _iid(num_partitions: int, alpha: float, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


def _dirichlet(num_partitions: int, alpha: float, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed)


@dataclass(frozen=True)
class Scheme:
    """A partitioning scheme."""

    build: Callable[[int, float, int], Partitioner]
    """(num_partitions, alpha, seed) → a flwr-datasets Partitioner."""
    by_label: bool
    """Whether it needs labels (a "label" column)."""


PARTITIONERS: dict[str, Scheme] = {
    "iid": Scheme(_iid, by_label=False),
    "dirichlet": Scheme(_dirichlet, by_label=True),
}
"""Scheme name → Scheme.

"iid": equal contiguous shards of a seeded permutation of the samples. "dirichlet": for each
class, the shares of the clients are drawn from Dir(alpha) (flwr-datasets' DirichletPartitioner,
which redraws until every client holds at least 10 samples). flwr_datasets is imported when
a partition is made: importing it takes seconds."""


def partition_indices(
    labels: np.ndarray | None, num_samples: int, num_partitions: int, scheme: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Each client's training-set indices (int64 arrays); together they cover every index
    in range(num_samples) exactly once. The same arguments give the same split.

    `labels` (int, shape (num_samples,)) is None for label-free (regression) data, which only
    "iid" accepts: "dirichlet" raises ValueError.
    """
    import datasets

    chosen = PARTITIONERS[scheme]
    if chosen.by_label and labels is None:
        raise ValueError(f"partition {scheme!r} splits by label; this dataset has none (use 'iid')")
    order = np.random.default_rng((seed, 3)).permutation(num_samples)
    columns = {"index": order}
    if labels is not None:
        columns["label"] = np.asarray(labels)[order]
    partitioner = chosen.build(num_partitions, alpha, seed)
    partitioner.dataset = datasets.Dataset.from_dict(columns)
    return [
        np.asarray(partitioner.load_partition(k)[:]["index"], dtype=np.int64) for k in range(num_partitions)
    ]
