"""Golomb–Rice coding of non-negative integers, vectorised with NumPy.

Value v with parameter k is q = v >> k in unary and the k low bits of v. Rice codes
are the optimal prefix codes for geometric sources (Gallager & van Voorhis 1975):
the gaps between sparse positions, QSGD's levels; with the best k they come within
a few percent of the entropy of a geometric source.

The unary parts are laid out in *bit-planes* rather than one after the other, so
that both directions are whole-array NumPy operations: plane j holds one bit for
every value with q ≥ j, 1 if q > j ("continue") and 0 if q = j ("stop"). That is
q + 1 bits a value, as in plain unary. Values with q ≥ MAX_PLANES continue through
every plane and carry q − MAX_PLANES in an escape array, which bounds the work and
the length of a forged stream. (k is the caller's to write, so it can share a byte
with other flags.)

    planes 0, 1, ...: ceil(active_j / 8) bytes each, MSB first
    escapes:          u32 each, for the values still active after the last plane
    remainders:       n·k bits, MSB first, ceil(n·k / 8) bytes
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

MAX_K = 31
MAX_PLANES = 24


def best_k(values: np.ndarray) -> int:
    """The Rice parameter for `values`: the k with the fewest bits, next to log2(mean)."""
    if len(values) == 0:
        return 0
    mean = float(values.sum()) / len(values)
    guess = min(MAX_K, int(np.log2(mean)) if mean >= 1 else 0)

    def bits(k: int) -> int:
        return int((values >> k).sum()) + len(values) * (k + 1)

    return min((k for k in (guess - 1, guess, guess + 1) if 0 <= k <= MAX_K), key=bits)


def rice_encode(values: np.ndarray, k: int, out: PayloadWriter) -> None:
    """Write non-negative integers `values` (< 2**32) with parameter k."""
    v = values.astype(np.int64, copy=False)
    active = v >> k if k else v
    for j in range(MAX_PLANES):
        if not len(active):
            break
        more = active > j
        out.array(np.packbits(more))
        active = active[more]
    if len(active):
        out.array((active - MAX_PLANES).astype("<u4"))
    if k:
        shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
        out.array(np.packbits(((v[:, None] >> shifts) & 1).astype(np.uint8)))


def rice_decode(body: PayloadReader, k: int, n: int, max_value: int) -> np.ndarray:
    """Read n integers coded with parameter k, each at most `max_value`; returns int64."""
    if k > MAX_K:
        raise PayloadError(f"Rice parameter {k} > {MAX_K}")
    planes, active = [], n
    for _ in range(MAX_PLANES):
        if not active:
            break
        nbytes = -(-active // 8)
        more = np.unpackbits(body.array(np.uint8, nbytes, limit=nbytes), count=active).view(np.bool_)
        planes.append(more)
        active = int(np.count_nonzero(more))
    q = body.array("<u4", active, limit=active).astype(np.int64)
    for more in reversed(planes):
        deeper, q = q, more.astype(np.int64)
        q[more] += deeper
    if k:
        if n and int(q.max()) > max_value >> k:
            raise PayloadError("Rice-coded value above its bound")
        nbits = n * k
        packed = body.array(np.uint8, -(-nbits // 8), limit=-(-nbits // 8))
        bits = np.unpackbits(packed, count=nbits).reshape(n, k)
        q <<= k
        for j in range(k):
            q |= bits[:, j].astype(np.int64) << (k - 1 - j)
    if n and int(q.max()) > max_value:
        raise PayloadError("Rice-coded value above its bound")
    return q
