"""float16 to float32, exactly and several times faster than NumPy's cast."""

from __future__ import annotations

import numpy as np

from flcomp.codecs.errors import PayloadError

_F16_SCALE = np.float32(2.0**112)
"""float16 bits moved to float32's place scale the value by 2⁻¹¹², subnormals included."""
_F16_MAGNITUDE = np.uint16(0x7FFF)
_F16_EXPONENT = 0x7C00
"""float16 patterns at or above this magnitude are ±Inf or NaN."""
_F16_CLEAR = np.int32(-0x70000001)
"""0x8FFFFFFF: clears the three copies of the sign that sign extension left above the exponent."""


def widen_half(half: np.ndarray, checked: bool = False) -> np.ndarray:
    """float16 entries as float32, exactly; with `checked`, PayloadError on ±Inf or NaN.

    NumPy's own cast runs one entry at a time (~1 ns an entry); this is four whole-array
    integer and float passes: sign-extend the 16 bits, shift exponent and mantissa into
    float32's place, and scale by 2¹¹², which is exact for normals and subnormals alike.
    Inf and NaN (exponent 31) would come out as finite values of magnitude ≥ 2¹⁶:
    `checked` refuses them instead.
    """
    w = half.view(np.int16).astype(np.int32)
    w <<= 13
    w &= _F16_CLEAR
    f = w.view(np.float32)
    f *= _F16_SCALE
    if checked and not all_finite_half(half):
        raise PayloadError("float16 Inf or NaN in the payload")
    return f


def all_finite_half(half: np.ndarray) -> bool:
    """Whether no float16 entry is ±Inf or NaN (exponent 31): one mask and one maximum
    over the 16-bit patterns, half the bytes of a float32 test."""
    return not half.size or int((half.view(np.uint16) & _F16_MAGNITUDE).max()) < _F16_EXPONENT
