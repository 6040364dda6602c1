"""Error feedback's invariant: Σ decoded + memory = Σ inputs, over committed steps only."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPEC, config_id, random_update, transmit

from flcomp.codecs import codec

EF_CONFIGS = [
    codec("topk"),
    codec("topk", ratio=0.1, value_dtype="float16"),
    codec("randomk"),
    codec("scaled_sign"),
    codec("powersgd"),
    codec("powersgd", rank=2, warm_start=False),
    codec("qsgd", error_feedback=True),
    codec("qsgd", levels=2, coding="range", error_feedback=True),
    codec("fp16", error_feedback=True),
    codec("bf16", error_feedback=True),
    codec("lag", rule="relative", xi=0.5, error_feedback=True),
]


def memory(enc) -> list[np.ndarray]:
    d = enc.state_dict()
    return [d[f"local/ef/{i}"].reshape(t.shape) for i, t in enumerate(SPEC.tensors)]


def run_link(c, rounds: int, seed: int, p_delivered: float, key_frame_every: int = 0):
    """Random rounds over a lossy link; returns (Σ inputs, Σ decoded) of delivered rounds, and the encoder."""
    rng = np.random.default_rng(seed)
    enc, dec = c.encoder(SPEC, seed=seed), c.decoder(SPEC)
    sent = [np.zeros(t.shape) for t in SPEC.tensors]
    got = [np.zeros(t.shape) for t in SPEC.tensors]
    for r in range(rounds):
        update = random_update(rng, scale=float(rng.choice([0.1, 1.0, 10.0])))
        if key_frame_every and r % key_frame_every == key_frame_every - 1:
            enc.request_key_frame()
        before = memory(enc)
        out = transmit(enc, dec, update, delivered=bool(rng.random() < p_delivered))
        if out is None:
            assert all(np.array_equal(a, b) for a, b in zip(memory(enc), before)), "rollback kept memory"
            continue
        for acc, x in zip(sent, update):
            acc += x
        for acc, o in zip(got, out):
            acc += o
    return sent, got, enc


def assert_invariant(sent, got, enc) -> None:
    for i, (s, g, e) in enumerate(zip(sent, got, memory(enc))):
        scale = max(1.0, float(np.abs(s).max()), float(np.abs(e).max()))
        np.testing.assert_allclose(g + e, s, rtol=0, atol=1e-5 * scale, err_msg=f"tensor {i}")


@pytest.mark.parametrize("c", EF_CONFIGS, ids=config_id)
def test_every_delivered_round_keeps_the_invariant(c):
    assert c.error_feedback
    assert_invariant(*run_link(c, rounds=30, seed=1, p_delivered=1.0))


@pytest.mark.parametrize("c", EF_CONFIGS, ids=config_id)
def test_lost_rounds_enter_neither_sum(c):
    assert_invariant(*run_link(c, rounds=40, seed=2, p_delivered=0.6))


@pytest.mark.parametrize("c", EF_CONFIGS, ids=config_id)
def test_key_frames_keep_the_memory(c):
    assert_invariant(*run_link(c, rounds=30, seed=3, p_delivered=0.8, key_frame_every=4))


@pytest.mark.parametrize("c", EF_CONFIGS, ids=config_id)
def test_memory_is_nonzero_for_a_lossy_codec(c, rng):
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    update = random_update(rng)
    for scale in (1.0, 1.05):  # LAG sends the first round exactly, skips the second
        transmit(enc, dec, [scale * x for x in update], delivered=True)
    assert any(np.abs(e).max() > 0 for e in memory(enc))


@pytest.mark.parametrize("c", EF_CONFIGS, ids=config_id)
def test_without_error_feedback_there_is_no_memory(c):
    plain = codec(c.name, error_feedback=False, **vars(c.config))
    enc = plain.encoder(SPEC)
    assert not any(k.startswith("local/ef/") for k in enc.state_dict())
