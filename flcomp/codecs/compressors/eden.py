"""EDEN: robust distributed mean estimation (Vargaftik et al., ICML 2022).

Rotate, normalise the rotated coordinates to ≈ N(0, 1), quantize each with the
b-bit Lloyd–Max quantizer of the standard normal, send the indices and one scale:

    y = R(x),   z = y · √n' / ‖y‖₂,   q = Q_b(z) (a centroid),   x̂ = R⁻¹(S · q)

with R the randomized Hadamard rotation of `flcomp.codecs.coding.hadamard` (drawn
from a 32-bit seed in the payload), which rotates a tensor in blocks of B entries
(B ≤ 4096, chosen from the tensor's size and b). The paper's vector is one block:
each block j, x_j, its rotation y_j and its centroids q_j, is normalised (n' = B)
and scaled on its own,

    unbiased=True:   S_j = ‖x_j‖₂² / ⟨y_j, q_j⟩     (E[x̂] = x, the paper's unbiased EDEN)
    unbiased=False:  S_j = ⟨y_j, q_j⟩ / ‖q_j‖₂²     (the least-squares scale, biased)

With D_b the Lloyd–Max distortion E[(Z − Q_b(Z))²] of N(0, 1), the normalized error
‖x̂ − x‖²/‖x‖² is ≈ D_b for the biased scale and ≈ D_b / (1 − D_b) for the unbiased
one: 0.571, 0.133, 0.0358, 0.00959 at b = 1, 2, 3, 4 (b = 1 is DRIVE). The centroids
are tabulated below (tests/codecs/test_rotation.py recomputes them).

    per tensor: u32 seed | m f32 scales | ⌈B·m/8⌉·b bytes: the indices in the
                rotation's order (B × m, row-major), 8 to b bytes (index k of a
                group at bits b·k.., little-endian)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.hadamard import block_size, blocks, column_dot, max_scale, rotate, unrotate
from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

LLOYD_MAX = {
    1: (0.7978845608,),
    2: (0.4527800346, 1.5104176085),
    3: (0.2450941789, 0.7560052812, 1.3439092785, 2.1519457045),
    4: (
        0.1283950299,
        0.3880482995,
        0.6567591185,
        0.9423404565,
        1.2562311973,
        1.6180463860,
        2.0690172265,
        2.7325895710,
    ),
}
"""The positive half of the b-bit Lloyd–Max centroids of N(0, 1), ascending; the
quantizer is symmetric and its thresholds are the midpoints between centroids."""


def centroids(bits: int) -> np.ndarray:
    """All 2^b centroids, ascending, in float64."""
    half = np.array(LLOYD_MAX[bits])
    return np.concatenate([-half[::-1], half])


@dataclass(frozen=True)
class EdenConfig:
    bits: int = 2
    """b, bits per rotated entry, 1 to 4. 2 (default) is the paper's middle setting:
    error 0.133 of ‖x‖², against 0.571 at 1 bit (DRIVE) and 0.0096 at 4; each bit
    costs one more bit per entry."""
    unbiased: bool = True
    """S = ‖x‖²/⟨R(x), q⟩, unbiased (default: the paper's estimator for averaging many
    clients). False takes the least-squares S = ⟨R(x), q⟩/‖q‖², error D_b instead of
    D_b/(1 − D_b) for one client, but biased; use it with error feedback."""

    def __post_init__(self) -> None:
        if self.bits not in LLOYD_MAX:
            raise ValueError(f"bits must be one of {sorted(LLOYD_MAX)}, got {self.bits}")


@register
class Eden(TensorCompressor):
    """b-bit Lloyd–Max indices of the randomly rotated, normalised update and one scale per tensor."""

    name = "eden"
    codec_id = 24
    Config = EdenConfig
    finite_reconstruction = True

    def __init__(self, spec, config: EdenConfig) -> None:
        super().__init__(spec, config)
        c = centroids(config.bits)
        self._centroids = c
        self._thresholds = (c[1:] + c[:-1]) / 2

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        seed, size = int(rng.integers(2**32)), block_size(t.size, self.config.bits)
        y = rotate(x, seed, size).reshape(size, -1)
        squares = column_dot(y, y)
        # Q_b(z) for z = y/σ_j, σ_j = ‖y_j‖/√B: compare y with the thresholds scaled by σ_j.
        sigma = np.sqrt(squares / size).astype(np.float32)
        index = np.zeros(y.shape, np.uint8)
        for threshold in self._thresholds:
            index += y > np.float32(threshold) * sigma
        packed = _pack(index.reshape(-1), self.config.bits)
        q = self._lookup(packed, self._centroids.astype(np.float32), y.size).reshape(size, -1)
        yq = column_dot(y, q)
        with np.errstate(divide="ignore", invalid="ignore"):
            scales = np.where(yq > 0, squares / yq if self.config.unbiased else yq / column_dot(q, q), 0.0)
        # A rotated entry past float32's range is inf or NaN, and so is its block's ‖y_j‖².
        if not (np.isfinite(squares).all() and np.all((scales >= 0) & (scales <= self._max_scale(size)))):
            raise ValueError("EDEN cannot represent this update in float32; scale it down")
        s = scales.astype(np.float32)
        out.struct("I", seed)
        out.array(s)
        out.array(packed)
        return lambda: self._reconstruct(s, packed, t.size, seed, size)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (seed,) = body.struct("I")
        size = block_size(t.size, self.config.bits)
        m = blocks(t.size, size)
        s = body.array(np.float32, m, limit=m)
        if not np.all((s >= 0) & (s <= self._max_scale(size))):
            raise PayloadError(f"EDEN scales must lie in [0, {self._max_scale(size):.3g}]")
        nbytes = -(-size * m // 8) * self.config.bits
        packed = body.array(np.uint8, nbytes, limit=nbytes)
        return self._reconstruct(s, packed, t.size, seed, size)

    def _max_scale(self, size: int) -> float:
        return max_scale(size, self._centroids[-1])

    def _reconstruct(self, s: np.ndarray, packed: np.ndarray, n: int, seed: int, size: int) -> np.ndarray:
        """R⁻¹(S_j · q) block by block: the same float32 operations on both sides."""
        q = self._lookup(packed, self._centroids.astype(np.float32), size * len(s))
        q.reshape(size, -1)[...] *= s
        return unrotate(q, n, seed, size)

    def _lookup(self, packed: np.ndarray, levels: np.ndarray, n: int) -> np.ndarray:
        """levels[index] for the n packed indices, a new array. Where a byte holds whole
        indices (b = 1, 2, 4), one gather per byte from the table of each byte's values;
        b = 3 unpacks the indices first."""
        b = self.config.bits
        if 8 % b:
            return levels.take(_unpack(packed, n, b))
        per_byte = 8 // b
        codes = (np.arange(256)[:, None] >> (b * np.arange(per_byte))) & ((1 << b) - 1)
        return levels[codes].take(packed, axis=0).reshape(-1)[:n]


def _pack(index: np.ndarray, bits: int) -> np.ndarray:
    """b-bit indices, 8 to a group of b bytes (index k of a group at bits b·k.., the last
    group zero-filled)."""
    groups = -(-index.size // 8)
    padded = np.zeros(groups * 8, np.uint8)
    padded[: index.size] = index
    if 8 % bits == 0:  # whole indices a byte: shift them together in uint8
        columns = padded.reshape(-1, 8 // bits)
        packed = columns[:, 0].copy()
        for k in range(1, 8 // bits):
            packed |= columns[:, k] << np.uint8(bits * k)
        return packed
    columns = padded.reshape(groups, 8)
    words = columns[:, 0].astype(np.uint32)
    for k in range(1, 8):
        words |= columns[:, k].astype(np.uint32) << np.uint32(bits * k)
    return np.ascontiguousarray(words.view(np.uint8).reshape(groups, 4)[:, :bits])


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    """The first n indices of `_pack` with b = 3 (8 to a 24-bit group); every bit pattern is valid."""
    groups = packed.size // bits
    words = np.zeros((groups, 4), np.uint8)
    words[:, :bits] = packed.reshape(groups, bits)
    words = words.view(np.uint32).reshape(groups)
    index = np.empty((groups, 8), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for k in range(8):
        index[:, k] = (words >> np.uint32(bits * k)) & mask
    return index.reshape(-1)[:n]
