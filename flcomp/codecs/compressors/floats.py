"""Floating-point casts: fp32 (the identity), fp16 and bf16. Stateless, per tensor."""

from __future__ import annotations

import numpy as np

from flcomp.codecs.compressor import NoConfig, TensorCompressor
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_FP16_MAX = float(np.finfo(np.float16).max)


@register
class Float32(TensorCompressor):
    """The identity: float32 entries as they are (32 bits/entry). Lossless."""

    name = "fp32"
    codec_id = 1
    Config = NoConfig
    lossless = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        out.array(x)
        return x

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return body.array(np.float32, t.size, limit=t.size).copy()


@register
class Float16(TensorCompressor):
    """IEEE half precision (16 bits/entry).

    Relative error ≤ 2⁻¹¹ in fp16's normal range, absolute error ≤ 2⁻²⁵ below it;
    entries beyond ±65504 saturate there rather than become infinite.
    """

    name = "fp16"
    codec_id = 2
    Config = NoConfig

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        half = np.clip(x, -_FP16_MAX, _FP16_MAX).astype(np.float16)
        out.array(half)
        return half.astype(np.float32)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return body.array(np.float16, t.size, limit=t.size).astype(np.float32)


@register
class BFloat16(TensorCompressor):
    """bfloat16: float32's exponent, 8 bits of mantissa (16 bits/entry).

    Round to nearest even; relative error ≤ 2⁻⁸ for normal float32 entries, absolute
    error ≤ 2⁻¹³⁴ for subnormal ones. Entries that would round past float32's
    largest finite value saturate there.
    """

    name = "bf16"
    codec_id = 3
    Config = NoConfig

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        bits = x.view(np.uint32)
        # Round to nearest even on the 16 bits dropped; finite inputs cannot carry past 32 bits.
        rounded = (bits >> 16) & 1
        rounded += bits
        rounded += 0x7FFF
        top = (rounded >> 16).astype(np.uint16)
        overflow = (top & 0x7F80) == 0x7F80
        top[overflow] = (top[overflow] & 0x8000) | 0x7F7F
        out.array(top)
        return _widen(top)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return _widen(body.array(np.uint16, t.size, limit=t.size))


def _widen(top: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns to float32."""
    return (top.astype(np.uint32) << 16).view(np.float32)
