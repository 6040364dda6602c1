"""Rice codes, sparse positions and range coding: exact round trips, near-entropy sizes."""

import numpy as np
import pytest

from flcomp.codecs import PayloadError
from flcomp.codecs.coding import entropy, positions, rice
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


def bit_entropy(q: float) -> float:
    return 0.0 if q in (0.0, 1.0) else float(-(q * np.log2(q) + (1 - q) * np.log2(1 - q)))


@pytest.mark.parametrize("p", [0.0, 0.02, 0.3, 0.5, 1.0])
def test_bit_vectors_round_trip_near_entropy(p):
    n = 100_000
    bits = np.random.default_rng(3).random(n) < p
    data = written(entropy.encode_bit_vectors, [(np.packbits(bits), n)])
    body = PayloadReader(data)
    (packed,) = entropy.decode_bit_vectors(body, [n])
    assert np.array_equal(np.unpackbits(packed, count=n).astype(bool), bits)
    body.finish()
    assert 8 * len(data) <= 1.01 * bit_entropy(bits.mean()) * n + 128
    if 0.45 < p < 0.55:
        assert len(data) == 4 + n // 8, "near one bit an entry, the bits travel packed"


def test_several_bit_vectors_share_one_stream():
    """Vectors of ragged sizes and different rates: constant, raw and range coded, in one payload."""
    rng = np.random.default_rng(7)
    vectors = [
        rng.random(n) < q for n, q in [(0, 0.1), (1, 1.0), (13, 0.2), (700, 0.5), (5001, 0.05), (9, 0.0)]
    ]
    data = written(entropy.encode_bit_vectors, [(np.packbits(v), len(v)) for v in vectors])
    body = PayloadReader(data)
    decoded = entropy.decode_bit_vectors(body, [len(v) for v in vectors])
    body.finish()
    for v, packed in zip(vectors, decoded):
        assert np.array_equal(packed, np.packbits(v))
    entropy_bits = sum(len(v) * bit_entropy(v.mean()) for v in vectors if len(v))
    assert 8 * len(data) <= entropy_bits + 8 * (4 * len(vectors) + 4 + 8) + 700 * 0.02


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


@pytest.mark.parametrize("q", [0.1, 0.5])
def test_bit_vector_decoder_refuses_bits_that_break_the_count(q):
    n = 10_001
    bits = np.random.default_rng(5).random(n) < q
    data = bytearray(written(entropy.encode_bit_vectors, [(np.packbits(bits), n)]))
    refused = 0
    for k in range(8, len(data)):
        forged = data.copy()
        forged[k] ^= 0x10  # one bit: raw bits change their count, range-coded ones their decoding
        try:
            entropy.decode_bit_vectors(PayloadReader(memoryview(bytes(forged))), [n])
        except PayloadError:
            refused += 1
    assert refused >= 0.8 * (len(data) - 8)


def test_bit_vector_decoder_refuses_set_padding_bits():
    n = 1003  # 5 padding bits; 501 ones: raw
    bits = np.arange(n) % 2 == 0
    data = bytearray(written(entropy.encode_bit_vectors, [(np.packbits(bits), n)]))
    data[-1] |= 0x01
    data[-2] &= 0xFE  # keep the count of ones
    with pytest.raises(PayloadError):
        entropy.decode_bit_vectors(PayloadReader(memoryview(bytes(data))), [n])
