"""Sparse positions: whichever is shorter of a bitmap and Rice-coded gaps.

A set of m sorted positions in [0, n) costs n bits as a bitmap, or about
m·(2 + log2(n/m)) bits as Rice-coded gaps; at 1% density gaps take ~8.1 bits a
position (the entropy bound is 8.08), the bitmap 100.

    u8   mode: 255 = bitmap (ceil(n/8) bytes follow), else the Rice parameter k
    ...  the gaps (number of skipped entries before each position), Rice-coded

The count m is the caller's to write: it usually needs it anyway.
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.coding import rice
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_BITMAP = 255


def encode_positions(positions: np.ndarray, n: int, out: PayloadWriter) -> None:
    """Write sorted, distinct positions in [0, n)."""
    coded = None
    # Rice codes take at least a bit a position: never shorter than a bitmap of as many bytes.
    if -(-len(positions) // 8) < -(-n // 8):
        p = positions.astype(np.int64, copy=False)
        gaps = np.empty_like(p)
        gaps[:1] = p[:1]
        np.subtract(p[1:], p[:-1], out=gaps[1:])
        gaps[1:] -= 1
        k = rice.best_k(gaps)
        coded = PayloadWriter()
        rice.rice_encode(gaps, k, coded)
    if coded is not None and coded.nbytes < -(-n // 8):
        out.struct("B", k)
        out.extend(coded)
    else:
        mask = np.zeros(n, np.bool_)
        mask[positions] = True
        out.struct("B", _BITMAP)
        out.array(np.packbits(mask))


def decode_positions(body: PayloadReader, m: int, n: int) -> np.ndarray:
    """Read m sorted positions in [0, n) (int64); m must already be checked against n."""
    (mode,) = body.struct("B")
    if mode == _BITMAP:
        nbytes = -(-n // 8)
        bits = np.unpackbits(body.array(np.uint8, nbytes, limit=nbytes), count=n)
        positions = np.flatnonzero(bits)
        if len(positions) != m:
            raise PayloadError(f"bitmap holds {len(positions)} positions, header says {m}")
        return positions
    gaps = rice.rice_decode(body, mode, m, max_value=n - m)
    positions = np.cumsum(gaps + 1) - 1
    if m and positions[-1] >= n:
        raise PayloadError(f"position {positions[-1]} beyond the tensor's {n} entries")
    return positions
