"""Quantized values on the wire: the shorter of a fixed-width packing and a range code.

Each vector is coded both ways and the shorter goes out behind a one-byte tag, so it
never costs more than that byte above the better of the two alone: the packing wins on
near-uniform symbols and short vectors (the range code carries a histogram), the range
code on skewed ones (QSGD's mostly-zero levels, the levels of bell-shaped values).

    signs (1 = negative)   packed: ceil(n/8) bytes, 1 bit each
                           range:  `entropy.encode_bit_vectors` of the one vector
    levels in [−L, L]      packed: u8 L | base-(2L+1) digits, g a byte (`levels.pack_levels`)
                           range:  u8 L | `entropy.encode_symbols` of level + L

    u8 tag (PACKED or RANGED) | the chosen coding
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.coding import entropy
from flcomp.codecs.coding.levels import pack_levels, packed_size, unpack_levels
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

PACKED = 0
RANGED = 1


def encode_signs(negative: np.ndarray, out: PayloadWriter) -> np.ndarray:
    """Write a boolean vector (1 = negative); return it packed (np.packbits), as decoded."""
    bits = np.packbits(negative)
    packed, ranged = PayloadWriter(), PayloadWriter()
    packed.array(bits)
    entropy.encode_bit_vectors([(bits, len(negative))], ranged)
    _write_shorter(packed, ranged, out)
    return bits


def decode_signs(body: PayloadReader, n: int) -> np.ndarray:
    """Read n signs written by `encode_signs`, packed (np.packbits order)."""
    if _read_tag(body) == PACKED:
        nbytes = -(-n // 8)
        return body.array(np.uint8, nbytes, limit=nbytes)
    return entropy.decode_bit_vectors(body, [n])[0]


def encode_levels(levels: np.ndarray, out: PayloadWriter) -> None:
    """Write int8 levels in [−127, 127]."""
    largest = int(np.abs(levels).max()) if levels.size else 0
    symbols = levels.astype(np.int32) + largest
    packed, ranged = PayloadWriter(), PayloadWriter()
    packed.struct("B", largest)
    packed.array(pack_levels(levels, largest))
    # Building a range coder costs ~0.1 ms: skip it when it cannot be the shorter.
    if packed.nbytes > _range_floor(np.bincount(symbols, minlength=2 * largest + 1)):
        ranged.struct("B", largest)
        entropy.encode_symbols(symbols, 2 * largest + 1, ranged)
        _write_shorter(packed, ranged, out)
    else:
        out.struct("B", PACKED)
        out.extend(packed)


def decode_levels(body: PayloadReader, n: int, limit: int) -> np.ndarray:
    """Read n levels written by `encode_levels` (int8), each within ±`limit`."""
    tag = _read_tag(body)
    (largest,) = body.struct("B")
    if largest > limit:
        raise PayloadError(f"level {largest} beyond ±{limit}")
    if tag == PACKED:
        size = packed_size(n, largest)
        return unpack_levels(body.array(np.uint8, size, limit=size), n, largest)
    return (entropy.decode_symbols(body, n, 2 * largest + 1) - largest).astype(np.int8)


def _range_floor(counts: np.ndarray) -> int:
    """Bytes that u8 L and `entropy.encode_symbols` take at least for symbols of these counts:
    the histogram, and when two or more symbols occur the blob's length and the words, which
    hold at least the symbols' empirical entropy (the cross-entropy of any model is no less)
    less the range coder's 64-bit state, with as much again to spare."""
    floor = 1 + 4 * len(counts)
    if np.count_nonzero(counts) > 1:
        p = counts[counts > 0] / counts.sum()
        bits = -float(counts[counts > 0] @ np.log2(p))
        floor += 4 + max(0, int(bits - 128) // 8)
    return floor


def _write_shorter(packed: PayloadWriter, ranged: PayloadWriter, out: PayloadWriter) -> None:
    """The tag and the shorter of two codings of the same vector (the packing on a tie)."""
    tag, chosen = (PACKED, packed) if packed.nbytes <= ranged.nbytes else (RANGED, ranged)
    out.struct("B", tag)
    out.extend(chosen)


def _read_tag(body: PayloadReader) -> int:
    (tag,) = body.struct("B")
    if tag not in (PACKED, RANGED):
        raise PayloadError(f"unknown coding tag {tag}")
    return tag
