"""STC (Sattler et al. 2019): the top-k as ±μ, the bits of its Golomb-coded positions against the
paper's formula. STC as the server's broadcast codec (two-way STC, the paper's Algorithm 2) is
one of tests/flower/test_two_way.py's downlink codecs."""

from __future__ import annotations

import numpy as np
import pytest

from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, codec

SPEC = ModelSpec.flat(3000, 50, 7)


def decode_once(c: Codec, update: list[np.ndarray], spec: ModelSpec = SPEC) -> list[np.ndarray]:
    enc, dec = c.encoder(spec), c.decoder(spec)
    return dec.decode(enc.encode(update))


def updates(rng: np.random.Generator, spec: ModelSpec = SPEC) -> list[np.ndarray]:
    # Tensors of very different scales, as layers are.
    return [(10.0**-i * rng.standard_normal(t.size)).astype(np.float32) for i, t in enumerate(spec.tensors)]


def assert_ternary_top_k(x: np.ndarray, out: np.ndarray, k: int) -> None:
    """`out` is ±μ at the k largest |x| (sign of x), 0 elsewhere, μ their mean magnitude."""
    kept = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
    np.testing.assert_array_equal(np.flatnonzero(out), kept)
    mu = np.abs(x[kept]).mean(dtype=np.float64)
    np.testing.assert_allclose(np.abs(out[kept]), mu, rtol=1e-6)
    assert len(np.unique(np.abs(out[kept]))) == 1
    np.testing.assert_array_equal(np.sign(out[kept]), np.sign(x[kept]))


@pytest.mark.parametrize("ratio", [1 / 400, 0.01, 0.3, 1.0])
def test_the_whole_update_is_its_top_k_as_plus_or_minus_mu(ratio, rng):
    x = updates(rng)
    out = decode_once(codec("stc", ratio=ratio, per_tensor=False, error_feedback=False), x)
    k = int(np.ceil(ratio * SPEC.size))
    assert_ternary_top_k(np.concatenate(x), np.concatenate(out), k)
    assert np.count_nonzero(out[2]) == 0 or ratio == 1.0, "one μ for all: the small tensor is not chosen"


def test_per_tensor_each_tensor_has_its_own_k_and_mu(rng):
    x = updates(rng)
    out = decode_once(codec("stc", ratio=0.01, error_feedback=False), x)
    for xi, oi in zip(x, out):
        assert_ternary_top_k(xi, oi, int(np.ceil(0.01 * xi.size)))


def test_zero_entries_are_never_sent_and_mu_averages_the_others():
    x = np.zeros(1000, np.float32)
    x[[3, 500]] = [2.0, -4.0]
    (out,) = decode_once(codec("stc", ratio=0.01, error_feedback=False), [x], ModelSpec.flat(1000))
    expected = np.zeros(1000, np.float32)
    expected[[3, 500]] = [3.0, -3.0]
    np.testing.assert_array_equal(out, expected)
    (zero,) = decode_once(codec("stc"), [np.zeros(1000, np.float32)], ModelSpec.flat(1000))
    assert not zero.any()


@pytest.mark.parametrize("per_tensor, converges", [(True, True), (False, False)])
def test_one_mu_over_tensors_of_different_scales_stalls_where_per_tensor_converges(per_tensor, converges):
    """Distributed GD on ½‖w − t‖² with error feedback, beside a counter tensor that moves by 1
    a round: the whole update's μ is the counter's scale, and w's kept entries get it too."""
    t = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    spec = ModelSpec.flat(64, 3)
    c = codec("stc", ratio=0.1, per_tensor=per_tensor)
    enc, dec = c.encoder(spec), c.decoder(spec)
    w = np.zeros(64, np.float32)
    for _ in range(100):
        (dw, _) = dec.decode(enc.encode([np.float32(0.1) * (w - t), np.full(3, -1, np.float32)]))
        dec.commit()
        enc.sync(dec.fingerprint)
        w -= dw
    error = np.linalg.norm(w - t) / np.linalg.norm(t)
    assert (error < 1e-3) if converges else (error > 0.3)


@pytest.mark.parametrize("per_tensor", [True, False])
def test_stats_report_the_entries_sent(per_tensor, rng):
    enc = codec("stc", ratio=0.01, per_tensor=per_tensor).encoder(SPEC)
    enc.encode(updates(rng))
    sizes = [t.size for t in SPEC.tensors] if per_tensor else [SPEC.size]
    assert enc.last_stats == {"entries_sent": float(sum(np.ceil(0.01 * n) for n in sizes))}


def golomb(p: float) -> tuple[int, float]:
    """The paper's b* = 1 + ⌊log2(log(φ − 1)/log(1 − p))⌋ and b̄_pos = b* + 1/(1 − (1 − p)^(2^b*))."""
    phi = (1 + 5**0.5) / 2
    b = 1 + int(np.floor(np.log2(np.log(phi - 1) / np.log(1 - p))))
    return b, b + 1 / (1 - (1 - p) ** 2**b)


@pytest.mark.parametrize("p, b_star", [(1 / 400, 8), (1 / 100, 6), (1 / 25, 4)])
def test_bits_per_kept_entry_meet_the_papers_golomb_formula(p, b_star):
    n = 1_000_000
    b, positions = golomb(p)
    assert b == b_star
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    payload = codec("stc", ratio=p, error_feedback=False).encoder(ModelSpec.flat(n)).encode([x])
    k = int(np.ceil(p * n))
    # body: u32 m | f32 μ | u8 Rice parameter | gaps | signs
    assert payload[HEADER_BYTES + 8] == b_star, "the coder's Rice parameter is the paper's b*"
    per_kept = (len(payload) - HEADER_BYTES) * 8 / k
    # b̄_pos + 1 sign bit, plus m, μ, the mode byte and up to a byte of padding for each of the
    # ≤ 24 unary planes, the remainders and the signs, spread over the k entries.
    assert per_kept <= positions + 1 + (64 + 8 + 26 * 8) / k
    assert per_kept >= positions + 1 - 0.1, "no fewer bits than the formula (within sampling noise)"


def test_bits_per_entry_at_the_papers_default_sparsity(rng):
    n = 100_000
    payload = codec("stc").encoder(ModelSpec.flat(n)).encode([rng.standard_normal(n).astype(np.float32)])
    assert len(payload) * 8 / n <= (golomb(1 / 400)[1] + 1) / 400 + (8 * HEADER_BYTES + 280) / n  # ≈ 0.03
