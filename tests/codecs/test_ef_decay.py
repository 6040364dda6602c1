"""`ef_decay=β`, leaky error feedback: e ← β·(p − C(p)); β = 1 is exact error feedback, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPEC, random_update, transmit

from flcomp.codecs import Codec, ModelSpec, codec
from flcomp.codecs.wrappers.error_feedback import ErrorFeedback

DECAYED = ["scaled_sign", "topk:ratio=0.05", "signxor:lam=1", "qsgd:error_feedback=True", "powersgd"]
"""Codecs with error feedback, stateless and stateful, biased and unbiased."""


def memory(enc) -> list[np.ndarray]:
    return ErrorFeedback.memory(enc.compressor, enc.local)


def with_decay(text: str, beta: float) -> Codec:
    return Codec.parse(f"{text}{',' if ':' in text else ':'}ef_decay={beta}")


@pytest.mark.parametrize("text", DECAYED)
def test_the_memory_is_beta_times_what_this_round_held_back(text):
    c = with_decay(text, 0.9)
    rng = np.random.default_rng(0)
    enc, dec = c.encoder(SPEC, seed=3), c.decoder(SPEC)
    for _ in range(6):
        update = random_update(rng)
        p = [x.reshape(-1) + e for x, e in zip(update, memory(enc))]
        decoded = transmit(enc, dec, update, delivered=True)
        for e, pi, d in zip(memory(enc), p, decoded):
            np.testing.assert_array_equal(e, np.float32(0.9) * (pi - d.reshape(-1)))


@pytest.mark.parametrize("text", DECAYED)
def test_beta_one_is_exact_error_feedback_bit_for_bit(text):
    exact, one = Codec.parse(text), with_decay(text, 1.0)
    assert one == exact and one.describe() == exact.describe()
    rng = np.random.default_rng(1)
    enc, dec = exact.encoder(SPEC, seed=3), exact.decoder(SPEC)
    for _ in range(6):
        update = random_update(rng)
        p = [x.reshape(-1) + e for x, e in zip(update, memory(enc))]
        decoded = transmit(enc, dec, update, delivered=True)
        for e, pi, d in zip(memory(enc), p, decoded):
            np.testing.assert_array_equal(e, pi - d.reshape(-1))  # e = p − C(p), not scaled at all


def test_beta_zero_sends_what_the_codec_without_error_feedback_sends():
    rng = np.random.default_rng(2)
    update = [random_update(rng) for _ in range(5)]
    forgetful, plain = Codec.parse("scaled_sign:ef_decay=0"), Codec.parse("scaled_sign:error_feedback=False")
    encoders = [forgetful.encoder(SPEC), plain.encoder(SPEC)]
    for u in update:
        assert encoders[0].encode(u) == encoders[1].encode(u)
        for enc in encoders:
            enc.commit()
        assert not any(e.any() for e in memory(encoders[0])), "β = 0 keeps nothing"


def test_a_decayed_memory_stays_bounded_where_exact_error_feedback_winds_up():
    """One large entry among many small ones, every round: scaled sign's δ is about 1/d, so exact
    error feedback holds back almost everything; β = 0.9 keeps ‖e‖ ≤ β/(1 − β) · ‖g‖."""
    spec = ModelSpec.flat(1000)
    g = np.full(1000, 1e-3, np.float32)
    g[0] = 1.0
    norms = {}
    for beta in (1.0, 0.9):
        enc = codec("scaled_sign", ef_decay=beta).encoder(spec)
        for _ in range(300):
            enc.encode([g])
            enc.commit()
        norms[beta] = float(np.linalg.norm(memory(enc)[0]))
    bound = 0.9 / (1 - 0.9) * float(np.linalg.norm(g))
    assert norms[0.9] <= bound < norms[1.0]


def test_it_parses_and_describes_and_is_left_out_at_the_default():
    c = Codec.parse("scaled_sign:ef_decay=0.9")
    assert c.ef_decay == 0.9 and c.describe() == "scaled_sign:error_feedback=True,ef_decay=0.9"
    assert Codec.parse(c.describe()) == c
    assert (
        codec("topk", ratio=0.1, momentum=0.5, ef_decay=0.25)
        .describe()
        .endswith(",momentum=0.5,ef_decay=0.25")
    )
    assert "ef_decay" not in Codec.parse("scaled_sign").describe()
    assert Codec.parse("scaled_sign").describe() == "scaled_sign:error_feedback=True"  # texts made before it
    assert Codec.parse("scaled_sign:ef_decay=1") == Codec.parse("scaled_sign")


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), float("inf"), -float("inf")])
def test_values_outside_zero_to_one_are_refused(beta):
    with pytest.raises(ValueError, match="ef_decay"):
        codec("scaled_sign", ef_decay=beta)


@pytest.mark.parametrize(
    "text", ["scaled_sign:ef_decay=nan", "scaled_sign:ef_decay=2", "scaled_sign:ef_decay=x"]
)
def test_bad_texts_are_refused(text):
    with pytest.raises(ValueError, match="ef_decay"):
        Codec.parse(text)


@pytest.mark.parametrize(
    "text",
    ["fp32:ef_decay=0.9", "qsgd:ef_decay=0.9", "topk:error_feedback=False,ef_decay=0.9", "lgc:ef_decay=0.9"],
)
def test_codecs_without_error_feedback_refuse_it(text):
    with pytest.raises(ValueError, match="error feedback|lossless|own"):
        Codec.parse(text)


def test_the_wrapper_refuses_a_bad_decay_itself():
    inner = codec("scaled_sign", error_feedback=False).compressor(SPEC)
    with pytest.raises(ValueError, match="ef_decay"):
        ErrorFeedback(inner, float("nan"))


def test_the_memory_is_found_through_momentum_and_absent_without_error_feedback():
    c = codec("scaled_sign", momentum=0.5, ef_decay=0.5)
    enc = c.encoder(SPEC)
    enc.encode(random_update(np.random.default_rng(3)))
    enc.commit()
    found = memory(enc)
    assert [e.shape for e in found] == [(t.size,) for t in SPEC.tensors]
    assert all(e is enc.local[f"inner/ef/{i}"] for i, e in enumerate(found))
    assert memory(codec("qsgd").encoder(SPEC)) is None
