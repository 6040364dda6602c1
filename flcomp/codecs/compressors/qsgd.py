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

    u8 s (the levels this payload uses), then
    per tensor: ceil(n/B) float32 norms | u8 L | zstd frame of ⌊n/g⌋ packed bytes
                and the n mod g last levels, one byte each  (coding="zstd")

Under a round's bit budget (`RoundContext.budget_bits`) the encoder halves s (s, ⌈s/2⌉,
…, 1) until the payload fits, as measured, not estimated; at s = 1 it sends whatever that
takes (the fewest bits QSGD has). Fewer levels keep it unbiased, at a variance ~(√B/s)²
larger: with error feedback off (the default) nothing is held back, the round is noisier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.coding import entropy, zstd
from flcomp.codecs.coding.buckets import bucket_norms, dequantize, read_scales, stochastic_levels
from flcomp.codecs.coding.levels import pack_levels, packed_size, unpack_levels
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
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
class QSGD(Compressor):
    """Unbiased stochastic quantization with per-bucket L2 norms."""

    name = "qsgd"
    codec_id = 4
    Config = QSGDConfig

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        norms = [bucket_norms(xi, self.config.bucket_size) for xi in x]  # the same for every s
        start = None if ctx.budget_bits is None else rng.bit_generator.state
        for s in self._levels_to_try(ctx.budget_bits):
            if start is not None:  # each try draws the same dither: the one its s would alone
                rng.bit_generator.state = start
            attempt = PayloadWriter()
            attempt.struct("B", s)
            decoded = [self._encode_tensor(xi, n, s, attempt, rng) for xi, n in zip(x, norms)]
            if attempt.fits(ctx.budget_bits):
                break
        out.extend(attempt)
        return Step(decoded)

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        (s,) = body.struct("B")
        if not 1 <= s <= self.config.levels:
            raise PayloadError(f"QSGD payload with {s} levels; this codec uses 1 to {self.config.levels}")
        return [self._decode_tensor(body, s, t.size) for t in self.spec.tensors], shared

    def _levels_to_try(self, budget_bits: float | None) -> list[int]:
        """s, then halved down to 1 when there is a budget to meet."""
        levels = [self.config.levels]
        while budget_bits is not None and levels[-1] > 1:
            levels.append(-(-levels[-1] // 2))
        return levels

    def _encode_tensor(
        self, x: np.ndarray, norms: np.ndarray, s: int, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        b = self.config.bucket_size
        levels = stochastic_levels(x, norms, s, b, rng)
        out.array(norms)
        if self.config.coding == "range":
            entropy.encode_symbols(levels.astype(np.int32) + s, 2 * s + 1, out)
        else:
            largest = int(np.abs(levels).max()) if levels.size else 0
            out.struct("B", largest)
            out.blob(zstd.compress(pack_levels(levels, largest)))
        return dequantize(levels, norms / np.float32(s), b)

    def _decode_tensor(self, body: PayloadReader, s: int, n: int) -> np.ndarray:
        b = self.config.bucket_size
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
