"""Range coding with constriction (Bamler 2022): binary and categorical symbol arrays.

Each stream carries its own empirical model, so it costs the empirical entropy
plus a few bytes: the count of ones (binary) or the histogram (categorical), then
the range coder's compressed words as a length-prefixed blob. The decoder checks
that the symbols it decodes reproduce that model exactly: corrupted or forged
data never passes silently.
"""

from __future__ import annotations

import constriction
import numpy as np

from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_model = constriction.stream.model


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


def _range_decode(words: memoryview, model, n: int) -> np.ndarray:
    data = np.frombuffer(words, np.uint32)
    try:
        return constriction.stream.queue.RangeDecoder(data).decode(model, n)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise PayloadError(f"range decoder refused the stream: {e}") from e


def encode_bits(bits: np.ndarray, out: PayloadWriter) -> None:
    """Write a binary vector: u32 count of ones, then range-coded words if it is mixed."""
    n, ones = len(bits), int(np.count_nonzero(bits))
    out.struct("I", ones)
    if 0 < ones < n:
        model = _model.Bernoulli(ones / n, perfect=False)
        out.blob(_range_encode(bits, model))


def decode_bits(body: PayloadReader, n: int) -> np.ndarray:
    """Read a binary vector of n entries (bool)."""
    (ones,) = body.struct("I")
    if ones > n:
        raise PayloadError(f"{ones} ones in a vector of {n}")
    if ones in (0, n):
        return np.full(n, ones == n, np.bool_)
    words = body.blob(limit=_words_limit(n, 2))
    bits = _range_decode(words, _model.Bernoulli(ones / n, perfect=False), n).astype(np.bool_)
    if np.count_nonzero(bits) != ones:
        raise PayloadError("range-coded bits do not match their count")
    return bits


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
