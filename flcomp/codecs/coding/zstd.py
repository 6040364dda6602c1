"""Zstandard frames (level 1) of byte vectors, checked against the size the decoder expects.

A frame's Huffman stage codes skewed bytes (packed levels, float exponents) near their
entropy at ~1 GB/s. `compress_if_shorter` sends the bytes themselves when the frame
would not be shorter; the decoder tells the two apart by length alone.
"""

from __future__ import annotations

import threading

import numpy as np
import zstandard

from flcomp.codecs.errors import PayloadError

_CONTEXTS = threading.local()


def compress(data: np.ndarray | bytes) -> bytes:
    """One Zstandard frame of `data`, declaring its content size."""
    return _contexts()[0].compress(data)


def decompress_exactly(frame: memoryview | bytes, n: int) -> np.ndarray:
    """The n bytes (uint8) of a frame that must declare and hold exactly n; PayloadError
    otherwise, checked before allocating."""
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != n:
            raise PayloadError(f"zstd frame declares {declared} bytes, expected {n}")
        data = _contexts()[1].decompress(frame, max_output_size=n)
    except zstandard.ZstdError as e:
        raise PayloadError(f"zstd frame refused: {e}") from e
    if len(data) != n:
        raise PayloadError(f"zstd frame holds {len(data)} bytes, expected {n}")
    return np.frombuffer(data, np.uint8)


def compress_if_shorter(data: np.ndarray) -> np.ndarray | bytes:
    """The frame of a uint8 vector, or the vector itself when the frame would not be shorter."""
    frame = compress(data)
    return frame if len(frame) < data.size else data


def decompress_if_framed(blob: memoryview, n: int) -> np.ndarray:
    """The n bytes (uint8) that `compress_if_shorter` wrote as `blob`: the blob itself when it
    holds n bytes, else a frame's content, which must be exactly n."""
    return np.frombuffer(blob, np.uint8) if len(blob) == n else decompress_exactly(blob, n)


def _contexts() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    """This thread's contexts: building them costs ~70 µs, more than coding a small tensor,
    and one must not be used by two threads at once."""
    if not hasattr(_CONTEXTS, "pair"):
        _CONTEXTS.pair = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
    return _CONTEXTS.pair
