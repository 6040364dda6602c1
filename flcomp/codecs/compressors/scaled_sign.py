"""Scaled sign, the compressor of EF-signSGD (Karimireddy et al. 2019; Bernstein et al. 2018).

    C(x) = (‖x‖₁ / n) · sign(x)        per tensor of n entries

One bit per entry plus one float32 scale per tensor. Biased, so it is used with
error feedback by default (that is EF-signSGD).
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.coding.signs import scaled_signs
from flcomp.codecs.compressor import NoConfig, TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


@register
class ScaledSign(TensorCompressor):
    """α·sign(x), α = mean |x|; sign(0) is taken as +1."""

    name = "scaled_sign"
    codec_id = 6
    Config = NoConfig
    error_feedback = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        total = np.abs(x).sum()
        if not np.isfinite(total):  # a float32 sum of huge entries overflows; their mean does not
            total = np.abs(x).sum(dtype=np.float64)
        alpha = np.float32(total / x.size) if x.size else np.float32(0)
        negative = np.packbits(x < 0)
        out.struct("f", alpha)
        out.array(negative)
        return scaled_signs(alpha, negative, x.size)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (alpha,) = body.struct("f")
        if not alpha >= 0:
            raise PayloadError(f"scale {alpha} is not a non-negative number")
        nbytes = -(-t.size // 8)
        return scaled_signs(np.float32(alpha), body.array(np.uint8, nbytes, limit=nbytes), t.size)
