"""Flower `Array` ↔ NumPy without `np.load`/`np.save` on the hot path.

A Flower Array of stype "numpy.ndarray" holds the bytes of `np.save`: a header
that `np.load` parses with `ast.literal_eval` for every call, then the raw data.
On small tensors the parse costs more than the data, and every client and the
server convert each tensor several times per round, so these two read and write
the same bytes with the header taken from the Array's own metadata (and cached).
Anything unusual (Fortran order, object dtypes, another stype) takes Flower's path.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from flwr.app import Array

_NUMPY_STYPE = "numpy.ndarray"


@cache
def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The `np.save` header of a C-ordered array (format version 1.0 or 2.0, as np.save picks)."""
    out = io.BytesIO()
    d = {"descr": descr, "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(out, d)
    except ValueError:  # a header too long for version 1.0, as np.save would then write
        out = io.BytesIO()
        np.lib.format.write_array_header_2_0(out, d)
    return out.getvalue()


def to_numpy(array: Array) -> np.ndarray:
    """The array's values, read-only (a view of its bytes); same values as `array.numpy()`."""
    if array.stype == _NUMPY_STYPE:
        dtype = np.dtype(array.dtype)
        shape = tuple(array.shape)
        if dtype.kind in "biuf" and dtype.fields is None:
            header = _header(np.lib.format.dtype_to_descr(dtype), shape)
            data = array.data
            if data[: len(header)] == header and len(data) == len(header) + dtype.itemsize * int(
                np.prod(shape)
            ):
                return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    return array.numpy()


def from_numpy(x: np.ndarray) -> Array:
    """An Array holding `x`, byte for byte what `Array(x)` would hold."""
    if x.dtype.kind not in "biuf" or x.dtype.fields is not None or not x.flags.c_contiguous:
        return Array(x)
    header = _header(np.lib.format.dtype_to_descr(x.dtype), x.shape)
    data = b"".join([header, x.data])  # one copy (header + x.tobytes() makes two)
    return Array(dtype=str(x.dtype), shape=x.shape, stype=_NUMPY_STYPE, data=data)
