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
from flcomp.codecs.coding.buckets import bucket_norms, dequantize, read_scales, stochastic_levels
from flcomp.codecs.coding.levels import pack_levels, packed_size, unpack_levels
from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


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
        s, b = self.config.levels, self.config.bucket_size
        norms = bucket_norms(x, b)
        levels = stochastic_levels(x, norms, s, b, rng)
        out.array(norms)
        if self.config.coding == "range":
            entropy.encode_symbols(levels.astype(np.int32) + s, 2 * s + 1, out)
        else:
            largest = int(np.abs(levels).max()) if levels.size else 0
            out.struct("B", largest)
            out.blob(zstd.compress(pack_levels(levels, largest)))
        return dequantize(levels, norms / np.float32(s), b)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        s, n, b = self.config.levels, t.size, self.config.bucket_size
        norms = read_scales(body, n, b)
        if self.config.coding == "range":
            levels = (entropy.decode_symbols(body, n, 2 * s + 1) - s).astype(np.int8)
        else:
            (largest,) = body.struct("B")
            if largest > s:
                raise PayloadError(f"QSGD level {largest} beyond {s}")
            packed = zstd.decompress_exactly(body.blob(limit=n + 1024), packed_size(n, largest))
            levels = unpack_levels(packed, n, largest)
        return dequantize(levels, norms / np.float32(s), b)
