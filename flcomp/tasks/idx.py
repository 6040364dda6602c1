"""The IDX file format (MNIST, Fashion-MNIST), read with NumPy alone.

Layout: two zero bytes, a type code, the number of dimensions `k`; then `k` big-endian
uint32 sizes; then the values, big-endian, row-major. Files ending in ".gz" are gunzipped.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code → element type (big-endian)."""


def parse_idx(raw: bytes) -> np.ndarray:
    """The array held by an IDX byte string, in native byte order.

    Raises ValueError for a bad magic, an unknown type code, or a body whose length
    differs from what the header announces.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("not an IDX file: the first two bytes must be zero")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"unknown IDX type code {code:#04x}")
    body = 4 + 4 * ndim
    if len(raw) < body:
        raise ValueError("IDX header truncated")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - body != expected:
        raise ValueError(f"IDX body holds {len(raw) - body} bytes; the header {shape} announces {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=body).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """The array in the IDX file at `path` (gunzipped first when the name ends in ".gz")."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return parse_idx(raw)
