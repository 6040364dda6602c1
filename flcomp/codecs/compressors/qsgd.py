"""QSGD: stochastic quantization to s levels (Alistarh et al., NeurIPS 2017).

Per bucket v of B consecutive entries of a tensor:

    Q(v)_i = ‖v‖₂ · sign(v_i) · ξ_i / s,
    ξ_i = ⌊s·|v_i|/‖v‖₂ + u_i⌋,  u_i ~ U[0, 1)

so E[Q(v)] = v (unbiased) and |Q(v)_i − v_i| ≤ ‖v‖₂ / s. The dither u has 16 bits,
(b + ½)/2¹⁶ for a uniform 16-bit b, which keeps the bias below 2⁻¹⁷ of a level
step and costs a quarter of a 64-bit draw per entry. The signed levels ±ξ_i,
mostly 0 and ±1, are entropy-coded, as the paper does with Elias codes:

    coding="zstd"   g levels packed into one byte in base 2L+1 (L the largest |ξ|,
                    g the most that fit: 2 for L ≤ 7, 5 for L = 1), then Zstandard,
                    whose Huffman stage codes those bytes within ~3% of the
                    levels' entropy at ~1 GB/s.
    coding="range"  range coding against the levels' own histogram (constriction):
                    at the empirical entropy, several times slower.

    per tensor: ceil(n/B) float32 norms | u8 L | zstd frame of ⌊n/g⌋ packed bytes
                and the n mod g last levels, one byte each  (coding="zstd")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.coding import entropy, zstd
from flcomp.codecs.coding.levels import pack_levels, packed_size, unpack_levels
from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_DITHER = 2**16


@dataclass(frozen=True)
class QSGDConfig:
    levels: int = 16
    """s, the number of quantization levels above zero (1 ≤ s ≤ 127). More levels:
    less variance, more bits; s = 1 is ternary."""
    bucket_size: int = 512
    """B, entries sharing one norm. Smaller buckets: less variance, 32 more bits per
    bucket. The paper's experiments use 512."""
    coding: Literal["zstd", "range"] = "zstd"
    """How the levels are entropy-coded: "range" saves ~5% of the bits for ~7× the time."""

    def __post_init__(self) -> None:
        if not 1 <= self.levels <= 127:
            raise ValueError(f"levels must lie in [1, 127], got {self.levels}")
        if self.bucket_size < 1:
            raise ValueError(f"bucket_size must be positive, got {self.bucket_size}")


@register
class QSGD(TensorCompressor):
    """Unbiased stochastic quantization with per-bucket L2 norms."""

    name = "qsgd"
    codec_id = 4
    Config = QSGDConfig

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        s = self.config.levels
        norms = self._bucket_norms(x)
        y = np.abs(x)
        self._scale_buckets(y, _level_scale(s * _DITHER, norms))
        y += rng.bit_generator.random_raw(-(-x.size // 4)).view(np.uint16)[: x.size]
        y += np.float32(0.5)
        y *= np.float32(1 / _DITHER)
        levels = np.minimum(y, s, out=y).astype(np.int8)
        levels *= 1 - 2 * (x < 0).view(np.int8)
        out.array(norms)
        if self.config.coding == "range":
            entropy.encode_symbols(levels.astype(np.int32) + s, 2 * s + 1, out)
        else:
            largest = int(np.abs(levels).max()) if levels.size else 0
            out.struct("B", largest)
            out.blob(zstd.compress(pack_levels(levels, largest)))
        return self._reconstruct(norms, levels)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        s, n = self.config.levels, t.size
        nb = -(-n // self.config.bucket_size)
        norms = body.array(np.float32, nb, limit=nb)
        if not (np.isfinite(norms).all() and (norms >= 0).all()):
            raise PayloadError("QSGD norms must be finite and non-negative")
        if self.config.coding == "range":
            levels = (entropy.decode_symbols(body, n, 2 * s + 1) - s).astype(np.int8)
        else:
            (largest,) = body.struct("B")
            if largest > s:
                raise PayloadError(f"QSGD level {largest} beyond {s}")
            packed = zstd.decompress_exactly(body.blob(limit=n + 1024), packed_size(n, largest))
            levels = unpack_levels(packed, n, largest)
        return self._reconstruct(norms, levels)

    def _bucket_norms(self, x: np.ndarray) -> np.ndarray:
        """‖v‖₂ of every bucket in float32; ValueError if one is past float32's range."""
        b, full = self.config.bucket_size, x.size // self.config.bucket_size * self.config.bucket_size
        main = x[:full].reshape(-1, b)
        norms = np.sqrt(np.einsum("ij,ij->i", main, main))
        if full < x.size:
            norms = np.append(norms, np.float32(np.linalg.norm(x[full:])))
        overflow = np.flatnonzero(~np.isfinite(norms))
        if len(overflow):
            # Squares of entries past ~1e19 overflow float32: redo those buckets in float64.
            for i in overflow:
                norms[i] = np.linalg.norm(x[i * b : (i + 1) * b].astype(np.float64))
            if not np.isfinite(norms).all():
                raise ValueError("a bucket's norm exceeds float32's range: QSGD cannot scale it")
        return norms.astype(np.float32, copy=False)

    def _scale_buckets(self, y: np.ndarray, factor: np.ndarray) -> None:
        """y[i] *= factor[bucket of i], in place."""
        b = self.config.bucket_size
        full = y.size // b * b
        y[:full].reshape(-1, b)[...] *= factor[: full // b, None]
        y[full:] *= factor[-1] if full < y.size else np.float32(1)

    def _reconstruct(self, norms: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """‖v‖/s · ±ξ entry by entry: the same float32 operations on both sides."""
        out = levels.astype(np.float32)
        self._scale_buckets(out, norms / np.float32(self.config.levels))
        return out


def _level_scale(top: float, norms: np.ndarray) -> np.ndarray:
    """top/‖v‖ per bucket in float32: 0 for a zero bucket, float32's largest for a tiny one.

    A bucket whose norm is below ~1e-32 would overflow the factor; capped, its
    entries round toward zero (they are below float32's precision of anything else).
    """
    with np.errstate(divide="ignore", over="ignore"):
        factor = np.where(norms > 0, top / norms.astype(np.float64), 0.0)
    return np.minimum(factor, np.finfo(np.float32).max).astype(np.float32)
