"""TernGrad: ternary gradients (Wen, Xu, Yan, Wu, Wang, Chen, Li; NeurIPS 2017).

Per tensor (the paper's layer-wise scaling) of n entries:

    s = max_i |x_i|,   b_i ~ Bernoulli(|x_i| / s),   C(x)_i = s · sign(x_i) · b_i

so E[C(x)] = x (unbiased) and each entry is one of {−s, 0, +s}. The Bernoulli draws
compare 16-bit uniform integers u_i against 2¹⁶·|x_i|/s − ½, which makes
P(b_i = 1) = |x_i|/s up to 2⁻¹⁷ (as QSGD's dither).

Gradient clipping (the paper's §3.3, used in all its experiments): with clip = c > 0,
entries are first clipped to [−c·σ, c·σ], c = 2.5 recommended, and s is the largest
clipped magnitude. The clip trades a bias at the few outliers for a smaller s, hence
fewer zeros lost and less variance everywhere else; the codec is unbiased only without
it (clip = 0) or where no entry exceeds c·σ. σ is taken about zero (the root mean
square), as the clip is: for zero-mean gradients that is the paper's standard
deviation, and it never clips a constant tensor, such as a one-entry one, to zero.

The signed levels b_i·sign(x_i) ∈ {−1, 0, 1} are packed five to a byte in base 3
(`flcomp.codecs.coding.levels`, as QSGD's s = 1) and Zstandard-coded, whose Huffman stage
takes them to within ~1% of their entropy h(q) + q bits an entry at a nonzero density
q ≈ 0.3 (1.23 bits an entry on clipped Gaussians, h the binary entropy), ~8% above it
at q ≈ 0.15 (unclipped Gaussians) and never more than 1.6 + ε; a tensor whose frame
would not be shorter travels packed. (Range-coding the nonzeros' bitmap and sending
their signs raw costs the same bits to ~1% at q ≈ 0.3, at three times the time.)

    per tensor: f32 s | u32 length, then the zstd frame of the ⌊n/5⌋ + n mod 5 packed
                bytes, or those bytes themselves when the frame would not be shorter
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding import zstd
from flcomp.codecs.coding.levels import pack_levels, packed_size, unpack_levels
from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_DITHER = 2**16
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class TernGradConfig:
    clip: float = 2.5
    """c of the gradient clipping at c·σ (σ the tensor's root mean square); 0 turns it off.
    The paper recommends 2.5 and uses it throughout. Clipping makes the codec biased at the
    clipped entries: set 0 where unbiasedness matters more than variance (a theory check)."""

    def __post_init__(self) -> None:
        if not 0 <= self.clip < float("inf"):
            raise ValueError(f"clip must be 0 (off) or a positive number, got {self.clip}")


@register
class TernGrad(TensorCompressor):
    """Stochastic ternarization to {−s, 0, +s}, s the tensor's largest (clipped) magnitude."""

    name = "terngrad"
    codec_id = 21
    Config = TernGradConfig
    finite_reconstruction = True  # ±s with s a finite magnitude

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        magnitude = np.abs(x)
        s = np.float32(magnitude.max(initial=0))
        if self.config.clip and s > 0:
            bound = np.float32(min(float(s), self.config.clip * _rms(x)))
            if bound < s:
                np.minimum(magnitude, bound, out=magnitude)
                s = bound
        if s > 0:
            # A division, not a product with 2¹⁶/s: that factor overflows for a subnormal s.
            magnitude /= s
            magnitude *= np.float32(_DITHER)
            magnitude -= np.float32(0.5)
            u = rng.bit_generator.random_raw(-(-x.size // 4)).view(np.uint16)[: x.size]
            levels = np.less(u, magnitude).view(np.int8)
            levels *= 1 - 2 * (x < 0).view(np.int8)
        else:
            levels = np.zeros(x.size, np.int8)
        out.struct("f", s)
        packed = pack_levels(levels, 1)
        out.blob(zstd.compress_if_shorter(packed))
        return lambda: _ternary(s, levels)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (s,) = body.struct("f")
        if not 0 <= s <= _FLOAT32_MAX:
            raise PayloadError(f"TernGrad scale {s} is not a finite non-negative number")
        n = packed_size(t.size, 1)
        packed = zstd.decompress_if_framed(body.blob(limit=n), n)
        return _ternary(np.float32(s), unpack_levels(packed, t.size, 1))


def _rms(x: np.ndarray) -> float:
    """√(Σx²/n); in float64 when the float32 sum of squares overflows (entries past ~1e19)."""
    square = float(np.dot(x, x))
    if not np.isfinite(square):
        square = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    return (square / x.size) ** 0.5


def _ternary(s: np.float32, levels: np.ndarray) -> np.ndarray:
    """s·sign·b from the levels sign·b ∈ {−1, 0, 1}."""
    out = levels.astype(np.float32)
    out *= s
    return out
