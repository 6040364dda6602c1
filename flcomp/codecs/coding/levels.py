"""Signed integer levels packed into bytes: g base-(2L+1) digits a byte (QSGD's zstd path)."""

from __future__ import annotations

from functools import cache

import numpy as np

from flcomp.codecs.errors import PayloadError


@cache
def group_size(largest: int) -> int:
    """How many levels in [−largest, largest] one byte holds: the g with (2·largest + 1)^g ≤ 256."""
    base = 2 * largest + 1
    return max(g for g in range(1, 9) if base**g <= 256) if largest else 0


def packed_size(n: int, largest: int) -> int:
    """Bytes that `pack_levels` makes of n levels."""
    g = group_size(largest)
    return n // g + n % g if g else 0


def pack_levels(levels: np.ndarray, largest: int) -> np.ndarray:
    """Levels in [−largest, largest] as bytes: groups of g base-(2·largest+1) digits, then the tail."""
    g, base = group_size(largest), 2 * largest + 1
    if not g:
        return np.zeros(0, np.uint8)
    digits = (levels + largest).view(np.uint8)
    full = len(digits) // g * g
    groups = digits[:full].reshape(-1, g)
    packed = groups[:, 0].copy()
    for j in range(1, g):
        packed *= base
        packed += groups[:, j]
    return np.concatenate([packed, digits[full:]])


def unpack_levels(packed: np.ndarray, n: int, largest: int) -> np.ndarray:
    """Inverse of `pack_levels`; raises PayloadError on a byte that is no valid group or digit."""
    g, base = group_size(largest), 2 * largest + 1
    if not g:
        return np.zeros(n, np.int8)
    groups, tail = packed[: n // g], packed[n // g :]
    if n and (int(groups.max(initial=0)) >= base**g or int(tail.max(initial=0)) >= base):
        raise PayloadError("QSGD packed levels out of range")
    words = _digit_words(largest)
    width = words.itemsize
    grouped = words.take(groups).view(np.int8).reshape(-1, width)[:, :g].reshape(-1)
    return np.concatenate([grouped, tail.view(np.int8) - np.int8(largest)])


@cache
def _digit_words(largest: int) -> np.ndarray:
    """For each packed byte, its g levels as int8 inside one word of 1, 2, 4 or 8 bytes.

    Decoding is then one `take` per byte instead of g divisions.
    """
    g, base = group_size(largest), 2 * largest + 1
    width = next(w for w in (1, 2, 4, 8) if w >= g)
    digits = np.zeros((base**g, width), np.int8)
    digits[:, :g] = np.stack(np.unravel_index(np.arange(base**g), (base,) * g), axis=1) - largest
    return digits.view(f"<u{width}").reshape(-1)
