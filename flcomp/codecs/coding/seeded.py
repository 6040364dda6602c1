"""Positions drawn from a seed: what a random sparsifier sends instead of its positions."""

from __future__ import annotations

import numpy as np


def random_positions(seed: int, n: int, k: int) -> np.ndarray:
    """The sorted positions that `seed` draws: k of n, without replacement (all n when
    k = n, as small tensors keep, without seeding a generator)."""
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
