"""Rice codes, sparse positions and range coding: exact round trips, near-entropy sizes."""

import numpy as np
import pytest

from flcomp.codecs import PayloadError, entropy, positions, rice
from flcomp.codecs.wire import PayloadReader, PayloadWriter


def written(fn, *args) -> memoryview:
    out = PayloadWriter()
    fn(*args, out)
    return memoryview(b"".join(out.chunks))


def geometric_entropy_bits(p: float) -> float:
    """Entropy in bits of a geometric gap with success probability p."""
    return (-(1 - p) * np.log2(1 - p) - p * np.log2(p)) / p


@pytest.mark.parametrize("mean", [0.3, 1.0, 10.0, 1000.0])
def test_rice_round_trip_geometric(mean):
    values = np.random.default_rng(0).geometric(1 / (1 + mean), size=5000) - 1
    k = rice.best_k(values)
    body = PayloadReader(written(rice.rice_encode, values, k))
    assert np.array_equal(rice.rice_decode(body, k, len(values), int(values.max())), values)
    body.finish()


def test_rice_escapes_values_past_the_last_plane():
    values = np.array([0, 0, 5_000_000, 1, 0, 2**32 - 1], np.int64)
    body = PayloadReader(written(rice.rice_encode, values, 0))
    assert np.array_equal(rice.rice_decode(body, 0, len(values), 2**32 - 1), values)


def test_rice_refuses_values_above_the_bound():
    values = np.array([3, 9, 1], np.int64)
    body = PayloadReader(written(rice.rice_encode, values, 1))
    with pytest.raises(PayloadError):
        rice.rice_decode(body, 1, 3, max_value=8)


def test_rice_gaps_within_two_percent_of_entropy():
    p, n = 0.01, 200_000
    gaps = np.random.default_rng(1).geometric(p, size=n) - 1
    nbytes = len(written(rice.rice_encode, gaps, rice.best_k(gaps)))
    assert 8 * nbytes / n <= 1.02 * geometric_entropy_bits(p)


@pytest.mark.parametrize("density", [0.0005, 0.01, 0.3, 0.9])
def test_positions_round_trip_and_pick_the_shorter_coding(density):
    n = 50_000
    rng = np.random.default_rng(2)
    pos = np.flatnonzero(rng.random(n) < density)
    data = written(positions.encode_positions, pos, n)
    body = PayloadReader(data)
    assert np.array_equal(positions.decode_positions(body, len(pos), n), pos)
    body.finish()
    bitmap_bytes = 1 + -(-n // 8)
    assert len(data) <= bitmap_bytes
    if density <= 0.01:
        assert len(data) < bitmap_bytes / 4


def test_positions_refuse_a_count_the_bitmap_does_not_hold():
    data = written(positions.encode_positions, np.arange(0, 1000, 2), 1000)
    with pytest.raises(PayloadError):
        positions.decode_positions(PayloadReader(data), 499, 1000)


@pytest.mark.parametrize("p", [0.0, 0.02, 0.5, 1.0])
def test_range_coded_bits_round_trip_near_entropy(p):
    n = 100_000
    bits = np.random.default_rng(3).random(n) < p
    data = written(entropy.encode_bits, bits)
    body = PayloadReader(data)
    assert np.array_equal(entropy.decode_bits(body, n), bits)
    body.finish()
    q = bits.mean()
    h = 0.0 if q in (0.0, 1.0) else -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    assert 8 * len(data) <= 1.01 * h * n + 128


def test_range_coded_symbols_round_trip_near_entropy():
    n, alphabet = 100_000, 9
    probs = np.array([0.5, 0.2, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01, 0.0])
    symbols = np.random.default_rng(4).choice(alphabet, size=n, p=probs)
    data = written(entropy.encode_symbols, symbols, alphabet)
    body = PayloadReader(data)
    assert np.array_equal(entropy.decode_symbols(body, n, alphabet), symbols)
    counts = np.bincount(symbols, minlength=alphabet)
    freq = counts[counts > 0] / n
    h = -(freq * np.log2(freq)).sum()
    assert 8 * len(data) <= 1.01 * h * n + 8 * 4 * alphabet + 128


def test_range_decoder_refuses_words_that_break_the_histogram():
    n = 10_000
    bits = np.random.default_rng(5).random(n) < 0.1
    data = bytearray(written(entropy.encode_bits, bits))
    data[10] ^= 0xFF
    with pytest.raises(PayloadError):
        entropy.decode_bits(PayloadReader(memoryview(bytes(data))), n)
