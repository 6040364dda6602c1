"""The sampled top-k selection is exact: the same set as a full sort."""

import numpy as np
import pytest

from flcomp.codecs.coding.sparse import top_k_positions


@pytest.mark.parametrize("n, k", [(1_000_000, 10_000), (1_000_000, 1), (300_000, 18_000), (5_000, 50)])
def test_top_k_positions_match_a_full_sort(n, k):
    magnitude = np.abs(np.random.default_rng(n + k).standard_t(3, size=n)).astype(np.float32)
    expected = np.sort(np.argsort(-magnitude, kind="stable")[:k])
    assert np.array_equal(top_k_positions(magnitude, k), expected)


def test_top_k_positions_with_ties_keep_exactly_k():
    magnitude = np.zeros(1_000_000, np.float32)
    magnitude[::7] = 1.0
    got = top_k_positions(magnitude, 1000)
    assert len(got) == 1000 and np.all(magnitude[got] == 1.0) and np.all(np.diff(got) > 0)


def test_top_k_positions_on_a_skewed_tensor_fall_back_correctly():
    magnitude = np.zeros(2_000_000, np.float32)
    magnitude[-50_000:] = np.linspace(1, 2, 50_000, dtype=np.float32)
    got = top_k_positions(magnitude, 20_000)
    assert np.array_equal(got, np.arange(2_000_000 - 20_000, 2_000_000))
