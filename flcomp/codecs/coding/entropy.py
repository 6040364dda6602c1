"""Range coding with constriction (Bamler 2022): binary vectors and categorical symbol arrays.

Each stream carries its own empirical model, so it costs the empirical entropy
plus a few bytes: the count of ones (binary) or the histogram (categorical), then
the range coder's compressed words as a length-prefixed blob. Binary vectors are
written several at a time, in one stream, a byte (8 bits) a symbol, and a vector
whose entropy is about one bit an entry travels packed instead (range coding would
save nothing and its decoder is the slowest step). The decoder checks that the
symbols it decodes reproduce that model exactly: corrupted or forged data never
passes silently.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import constriction
import numpy as np

from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_model = constriction.stream.model

RAW_BAND = (7, 16)
"""A mixed vector travels raw (packed, no coding) when min(m, n − m) ≥ 7/16·n, i.e. its rate
of ones q is within [7/16, 9/16]: there h(q) ≥ 0.989, so range coding would save at most
1.1% for most of the coding time. An integer rule both sides evaluate alike."""


def _words_limit(n: int, alphabet: int) -> int:
    """Largest plausible compressed size in bytes for n symbols: log2(alphabet) bits each, plus slack.

    The slack grows with n: the range coder's finite precision costs about 1.3e-4 bit a
    symbol above the model's entropy (at most log2(1 + 2⁻⁸) ≈ 5.6e-3), so a near-uniform
    binary stream of 10M symbols takes ~1250 bits more than n; 1/128 covers the worst case.
    """
    bits = n * max(1, int(np.ceil(np.log2(max(alphabet, 2)))))
    bits += -(-bits // 128)
    return 4 * (-(-bits // 32) + 8)


def _range_encode(symbols: np.ndarray, model) -> np.ndarray:
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(symbols.astype(np.int32, copy=False), model)
    return encoder.get_compressed()


def _range_decoder(words: memoryview | np.ndarray):
    if len(words) % 4:
        raise PayloadError(f"range-coded words of {len(words)} bytes are not whole 32-bit words")
    return constriction.stream.queue.RangeDecoder(np.frombuffer(words, np.uint32))


def _range_decode_with(decoder, model, n: int) -> np.ndarray:
    try:
        return decoder.decode(model, n)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise PayloadError(f"range decoder refused the stream: {e}") from e


def _range_decode(words: memoryview, model, n: int) -> np.ndarray:
    return _range_decode_with(_range_decoder(words), model, n)


def encode_bit_vectors(vectors: Sequence[tuple[np.ndarray, int]], out: PayloadWriter) -> None:
    """Write binary vectors, each given packed (np.packbits order, padding bits 0) with its length n.

    Per vector: the count of ones m (an unsigned integer of as few bytes as hold n:
    `uint_format`), then, when 0 < m < n and `_is_raw(m, n)`, its ceil(n/8) packed bytes.
    Then, if any vector is neither constant nor raw, the byte length of the range-coded
    words (as few bytes as hold their largest plausible length) and the words, which
    hold all those vectors in order: each vector's packed bytes under the model of 8
    independent Bernoulli(m/n) bits a byte, which costs the same n·h(m/n) bits as
    coding bit by bit at an eighth of the symbols.
    """
    encoder, ranged = None, 0
    for packed, n in vectors:
        ones = int(np.bitwise_count(packed).sum(dtype=np.int64))
        out.struct(uint_format(n), ones)
        if not 0 < ones < n:
            continue
        if _is_raw(ones, n):
            out.array(packed)
            continue
        encoder = encoder or constriction.stream.queue.RangeEncoder()
        encoder.encode(packed.astype(np.int32), _bernoulli_bytes(ones / n))
        ranged += n
    if encoder is not None:
        words = encoder.get_compressed()
        out.struct(uint_format(_words_limit(ranged, 2)), words.nbytes)
        out.array(words)


def decode_bit_vectors(body: PayloadReader, sizes: Sequence[int]) -> list[np.ndarray]:
    """Read binary vectors of the given lengths; returns them packed (uint8, padding bits 0).

    Checks every count against its length, and that the bits of every vector (padding
    bits zero) number exactly its count.
    """
    vectors: list[np.ndarray] = []
    ranged: list[tuple[int, int, int]] = []  # (index, n, ones) of the range-coded vectors
    for i, n in enumerate(sizes):
        (ones,) = body.struct(uint_format(n))
        if ones > n:
            raise PayloadError(f"{ones} ones in a vector of {n}")
        nbytes = -(-n // 8)
        if ones == 0:
            vectors.append(np.zeros(nbytes, np.uint8))
        elif ones == n:
            vectors.append(np.packbits(np.ones(n, np.bool_)))
        elif _is_raw(ones, n):
            vectors.append(_checked(body.array(np.uint8, nbytes, limit=nbytes), n, ones))
        else:
            vectors.append(np.empty(0, np.uint8))  # filled from the stream below
            ranged.append((i, n, ones))
    if ranged:
        limit = _words_limit(sum(n for _, n, _ in ranged), 2)
        (length,) = body.struct(uint_format(limit))
        decoder = _range_decoder(body.array(np.uint8, length, limit=limit))
        for i, n, ones in ranged:
            packed = _range_decode_with(decoder, _bernoulli_bytes(ones / n), -(-n // 8))
            vectors[i] = _checked(packed.astype(np.uint8), n, ones)
    return vectors


def range_code_bits_at_rates(vectors: Sequence[tuple[np.ndarray, int, float]]) -> np.ndarray:
    """Range-code binary vectors (packed, np.packbits order, padding bits 0; length n) under
    rates q of ones both sides already know (a backward-adaptive model: nothing about the
    model is sent); returns the words (uint32).

    One stream: each vector's bytes as 8 independent Bernoulli(q) bits, its complement
    (padding cleared) where q > 1/2 so that the padding costs little. Every q must be in
    (0, 1). Rates far from the data's cost more than a bit a bit: the caller compares the
    words' size with the raw bits'.
    """
    encoder = constriction.stream.queue.RangeEncoder()
    for packed, n, q in vectors:
        if n:
            encoder.encode(_oriented(packed, q, n).astype(np.int32), _rate_model(min(q, 1 - q)))
    return encoder.get_compressed()


def range_decode_bits_at_rates(words: memoryview, vectors: Sequence[tuple[int, float]]) -> list[np.ndarray]:
    """The vectors of these (length n, rate q) from what `range_code_bits_at_rates` wrote: packed.

    PayloadError on a malformed stream or set padding bits; the vectors' contents are
    otherwise unconstrained (the payload's checksum guards against corruption)."""
    decoder = _range_decoder(words)
    decoded = []
    for n, q in vectors:
        nbytes = -(-n // 8)
        packed = np.zeros(0, np.uint8)
        if nbytes:
            coded = _range_decode_with(decoder, _rate_model(min(q, 1 - q)), nbytes).astype(np.uint8)
            packed = _oriented(check_padding(coded, n), q, n)
        decoded.append(packed)
    return decoded


def check_padding(packed: np.ndarray, n: int) -> np.ndarray:
    """`packed` if its padding bits (past n) are 0; else PayloadError."""
    if n % 8 and packed[-1] & (0xFF >> (n % 8)):
        raise PayloadError("padding bits of a bit vector are set")
    return packed


RATE_PRECISION = 20
"""`_rate_model` quantizes q to RATE_PRECISION fractional bits, then to 5 significant bits (a
relative step of at most 1/16: under 0.2% of the entropy lost); integer arithmetic on an exact
q·2²⁰, so both sides pick the same model on any machine."""


def _rate_model(q: float):
    """The cached byte model of the Bernoulli rate nearest q ∈ (0, 1/2] on a logarithmic grid."""
    fixed = max(1, int(q * 2**RATE_PRECISION))
    shift = max(fixed.bit_length() - 5, 0)
    return _grid_model(((fixed >> shift) << shift) | ((1 << shift) >> 1))


@functools.cache
def _grid_model(fixed: int):
    """At most ~330 models (16 a binary order of magnitude), built once each."""
    return _bernoulli_bytes(fixed / 2**RATE_PRECISION)


def _oriented(packed: np.ndarray, q: float, n: int) -> np.ndarray:
    """`packed` as coded under rate min(q, 1 − q): complemented (padding bits of n cleared) if q > 1/2.
    Its own inverse."""
    if not q > 0.5:
        return packed
    flipped = ~packed
    if n % 8:
        flipped[-1] &= (0xFF << (8 - n % 8)) & 0xFF
    return flipped


def uint_format(limit: int) -> str:
    """The struct format of an unsigned integer that never exceeds `limit`: as few bytes as hold it."""
    return "B" if limit < 2**8 else "H" if limit < 2**16 else "I"


def _is_raw(ones: int, n: int) -> bool:
    num, den = RAW_BAND
    return den * min(ones, n - ones) >= num * n


def _bernoulli_bytes(q: float):
    """The model of a byte of 8 independent Bernoulli(q) bits: P(k) = q^|k|·(1 − q)^(8 − |k|).
    constriction's leaky quantization keeps every byte encodable, however small q."""
    ones = np.bitwise_count(np.arange(256, dtype=np.uint8)).astype(np.float64)
    return _model.Categorical(q**ones * (1 - q) ** (8 - ones), perfect=False)


def _checked(packed: np.ndarray, n: int, ones: int) -> np.ndarray:
    """`packed` if its padding bits are 0 and it holds `ones` ones; else PayloadError."""
    check_padding(packed, n)
    if np.bitwise_count(packed).sum(dtype=np.int64) != ones:
        raise PayloadError("the bits of a vector do not match their count")
    return packed


def encode_symbols(symbols: np.ndarray, alphabet: int, out: PayloadWriter) -> None:
    """Write symbols in [0, alphabet): their histogram (u32 each), then range-coded words."""
    counts = np.bincount(symbols, minlength=alphabet).astype(np.uint32)
    out.array(counts)
    if np.count_nonzero(counts) > 1:
        out.blob(_range_encode(symbols, _model.Categorical(counts.astype(np.float64), perfect=False)))


def decode_symbols(body: PayloadReader, n: int, alphabet: int) -> np.ndarray:
    """Read n symbols in [0, alphabet) (int32)."""
    counts = body.array(np.uint32, alphabet, limit=alphabet).astype(np.int64)
    if counts.sum() != n:
        raise PayloadError(f"histogram sums to {counts.sum()}, expected {n}")
    present = np.flatnonzero(counts)
    if len(present) <= 1:
        return np.full(n, present[0] if len(present) else 0, np.int32)
    model = _model.Categorical(counts.astype(np.float64), perfect=False)
    symbols = _range_decode(body.blob(limit=_words_limit(n, alphabet)), model, n)
    if not np.array_equal(np.bincount(symbols, minlength=alphabet), counts):
        raise PayloadError("range-coded symbols do not match their histogram")
    return symbols
