"""Floating-point casts: fp32 (the identity), fp16 and bf16. Stateless, per tensor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flcomp.codecs.coding.bfloat16 import to_bfloat16, widen_bfloat16
from flcomp.codecs.coding.half import narrow_half, widen_half
from flcomp.codecs.compressor import NoConfig, TensorCompressor
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


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
        half = narrow_half(x)
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
        top = to_bfloat16(x)
        out.array(top)
        return lambda: widen_bfloat16(top)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        return widen_bfloat16(body.array(np.uint16, t.size, limit=t.size))
