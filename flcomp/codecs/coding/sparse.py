"""Sparse vectors on the wire: how many entries a ratio keeps, which ones, and their values.

Shared by the sparsifying compressors (top-k, random-k, GD-SEC, LGC).
"""

from __future__ import annotations

from math import ceil, floor, log2
from typing import Literal

import numpy as np

from flcomp.codecs.coding.half import narrow_half, widen_half
from flcomp.codecs.wire import HEADER_BYTES, PayloadReader, PayloadWriter

ValueDtype = Literal["float32", "float16"]
"""Wire type of sparse values; "float16" halves their bits."""

_SAMPLE = 1 << 16
"""The most entries sampled to bound the k-th largest magnitude from below."""
_STRIDE = 16
"""The fewest entries between two samples: sampling a sixteenth keeps the quantile cheap."""
_MIN_SAMPLE = 1024
"""Below this many samples the full partition is as fast."""


def kept_count(ratio: float, n: int) -> int:
    """k for a tensor of n entries (at least one entry of a non-empty tensor)."""
    return min(n, max(1, ceil(ratio * n))) if n else 0


def budgeted_counts(
    sizes: list[int], counts: list[int], budget_bits: float | None, value_bits: int, group_bits: int
) -> list[int]:
    """The entries to keep of each group (tensor) within a payload of `budget_bits`: `counts`
    (the config's) when they fit, else the largest common fraction f of every group's entries
    (at most its count) whose bits fit. A kept entry costs `value_bits` plus its position at the
    Rice bound, 3 + log2(n/k) bits; each group `group_bits` (its count, mode byte, padding);
    the payload's header `wire.HEADER_BYTES`. None: no budget. Below what the header and the
    groups take, nothing is kept (and the payload is that long)."""
    if budget_bits is None:
        return counts
    body = budget_bits - 8 * HEADER_BYTES - group_bits * len(sizes)

    def cost(kept: list[int]) -> float:
        return sum(k * (value_bits + 3 + log2(n / k)) for k, n in zip(kept, sizes) if k)

    def at(f: float) -> list[int]:
        return [min(k, floor(f * n)) for k, n in zip(counts, sizes)]

    if cost(counts) <= body:
        return counts
    low, high = 0.0, 1.0  # cost(at(f)) grows with f: bisect for the largest f that fits
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if cost(at(mid)) <= body else (low, mid)
    return at(low)


def write_values(values: np.ndarray, dtype: ValueDtype, out: PayloadWriter) -> np.ndarray:
    """Write sparse values in the wire dtype; return them as the decoder will read them."""
    if dtype == "float16":
        wire = narrow_half(values)
        out.array(wire)
        return widen_half(wire)
    out.array(values)
    return values


def read_values(body: PayloadReader, dtype: ValueDtype, k: int) -> np.ndarray:
    """Read k sparse values written by `write_values`, as float32 (PayloadError on a float16 Inf or NaN)."""
    values = body.array(dtype, k, limit=k)
    return widen_half(values, checked=True) if dtype == "float16" else values.astype(np.float32)


def scatter(n: int, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A dense float32 vector of n entries, zero but at `positions`."""
    dense = np.zeros(n, np.float32)
    dense[positions] = values
    return dense


def top_k_positions(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the k largest entries (ties broken by position).

    On large tensors a strided sample bounds the k-th largest value from below, so
    only a few candidates are partitioned: O(n) with a small constant, exact.
    """
    n = len(magnitude)
    if k >= n:
        return np.arange(n)
    candidates = None
    if n >= _MIN_SAMPLE * _STRIDE and k < n // 16:
        sample = magnitude[:: max(_STRIDE, n // _SAMPLE)]
        q = max(0.0, 1.0 - 2.0 * k / n)
        floor = np.quantile(sample, q, method="lower")
        above = np.flatnonzero(magnitude >= floor)
        if len(above) >= k:
            candidates = above
    values = magnitude if candidates is None else magnitude[candidates]
    kth = np.partition(values, len(values) - k)[len(values) - k]
    keep = np.flatnonzero(values >= kth)
    if len(keep) > k:
        # Ties at the k-th value: the first ones by position.
        chosen = values[keep] > kth
        chosen[np.flatnonzero(~chosen)[: k - int(chosen.sum())]] = True
        keep = keep[chosen]
    return keep if candidates is None else candidates[keep]
