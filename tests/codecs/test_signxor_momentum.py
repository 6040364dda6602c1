"""Momentum before the codec (`momentum=β`): m ← β·m + g, then the codec (error feedback
included) sends C(m + e); m is encoder-local state, committed and rolled back with the step."""

import numpy as np
import pytest
from conftest import copied_state, transmit

from flcomp.codecs import Codec, ModelSpec, codec
from flcomp.codecs.wrappers.momentum import Momentum

SPEC = ModelSpec.flat(0, 7, 300)
BETA = 0.75


def updates(rng, n: int):
    return [[rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors] for _ in range(n)]


def momentum_of(enc, i: int) -> np.ndarray:
    return enc.state_dict()[f"local/momentum/{i}"]


def test_parse_describe_and_defaults():
    c = Codec.parse("signxor:lam=1,momentum=0.9")
    assert c == codec("signxor", lam=1.0, momentum=0.9)
    assert c.describe() == "signxor:lam=1.0,coding=context,error_feedback=True,momentum=0.9"
    assert Codec.parse(c.describe()) == c
    assert codec("signxor").momentum == 0.0 and "momentum" not in codec("signxor").describe()
    assert isinstance(c.compressor(SPEC), Momentum)
    assert not isinstance(codec("signxor").compressor(SPEC), Momentum)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_momentum_must_be_in_zero_one(bad):
    with pytest.raises(ValueError):
        codec("scaled_sign", momentum=bad)


def test_lossless_codecs_refuse_momentum():
    with pytest.raises(ValueError, match="lossless"):
        codec("fp32", momentum=0.9)


@pytest.mark.parametrize("name", ["signxor", "scaled_sign"])
def test_momentum_follows_the_committed_steps_only(name, rng):
    """Lost steps (rolled back by sync) leave m as it was; delivered ones advance it."""
    c = codec(name, momentum=BETA)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    expected = [np.zeros(t.size, np.float32) for t in SPEC.tensors]
    for r, update in enumerate(updates(rng, 12)):
        delivered = r % 3 != 1
        transmit(enc, dec, update, delivered)
        if delivered:
            expected = [np.float32(BETA) * m + u.reshape(-1) for m, u in zip(expected, update)]
        for i, m in enumerate(expected):
            np.testing.assert_array_equal(momentum_of(enc, i), m)


def test_error_feedback_memory_holds_what_the_momentum_did_not_send(rng):
    """Σ decoded + e = Σ m over committed steps: error feedback applies to p = m + e."""
    c = codec("signxor", lam=1.0, momentum=BETA)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    sent = [np.zeros(t.size) for t in SPEC.tensors]
    momentum_sum = [np.zeros(t.size) for t in SPEC.tensors]
    for update in updates(rng, 15):
        out = transmit(enc, dec, update, delivered=True)
        for i in range(len(SPEC)):
            sent[i] += out[i].reshape(-1)
            momentum_sum[i] += momentum_of(enc, i)
    for i in range(len(SPEC)):
        error = enc.state_dict()[f"local/inner/ef/{i}"]
        np.testing.assert_allclose(sent[i] + error, momentum_sum[i], rtol=0, atol=1e-4)


def test_a_pending_step_is_saved_and_restored_with_its_momentum(rng):
    c = codec("signxor", momentum=BETA)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    first, second = updates(rng, 2)
    transmit(enc, dec, first, delivered=True)
    before = momentum_of(enc, 2).copy()
    payload = enc.encode(second)
    restored = c.encoder(SPEC)
    restored.load_state_dict(copied_state(enc.state_dict()))
    assert "pending/local/momentum/2" in enc.state_dict()
    restored.rollback()  # the payload was lost
    np.testing.assert_array_equal(momentum_of(restored, 2), before)
    dec.decode(payload)
    dec.commit()
    enc.sync(dec.fingerprint)  # delivered
    np.testing.assert_array_equal(momentum_of(enc, 2), np.float32(BETA) * before + second[2])


def test_a_key_frame_keeps_the_momentum(rng):
    c = codec("signxor", momentum=BETA)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    first, second = updates(rng, 2)
    transmit(enc, dec, first, delivered=True)
    enc.request_key_frame()
    transmit(enc, dec, second, delivered=True)
    np.testing.assert_array_equal(momentum_of(enc, 1), np.float32(BETA) * first[1] + second[1])
