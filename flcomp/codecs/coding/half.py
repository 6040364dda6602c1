"""float32 to float16 and back, bit for bit NumPy's casts and several times faster.

NumPy casts between the two one entry at a time (~2.5 ns an entry each way). Here each
direction is a handful of whole-array integer passes, block by block so that they run in
cache; the same layout as `flcomp.codecs.coding.bfloat16`.
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.errors import PayloadError

_BLOCK = 1 << 16
"""Entries a block works on: 256 KiB of float32, within L2."""
_SHORT = 1 << 13
"""Below this many entries NumPy's casts win: the passes' ~1 µs a call outweighs ~2.5 ns an entry."""
_FP16_MAX = float(np.finfo(np.float16).max)
_MIN_NORMAL = np.full(_BLOCK, 113 << 23, np.uint32)
"""float32 patterns of 2⁻¹⁴, float16's smallest normal. Full arrays rather than scalars:
NumPy's minimum and maximum are vectorised only between arrays."""
_HALF = np.full(_BLOCK, 0.5, np.float32)
_ROUND = (0xFFF - (112 << 23)) % 2**32
"""Round half up below bit 13 and move the exponent's bias from 127 to 15 in one addition."""
_SUBNORMAL_OFFSET = 0x3F000000 + 0x400
"""The pattern of 0.5, which the subnormal pass added, and that of 2⁻¹⁴, which both passes
give the entries the other pass handles."""
_F16_SCALE = np.float32(2.0**112)
"""float16 bits moved to float32's place scale the value by 2⁻¹¹², subnormals included."""
_F16_EXPONENT = 0x7C00
"""float16 patterns at or above this magnitude are ±Inf or NaN."""
_F16_CLEAR = np.int32(-0x70000001)
"""0x8FFFFFFF: clears the three copies of the sign that sign extension left above the exponent."""


def narrow_half(x: np.ndarray) -> np.ndarray:
    """Flat float32 entries as float16, rounded to nearest even; finite entries past ±65504
    saturate there. The same bits as `np.clip(x, -65504, 65504).astype(np.float16)`.

    Two passes per block, each right for one range and giving 2⁻¹⁴'s pattern (0x400) on the
    other's, summed: normals round at bit 13 of their float32 pattern (add 0xFFF plus the
    kept bit's parity, rebias the exponent, shift); subnormals and zero are |x| + 0.5 in
    float32, whose rounding at 2⁻²⁴ (0.5's last place) is float16's subnormal step. A block
    with an entry past the largest finite float16 (or a NaN) takes NumPy's clip and cast.
    """
    if x.size < _SHORT:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.clip(x, -_FP16_MAX, _FP16_MAX).astype(np.float16)
    bits = x.view(np.uint32)
    half = np.empty(bits.size, np.uint16)
    n = min(bits.size, _BLOCK)
    normal, other, tiny = np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.float32)
    for start in range(0, bits.size, _BLOCK):
        block = bits[start : start + _BLOCK]
        k = block.size
        m, o, t, out = normal[:k], other[:k], tiny[:k], half[start : start + k]
        np.bitwise_and(block, 0x7FFFFFFF, out=m)
        np.minimum(m, _MIN_NORMAL[:k], out=t.view(np.uint32))
        t += _HALF[:k]
        np.maximum(m, _MIN_NORMAL[:k], out=m)
        np.right_shift(m, 13, out=o)
        o &= 1
        m += o
        m += _ROUND
        m >>= 13
        m += t.view(np.uint32)
        m -= _SUBNORMAL_OFFSET
        if int(m.max()) >= _F16_EXPONENT:
            with np.errstate(over="ignore", invalid="ignore"):
                wide = np.clip(x[start : start + k], -_FP16_MAX, _FP16_MAX)
            np.copyto(out, wide.astype(np.float16).view(np.uint16))
            continue
        np.right_shift(block, 16, out=o)
        o &= 0x8000
        m |= o
        np.copyto(out, m, casting="unsafe")
    return half.view(np.float16)


def widen_half(half: np.ndarray, checked: bool = False) -> np.ndarray:
    """Flat float16 entries as float32, exactly; with `checked`, PayloadError on ±Inf or NaN.

    Per block: sign-extend the 16 bits, shift exponent and mantissa into float32's place,
    and scale by 2¹¹², which is exact for normals and subnormals alike. Inf and NaN
    (exponent 31) would come out as finite values of magnitude ≥ 2¹⁶: `checked` refuses
    them instead.
    """
    if half.size < _SHORT:
        if checked and not all_finite_half(half):
            raise PayloadError("float16 Inf or NaN in the payload")
        return half.view(np.float16).astype(np.float32)
    source = half.view(np.int16)
    wide = np.empty(source.size, np.int32)
    magnitude = np.empty(min(source.size, _BLOCK), np.int16) if checked else None
    for start in range(0, source.size, _BLOCK):
        block = source[start : start + _BLOCK]
        if magnitude is not None:
            m = magnitude[: block.size]
            np.bitwise_and(block, 0x7FFF, out=m)
            if int(m.max()) >= _F16_EXPONENT:
                raise PayloadError("float16 Inf or NaN in the payload")
        w = wide[start : start + _BLOCK]
        np.copyto(w, block)
        w <<= 13
        w &= _F16_CLEAR
        f = w.view(np.float32)
        f *= _F16_SCALE
    return wide.view(np.float32)


def all_finite_half(half: np.ndarray) -> bool:
    """Whether no float16 entry is ±Inf or NaN (exponent 31)."""
    return not half.size or int((half.view(np.uint16) & 0x7FFF).max()) < _F16_EXPONENT
