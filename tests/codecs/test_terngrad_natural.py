"""TernGrad (Wen et al. 2017) and natural compression (Horváth et al. 2019): what they decode to,
their unbiasedness (the project's z-score check, with biased negative controls), the paper's
variance bound of natural compression, and bits per entry from len(payload)."""

from __future__ import annotations

import numpy as np
import pytest
from test_unbiased import X, bias_check

from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, codec

N = 100_000


def decode_once(c: Codec, x: np.ndarray, seed: int = 0) -> np.ndarray:
    spec = ModelSpec.flat(x.size)
    (out,) = c.decoder(spec).decode(c.encoder(spec, seed=seed).encode([x]))
    return out


def decode_many(c: Codec, x: np.ndarray, steps: int) -> np.ndarray:
    """Decodes of `steps` committed steps of one link, as a (steps, n) float64 array."""
    spec = ModelSpec.flat(x.size)
    enc, dec = c.encoder(spec, seed=5), c.decoder(spec)
    out = np.empty((steps, x.size))
    for i in range(steps):
        (out[i],) = dec.decode(enc.encode([x]))
        dec.commit()
        enc.sync(dec.fingerprint)
    return out


def gaussian(n: int = N, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def binary_entropy(q: float) -> float:
    return 0.0 if q in (0, 1) else -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


# --- TernGrad ---------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.0, 2.5, 1.0])
def test_terngrad_is_plus_minus_s_or_zero_with_the_signs_of_x(clip):
    x = gaussian(10_000)
    out = decode_once(codec("terngrad", clip=clip), x)
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    s = np.abs(x).max() if clip == 0 else min(np.abs(x).max(), clip * rms)
    nonzero = out != 0
    assert len(np.unique(np.abs(out[nonzero]))) == 1
    np.testing.assert_allclose(np.abs(out[nonzero]), s, rtol=1e-6)
    np.testing.assert_array_equal(np.sign(out[nonzero]), np.sign(x[nonzero]))
    # Entries at or beyond s are always sent; the rate of the others is about |x|/s.
    assert nonzero[np.abs(x) >= s].all()
    assert abs(nonzero.mean() - np.minimum(np.abs(x) / s, 1).mean()) < 0.02


def test_terngrad_keeps_a_zero_tensor_and_never_clips_a_constant_one():
    assert not decode_once(codec("terngrad"), np.zeros(100, np.float32)).any()
    np.testing.assert_array_equal(decode_once(codec("terngrad"), np.full(7, -3.0, np.float32)), -3.0)


def test_terngrad_without_clipping_is_unbiased():
    check = bias_check(decode_many(codec("terngrad", clip=0.0), X, 2_000), X.astype(np.float64))
    assert check.unbiased, check


OUTLIERS = X.copy()
OUTLIERS[::100] *= 4
"""X with 20 entries 4× larger (2 to 6): most past 2.5 of the root mean square (≈ 2.8 here), so clipped."""


def test_terngrad_without_clipping_is_unbiased_with_outliers_too():
    check = bias_check(decode_many(codec("terngrad", clip=0.0), OUTLIERS, 2_000), OUTLIERS.astype(np.float64))
    assert check.unbiased, check


def test_negative_control_clipped_terngrad_fails_the_check_at_the_outliers():
    samples = decode_many(codec("terngrad"), OUTLIERS, 2_000)
    assert not bias_check(samples, OUTLIERS.astype(np.float64)).unbiased
    rest = np.ones(OUTLIERS.size, bool)
    rest[::100] = False
    assert bias_check(samples[:, rest], OUTLIERS[rest].astype(np.float64)).unbiased, (
        "unbiased where unclipped"
    )


@pytest.mark.parametrize("clip", [2.5, 0.0])
def test_terngrad_bits_per_entry_are_near_the_ternary_entropy(clip):
    x = gaussian()
    c = codec("terngrad", clip=clip)
    payload = c.encoder(ModelSpec.flat(N)).encode([x])
    q = float(np.count_nonzero(decode_once(c, x)) / N)
    bits = len(payload) * 8 / N
    overhead = 8 * (HEADER_BYTES + 4 + 4 + 64) / N  # s, the blob's length, the zstd frame's own bytes
    # At most the packing (5 levels a byte, 1.6 bits), and within 10% of h(q) + q (signs even).
    assert bits <= 8 / 5 + overhead
    assert bits <= 1.1 * (binary_entropy(q) + q) + overhead
    assert bits <= (1.26 if clip else 0.92)  # measured: 1.23 (q ≈ 0.32) and 0.88 (q ≈ 0.19)


def test_terngrad_tiny_tensors_travel_packed():
    """A 3-entry tensor: its three packed bytes (a byte a level below a group of 5) beat any zstd frame."""
    payload = codec("terngrad").encoder(ModelSpec.flat(3)).encode([np.float32([1, -2, 0.5])])
    assert len(payload) == HEADER_BYTES + 4 + 4 + 3


# --- natural compression ----------------------------------------------------------------------


def neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The powers of two 2^a ≤ |x| < 2^(a+1) around each normal |x| (float64)."""
    a = np.floor(np.log2(np.abs(x.astype(np.float64))))
    return 2.0**a, 2.0 ** (a + 1)


def test_natural_rounds_every_entry_to_one_of_its_two_powers_of_two():
    rng = np.random.default_rng(2)
    x = (rng.choice([-1, 1], 5000) * 2.0 ** rng.uniform(-120, 120, 5000)).astype(np.float32)
    out = decode_once(codec("natural"), x).astype(np.float64)
    low, high = neighbours(x)
    assert np.all((np.abs(out) == low) | (np.abs(out) == high))
    np.testing.assert_array_equal(np.sign(out), np.sign(x))
    exact = np.float32([1, -0.5, 2.0**-126, 2.0**127, -(2.0**-100)])
    np.testing.assert_array_equal(decode_once(codec("natural"), exact), exact)


def test_natural_zeros_subnormals_and_the_top_binade():
    tiny, top = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    x = np.float32([0, -0.0, 1e-45, -3e-39, tiny / 2, 2.0**127 * 1.5, top, -top])
    outs = np.stack([decode_once(codec("natural"), x, seed) for seed in range(200)])
    assert not outs[:, :2].any()
    subnormal = np.abs(outs[:, 2:5])
    assert np.isin(subnormal, [0, tiny]).all() and (subnormal == tiny).any() and (subnormal == 0).any()
    # Unbiased below the normals too: the mean of 0 or 2⁻¹²⁶ is the subnormal itself.
    np.testing.assert_allclose(subnormal.mean(axis=0)[1:], np.abs(x[3:5]), rtol=0.25)
    np.testing.assert_array_equal(
        outs[:, 5:], np.broadcast_to(np.float32([2.0**127, 2.0**127, -(2.0**127)]), (200, 3))
    )


def test_natural_is_unbiased():
    # Mantissas kept off 0 and 1, so that every entry rounds either way often enough in M draws.
    rng = np.random.default_rng(4)
    x = rng.choice([-1, 1], 2000) * 2.0 ** rng.integers(-3, 3, 2000) * rng.uniform(1.05, 1.95, 2000)
    x = x.astype(np.float32)
    check = bias_check(decode_many(codec("natural"), x, 2_000), x.astype(np.float64))
    assert check.unbiased, check


def test_negative_control_natural_fails_the_check_where_it_saturates():
    """Entries past 2¹²⁷ all become 2¹²⁷: the check must see that bias."""
    x = (X * np.float32(2.0**127)).astype(np.float32)
    samples = decode_many(codec("natural"), x, 200)
    assert not bias_check(samples, x.astype(np.float64)).unbiased


def test_natural_variance_meets_the_papers_bound():
    """E[C(x)²] ≤ (9/8)·x² (ω = 1/8), reached at |x| = (4/3)·2^a; E[C(x)²] = x² on powers of two."""
    x = np.float32([4 / 3, -(4 / 3) * 2.0**-20, 1.1, 1.9, 2.0, 0.75 * 2.0**30])
    samples = decode_many(codec("natural"), x, 4_000)
    ratio = (samples**2).mean(axis=0) / x.astype(np.float64) ** 2
    low, high = neighbours(x)
    p_up = (np.abs(x) - low) / low
    expected = ((1 - p_up) * low**2 + p_up * high**2) / x.astype(np.float64) ** 2
    np.testing.assert_allclose(ratio, expected, rtol=0.02)
    assert ratio.max() <= 9 / 8 * 1.02 and ratio[0] > 9 / 8 * 0.98 and ratio[4] == 1


def test_natural_bits_per_entry():
    x = gaussian()
    payload = codec("natural").encoder(ModelSpec.flat(N)).encode([x])
    exponents = (decode_once(codec("natural"), x).view(np.uint32) >> 23) & 0xFF
    p = np.bincount(exponents) / N
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    bits = len(payload) * 8 / N
    overhead = 8 * (HEADER_BYTES + 4 + 128) / N  # the blob's length, the zstd frame's header and tables
    assert bits <= 9 + overhead, "never more than a sign and an 8-bit exponent"
    assert bits <= 1 + 1.2 * entropy + overhead, "zstd-coded exponents, within 20% of their entropy"
    assert bits <= 4.1  # measured: 4.01 (the exponents' entropy: 2.59 bits, zstd: 3.0)


def test_natural_tiny_tensors_travel_raw():
    payload = codec("natural").encoder(ModelSpec.flat(3)).encode([np.float32([1, -2, 0.5])])
    assert len(payload) == HEADER_BYTES + 4 + 3 + 1
