"""The randomized Hadamard rotation and the two codecs built on it: DRIVE and EDEN.

The papers' numbers are checked against their theory on Gaussian inputs (which any
rotation keeps Gaussian): DRIVE's normalized error 1 − 2/π (biased scale) and
π/2 − 1 (unbiased), EDEN's D_b and D_b/(1 − D_b), with D_b the Lloyd–Max distortion
of N(0, 1) that a Lloyd iteration here computes from scratch. Unbiasedness over the
rotation's seed uses the z-score check of test_unbiased.py, with the biased scales as
negative controls.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from test_unbiased import X, bias_check, decode_many

from flcomp.codecs import HEADER_BYTES, ModelSpec, PayloadError, codec
from flcomp.codecs.coding.hadamard import BLOCK, SCALE_BITS, block_size, blocks, rotate, unrotate
from flcomp.codecs.compressors.eden import LLOYD_MAX
from flcomp.codecs.wire import pack, unpack

SIZES = [0, 1, 2, 5, 16, 17, 30, 105, 600, 2000, 4097, 100_003]


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("n", SIZES)
def test_block_size_makes_the_fewest_bits(n, bits):
    size = block_size(n, bits)
    assert size & (size - 1) == 0 and size <= BLOCK

    def cost(b: int) -> int:
        return blocks(n, b) * (bits * b + SCALE_BITS)

    assert all(cost(size) <= cost(2**k) for k in range(13))
    if n >= 100_000:
        assert cost(size) <= bits * n * 1.03  # padding and scales: under 3% past 100k entries


@pytest.mark.parametrize("size", [1, 2, 8, 64, 512, 4096])
@pytest.mark.parametrize("n", SIZES)
def test_rotation_is_orthonormal_and_inverted(n, size):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = rotate(x, 11, size)
    assert y.dtype == np.float32 and y.size == size * blocks(n, size)
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-5)
    back = unrotate(y.copy(), n, 11, size)
    assert np.allclose(back, x, rtol=0, atol=1e-6 * max(1.0, float(np.abs(x).max(initial=0))))


def test_rotation_is_linear_mixes_and_depends_on_the_seed():
    n, size = 30_000, 4096
    e = np.zeros(n, np.float32)
    e[7] = 1
    y = rotate(e, 1, size)
    # A unit vector spreads over its whole block: B entries of ±1/√B.
    assert np.count_nonzero(y) == size and np.allclose(np.abs(y[y != 0]), size**-0.5)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    assert np.allclose(rotate(2 * x + e, 5, size), 2 * rotate(x, 5, size) + rotate(e, 5, size), atol=1e-5)
    assert np.array_equal(rotate(x, 5, size), rotate(x, 5, size))
    assert not np.allclose(rotate(x, 5, size), rotate(x, 6, size))


def _normal_cdf(t: np.ndarray) -> np.ndarray:
    return np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in t])


def _normal_pdf(t: np.ndarray) -> np.ndarray:
    return np.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)


def lloyd_max(bits: int, iterations: int = 3000) -> tuple[np.ndarray, float]:
    """The b-bit Lloyd–Max centroids of N(0, 1) and their distortion, by Lloyd's iteration."""
    k = 2**bits
    c = np.linspace(-2, 2, k)
    for _ in range(iterations):
        t = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
        mass = np.diff(_normal_cdf(t))
        c = (_normal_pdf(t[:-1]) - _normal_pdf(t[1:])) / mass  # each cell's conditional mean
    t = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]])
    return c, 1 - float(np.sum(np.diff(_normal_cdf(t)) * c**2))


@pytest.mark.parametrize("bits", sorted(LLOYD_MAX))
def test_the_tabulated_centroids_are_lloyd_max(bits):
    c, _ = lloyd_max(bits)
    assert np.allclose(c[2 ** (bits - 1) :], LLOYD_MAX[bits], rtol=0, atol=2e-6)


def nmse(c, n: int = 2**15, trials: int = 4) -> float:
    """Mean over a few Gaussian updates of ‖x̂ − x‖² / ‖x‖²."""
    spec, rng, errors = ModelSpec.flat(n), np.random.default_rng(3), []
    for i in range(trials):
        x = rng.standard_normal(n).astype(np.float32)
        (out,) = c.decoder(spec).decode(c.encoder(spec, seed=i).encode([x]))
        errors.append(np.sum((out.astype(np.float64) - x) ** 2) / np.sum(x.astype(np.float64) ** 2))
    return float(np.mean(errors))


def test_drive_error_is_the_papers():
    assert nmse(codec("drive", unbiased=False)) == pytest.approx(1 - 2 / math.pi, rel=0.02)
    assert nmse(codec("drive", unbiased=True)) == pytest.approx(math.pi / 2 - 1, rel=0.02)


@pytest.mark.parametrize("bits", sorted(LLOYD_MAX))
def test_eden_error_follows_the_lloyd_max_distortion(bits):
    _, distortion = lloyd_max(bits)
    assert nmse(codec("eden", bits=bits, unbiased=False)) == pytest.approx(distortion, rel=0.03)
    assert nmse(codec("eden", bits=bits)) == pytest.approx(distortion / (1 - distortion), rel=0.03)


def test_eden_at_one_bit_is_drive():
    n = 5000
    spec = ModelSpec.flat(n)
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    for unbiased in (True, False):
        (a,) = (
            codec("drive", unbiased=unbiased)
            .decoder(spec)
            .decode(codec("drive", unbiased=unbiased).encoder(spec, seed=4).encode([x]))
        )
        (b,) = (
            codec("eden", bits=1, unbiased=unbiased)
            .decoder(spec)
            .decode(codec("eden", bits=1, unbiased=unbiased).encoder(spec, seed=4).encode([x]))
        )
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "c, bits", [(codec("drive"), 1)] + [(codec("eden", bits=b), b) for b in sorted(LLOYD_MAX)]
)
def test_bits_per_entry_are_measured(c, bits):
    shapes = [(1000, 1000), (30,), (7, 5, 3)]
    spec = ModelSpec.of([np.zeros(s, np.float32) for s in shapes])
    update = [np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in shapes]
    payload = c.encoder(spec).encode(update)
    per_tensor = []  # seed, one scale a block, the indices
    for t in spec.tensors:
        size = block_size(t.size, bits)
        per_tensor.append(4 + 4 * blocks(t.size, size) + -(-size * blocks(t.size, size) // 8) * bits)
    assert len(payload) == HEADER_BYTES + sum(per_tensor)
    assert len(payload) * 8 / spec.size < bits * 1.02


UNBIASED = [codec("drive"), codec("eden"), codec("eden", bits=4)]


@pytest.mark.parametrize("c", UNBIASED, ids=lambda c: c.describe())
def test_unbiased_scales_are_unbiased_over_the_rotation(c):
    check = bias_check(decode_many(c, 2_000), X.astype(np.float64))
    assert check.unbiased, check


BIASED = [
    codec("drive", unbiased=False),
    codec("eden", unbiased=False),
    codec("eden", bits=4, unbiased=False),
]


@pytest.mark.parametrize("c", BIASED, ids=lambda c: c.describe())
def test_negative_control_biased_scales_fail_the_check(c):
    check = bias_check(decode_many(c, 2_000), X.astype(np.float64))
    assert not check.unbiased, check


@pytest.mark.parametrize("c", [codec("drive"), codec("eden", bits=3)], ids=lambda c: c.describe())
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 1e38])
def test_decoder_refuses_scales_that_could_overflow(c, scale):
    spec = ModelSpec.flat(300)
    payload = c.encoder(spec).encode([np.ones(300, np.float32)])
    header, _ = unpack(payload, c.compressor_class.codec_id, 1)
    body = bytearray(payload[HEADER_BYTES:])
    struct.pack_into("<f", body, 4, scale)  # after the u32 seed
    forged, _ = pack(header, [bytes(body)])
    with pytest.raises(PayloadError):
        c.decoder(spec).decode(forged)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("c", [codec("drive"), codec("eden")], ids=lambda c: c.describe())
def test_updates_past_float32s_range_after_rotation_are_refused(c):
    spec = ModelSpec.flat(256)
    enc = c.encoder(spec)
    with pytest.raises(ValueError):
        enc.encode([np.full(256, 3e38, np.float32)])
    assert not enc.pending
