"""bfloat16 bit patterns: float32's top 16 bits, rounded to nearest even, and back."""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 16
"""Entries a block of rounding works on: 256 KiB of float32, within L2."""
_EXPONENT = 0x7F80
"""The exponent bits of a bfloat16 pattern: all ones is ±Inf or NaN."""
_LARGEST = 0x7F7F
"""The largest finite bfloat16 magnitude's pattern (≈ 3.39e38)."""


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 entries as bfloat16 patterns (uint16): round to nearest even; finite entries
    that would round past float32's largest finite value saturate there."""
    bits = x.view(np.uint32)
    top = np.empty(bits.size, np.uint16)
    rounded = np.empty(min(bits.size, _BLOCK), np.uint32)
    # Block by block, so that the five integer passes run in cache. Finite inputs
    # cannot carry past 32 bits.
    for start in range(0, bits.size, _BLOCK):
        block = bits[start : start + _BLOCK]
        r = rounded[: block.size]
        np.right_shift(block, 16, out=r)
        r &= 1
        r += block
        r += 0x7FFF
        r >>= 16
        np.copyto(top[start : start + _BLOCK], r, casting="unsafe")
    if not all_finite_bfloat16(top):
        # Only entries within 2⁻⁸ of float32's largest round to Inf.
        overflow = (top & _EXPONENT) == _EXPONENT
        top[overflow] = (top[overflow] & 0x8000) | _LARGEST
    return top


def widen_bfloat16(top: np.ndarray) -> np.ndarray:
    """bfloat16 patterns as float32, exactly."""
    return (top.astype(np.uint32) << 16).view(np.float32)


def all_finite_bfloat16(top: np.ndarray) -> bool:
    """Whether no pattern is ±Inf or NaN (exponent all ones)."""
    return not top.size or int((top & 0x7FFF).max()) < _EXPONENT
