"""flcomp.protocol.arrays: the fast Array ↔ NumPy path gives Flower's bytes and values."""

import numpy as np
import pytest
from flwr.app import Array

from flcomp.protocol.arrays import from_numpy, to_numpy

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.zeros((0, 5), np.float64),
    np.float16(1.5) * np.ones(7, np.float16),
    np.array(3.25, np.float32),  # 0-d
    np.arange(6, dtype=np.int64),
    np.ones((2, 3, 4, 5, 6, 7, 8, 9, 2, 2, 3, 3), np.uint8),  # a long shape
    np.arange(20, dtype=np.float32).reshape(4, 5).T,  # not C-contiguous: Flower's path
    np.array([1 + 2j], np.complex64),  # another kind: Flower's path
]


@pytest.mark.parametrize("x", ARRAYS, ids=lambda x: f"{x.dtype}{x.shape}")
def test_from_numpy_writes_the_bytes_flower_writes(x):
    ours, flowers = from_numpy(x), Array(x)
    assert (ours.dtype, tuple(ours.shape), ours.stype, ours.data) == (
        flowers.dtype,
        tuple(flowers.shape),
        flowers.stype,
        flowers.data,
    )


@pytest.mark.parametrize("x", ARRAYS, ids=lambda x: f"{x.dtype}{x.shape}")
def test_to_numpy_reads_what_flower_reads(x):
    array = Array(x)
    ours = to_numpy(array)
    np.testing.assert_array_equal(ours, array.numpy())
    assert ours.dtype == x.dtype and ours.shape == x.shape


def test_to_numpy_falls_back_on_bytes_it_does_not_recognise():
    array = Array(np.arange(4, dtype=np.float32))
    fortran = Array(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    np.testing.assert_array_equal(to_numpy(fortran), fortran.numpy())
    truncated = Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=array.data[:-4])
    with pytest.raises(ValueError):
        to_numpy(truncated)  # Flower's np.load refuses it too
