"""LGC: stages, leader and innovations, joint decoding, state, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPEC, copied_state, forge, random_update
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import HEADER_BYTES, PayloadError, RoundContext, codec
from flcomp.codecs.coding.sparse import top_k_positions
from flcomp.codecs.compressors.lgc.autoencoder import encode_with
from flcomp.codecs.compressors.lgc.codec import LGC
from flcomp.codecs.compressors.lgc.config import INNOVATION, LATENT, PLAIN, TOPK, VALUES, Plan, encoder_tag
from flcomp.codecs.compressors.lgc.pool import LGCPool

SMALL_AE = dict(encoder_channels="8-8", decoder_channels="8-8", latent_channels=2, ae_steps=2)
"""A small conv autoencoder: the tests check the plumbing, not what it learns."""
CLIENTS = ["a", "b", "c", "d"]


def lgc(**params):
    return codec("lgc", **({"ratio": 0.1, "stage1_rounds": 1, "stage2_rounds": 2} | SMALL_AE | params))


class Federation:
    """Encoders and an LGC pool driven round by round as `flcomp.strategies.Compressed` does."""

    def __init__(self, c, clients=CLIENTS, seed: int = 0) -> None:
        self.c = c
        self.lgc: LGC = c.compressor(SPEC)
        self.pool: LGCPool = c.decoder_pool(SPEC, seed=seed)
        self.encoders = {name: c.encoder(SPEC, seed=i) for i, name in enumerate(clients)}
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.side: dict[str, bytes] = {}
        self.payloads: dict[str, bytes] = {}

    def plan(self, clients=None) -> dict[str, bytes]:
        self.t += 1
        self.side = self.pool.plan_round(self.t, list(clients or self.encoders))
        return self.side

    def encode(self, updates: dict | None = None) -> dict[str, bytes]:
        self.payloads = {}
        for name, side in self.side.items():
            enc = self.encoders.setdefault(name, self.c.encoder(SPEC, seed=len(self.encoders)))
            enc.sync(self.pool.fingerprint(name))
            update = updates[name] if updates else random_update(self.rng)
            self.payloads[name] = enc.encode(update, RoundContext(side=side))
        return self.payloads

    def decode(self, delivered=None):
        payloads = {n: p for n, p in self.payloads.items() if delivered is None or n in delivered}
        result = self.pool.decode_round(payloads)
        assert not result.errors
        for name in result.updates:
            self.pool.commit(name)
        return result

    def round(self, clients=None, updates=None, delivered=None):
        self.plan(clients)
        self.encode(updates)
        return self.decode(delivered)

    @property
    def stats(self):
        return self.pool.history[-1]


def values_on(f: Federation, name: str, update) -> np.ndarray:
    """What client `name` holds on this round's index set: (update + its error memory) on I_t."""
    enc = f.encoders[name]
    enc.sync(f.pool.fingerprint(name))
    p = [x.reshape(-1) + enc.local[f"ef/{i}"] for i, x in enumerate(update)]
    return f.lgc.gather(f.pool.plans[name].index, p)


# --- stages -------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", ["plain", "topk"])
@pytest.mark.parametrize("t1,t2", [(0, 2), (2, 3)])
def test_stages_switch_at_the_configured_rounds(warmup, t1, t2):
    f = Federation(lgc(stage1_rounds=t1, stage2_rounds=t2, warmup=warmup))
    K = len(CLIENTS)
    for t in range(1, t1 + t2 + 4):
        f.round()
        stats, stage = f.stats, f.pool.stage(t)
        assert stage == (1 if t <= t1 else 2 if t <= t1 + t2 else 3) == stats.stage
        if stage == 1:
            expected = {warmup: K}
        elif t == 1:
            expected = {"topk": K}  # no index set proposed yet: each client's own top-k
        elif stage == 2:
            expected = {"values": K}
        else:
            expected = {"latent": 1, "innovation": K - 1}
        assert stats.modes == expected, t
        assert stats.leader in CLIENTS
        proposers = [c for c, plan in f.pool.plans.items() if plan.propose]
        assert proposers == ([stats.leader] if f.pool.stage(t + 1) >= 2 else [])
        if stage < 3:
            assert stats.encoder_bytes == 0 and stats.joint == 0
        else:
            assert stats.joint == K
    # every stage-3 leader received the encoder exactly once
    received = [s.leader for s in f.pool.history if s.encoder_bytes]
    assert len(received) == len(set(received))
    assert all(s.encoder_bytes == 4 * f.lgc.encoder_size for s in f.pool.history if s.encoder_bytes)


def test_stage_3_payloads_are_much_shorter_than_stage_2():
    f = Federation(lgc(innovation_fraction=0.1))
    sizes = {}
    for t in range(1, 6):
        f.round()
        sizes[f.pool.stage(t)] = [len(p) for n, p in f.payloads.items() if n != f.stats.leader]
    assert max(sizes[3]) < min(sizes[2]) / 3 < min(sizes[1]) / 3


# --- decoding -----------------------------------------------------------------------


def test_identity_autoencoder_decodes_exactly():
    """Clients that differ from the leader only on their innovation entries are decoded
    bit for bit: the leader's values, each client's innovation overriding. (Feedback
    "index_set" clears every error memory on I_t, so equal updates keep the memories equal.)"""
    f = Federation(lgc(autoencoder="identity", feedback="index_set"))
    common = random_update(f.rng)
    for _ in range(3):  # stages 1 and 2, the same update everywhere: the same error memories
        f.round(updates={c: common for c in CLIENTS})
    for _ in range(2):
        f.plan()
        common = random_update(f.rng)
        updates, expected = {}, {}
        for c in CLIENTS:
            update = [x.copy() for x in common]
            if c != f.pool.leader:  # spikes on the index set: the client's innovation
                for x, positions in zip(update, f.pool.plans[c].index):
                    x.reshape(-1)[positions[:1]] += 100.0
            updates[c] = update
            expected[c] = f.lgc.scatter(f.pool.plans[c].index, values_on(f, c, update))
        f.encode(updates)
        result = f.decode()
        assert f.stats.modes == {"latent": 1, "innovation": len(CLIENTS) - 1}
        for c in CLIENTS:
            decoded = [x.reshape(-1) for x in result.updates[c]]
            assert all(np.array_equal(a, b) for a, b in zip(decoded, expected[c])), c


@pytest.mark.parametrize("feedback", ["index_set", "innovation"])
def test_leader_and_innovations_decode_to_what_the_encoders_sent(feedback):
    f = Federation(lgc(feedback=feedback))
    for _ in range(3):
        f.round()
    f.plan()
    assert f.pool.stage(f.t) == 3
    updates = {c: random_update(f.rng) for c in CLIENTS}
    values = {c: values_on(f, c, updates[c]) for c in CLIENTS}
    f.encode(updates)
    for c, payload in f.payloads.items():
        plan = f.pool.plans[c]
        message = f.lgc.read_payload(payload, plan)
        assert message.mode == (LATENT if c == f.pool.leader else INNOVATION)
        v = values[c]
        top = top_k_positions(np.abs(v), f.lgc.m)
        assert np.array_equal(message.innovation, top)
        assert np.array_equal(message.innovation_values, v[top])
        assert message.scale == f.lgc.scale(v)
        # the error memory keeps everything off the index set, and on it nothing
        # ("index_set") or what the innovation left out ("innovation")
        enc = f.encoders[c]
        sent = f.lgc.scatter(plan.index, f.lgc.innovation_dense(message))
        for i, (x, positions) in enumerate(zip(updates[c], plan.index)):
            p = x.reshape(-1) + enc.local[f"ef/{i}"]
            kept = enc.state_dict()[f"pending/local/ef/{i}"]
            assert np.array_equal(np.delete(kept, positions), np.delete(p, positions))
            on_index = (p - sent[i])[positions] if feedback == "innovation" else 0
            assert np.array_equal(kept[positions], np.zeros(len(positions)) + on_index)
        if c == f.pool.leader:
            weights = f.pool.autoencoder.encoder_weights()
            assert plan.tag == encoder_tag(weights)
            expected_code = encode_with(f.lgc.config, weights, v / message.scale)
            assert np.array_equal(message.code, expected_code)
    result = f.decode()
    # the leader's proposal is the next round's index set
    enc = f.encoders[f.pool.leader]
    proposal = []
    for i, (x, k) in enumerate(zip(updates[f.pool.leader], f.lgc.k)):
        kept = enc.state_dict()[f"pending/local/ef/{i}"]
        proposal.append(top_k_positions(np.abs(kept + x.reshape(-1)), k))
    assert all(np.array_equal(a, b) for a, b in zip(f.pool.index, proposal))
    # joint estimates: zero off I_t, exact on each innovation
    for c in CLIENTS:
        index, v = f.pool.plans[c].index, values[c]
        flat = [x.reshape(-1) for x in result.updates[c]]
        estimate = f.lgc.gather(index, flat)
        assert sum(np.count_nonzero(x) for x in flat) == np.count_nonzero(estimate)
        top = top_k_positions(np.abs(v), f.lgc.m)
        assert np.array_equal(estimate[top], v[top])
        assert np.array_equal(estimate, f.pool.estimates[c])


def test_a_lost_leader_degrades_the_round_to_the_innovations():
    f = Federation(lgc())
    for _ in range(3):
        f.round()
    f.plan()
    index = f.pool.index
    f.encode()
    others = [c for c in CLIENTS if c != f.pool.leader]
    result = f.decode(delivered=others)
    assert f.stats.joint == 0 and not f.pool.estimates
    for c in others:
        message = f.lgc.read_payload(f.payloads[c], f.pool.plans[c])
        expected = f.lgc.explicit(message, f.pool.plans[c])
        assert all(np.array_equal(a.reshape(-1), b) for a, b in zip(result.updates[c], expected))
    assert f.pool.index is index  # no proposal arrived: the index set stays
    f.round()
    assert f.stats.joint == len(CLIENTS)


def test_a_leader_that_missed_the_encoder_gets_it_again():
    """The leader's copy of the encoder counts once its step is committed on both ends."""
    f = Federation(lgc(), clients=["a", "b"])
    holds = set()
    for t in range(1, 16):
        f.plan()
        leader = f.pool.leader
        shipped = f.stats.encoder_bytes > 0
        if f.pool.stage(t) == 3:
            assert shipped == (leader not in holds), t
        f.encode()
        lost = t % 3 == 0  # the leader's payload is lost every third round
        f.decode(delivered=[c for c in f.payloads if not (lost and c == leader)])
        if shipped and not lost:
            holds.add(leader)
    assert holds == {"a", "b"}


def test_a_leader_that_lost_its_state_falls_back_to_its_values():
    f = Federation(lgc(), clients=["a", "b", "c"])
    victim, wiped = None, False
    for _ in range(30):
        f.plan()
        leader = f.pool.leader
        if f.pool.stage(f.t) == 3 and victim is None:
            victim = leader
        elif leader == victim and not wiped:
            f.encoders[victim] = f.c.encoder(SPEC, seed=99)  # e.g. the device was reset
            wiped = True
            assert f.stats.encoder_bytes == 0  # the server still believes it holds the encoder
            f.encode()
            f.decode()
            assert f.stats.modes == {"values": 1, "innovation": 2}
            assert f.stats.joint == 2  # the server encoded the leader's values itself
            continue
        elif leader == victim and wiped:
            assert f.stats.encoder_bytes > 0  # its key frame told the server: shipped again
            f.encode()
            f.decode()
            assert f.stats.modes == {"latent": 1, "innovation": 2}
            return
        f.encode()
        f.decode()
    pytest.fail("the victim did not lead twice")


def test_partial_participation_and_late_joiners():
    f = Federation(lgc(), clients=["a", "b", "c", "d", "e"])
    late = ["f", "g"]
    rng = np.random.default_rng(3)
    for t in range(1, 14):
        pool_clients = list(f.encoders) if t < 5 else [*f.encoders, *late]
        sampled = sorted(rng.choice(sorted(set(pool_clients)), size=3, replace=False))
        f.round(clients=sampled)
        assert f.stats.leader in sampled
        if f.pool.stage(t) == 3:
            assert f.stats.joint == 3
    assert f.pool.stage(5) == 3  # the late joiners arrive in stage 3: no decoder of their own
    assert set(f.pool.autoencoder.clients) <= {"a", "b", "c", "d", "e"}


def test_a_late_joiner_in_stage_3_is_decoded_with_the_shared_decoder():
    f = Federation(lgc(), clients=["a", "b"])
    for _ in range(4):
        f.round()
    f.round(clients=["a", "b", "newcomer"])
    assert f.stats.joint == 3 and "newcomer" not in f.pool.autoencoder.clients
    assert f.pool.autoencoder.clients == ["a", "b"]


@pytest.mark.parametrize("warmup", ["plain", "topk"])
def test_stats_are_what_each_payload_holds(warmup):
    f = Federation(lgc(stage1_rounds=1, stage2_rounds=2, warmup=warmup))
    for t in range(1, 7):
        f.plan()
        f.encode()
        encoder_bytes = 0
        for c, payload in f.payloads.items():
            plan, stats = f.pool.plans[c], f.encoders[c].last_stats
            message = f.lgc.read_payload(payload, plan)
            if message.mode == PLAIN:
                sent = sum(x.size for x in message.values)
            elif message.mode == TOPK:
                sent = sum(f.lgc.k)  # its own top-k: k_i of each tensor
            elif message.mode == VALUES:
                sent = len(message.values)
            else:
                sent = len(message.innovation_values)
            expected_stage = 1 if plan.mode in (PLAIN, TOPK) else f.pool.stage(t)
            assert stats == {
                "stage": float(expected_stage),
                "entries_sent": float(sent),
                "code_values": float(0 if message.code is None else len(message.code)),
                "encoder_bytes": float(0 if plan.weights is None else 4 * f.lgc.encoder_size),
                "proposed": float(message.proposal is not None),
            }, (t, c)
            encoder_bytes += stats["encoder_bytes"]
        f.decode()
        assert encoder_bytes == f.stats.encoder_bytes


def test_runs_are_deterministic_for_a_seed():
    def run(seed):
        f = Federation(lgc(), seed=seed)
        for _ in range(5):
            f.round()
        return f.payloads, f.pool.tag, [s.leader for s in f.pool.history]

    assert run(0) == run(0)
    assert run(0)[1] != run(1)[1]


# --- state --------------------------------------------------------------------------


def test_pool_state_round_trips_mid_training():
    f = Federation(lgc(stage2_rounds=4, ae_window=2))
    for _ in range(3):  # into stage 2: trained twice, the window full
        f.round()
    restored = f.c.decoder_pool(SPEC, seed=0)
    restored.load_state_dict(copied_state(f.pool.state_dict()))
    for _ in range(4):  # the rest of stage 2, then stage 3
        side = f.plan()
        assert restored.plan_round(f.t, list(f.encoders)) == side
        f.encode()
        a, b = f.pool.decode_round(f.payloads), restored.decode_round(f.payloads)
        for c in CLIENTS:
            assert all(np.array_equal(x, y) for x, y in zip(a.updates[c], b.updates[c]))
            f.pool.commit(c)
            restored.commit(c)
        assert restored.history[-1].ae_loss == f.stats.ae_loss
    assert restored.tag == f.pool.tag != 0


def test_pool_load_refuses_misshapen_state():
    f = Federation(lgc())
    for _ in range(2):
        f.round()
    state = copied_state(f.pool.state_dict())
    broken = [
        {k: v for k, v in state.items() if k != "lgc/round"},
        {**state, "lgc/index/0": state["lgc/index/0"][:-1]},
        {**state, "lgc/buffer/0/u": state["lgc/buffer/0/u"][:, :-1]},
        {k: v for k, v in state.items() if k != "lgc/ae/param/encoder/conv0.weight"},
        {**state, "lgc/ae/param/shared/out.bias": np.zeros(2, np.float32)},
    ]
    for d in broken:
        with pytest.raises(ValueError):
            f.c.decoder_pool(SPEC).load_state_dict(d)


def test_encoder_state_with_the_encoder_copy_round_trips():
    f = Federation(lgc(), clients=["a", "b"])
    for _ in range(20):  # until a leader leads again, with the copy it received before
        f.plan()
        leader = f.pool.leader
        enc = f.encoders[leader]
        enc.sync(f.pool.fingerprint(leader))
        if f.pool.tag and int(enc.local["encoder_tag"]) == f.pool.tag:
            break
        f.encode()
        f.decode()
    assert f.stats.encoder_bytes == 0 and np.array_equal(
        enc.local["encoder"], f.pool.autoencoder.encoder_weights()
    )
    restored = f.c.encoder(SPEC, seed=0)
    restored.load_state_dict(copied_state(enc.state_dict()))
    update = random_update(f.rng)
    ctx = RoundContext(side=f.side[leader])
    assert enc.encode(update, ctx) == restored.encode([x.copy() for x in update], ctx)


# --- malformed input ----------------------------------------------------------------


def stage_payloads():
    """(plan, side, decoder state, payload) for a payload of every mode, a proposal included."""
    f = Federation(lgc(stage1_rounds=2))
    cases = {}
    for _ in range(5):
        f.plan()
        states = {c: copied_state(f.pool.decoder(c).state_dict()) for c in CLIENTS}
        f.encode()
        for c in CLIENTS:
            plan = f.pool.plans[c]
            kind = (plan.mode, plan.propose, plan.weights is not None)
            cases.setdefault(kind, (plan, f.side[c], states[c], f.payloads[c]))
        f.decode()
    assert {mode for mode, *_ in cases} == {PLAIN, VALUES, LATENT, INNOVATION}
    assert any(propose for _, propose, _ in cases) and any(weights for *_, weights in cases)
    return f.c, list(cases.values())


C_MALFORMED, CASES = stage_payloads()


def decoder_for(state):
    dec = C_MALFORMED.decoder(SPEC)
    dec.load_state_dict(state)
    return dec


def assert_rejected(state, payload, side):
    dec = decoder_for(state)
    with pytest.raises(PayloadError):
        dec.decode(payload, side)
    assert not dec.pending and dec.fingerprint == state["fingerprint"]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_truncated_extended_and_corrupted_payloads_are_rejected(case):
    plan, side, state, payload = CASES[case]
    decoder_for(state).decode(payload, side)  # the original decodes
    for n in range(len(payload)):
        assert_rejected(state, payload[:n], side)
    for extra in (b"\x00", b"\xff" * 5):
        assert_rejected(state, payload + extra, side)
        assert_rejected(state, forge(payload, payload[HEADER_BYTES:] + extra), side)
    body = payload[HEADER_BYTES:]
    for mode in {PLAIN, TOPK, VALUES, LATENT, INNOVATION} - {plan.mode}:  # another mode than planned
        if not (plan.mode == LATENT and mode == VALUES):
            assert_rejected(state, forge(payload, bytes([mode]) + body[1:]), side)
    assert_rejected(state, forge(payload, body[:1] + bytes([body[1] ^ 1]) + body[2:]), side)  # proposal flag
    assert_rejected(state, forge(payload, body[:1] + bytes([body[1] | 4]) + body[2:]), side)  # unknown flag


@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_payload_decoded_without_its_plan_is_rejected(case):
    plan, side, state, payload = CASES[case]
    if plan.mode != TOPK:
        assert_rejected(state, payload, b"")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_forged_bodies_decode_or_raise_payload_error(data):
    plan, side, state, payload = data.draw(st.sampled_from(CASES))
    body = bytearray(payload[HEADER_BYTES:])
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["set", "cut", "grow"]))
        if kind == "set" and body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
        elif kind == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1)) :]
        else:
            body += data.draw(st.binary(min_size=1, max_size=16))
    dec = decoder_for(state)
    try:
        out = dec.decode(forge(payload, bytes(body)), side)
    except PayloadError:
        assert not dec.pending
        return
    assert all(np.isfinite(o).all() for o in out)


def test_malformed_side_information_is_refused_by_the_encoder():
    plan, side, state, payload = next(case for case in CASES if case[0].mode == INNOVATION)
    enc = C_MALFORMED.encoder(SPEC)
    update = random_update(np.random.default_rng(0))
    for bad in [side[:-1], side + b"\x00", bytes([9]) + side[1:], side[:1] + bytes([0x80]) + side[2:]]:
        with pytest.raises(ValueError):
            enc.encode(update, RoundContext(side=bad))
        assert not enc.pending
    lgc_c = C_MALFORMED.compressor(SPEC)
    latent = next(case for case in CASES if case[0].weights is not None)[1]
    weights_at = len(latent) - 4 * lgc_c.encoder_size
    forged = latent[:weights_at] + bytes([latent[weights_at] ^ 1]) + latent[weights_at + 1 :]
    with pytest.raises(PayloadError, match="tag"):
        lgc_c.read_plan(forged)


def test_codecs_without_side_information_refuse_some():
    enc = codec("topk").encoder(SPEC)
    with pytest.raises(ValueError):
        enc.encode(random_update(np.random.default_rng(0)), RoundContext(side=b"\x01"))
    assert not enc.pending


def test_side_information_enters_the_fingerprint():
    """A decoder that decodes a payload with other side information than its encoder had
    ends in another state: its next payload is refused, and a key frame follows."""
    plan, side, state, payload = next(case for case in CASES if case[0].mode == VALUES)
    lgc_c = C_MALFORMED.compressor(SPEC)
    assert lgc_c.side_information(plan) == side
    other = Plan(VALUES, plan.propose, 0, tuple(np.arange(k) for k in lgc_c.k))
    fingerprints = []
    for s in (side, lgc_c.side_information(other)):
        dec = decoder_for(state)
        dec.decode(payload, s)
        dec.commit()
        fingerprints.append(dec.fingerprint)
    assert fingerprints[0] != fingerprints[1]


def test_generic_error_feedback_is_refused():
    # LGC keeps its own error memory per stage; the generic wrapper on top would feed it twice.
    with pytest.raises(ValueError, match="own error memory"):
        codec("lgc", error_feedback=True)
    assert not codec("lgc").error_feedback
