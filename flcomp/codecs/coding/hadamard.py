"""The randomized Hadamard rotation of DRIVE and EDEN, seeded so that both sides draw it.

    R(x) = (H_B ⊗ I_m) · D · x / √B,   R⁻¹ = Rᵀ = D · (H_B ⊗ I_m) / √B

x, of n entries, is zero-padded to n' = B·m and read as a B × m matrix (row-major),
so column j, the entries j, j + m, j + 2m, ..., is one rotation block; H_B is the
Sylvester–Hadamard matrix of order B (a power of two up to `BLOCK`) and D a diagonal
of n' independent random signs drawn from a 32-bit seed that the payload carries
(4 bytes a tensor; a decoder cannot see the encoder's step generator).

Why blocks, and why these: DRIVE's and FedJAX's code rotate a whole layer of d
entries with one transform of order 2^⌈log₂ d⌉, which up to doubles the entries sent
and costs log₂ d passes over memory (24 at 16M). Blocks of B ≤ 4096 bound the
padding to under B entries a tensor, and the transform becomes four matrix products
with factors of order ≤ 8 that BLAS runs at memory speed, whatever m is:
H_a ⊗ H_b ⊗ I_m = (H_a ⊗ I)(I ⊗ H_b ⊗ I). Interleaving the blocks (columns, not
runs) is what lets one product serve every block at once; it is still an
orthonormal rotation, and each block mixes entries from the whole tensor. Each
block is one of the papers' vectors, with its own scale (a shared scale would be
biased), so B (`block_size`) trades padding against a 32-bit scale per block:
4096 for large tensors (0.008 bits an entry), smaller ones for small tensors.
"""

from __future__ import annotations

from functools import cache

import numpy as np

BLOCK = 4096
"""The largest rotation block B, a power of two: 8 × 8 × 8 × 8, four BLAS products."""
SCALE_BITS = 32
"""What a block costs besides its entries: the float32 scale DRIVE and EDEN send for it."""

# Row b: the eight float32 sign-bit masks of byte b, most significant bit first (np.packbits order).
_BYTE_MASKS = ((np.arange(256)[:, None] >> np.arange(7, -1, -1)) & 1).astype(np.uint32) << np.uint32(31)


@cache
def block_size(n: int, bits: int) -> int:
    """B for a tensor of n entries sent at `bits` bits per rotated entry: the power of
    two up to `BLOCK` that makes the fewest bits, bits·B·⌈n/B⌉ + SCALE_BITS·⌈n/B⌉
    (padding against scales), the largest on a tie."""
    best, fewest = 1, None
    size = 1
    while size <= BLOCK and size < 2 * max(n, 1):
        blocks = -(-n // size)
        cost = blocks * (bits * size + SCALE_BITS)
        if fewest is None or cost <= fewest:
            best, fewest = size, cost
        size *= 2
    return best


def blocks(n: int, size: int) -> int:
    """m, the number of blocks of `size` entries that hold n entries."""
    return -(-n // size)


def sign_masks(packed: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint32 masks with the float32 sign bit set where the packed bit is 1 (np.packbits
    order), n of them: XOR flips signs, OR sets them. One row gather per byte, ~4x
    faster than unpacking the bits and shifting them. `out`, if given, holds at least
    8·len(packed) uint32 and receives them."""
    rows = packed.size
    if out is not None:
        out = out[: 8 * rows].reshape(rows, 8)
    return _BYTE_MASKS.take(packed, axis=0, out=out).reshape(-1)[:n]


def rotate(x: np.ndarray, seed: int, size: int) -> np.ndarray:
    """R(x) in blocks of `size`: the B·m rotated entries of flat float32 x, a new array
    (read it as B × m: column j is block j)."""
    n = x.size
    total = size * blocks(n, size)
    signed, spare = np.empty(total, np.float32), np.empty(total + 8, np.float32)
    signed[n:] = 0
    flips = _diagonal(seed, n, spare.view(np.uint32))
    np.bitwise_xor(np.ascontiguousarray(x, np.float32).view(np.uint32), flips, out=signed[:n].view(np.uint32))
    return _hadamard(signed, spare[:total], size)


def unrotate(y: np.ndarray, n: int, seed: int, size: int) -> np.ndarray:
    """R⁻¹(y) truncated to its first n entries (the padding's share is dropped): a new array.

    y, flat contiguous float32 of B·m entries, is overwritten.
    """
    if y.size != size * blocks(n, size) or y.dtype != np.float32:
        raise ValueError(
            f"{y.size} rotated {y.dtype} entries; {n} in blocks of {size} make {size * blocks(n, size)}"
        )
    mixed = _hadamard(y, np.empty_like(y), size)
    out = np.empty(n + 8, np.float32)
    flips = _diagonal(seed, n, out.view(np.uint32))
    np.bitwise_xor(mixed[:n].view(np.uint32), flips, out=flips)
    return out[:n]


def max_scale(size: int, largest: float) -> float:
    """The largest block scale S whose decoded block S·q, |q| ≤ `largest`, cannot overflow
    float32 in the inverse transform, partial sums included: each factor H_k/√k grows the
    largest magnitude by at most √k, √B in all (1% margin for rounding)."""
    return 0.99 * float(np.finfo(np.float32).max) / (np.sqrt(size) * largest)


def column_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_i a[i, j]·b[i, j] for every column j of two B × m float32 matrices, in float64
    (summed in float32 first, again in float64 where that overflows)."""
    dots = np.einsum("ij,ij->j", a, b).astype(np.float64)
    if not np.isfinite(dots).all():
        dots = np.einsum("ij,ij->j", a.astype(np.float64), b.astype(np.float64))
    return dots


def _diagonal(seed: int, n: int, out: np.ndarray) -> np.ndarray:
    """The first n sign masks of D, drawn from `seed` (PCG64's raw output, 1 bit an entry),
    written to `out` (uint32, at least n + 8)."""
    raw = np.random.PCG64(seed).random_raw(-(-n // 64)).view(np.uint8)[: -(-n // 8)]
    return sign_masks(raw, n, out)


def _hadamard(a: np.ndarray, spare: np.ndarray, size: int) -> np.ndarray:
    """(H_B ⊗ I_m)·a / √B for a of B·m entries: one BLAS product per Hadamard factor of
    order ≤ 8 (memory-bound there: larger factors cost more than the pass they save).

    a and spare (as large) are overwritten; the result is one of them.
    """
    outer, rest, m = 1, size, a.size // max(size, 1)
    src, dst = a, spare
    while rest > 1:
        k = 1 << ((rest.bit_length() - 1) % 3 or 3)  # the odd factor first, then 8s
        rest //= k
        np.matmul(_factor(k), src.reshape(outer, k, rest * m), out=dst.reshape(outer, k, rest * m))
        src, dst = dst, src
        outer *= k
    return src


@cache
def _factor(k: int) -> np.ndarray:
    """H_k / √k in float32."""
    h = np.ones((1, 1))
    while len(h) < k:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(k)).astype(np.float32)
