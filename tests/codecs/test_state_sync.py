"""The loss-safe link protocol: both ends hold the same shared state whatever the link does."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    CONFIGS,
    SPEC,
    config_id,
    copied_state,
    random_update,
    shared_states_equal,
    transmit,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import (
    HEADER_BYTES,
    PayloadError,
    ProtocolError,
    RoundContext,
    StateMismatchError,
    codec,
)

ACTIONS = ["delivered", "lost", "late", "skipped", "ack_lost", "key_frame"]
"""What can happen to a client in one round:

delivered  the payload is decoded and committed, the encoder syncs (commits)
lost       the payload never arrives; the encoder syncs (rolls back)
late       decoded but discarded by the server (rollback); the encoder syncs (rolls back)
skipped    the client does not take part: no encode, no sync
ack_lost   decoded and committed, but the encoder never hears: it commits on its next sync
key_frame  a delivered key frame
"""


def is_key_frame(payload: bytes) -> bool:
    return bool(payload[4] & 0x01)


def is_lag_skip(c, payload: bytes) -> bool:
    return c.name == "lag" and len(payload) == HEADER_BYTES + 1


class Link:
    """One encoder and its decoder, driven round by round."""

    def __init__(self, c, seed: int) -> None:
        self.c = c
        self.rng = np.random.default_rng(seed)
        self.enc, self.dec = c.encoder(SPEC, seed=seed), c.decoder(SPEC)
        self.update = random_update(self.rng)
        self.last = [np.zeros(t.shape, np.float32) for t in SPEC.tensors]
        self.committed = 0
        self.skips = 0

    def next_update(self):
        """The last update again, slightly perturbed, or a new one (LAG skips the first two),
        and a context with or without LAG-WK's history of model changes."""
        kind = self.rng.choice(["same", "perturbed", "new"])
        if kind == "new":
            self.update = random_update(self.rng)
        elif kind == "perturbed":
            noise = [self.rng.standard_normal(x.shape).astype(np.float32) for x in self.update]
            self.update = [x + 0.05 * n for x, n in zip(self.update, noise)]
        ctx = RoundContext(model_change_sq=(float(self.rng.choice([0.0, 1e3])),) * 3)
        return [x.copy() for x in self.update], ctx

    def play(self, action: str) -> bool:
        """Play one round; returns whether the encoder synced at its end."""
        enc, dec = self.enc, self.dec
        if action == "skipped":
            return False
        if enc.pending:  # only an ack_lost round leaves a step pending
            assert enc.sync(dec.fingerprint) == "committed"
        update, ctx = self.next_update()
        payload = enc.encode(update, ctx, key_frame=action == "key_frame")
        assert is_key_frame(payload) == (action == "key_frame")
        if action == "lost":
            assert enc.sync(dec.fingerprint) == "rolled back"
            return True
        out = dec.decode(payload)
        if action == "late":
            dec.rollback()
            assert enc.sync(dec.fingerprint) == "rolled back"
            return True
        dec.commit()
        self.committed += 1
        if action == "key_frame":
            self.last = [np.zeros(t.shape, np.float32) for t in SPEC.tensors]
        if is_lag_skip(self.c, payload):
            self.skips += 1
            assert all(np.array_equal(o, x) for o, x in zip(out, self.last)), "skip != last sent"
        self.last = [o.copy() for o in out]
        if action == "ack_lost":
            return False
        assert enc.sync(dec.fingerprint) == "committed"
        return True

    def assert_in_sync(self) -> None:
        assert not self.enc.pending and not self.dec.pending
        assert self.enc.fingerprint == self.dec.fingerprint
        assert self.enc.steps == self.committed
        assert shared_states_equal(self.enc, self.dec)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    actions=st.lists(st.sampled_from(ACTIONS), min_size=50, max_size=50),
    seed=st.integers(0, 2**16),
)
def test_random_link_keeps_both_ends_in_sync(c, actions, seed):
    link = Link(c, seed)
    for action in actions:
        if link.play(action):
            link.assert_in_sync()
    if link.enc.pending:
        assert link.enc.sync(link.dec.fingerprint) == "committed"
    link.assert_in_sync()


@pytest.mark.parametrize("c", [c for c in CONFIGS if c.name == "lag"], ids=config_id)
def test_the_random_links_exercise_lag_skips(c):
    link = Link(c, seed=0)
    for _ in range(40):
        link.play("delivered")
    assert 5 <= link.skips <= 35


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_a_rolled_back_step_is_encoded_again_identically(c, rng):
    enc, dec = c.encoder(SPEC, seed=4), c.decoder(SPEC)
    transmit(enc, dec, random_update(rng), delivered=True)
    update = random_update(rng)
    first = enc.encode(update)
    enc.rollback()
    assert enc.encode(update) == first


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_payloads_depend_only_on_seed_state_and_update(c, rng):
    update = random_update(rng)
    same = [c.encoder(SPEC, seed=11).encode(update) for _ in range(2)]
    assert same[0] == same[1]


# --- state_dict / load_state_dict ---------------------------------------------------


def warmed_up_link(c, rng, rounds: int = 4):
    enc, dec = c.encoder(SPEC, seed=9), c.decoder(SPEC)
    for r in range(rounds):
        transmit(enc, dec, random_update(rng), delivered=r != 1)
    return enc, dec


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_encoder_restored_with_a_pending_step_sends_identical_bytes(c, rng):
    enc, dec = warmed_up_link(c, rng)
    payload = enc.encode(random_update(rng))
    restored = c.encoder(SPEC, seed=9)
    restored.load_state_dict(copied_state(enc.state_dict()))
    assert restored.pending and restored.pending_fingerprint == enc.pending_fingerprint
    dec.decode(payload)
    dec.commit()
    assert enc.sync(dec.fingerprint) == restored.sync(dec.fingerprint) == "committed"
    update = random_update(rng)
    assert enc.encode(update) == restored.encode([x.copy() for x in update])


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_encoder_restored_then_rolled_back_sends_identical_bytes(c, rng):
    enc, dec = warmed_up_link(c, rng)
    enc.encode(random_update(rng))
    restored = c.encoder(SPEC, seed=9)
    restored.load_state_dict(copied_state(enc.state_dict()))
    assert enc.sync(dec.fingerprint) == restored.sync(dec.fingerprint) == "rolled back"
    update = random_update(rng)
    assert enc.encode(update) == restored.encode([x.copy() for x in update])


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_decoder_restored_decodes_identically(c, rng):
    enc, dec = warmed_up_link(c, rng)
    restored = c.decoder(SPEC)
    restored.load_state_dict(copied_state(dec.state_dict()))
    payload = enc.encode(random_update(rng))
    for a, b in zip(dec.decode(payload), restored.decode(payload)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("c", [codec("lag"), codec("topk"), codec("powersgd")], ids=config_id)
def test_load_state_dict_refuses_missing_or_misshapen_entries(c, rng):
    enc, dec = warmed_up_link(c, rng)
    for end in (enc, dec):
        state = copied_state(end.state_dict())
        arrays = [k for k, v in state.items() if isinstance(v, np.ndarray)]
        broken = [{k: v for k, v in state.items() if k != "fingerprint"}]
        broken += [{**state, "fingerprint": -1}, {**state, "fingerprint": 2**32}]
        broken += [{**state, k: state[k][:-1]} for k in arrays]
        broken += [{**state, k: state[k].astype(np.float64)} for k in arrays]
        broken += [{k: v for k, v in state.items() if k != drop} for drop in arrays]
        for d in broken:
            with pytest.raises(ValueError):
                end.load_state_dict(d)


# --- protocol errors ----------------------------------------------------------------


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_endpoints_refuse_out_of_order_calls(c, rng):
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for end in (enc, dec):
        for step in (end.commit, end.rollback):
            with pytest.raises(ProtocolError):
                step()
    payload = enc.encode(random_update(rng))
    with pytest.raises(ProtocolError):
        enc.encode(random_update(rng))
    dec.decode(payload)
    with pytest.raises(ProtocolError):
        dec.decode(payload)
    assert enc.pending and dec.pending


def test_sync_outcomes(rng):
    c = codec("topk")
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    assert enc.sync(dec.fingerprint) == "in sync"
    enc.encode(random_update(rng))
    assert enc.sync(dec.fingerprint) == "rolled back"
    dec.decode(enc.encode(random_update(rng)))
    dec.commit()
    assert enc.sync(dec.fingerprint) == "committed"
    assert enc.sync(dec.fingerprint) == "in sync"
    assert enc.sync(dec.fingerprint ^ 1) == "key frame"
    assert is_key_frame(enc.encode(random_update(rng)))


# --- state mismatch and key frames --------------------------------------------------


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_diverged_decoder_refuses_then_a_key_frame_resynchronises(c, rng):
    enc, dec = warmed_up_link(c, rng)
    old = copied_state(dec.state_dict())
    for _ in range(2):
        transmit(enc, dec, random_update(rng), delivered=True)
    dec.load_state_dict(old)  # e.g. the server restarted from an older checkpoint
    fingerprint = dec.fingerprint
    with pytest.raises(StateMismatchError):
        dec.decode(enc.encode(random_update(rng)))
    assert not dec.pending and dec.fingerprint == fingerprint
    assert enc.sync(dec.fingerprint) == "key frame"
    payload = enc.encode(random_update(rng))
    assert is_key_frame(payload)
    dec.decode(payload)
    dec.commit()
    assert enc.sync(dec.fingerprint) == "committed"
    assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)
    transmit(enc, dec, random_update(rng), delivered=True)
    assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_a_replayed_payload_is_refused(c, rng):
    enc, dec = warmed_up_link(c, rng)
    payload = enc.encode(random_update(rng))
    dec.decode(payload)
    dec.commit()
    enc.sync(dec.fingerprint)
    fingerprint = dec.fingerprint
    with pytest.raises(StateMismatchError):
        dec.decode(payload)  # the link delivered it twice
    assert not dec.pending and dec.fingerprint == fingerprint


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_encoder_restored_from_an_old_checkpoint_recovers(c, rng):
    enc, dec = warmed_up_link(c, rng)
    old = copied_state(enc.state_dict())
    transmit(enc, dec, random_update(rng), delivered=True)
    enc.load_state_dict(old)  # the client restarted from an older checkpoint
    assert enc.sync(dec.fingerprint) == "key frame"
    transmit(enc, dec, random_update(rng), delivered=True)
    assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)


def test_a_key_frame_is_accepted_by_a_decoder_in_any_state(rng):
    c = codec("lag", rule="relative", xi=0.5)
    enc, dec = warmed_up_link(c, rng)
    fresh = c.encoder(SPEC)
    update = random_update(rng)
    out = dec.decode(fresh.encode(update, key_frame=True))
    assert all(np.array_equal(o, x) for o, x in zip(out, update))


# --- aliasing: state must not share memory with the caller's arrays -------------------

LAG = codec("lag", rule="relative", xi=0.5)


def test_encoder_state_does_not_alias_the_callers_update(rng):
    enc, dec = LAG.encoder(SPEC), LAG.decoder(SPEC)
    buffers = random_update(rng)
    transmit(enc, dec, buffers, delivered=True)
    for b in buffers:
        b *= 3.0  # the caller reuses its gradient buffers
    assert shared_states_equal(enc, dec)


def test_decoder_output_does_not_alias_its_state(rng):
    enc, dec = LAG.encoder(SPEC), LAG.decoder(SPEC)
    out = transmit(enc, dec, random_update(rng), delivered=True)
    for o in out:
        o *= 0.5  # the server weights the update in place
    assert shared_states_equal(enc, dec)


# --- DecoderPool --------------------------------------------------------------------


def corrupt(payload: bytes) -> bytes:
    data = bytearray(payload)
    data[-1] ^= 0x10
    return bytes(data)


@pytest.mark.parametrize("c", [codec("topk"), LAG, codec("qsgd")], ids=config_id)
def test_pool_keeps_good_updates_and_reports_bad_ones(c, rng):
    pool = c.decoder_pool(SPEC)
    encs = {name: c.encoder(SPEC, seed=i) for i, name in enumerate(["good", "bad"])}
    update = random_update(rng)
    payloads = {name: enc.encode(update) for name, enc in encs.items()}
    single = c.decoder(SPEC).decode(payloads["good"])
    result = pool.decode_round({"good": payloads["good"], "bad": corrupt(payloads["bad"])})
    assert set(result.updates) == {"good"} and set(result.errors) == {"bad"}
    assert isinstance(result.errors["bad"], PayloadError)
    assert all(np.array_equal(a, b) for a, b in zip(result.updates["good"], single))
    pool.commit("good")
    assert encs["good"].sync(pool.fingerprint("good")) == "committed"
    assert encs["bad"].sync(pool.fingerprint("bad")) == "rolled back"
    assert not pool.decoder("bad").pending


@pytest.mark.parametrize("c", [codec("topk"), LAG], ids=config_id)
def test_pool_state_dict_round_trip(c, rng):
    names = ["a", "b", "a/b", "a/shared", "client/7"]  # names that prefix other names' keys
    pool = c.decoder_pool(SPEC)
    encs = {name: c.encoder(SPEC, seed=i) for i, name in enumerate(names)}
    for r in range(3):
        result = pool.decode_round({n: e.encode(random_update(rng)) for n, e in encs.items()})
        for n, e in encs.items():
            if r != 1 or n != "b":
                pool.commit(n)
            else:
                pool.rollback(n)
            e.sync(pool.fingerprint(n))
        assert not result.errors
    restored = c.decoder_pool(SPEC)
    restored.load_state_dict(copied_state(pool.state_dict()))
    assert sorted(restored.decoders) == sorted(names)
    payloads = {n: e.encode(random_update(rng)) for n, e in encs.items()}
    a, b = pool.decode_round(payloads), restored.decode_round(payloads)
    assert not a.errors and not b.errors
    for n in names:
        assert restored.fingerprint(n) == pool.fingerprint(n)
        assert all(np.array_equal(x, y) for x, y in zip(a.updates[n], b.updates[n]))
