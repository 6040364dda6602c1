"""Natural compression (Horváth, Ho, Horváth, Sahu, Canini, Richtárik; arXiv 1905.10988, 2019).

Each entry is rounded at random to one of the two powers of two around it, so that the
rounding is unbiased: for 2^a ≤ |x| < 2^(a+1),

    C_nat(x) = sign(x)·2^a       with probability (2^(a+1) − |x|) / 2^a
               sign(x)·2^(a+1)   otherwise

E[C_nat(x)] = x and E[C_nat(x)²] ≤ (9/8)·x², the paper's variance bound ω = 1/8. What
remains of a float32 is its sign and its 8-bit exponent: 9 bits an entry before coding.

In float32 bits |x| = 2^a·(1 + m/2²³), m the 23-bit mantissa, so the probability of
rounding up is m/2²³ exactly: adding a uniform 23-bit integer to the magnitude's bits
carries into the exponent with exactly that probability, and the exponent that results
is the one sent. The same addition maps a subnormal m·2⁻¹⁴⁹ to 0 or to 2⁻¹²⁶ (the
smallest normal power of two) with probability m/2²³, also unbiased; zeros stay zero.
Saturation: entries of magnitude ≥ 2¹²⁷ would round up to 2¹²⁸, past float32, so they
become ±2¹²⁷, the one range where the codec is biased (|x| ≥ 1.7e38), and never ±Inf.

The exponents concentrate on a few values (an update's entries span a few binades), so
they are Zstandard-coded, ~3 bits an entry on Gaussian updates (2.9 for 10M entries;
their entropy is ~2.6, which range coding reaches at ~15× the time);
the signs are packed bits: ~4 bits an entry instead of 9, and never more than 9 + ε.

    per tensor: u32 length, then the zstd frame of the n exponent bytes, or those bytes
                themselves when the frame would not be shorter | ⌈n/8⌉ bytes of sign bits
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flcomp.codecs.coding import zstd
from flcomp.codecs.compressor import NoConfig, TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_MAGNITUDE = np.uint32(0x7FFFFFFF)
_TOP_EXPONENT = 254
"""The largest finite float32 exponent: 2¹²⁷."""


@register
class Natural(TensorCompressor):
    """Unbiased random rounding of every entry to a signed power of two (sign and exponent)."""

    name = "natural"
    codec_id = 22
    Config = NoConfig
    finite_reconstruction = True  # saturated at ±2¹²⁷

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        magnitude = x.view(np.uint32) & _MAGNITUDE
        dither = rng.bit_generator.random_raw(-(-x.size // 2)).view(np.uint32)[: x.size]
        dither >>= 9
        magnitude += dither  # carries into the exponent with probability m/2²³
        magnitude >>= 23
        exponents = magnitude.astype(np.uint8)
        np.minimum(exponents, _TOP_EXPONENT, out=exponents)
        negative = np.packbits(x < 0)
        out.blob(zstd.compress_if_shorter(exponents))
        out.array(negative)
        return lambda: _powers_of_two(exponents, negative)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        n = t.size
        exponents = zstd.decompress_if_framed(body.blob(limit=n), n)
        if n and int(exponents.max()) > _TOP_EXPONENT:
            raise PayloadError("exponent 255 (Inf or NaN) in a natural-compression payload")
        nbytes = -(-n // 8)
        return _powers_of_two(exponents, body.array(np.uint8, nbytes, limit=nbytes))


def _powers_of_two(exponents: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """±2^(e − 127) from the exponent bytes and the packed sign bits (1 = negative), 0 for e = 0."""
    bits = np.unpackbits(negative, count=exponents.size).astype(np.uint32)
    bits <<= 31
    wide = exponents.astype(np.uint32)
    wide <<= 23
    bits |= wide
    return bits.view(np.float32)
