"""DRIVE: one-bit distributed mean estimation (Vargaftik et al., NeurIPS 2021).

Rotate, then send the sign of every rotated coordinate and one scale:

    y = R(x),   payload: sign(y), S,   x̂ = R⁻¹(S · sign(y))

with R the randomized Hadamard rotation of `flcomp.codecs.coding.hadamard` (drawn
from a 32-bit seed in the payload), which rotates a tensor in blocks of B entries
(B ≤ 4096, chosen from the tensor's size). The paper's vector is one block: each
block j, x_j and its rotation y_j, gets its own scale,

    unbiased=True:   S_j = ‖x_j‖₂² / ‖y_j‖₁       (E[x̂] = x, the paper's unbiased DRIVE)
    unbiased=False:  S_j = ‖y_j‖₁ / B             (the least-squares scale, biased)

(one scale for the whole tensor would be biased: it would pull the blocks' norms
towards each other). The biased scale's normalized error ‖x̂ − x‖²/‖x‖² is
1 − ‖y‖₁²/(B‖y‖²) ≈ 1 − 2/π once y is near-Gaussian; the unbiased one's is
B‖y‖²/‖y‖₁² − 1 ≈ π/2 − 1 for each client, and it averages down as 1/K over K
clients, which is why the paper uses it for distributed mean estimation (the
default). sign(0) is +1.

    per tensor: u32 seed | m f32 scales | ⌈B·m/8⌉ bytes of sign bits (1 = negative),
                in the rotation's order (B × m, row-major)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.hadamard import (
    block_size,
    blocks,
    column_dot,
    max_scale,
    rotate,
    sign_masks,
    unrotate,
)
from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


@dataclass(frozen=True)
class DriveConfig:
    unbiased: bool = True
    """S = ‖x‖²/‖R(x)‖₁, unbiased (default: the paper's choice for averaging many
    clients). False takes the least-squares S = ‖R(x)‖₁/B, with about 0.64× the
    error of one client but a bias that does not average out; use it with error feedback."""


@register
class Drive(TensorCompressor):
    """Signs of the randomly rotated update and one scale per rotation block: ~1 bit per entry."""

    name = "drive"
    codec_id = 23
    Config = DriveConfig
    finite_reconstruction = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        seed, size = int(rng.integers(2**32)), block_size(t.size, 1)
        y = rotate(x, seed, size)
        negative = np.packbits(y < 0)
        y = y.reshape(size, -1)
        squares = column_dot(y, y) if self.config.unbiased else None
        l1 = np.abs(y, out=y).sum(axis=0, dtype=np.float64)  # y is ours and no longer needed
        with np.errstate(divide="ignore", invalid="ignore"):
            scales = np.where(l1 > 0, squares / l1, 0.0) if self.config.unbiased else l1 / size
        # A rotated entry past float32's range is inf or NaN, and so is its block's l1.
        if not (np.isfinite(l1).all() and np.all((scales >= 0) & (scales <= max_scale(size, 1.0)))):
            raise ValueError("DRIVE cannot represent this update in float32; scale it down")
        s = scales.astype(np.float32)
        out.struct("I", seed)
        out.array(s)
        out.array(negative)
        return lambda: _reconstruct(s, negative, t.size, seed, size)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (seed,) = body.struct("I")
        size = block_size(t.size, 1)
        m = blocks(t.size, size)
        s = body.array(np.float32, m, limit=m)
        if not np.all((s >= 0) & (s <= max_scale(size, 1.0))):
            raise PayloadError(f"DRIVE scales must lie in [0, {max_scale(size, 1.0):.3g}]")
        nbytes = -(-size * m // 8)
        negative = body.array(np.uint8, nbytes, limit=nbytes)
        return _reconstruct(s, negative, t.size, seed, size)


def _reconstruct(s: np.ndarray, negative: np.ndarray, n: int, seed: int, size: int) -> np.ndarray:
    """R⁻¹(S_j · sign(y)) block by block: the same float32 operations on both sides."""
    signed = sign_masks(negative, size * len(s))  # ±S: the sign bits OR'd onto S's bits
    signed.reshape(size, -1)[...] |= s.view(np.uint32)
    return unrotate(signed.view(np.float32), n, seed, size)
