"""Top-k sparsification (Aji & Heafield 2017; Stich et al. 2018 with memory).

Per tensor of n entries, keep the k = ceil(ratio·n) entries of largest magnitude:

    C(x)_i = x_i if |x_i| is among the k largest, else 0

Positions are coded as the shorter of a bitmap and Rice-coded gaps
(`flcomp.codecs.positions`), values as float32 or float16. Biased, so error
feedback is on by default.

    u32 k | positions | k values
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil
from typing import Literal

import numpy as np

from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.positions import decode_positions, encode_positions
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

ValueDtype = Literal["float32", "float16"]

_SAMPLE = 1 << 16


@dataclass(frozen=True)
class TopKConfig:
    ratio: float = 0.01
    """Fraction of each tensor's entries sent, in (0, 1]. Lower it for bigger models
    (DGC uses 0.001); raise it when convergence suffers without error feedback."""
    value_dtype: ValueDtype = "float32"
    """Wire type of the kept values; "float16" halves their bits."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")


def kept_count(ratio: float, n: int) -> int:
    """k for a tensor of n entries (at least one entry of a non-empty tensor)."""
    return min(n, max(1, ceil(ratio * n))) if n else 0


def write_values(values: np.ndarray, dtype: ValueDtype, out: PayloadWriter) -> np.ndarray:
    """Write sparse values in the wire dtype; return them as the decoder will read them."""
    if dtype == "float16":
        fmax = float(np.finfo(np.float16).max)
        wire = np.clip(values, -fmax, fmax).astype(np.float16)
        out.array(wire)
        return wire.astype(np.float32)
    out.array(values)
    return values


def read_values(body: PayloadReader, dtype: ValueDtype, k: int) -> np.ndarray:
    """Read k sparse values written by `write_values`, as float32."""
    return body.array(dtype, k, limit=k).astype(np.float32)


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
    candidates = np.arange(n)
    if n > 4 * _SAMPLE and k < n // 16:
        sample = magnitude[:: n // _SAMPLE]
        q = max(0.0, 1.0 - 2.0 * k / n)
        floor = np.quantile(sample, q, method="lower")
        above = np.flatnonzero(magnitude >= floor)
        if len(above) >= k:
            candidates = above
    values = magnitude[candidates]
    kth = np.partition(values, len(values) - k)[len(values) - k]
    keep = values > kth
    ties = np.flatnonzero(values == kth)[: k - int(keep.sum())]
    keep[ties] = True
    return candidates[keep]


@register
class TopK(TensorCompressor):
    """The k largest-magnitude entries of each tensor."""

    name = "topk"
    codec_id = 5
    Config = TopKConfig
    error_feedback = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        k = kept_count(self.config.ratio, t.size)
        positions = top_k_positions(np.abs(x), k) if k else np.zeros(0, np.int64)
        out.struct("I", k)
        encode_positions(positions, t.size, out)
        values = write_values(x[positions], self.config.value_dtype, out)
        return scatter(t.size, positions, values)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (k,) = body.struct("I")
        if k != kept_count(self.config.ratio, t.size):
            raise PayloadError(f"{k} kept entries, the config keeps {kept_count(self.config.ratio, t.size)}")
        positions = decode_positions(body, k, t.size)
        return scatter(t.size, positions, read_values(body, self.config.value_dtype, k))
