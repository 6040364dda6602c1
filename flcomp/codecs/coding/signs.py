"""Sign bits on the wire: ±α from packed sign bits (scaled sign, SignXOR)."""

from __future__ import annotations

import numpy as np


def scaled_signs(alpha: np.float32, negative: np.ndarray, n: int) -> np.ndarray:
    """±α from the packed sign bits (1 = negative), by setting float32 sign bits."""
    bits = np.unpackbits(negative, count=n).astype(np.uint32)
    bits <<= 31
    bits |= alpha.view(np.uint32)
    return bits.view(np.float32)
