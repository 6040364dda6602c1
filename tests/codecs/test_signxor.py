"""SignXOR: scaled sign sent as range-coded sign flips against the last transmitted signs."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import copied_state, forge, no_hang, shared_states_equal, transmit
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import HEADER_BYTES, REGISTRY, Codec, ModelSpec, PayloadError, RoundContext, codec
from flcomp.codecs.coding import flip_contexts
from flcomp.codecs.compressors.signxor import SignXOR, flip_counts
from flcomp.codecs.wire import PayloadWriter

EDGE_SPEC = ModelSpec.flat(0, 1, 9, 300)
"""Tensors of every awkward size: empty, one entry, less than a byte of signs, a ragged last byte."""

PER_TENSOR_BYTES = 4 + 4  # α, flip count (u32 from 65 536 entries on; fewer bytes below)
BLOB_PREFIX = 4  # byte length of the range-coded words (u32 for vectors this long)


def entropy_bits(q: float) -> float:
    return 0.0 if q in (0.0, 1.0) else float(-(q * np.log2(q) + (1 - q) * np.log2(1 - q)))


def negative_bits(state: dict, i: int, n: int) -> np.ndarray:
    """ŝ of tensor i from a state dict, as "is negative" booleans."""
    return np.unpackbits(state[f"shared/signs/{i}"], count=n).astype(bool)


def flip_sequence(rng: np.random.Generator, d: int, rounds: int, q: float):
    """Updates whose sign pattern changes in exactly round(q·d) entries a round (magnitudes redrawn)."""
    sign = np.where(rng.random(d) < 0.5, -1.0, 1.0)
    m = round(q * d)
    for _ in range(rounds):
        yield [(sign * rng.exponential(size=d)).astype(np.float32)]
        sign[rng.choice(d, size=m, replace=False)] *= -1


def slowly_changing(rng: np.random.Generator, spec: ModelSpec, rounds: int, noise: float = 0.1):
    g = [rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors]
    for _ in range(rounds):
        yield [x.copy() for x in g]
        g = [(x + noise * rng.standard_normal(x.shape)).astype(np.float32) for x in g]


# --- registration and config --------------------------------------------------------


def test_registered_with_error_feedback_by_default():
    assert REGISTRY["signxor"] is SignXOR and SignXOR.codec_id == 19
    c = codec("signxor")
    assert c.error_feedback and c.config.lam == 0.0 and c.config.coding == "context"
    assert Codec.parse("signxor:lam=0.5,error_feedback=false") == codec(
        "signxor", lam=0.5, error_feedback=False
    )
    assert Codec.parse(c.describe()) == c


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf")])
def test_config_refuses_a_bad_lambda(lam):
    with pytest.raises(ValueError):
        codec("signxor", lam=lam)


# --- the math -----------------------------------------------------------------------


def test_lambda_zero_decodes_mean_magnitude_times_sign_of_p(rng):
    """Without error feedback p is the update itself: every round decodes α·sign(p), sign(0) = +1."""
    c = codec("signxor", lam=0.0, error_feedback=False)
    enc, dec = c.encoder(EDGE_SPEC), c.decoder(EDGE_SPEC)
    for r in range(6):
        update = [rng.standard_normal(t.shape).astype(np.float32) for t in EDGE_SPEC.tensors]
        update[3][:7] = 0.0
        update[3][7:9] = -0.0
        out = transmit(enc, dec, update, delivered=True)
        for x, o in zip(update, out):
            negative = x < 0
            assert np.array_equal(np.signbit(o), negative), f"round {r}"
            if x.size:
                alpha = np.float32(np.abs(x.astype(np.float64)).mean())
                assert np.unique(np.abs(o)).size == 1
                assert np.isclose(np.abs(o[0]), alpha, rtol=1e-6, atol=0)
                assert np.array_equal(o, np.where(negative, -np.abs(o[0]), np.abs(o[0])))


@pytest.mark.parametrize("error_feedback", [True, False])
def test_lambda_zero_reproduces_scaled_sign_bit_for_bit_at_fewer_bytes(error_feedback, rng):
    """The same update sequence through SignXOR (λ = 0) and scaled sign, each with its own memory."""
    spec = ModelSpec.flat(4000, 3000)
    links = [
        codec("signxor", lam=0.0, error_feedback=error_feedback),
        codec("scaled_sign", error_feedback=error_feedback),
    ]
    ends = [(c.encoder(spec), c.decoder(spec)) for c in links]
    sizes = np.zeros(2)
    for update in slowly_changing(rng, spec, rounds=25, noise=0.02):
        outs = []
        for k, (enc, dec) in enumerate(ends):
            payload = enc.encode(update)
            sizes[k] += len(payload)
            outs.append(dec.decode(payload))
            dec.commit()
            enc.sync(dec.fingerprint)
        for a, b in zip(*outs):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    if error_feedback:
        # Error feedback's residual toggles the signs of weak entries every round (a
        # sigma-delta limit cycle), so even a slowly changing g gives q ≈ 0.5–0.6 and
        # λ = 0 saves nothing; SignXOR then costs at most the range coder's overhead.
        assert sizes[0] <= 1.01 * sizes[1]
    else:
        assert sizes[0] < 0.5 * sizes[1]


def primed_state(spec: ModelSpec, previous: np.ndarray, coding: str, **history: np.ndarray) -> dict:
    """The state of a primed encoder whose last signs are `previous` ("is negative")."""
    shared = codec("signxor", coding=coding).compressor(spec).initial_shared()
    return shared | {"signs/0": np.packbits(previous), "primed": np.ones(1, np.uint8)} | history


def held_back(lam: float, p: np.ndarray, shared: dict, coding: str) -> tuple[np.ndarray, object]:
    """The flips of sign(p) against `shared`'s signs that SignXOR at `lam` does not send, and its step."""
    spec = ModelSpec.flat(p.size)
    compressor = codec("signxor", lam=lam, error_feedback=False, coding=coding).compressor(spec)
    step = compressor.encode([p], shared, {}, PayloadWriter(), np.random.default_rng(0), RoundContext())
    previous = np.unpackbits(shared["signs/0"], count=p.size).astype(bool)
    negative = np.unpackbits(step.shared["signs/0"], count=p.size).astype(bool)
    assert np.array_equal(np.signbit(step.decoded[0]), negative)
    return ((p < 0) != previous) & (negative == previous), step


def test_rate_distortion_keeps_exactly_the_strong_flips(rng):
    """The iid coder (one rate q per tensor, that of the flips wanted): b̂ = b ∧ (|p| ≥ α·min(1,
    λ·log2((1 − q)/q))); larger λ keeps a subset of the flips, and α is the least-squares scale
    of the signs sent, max(0, ⟨p, ŝ⟩)/d (mean|p| when every flip is sent)."""
    p = rng.standard_normal(5000).astype(np.float32)
    alpha = np.float32(np.abs(p).sum() / p.size)
    previous = (p < 0) != (rng.random(5000) < 0.2)  # about a fifth of the signs want to flip
    shared = primed_state(ModelSpec.flat(5000), previous, "iid")
    wanted = (p < 0) != previous
    saved = np.log2((1 - wanted.mean()) / wanted.mean())
    held_before = None
    for lam in [0.0, 0.1, 0.25, 0.5, 1.0, 5.0]:
        held, step = held_back(lam, p, shared, "iid")
        threshold = alpha * np.float32(min(1.0, lam * saved))
        assert np.array_equal(held, wanted & (np.abs(p) < threshold)), f"λ = {lam}"
        negative = np.signbit(step.decoded[0])
        projection = max(0.0, float(np.mean(np.where(negative, -p, p), dtype=np.float64)))
        assert np.isclose(np.abs(step.decoded[0][0]), projection, rtol=1e-5, atol=1e-7), f"λ = {lam}"
        if held_before is not None:
            assert not np.any(held_before & ~held), "a larger λ sent a flip a smaller one held back"
        held_before = held
    assert held_before.any() and not held_before[np.abs(p) >= alpha].any(), "held only below α"
    assert np.array_equal(shared["signs/0"], np.packbits(previous)), "the state was modified in place"
    # Where most signs want to flip (error feedback's alternations), flipping is the cheap outcome.
    alternating = primed_state(ModelSpec.flat(5000), ~previous, "iid")
    assert not held_back(5.0, p, alternating, "iid")[0].any()


def test_the_context_rule_holds_only_unexpected_weak_flips(rng):
    """With the context coder a flip is held where |p| < α·min(1, λ·log2((1 − q)/q)), q its class's
    flip rate: entries that alternate (q > ½) flip at any λ; rarely flipping ones hold weak flips."""
    d = 4000
    previous = rng.random(d) < 0.5
    alternating = np.arange(d) < d // 2
    # A history of 8 rounds: the first half flipped every round, the second half never.
    history = flip_contexts.initial_state(d)
    for _ in range(8):
        counts = np.bincount(flip_contexts.contexts(history), minlength=flip_contexts.CONTEXTS)
        ones = np.bincount(flip_contexts.contexts(history)[alternating], minlength=flip_contexts.CONTEXTS)
        history = flip_contexts._after(history, alternating, counts, ones)
    shared = primed_state(ModelSpec.flat(d), previous, "context", **history)
    q = flip_contexts.rates_of_ones(history)[flip_contexts.contexts(history)]
    assert (q[alternating] > 0.5).all() and (q[~alternating] < 0.1).all()
    p = np.where(previous, 1.0, -1.0).astype(np.float32) * rng.exponential(size=d).astype(np.float32)
    alpha = np.float32(np.abs(p).sum() / d)  # every sign flips: p has the opposite of each last sign
    saved = np.log2((1 - q) / q)
    for lam in [0.1, 1.0, 1e6]:
        held, _ = held_back(lam, p, shared, "context")
        expected = ~alternating & (np.abs(p) < alpha * np.minimum(1, lam * saved).astype(np.float32))
        assert np.array_equal(held, expected), f"λ = {lam}"
    assert not held[alternating].any() and held.any()
    assert np.array_equal(held, ~alternating & (np.abs(p) < alpha)), "a huge λ holds every weak one"


def test_the_first_payload_and_key_frames_send_every_sign(rng):
    """Against the initial all-+1 signs there is nothing to hold back: λ applies once primed."""
    c = codec("signxor", lam=5.0, error_feedback=False, coding="iid")
    enc, dec = c.encoder(EDGE_SPEC), c.decoder(EDGE_SPEC)
    updates = list(slowly_changing(rng, EDGE_SPEC, rounds=3, noise=1.0))
    for r, update in enumerate(updates):
        out = transmit(enc, dec, update, delivered=True) if r < 2 else None
        if r == 2:
            payload = enc.encode(update, key_frame=True)
            out = dec.decode(payload)
            dec.commit()
            enc.sync(dec.fingerprint)
        signs_match = all(np.array_equal(np.signbit(o), x < 0) for o, x in zip(out, update))
        assert signs_match == (r != 1), f"round {r}"


def test_larger_lambda_sends_fewer_flips_and_fewer_bytes(rng):
    d = 20_000
    spec = ModelSpec.flat(d)
    updates = list(flip_sequence(rng, d, rounds=12, q=0.1))
    flips, sizes = [], []
    for lam in [0.0, 0.25, 0.5, 1.0]:
        c = codec("signxor", lam=lam, error_feedback=False, coding="iid")
        enc, dec = c.encoder(spec), c.decoder(spec)
        total = nbytes = 0
        for update in updates:
            before = negative_bits(dec.state_dict(), 0, d)
            payload = enc.encode(update)
            nbytes += len(payload)
            dec.decode(payload)
            dec.commit()
            enc.sync(dec.fingerprint)
            total += np.count_nonzero(negative_bits(dec.state_dict(), 0, d) != before)
        flips.append(total)
        sizes.append(nbytes)
    assert all(a > b for a, b in zip(flips, flips[1:])), flips
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


# --- bits ---------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["iid", "context"])
@pytest.mark.parametrize("q", [0.01, 0.05, 0.2])
def test_few_flips_cost_about_d_times_entropy_and_far_less_than_scaled_sign(q, coding):
    """d = 1M entries whose signs change in q·d places a round.

    Both codecs without error feedback, so that the flip rate of what they compress
    is exactly q (error feedback's residual toggles weak entries' signs on its own).
    """
    d, rounds = 1_000_000, 4
    spec = ModelSpec.flat(d)
    sx, ss = (
        codec("signxor", lam=0.0, error_feedback=False, coding=coding),
        codec("scaled_sign", error_feedback=False),
    )
    ends = [(c.encoder(spec), c.decoder(spec)) for c in (sx, ss)]
    rng = np.random.default_rng(int(q * 1000))
    for r, update in enumerate(flip_sequence(rng, d, rounds, q)):
        sizes = []
        for enc, dec in ends:
            payload = enc.encode(update)
            sizes.append(len(payload))
            dec.decode(payload)
            dec.commit()
            enc.sync(dec.fingerprint)
        if r == 0 or (r == 1 and coding == "context"):
            # The first round sends sign(p) against all +1: about d bits. The context model
            # learns its rates from the rounds before, and round 0's "flips" are the negative
            # signs: round 1 costs at most the raw bits, from round 2 on its rates fit.
            assert 8 * sizes[0] <= d + 8 * (HEADER_BYTES + PER_TENSOR_BYTES + BLOB_PREFIX)
            continue
        bound = d * entropy_bits(q) + 8 * (HEADER_BYTES + PER_TENSOR_BYTES + BLOB_PREFIX)
        assert 0.99 * d * entropy_bits(q) <= 8 * sizes[0] <= 1.02 * bound, (r, sizes)
        assert sizes[0] <= 1.2 * entropy_bits(q) * sizes[1], (r, sizes)
        if q <= 0.05:
            assert sizes[0] < 0.5 * sizes[1]


def test_no_flip_and_all_flips_send_only_the_counts():
    """q = 0 and q = 1 need no flip bits: α and the flip count per tensor."""
    c = codec("signxor", lam=0.0, error_feedback=False, coding="iid")
    enc, dec = c.encoder(EDGE_SPEC), c.decoder(EDGE_SPEC)
    update = [np.random.default_rng(1).standard_normal(t.shape).astype(np.float32) for t in EDGE_SPEC.tensors]
    transmit(enc, dec, update, delivered=True)
    count_bytes = [1, 1, 1, 2]  # as few bytes as hold 0, 1, 9 and 300
    minimal = HEADER_BYTES + 4 * len(EDGE_SPEC) + sum(count_bytes)
    for again in ([2 * x for x in update], [-x for x in update], update):  # q = 0, 1, 1
        payload = enc.encode(again)
        assert len(payload) == minimal
        out = dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
        assert all(np.array_equal(np.signbit(o), x < 0) for o, x in zip(out, again))


# --- both ends ----------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.5])
def test_signs_are_identical_on_both_sides_over_many_rounds(lam, rng):
    c = codec("signxor", lam=lam)
    enc, dec = c.encoder(EDGE_SPEC, seed=3), c.decoder(EDGE_SPEC)
    for r, update in enumerate(slowly_changing(rng, EDGE_SPEC, rounds=60)):
        out = transmit(enc, dec, update, delivered=r % 7 != 3)
        assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)
        if out is not None:
            state = dec.state_dict()
            for i, (o, t) in enumerate(zip(out, EDGE_SPEC.tensors)):
                assert np.array_equal(np.signbit(o), negative_bits(state, i, t.size))


ACTIONS = ["delivered", "lost", "late", "skipped", "ack_lost", "key_frame"]
"""The link events of tests/test_state_sync.py."""


@pytest.mark.parametrize(
    "c", [codec("signxor"), codec("signxor", lam=0.7), codec("signxor", coding="iid")], ids=Codec.describe
)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(actions=st.lists(st.sampled_from(ACTIONS), min_size=40, max_size=40), seed=st.integers(0, 2**16))
def test_random_loss_keeps_the_signs_in_sync(c, actions, seed):
    rng = np.random.default_rng(seed)
    enc, dec = c.encoder(EDGE_SPEC, seed=seed), c.decoder(EDGE_SPEC)
    updates = slowly_changing(rng, EDGE_SPEC, rounds=len(actions), noise=0.2)
    committed = 0
    for action, update in zip(actions, updates):
        if action == "skipped":
            continue
        if enc.pending:  # the ack of the previous round was lost: the server did commit
            assert enc.sync(dec.fingerprint) == "committed"
        payload = enc.encode(update, key_frame=action == "key_frame")
        if action != "lost":
            out = dec.decode(payload)
            if action == "late":
                dec.rollback()
            else:
                dec.commit()
                committed += 1
                state = dec.state_dict()
                for i, (o, t) in enumerate(zip(out, EDGE_SPEC.tensors)):
                    assert np.array_equal(np.signbit(o), negative_bits(state, i, t.size))
        if action != "ack_lost":
            enc.sync(dec.fingerprint)
            assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)
    if enc.pending:
        enc.sync(dec.fingerprint)
    assert enc.steps == committed
    assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)


def test_a_key_frame_resets_the_signs_and_keeps_the_error_memory(rng):
    c = codec("signxor")
    enc, dec = c.encoder(EDGE_SPEC), c.decoder(EDGE_SPEC)
    updates = list(slowly_changing(rng, EDGE_SPEC, rounds=4))
    for update in updates[:3]:
        transmit(enc, dec, update, delivered=True)
    memory = {k: v for k, v in enc.state_dict().items() if k.startswith("local/")}
    fresh = c.decoder(EDGE_SPEC)
    payload = enc.encode(updates[3], key_frame=True)
    # A decoder in any state decodes it to the same thing, from all +1 signs.
    for d in (dec, fresh):
        out = d.decode(payload)
        d.commit()
    enc.sync(dec.fingerprint)
    assert shared_states_equal(enc, fresh)
    p = [u.reshape(-1) + memory[f"local/ef/{i}"] for i, u in enumerate(updates[3])]
    assert all(np.array_equal(np.signbit(o.reshape(-1)), pi < 0) for o, pi in zip(out, p))


def test_payloads_are_deterministic_and_ignore_the_seed(rng):
    updates = list(slowly_changing(rng, EDGE_SPEC, rounds=5))
    streams = []
    for seed in (0, 0, 17):
        c = codec("signxor", lam=0.5)
        enc, dec = c.encoder(EDGE_SPEC, seed=seed), c.decoder(EDGE_SPEC)
        stream = []
        for update in updates:
            stream.append(enc.encode(update))
            dec.decode(stream[-1])
            dec.commit()
            enc.sync(dec.fingerprint)
        streams.append(stream)
    assert streams[0] == streams[1] == streams[2]


# --- malformed bodies ---------------------------------------------------------------

MALFORMED_SPEC = ModelSpec.flat(1000)
COUNT, LENGTH, WORDS = 4, 6, 7
"""Body offsets for one tensor of 1000 entries: f32 α | u16 flip count (1000 needs two bytes) |
u8 byte length of the words (they are at most 160 bytes) | range-coded words."""


@pytest.fixture
def one_tensor_link():
    """A decoder after one round, and a body with 30 flips (range coded) for it."""
    c = codec("signxor", lam=0.0, error_feedback=False, coding="iid")
    rng = np.random.default_rng(2)
    enc, dec = c.encoder(MALFORMED_SPEC), c.decoder(MALFORMED_SPEC)
    (first,) = next(flip_sequence(rng, 1000, 1, 0.0))
    transmit(enc, dec, [first], delivered=True)
    second = first.copy()
    second[rng.choice(1000, 30, replace=False)] *= -1
    payload = enc.encode([second])
    (m,) = struct.unpack_from("<H", payload, HEADER_BYTES + COUNT)
    (length,) = struct.unpack_from("<B", payload, HEADER_BYTES + LENGTH)
    assert m == 30 and len(payload) == HEADER_BYTES + WORDS + length
    assert flip_counts(payload, MALFORMED_SPEC, c.config) == [30]
    return dec, payload


def assert_refused(dec, payload) -> None:
    before = copied_state(dec.state_dict())
    with no_hang(10), pytest.raises(PayloadError):
        dec.decode(payload)
    assert not dec.pending
    assert all(np.array_equal(dec.state_dict()[k], v) for k, v in before.items())


def test_the_base_body_decodes(one_tensor_link):
    dec, payload = one_tensor_link
    dec.decode(payload)
    dec.rollback()


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf"), -float("inf")])
def test_a_bad_scale_is_refused(one_tensor_link, alpha):
    dec, payload = one_tensor_link
    body = struct.pack("<f", alpha) + payload[HEADER_BYTES + 4 :]
    assert_refused(dec, forge(payload, body))
    with pytest.raises(PayloadError):
        flip_counts(forge(payload, body), MALFORMED_SPEC)


def decodes_consistently_or_is_refused(dec, payload, flips: int) -> bool:
    """True if refused (state untouched); else the decode must flip exactly `flips` signs.

    Range-coded words carry no redundancy: forged words may decode to some vector, and
    only its flip count can be checked against the declared one (the CRC, which a real
    link checks first, is what catches damage).
    """
    before = copied_state(dec.state_dict())
    try:
        with no_hang(10):
            dec.decode(payload)
    except PayloadError:
        assert not dec.pending
        assert all(np.array_equal(dec.state_dict()[k], v) for k, v in before.items())
        return True
    dec.commit()
    changed = negative_bits(dec.state_dict(), 0, 1000) != negative_bits(before, 0, 1000)
    assert np.count_nonzero(changed) == flips
    dec.load_state_dict(before)
    return False


def with_count(payload: bytes, m: int) -> bytes:
    body = bytearray(payload[HEADER_BYTES:])
    body[COUNT:LENGTH] = struct.pack("<H", m)
    return forge(payload, bytes(body))


@pytest.mark.parametrize("m", [0, 1000, 1001, 0xFFFF])
def test_a_flip_count_without_words_or_past_the_size_is_refused(one_tensor_link, m):
    """Counts 0 and d leave the words as trailing bytes; a count above d cannot be."""
    dec, payload = one_tensor_link
    assert_refused(dec, with_count(payload, m))


@pytest.mark.parametrize("m", [1, 29, 31, 500, 999])
def test_another_flip_count_decodes_to_that_many_flips_or_is_refused(one_tensor_link, m):
    """500 of 1000 would travel raw: 125 bytes the payload does not have."""
    dec, payload = one_tensor_link
    decodes_consistently_or_is_refused(dec, with_count(payload, m), m)


@pytest.mark.parametrize("length", [0, 4, 161, 255])
def test_a_wrong_words_length_is_refused(one_tensor_link, length):
    dec, payload = one_tensor_link
    body = bytearray(payload[HEADER_BYTES:])
    body[LENGTH] = length
    assert_refused(dec, forge(payload, bytes(body)))


def test_corrupted_or_truncated_words_are_mostly_refused(one_tensor_link):
    dec, payload = one_tensor_link
    body = payload[HEADER_BYTES:]
    head, words = body[:LENGTH], np.frombuffer(body[WORDS:], np.uint8)
    assert len(words) % 4 == 0
    forged = []
    for k in range(len(words)):
        corrupted = words.copy()
        corrupted[k] ^= 0xFF
        forged.append(body[:WORDS] + corrupted.tobytes())
    forged += [head + bytes([n]) + words[:n].tobytes() for n in range(0, len(words), 4)]
    forged.append(body[:WORDS] + b"\x00" * len(words))
    refused = [decodes_consistently_or_is_refused(dec, forge(payload, f), 30) for f in forged]
    assert sum(refused) >= 0.8 * len(refused), f"{sum(refused)} of {len(refused)} refused"


@pytest.mark.parametrize("q", [0.5, 0.42])
def test_a_large_tensor_round_trips_raw_and_range_coded(q):
    """4M entries: signs that flip half the time travel packed; at q = 0.42 (just outside the raw
    band, the most a range-coded vector can cost) the words stay within the decoder's limit."""
    d = 4_000_000
    spec = ModelSpec.flat(d)
    c = codec("signxor", lam=0.0, error_feedback=False, coding="iid")
    enc, dec = c.encoder(spec), c.decoder(spec)
    for update in flip_sequence(np.random.default_rng(6), d, 2, q):
        payload = enc.encode(update)
        out = dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
        assert np.array_equal(np.signbit(out[0]), update[0] < 0)
    body_bits = 8 * (len(payload) - HEADER_BYTES - 4 - 4)
    if q == 0.5:
        assert body_bits == d
    else:
        assert 0.99 * d * entropy_bits(q) < body_bits < 1.001 * d * entropy_bits(q) + 128
