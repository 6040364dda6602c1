"""The wire format: a fixed header, then a body that codecs read and write.

Layout (little-endian), 17 bytes of header:

    offset size field
    0      2    magic b"FC"
    2      1    format version (FORMAT_VERSION)
    3      1    codec id (the registry's)
    4      1    flags (FLAG_KEY_FRAME)
    5      4    state fingerprint: the sender's shared-state fingerprint the body
                was encoded against (0 in a key frame)
    9      4    tensor count
    13     4    CRC-32 of the other 13 header bytes and the body
    17     ...  body, codec-specific

Everything is validated before anything is allocated: `PayloadReader` refuses to
read past the end, and every count a codec reads is checked against the model spec
by the codec before it is used. No pickle, no eval.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from isal.isal_zlib import crc32  # zlib's CRC-32, computed with ISA-L's carry-less multiply: ~12x zlib

from flcomp.codecs.errors import PayloadError

MAGIC = b"FC"
FORMAT_VERSION = 1
FLAG_KEY_FRAME = 0x01
_KNOWN_FLAGS = FLAG_KEY_FRAME

_HEAD = struct.Struct("<2sBBBII")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _CRC.size


@dataclass(frozen=True)
class Header:
    """The fixed header of a payload."""

    codec_id: int
    key_frame: bool
    fingerprint: int
    tensor_count: int
    crc: int = 0


def pack(header: Header, body: list[bytes | memoryview]) -> tuple[bytes, int]:
    """Header plus body chunks as one payload; returns the payload and its CRC."""
    flags = FLAG_KEY_FRAME if header.key_frame else 0
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, header.codec_id, flags, header.fingerprint, header.tensor_count)
    crc = crc32(head)
    for chunk in body:
        crc = crc32(chunk, crc)
    return b"".join([head, _CRC.pack(crc), *body]), crc


def unpack(payload: bytes, codec_id: int, tensor_count: int) -> tuple[Header, PayloadReader]:
    """Validate a payload's header and CRC; return the header and a reader on the body.

    Raises PayloadError on a short payload, wrong magic, version, codec id, unknown
    flags, wrong tensor count or a CRC mismatch.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload must be bytes, got {type(payload).__name__}")
    try:
        view = memoryview(payload).cast("B")
    except TypeError as e:
        raise PayloadError(f"payload must be contiguous bytes: {e}") from e
    if len(view) < HEADER_BYTES:
        raise PayloadError(f"payload of {len(view)} bytes is shorter than the header")
    magic, version, cid, flags, fingerprint, count = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise PayloadError("not an flcomp payload (bad magic)")
    if version != FORMAT_VERSION:
        raise PayloadError(f"format version {version}, this decoder reads {FORMAT_VERSION}")
    if cid != codec_id:
        raise PayloadError(f"payload of codec id {cid}, this decoder is codec id {codec_id}")
    if flags & ~_KNOWN_FLAGS:
        raise PayloadError(f"unknown flags 0x{flags:02x}")
    if count != tensor_count:
        raise PayloadError(f"payload has {count} tensors, the model spec {tensor_count}")
    (crc,) = _CRC.unpack_from(view, _HEAD.size)
    body = view[HEADER_BYTES:]
    if crc32(body, crc32(view[: _HEAD.size])) != crc:
        raise PayloadError("CRC mismatch: the payload was corrupted")
    header = Header(cid, bool(flags & FLAG_KEY_FRAME), fingerprint, count, crc)
    return header, PayloadReader(body)


class PayloadWriter:
    """Collects body chunks; arrays are written in their native little-endian layout."""

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []

    def struct(self, fmt: str, *values: int | float) -> None:
        """Append `values` packed with struct format `fmt` (little-endian)."""
        self.chunks.append(struct.pack("<" + fmt, *values))

    def array(self, a: np.ndarray) -> None:
        """Append the raw bytes of a contiguous array (no shape or dtype is written)."""
        a = np.ascontiguousarray(a)
        if a.size:  # (memoryview cannot cast an empty multi-dimensional view)
            self.chunks.append(memoryview(a).cast("B"))

    @property
    def nbytes(self) -> int:
        """Bytes written so far."""
        return sum(len(c) for c in self.chunks)

    def fits(self, budget_bits: float | None) -> bool:
        """Whether a payload of this body (header included) takes at most `budget_bits`; True
        without a budget."""
        return budget_bits is None or 8 * (HEADER_BYTES + self.nbytes) <= budget_bits

    def extend(self, other: PayloadWriter) -> None:
        """Append everything written to `other`."""
        self.chunks += other.chunks

    def blob(self, data: bytes | np.ndarray) -> None:
        """Append a length-prefixed (u32) byte string."""
        data = memoryview(np.ascontiguousarray(data)).cast("B")
        self.struct("I", len(data))
        self.chunks.append(data)


class PayloadReader:
    """Bounds-checked reads from a payload body; every read past the end is a PayloadError."""

    def __init__(self, body: memoryview) -> None:
        self._body = body
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._body) - self._pos

    def struct(self, fmt: str) -> tuple:
        """Read values packed with struct format `fmt` (little-endian)."""
        s = struct.Struct("<" + fmt)
        self._need(s.size)
        values = s.unpack_from(self._body, self._pos)
        self._pos += s.size
        return values

    def array(self, dtype: str | np.dtype, count: int, limit: int) -> np.ndarray:
        """Read `count` items of `dtype` as a read-only view; `count` must not exceed `limit`.

        `limit` is the largest count the model spec allows here: a count above it is
        a PayloadError before any memory is touched.
        """
        if not 0 <= count <= limit:
            raise PayloadError(f"count {count} outside [0, {limit}]")
        dtype = np.dtype(dtype).newbyteorder("<")
        self._need(count * dtype.itemsize)
        a = np.frombuffer(self._body, dtype=dtype, count=count, offset=self._pos)
        self._pos += count * dtype.itemsize
        return a

    def blob(self, limit: int) -> memoryview:
        """Read a length-prefixed byte string of at most `limit` bytes."""
        (n,) = self.struct("I")
        if n > limit:
            raise PayloadError(f"blob of {n} bytes exceeds the limit {limit}")
        self._need(n)
        data = self._body[self._pos : self._pos + n]
        self._pos += n
        return data

    def finish(self) -> None:
        """Check that the whole body was read (an extended payload is a PayloadError)."""
        if self.remaining:
            raise PayloadError(f"{self.remaining} unexpected trailing bytes")

    def _need(self, n: int) -> None:
        if n > self.remaining:
            raise PayloadError(f"payload truncated: need {n} bytes, {self.remaining} left")
