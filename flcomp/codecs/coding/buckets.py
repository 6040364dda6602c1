"""Per-bucket scales and QSGD's stochastic levels: what `qsgd` and the pipeline's qsgd and
blockwise quantizers share.

A flat array of n entries is cut into buckets of b consecutive entries (the last one
ragged); each bucket has one float32 scale (its L2 norm, or its largest magnitude).
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader

DITHER = 2**16
"""QSGD's dither u = (k + ½)/2¹⁶ for a uniform 16-bit k: bias below 2⁻¹⁷ of a level step,
a quarter of a 64-bit draw per entry."""
_FLOAT32_MAX = np.finfo(np.float32).max


def bucket_norms(x: np.ndarray, b: int) -> np.ndarray:
    """‖bucket‖₂ of every bucket in float32; ValueError if one is past float32's range."""
    full = x.size // b * b
    main = x[:full].reshape(-1, b)
    norms = np.sqrt(np.einsum("ij,ij->i", main, main))
    if full < x.size:
        norms = np.append(norms, np.float32(np.linalg.norm(x[full:])))
    overflow = np.flatnonzero(~np.isfinite(norms))
    if len(overflow):
        # Squares of entries past ~1e19 overflow float32: redo those buckets in float64.
        for i in overflow:
            norms[i] = np.linalg.norm(x[i * b : (i + 1) * b].astype(np.float64))
        if not np.isfinite(norms).all():
            raise ValueError("a bucket's norm exceeds float32's range: it cannot be scaled")
    return norms.astype(np.float32, copy=False)


def scale_buckets(y: np.ndarray, factor: np.ndarray, b: int) -> None:
    """y[i] *= factor[bucket of i], in place."""
    full = y.size // b * b
    y[:full].reshape(-1, b)[...] *= factor[: full // b, None]
    if full < y.size:
        y[full:] *= factor[-1]


def level_scale(top: float, scales: np.ndarray) -> np.ndarray:
    """top/scale per bucket in float32: 0 for a zero bucket, float32's largest for a tiny one.

    A bucket whose scale is below ~1e-32 would overflow the factor; capped, its entries
    round toward zero (they are below float32's precision of anything else).
    """
    with np.errstate(divide="ignore", over="ignore"):
        factor = np.where(scales > 0, top / scales.astype(np.float64), 0.0)
    return np.minimum(factor, _FLOAT32_MAX).astype(np.float32)


def stochastic_levels(
    x: np.ndarray, norms: np.ndarray, s: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """QSGD's signed levels ±ξ_i, ξ_i = ⌊s·|x_i|/‖bucket‖₂ + u_i⌋ (at most s), as int8."""
    y = np.abs(x)
    scale_buckets(y, level_scale(s * DITHER, norms), b)
    y += rng.bit_generator.random_raw(-(-x.size // 4)).view(np.uint16)[: x.size]
    y += np.float32(0.5)
    y *= np.float32(1 / DITHER)
    levels = np.minimum(y, s, out=y).astype(np.int8)
    levels *= 1 - 2 * (x < 0).view(np.int8)
    return levels


def dequantize(levels: np.ndarray, step: np.ndarray, b: int) -> np.ndarray:
    """levels × step[bucket], float32: the same operations on both sides of a link."""
    out = levels.astype(np.float32)
    scale_buckets(out, step, b)
    return out


def read_scales(body: PayloadReader, n: int, b: int) -> np.ndarray:
    """The ceil(n/b) float32 bucket scales of n entries; PayloadError unless each is finite and ≥ 0."""
    nb = -(-n // b)
    scales = body.array(np.float32, nb, limit=nb)
    if not ((scales >= 0) & (scales <= _FLOAT32_MAX)).all():
        raise PayloadError("bucket scales must be finite and non-negative")
    return scales
