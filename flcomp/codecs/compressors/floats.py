"""Floating-point casts: fp32 (the identity), fp16 and bf16. Stateless, per tensor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flcomp.codecs.coding.half import all_finite_half, widen_half
from flcomp.codecs.compressor import NoConfig, TensorCompressor
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_FP16_MAX = float(np.finfo(np.float16).max)
_BLOCK = 1 << 16
"""Entries a block of bfloat16 rounding works on: 256 KiB of float32, within L2."""


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
    finite_reconstruction = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        # Cast first: entries past ±65504 (rare) round to ±Inf, which a test of the
        # 16-bit patterns finds for less than a clip of every update costs.
        with np.errstate(over="ignore"):
            half = x.astype(np.float16)
        if not all_finite_half(half):
            half = np.clip(x, -_FP16_MAX, _FP16_MAX).astype(np.float16)
        out.array(half)
        return lambda: widen_half(half)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return widen_half(body.array(np.float16, t.size, limit=t.size), checked=True)


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
    finite_reconstruction = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        top = _round_to_bf16(x.view(np.uint32))
        # Only entries within 2⁻⁸ of float32's largest round to Inf (exponent all ones).
        if top.size and int((top & 0x7FFF).max()) >= 0x7F80:
            overflow = (top & 0x7F80) == 0x7F80
            top[overflow] = (top[overflow] & 0x8000) | 0x7F7F
        out.array(top)
        return lambda: _widen(top)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return _widen(body.array(np.uint16, t.size, limit=t.size))


def _round_to_bf16(bits: np.ndarray) -> np.ndarray:
    """The top 16 bits of float32 bit patterns, rounded to nearest even on the 16 dropped.

    Finite inputs cannot carry past 32 bits. Block by block, so that the five integer
    passes run in cache: twice as fast as whole-array passes on a large tensor.
    """
    top = np.empty(bits.size, np.uint16)
    rounded = np.empty(min(bits.size, _BLOCK), np.uint32)
    for start in range(0, bits.size, _BLOCK):
        block = bits[start : start + _BLOCK]
        r = rounded[: block.size]
        np.right_shift(block, 16, out=r)
        r &= 1
        r += block
        r += 0x7FFF
        r >>= 16
        np.copyto(top[start : start + _BLOCK], r, casting="unsafe")
    return top


def _widen(top: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns to float32."""
    return (top.astype(np.uint32) << 16).view(np.float32)
