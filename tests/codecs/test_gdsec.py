"""GD-SEC: what the method promises beyond the codec contract the shared tests check.

Notation as in flcomp/codecs/gdsec.py: g the update, h the shared reference, e the
error memory, Δ = g − h + e, Δ̂ its sent components, ĝ = h + Δ̂ the reconstruction.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from conftest import SPEC, shared_states_equal
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import REGISTRY, Codec, ErrorFeedback, ModelSpec, PayloadError, RoundContext, codec
from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import kept_count, read_values
from flcomp.codecs.compressors.gdsec import GDSEC
from flcomp.codecs.wire import Header, PayloadReader, PayloadWriter, pack, unpack

ZERO = codec("gdsec", rule="absolute", threshold=0.0)
"""GD-SEC that sends every nonzero component: GD."""

VARIANTS = [
    codec("gdsec"),
    codec("gdsec", rule="lag"),
    codec("gdsec", value_dtype="float16"),
    codec("gdsec", rule="topk", ratio=0.1),
    codec("gdsec", rule="absolute", threshold=0.3, beta=0.5),
    codec("gdsec", rule="absolute", threshold=0.3, beta=0.0),
]


def sent(c: Codec, spec: ModelSpec, payload: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """(positions, values as float32) of every tensor of a GD-SEC payload."""
    _, body = unpack(payload, GDSEC.codec_id, len(spec))
    entries = []
    for t in spec.tensors:
        (m,) = body.struct("I")
        entries.append((decode_positions(body, m, t.size), read_values(body, c.config.value_dtype, m)))
    body.finish()
    return entries


def flat(arrays) -> list[np.ndarray]:
    return [np.asarray(a, np.float32).reshape(-1) for a in arrays]


def state(end, kind: str) -> list[np.ndarray]:
    """h ("shared") or e ("local") of an endpoint, one flat array per tensor."""
    d = end.shared if kind == "shared" else end.local
    key = "h" if kind == "shared" else "e"
    return [d[f"{key}/{i}"] for i in range(len(d))]


def deliver(enc, dec, update, ctx=RoundContext(), key_frame=False):
    """One delivered round; returns (payload, decoded flat)."""
    payload = enc.encode(update, ctx, key_frame=key_frame)
    out = dec.decode(payload)
    dec.commit()
    assert enc.sync(dec.fingerprint) == "committed"
    return payload, flat(out)


def drifting_updates(rng, spec: ModelSpec, rounds: int, drift: float = 0.1):
    """Updates that change slowly, as full-batch gradients do."""
    g = [rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors]
    for _ in range(rounds):
        g = [x + drift * rng.standard_normal(x.shape).astype(np.float32) for x in g]
        yield [x.copy() for x in g]


# --- registry and config ------------------------------------------------------------


def test_registered_with_its_own_error_correction():
    c = codec("gdsec")
    assert REGISTRY["gdsec"] is GDSEC and GDSEC.codec_id == 18
    assert not c.error_feedback and not isinstance(c.compressor(SPEC), ErrorFeedback)
    assert c.config.rule == "relative" and c.config.xi == 1.5
    assert c.config.beta == 1.0 and c.config.value_dtype == "float32"
    parsed = Codec.parse("gdsec:rule=absolute,threshold=0.25,beta=0.5,value_dtype=float16,xi=3")
    assert (
        parsed.config
        == codec("gdsec", rule="absolute", threshold=0.25, beta=0.5, value_dtype="float16", xi=3.0).config
    )


@pytest.mark.parametrize(
    "params",
    [
        dict(xi=-1.0),
        dict(xi=math.inf),
        dict(threshold=-0.1),
        dict(threshold=math.nan),
        dict(ratio=0.0),
        dict(ratio=1.5),
        dict(beta=-0.1),
        dict(beta=1.5),
    ],
)
def test_config_refuses_bad_values(params):
    with pytest.raises(ValueError):
        codec("gdsec", **params)


# --- threshold 0: GD ----------------------------------------------------------------


def test_zero_threshold_sends_every_component_and_reconstructs_g_exactly(rng):
    """With integer-valued updates every float32 operation is exact, so ĝ == g bit for bit
    whatever h holds, and every nonzero component of g − h is sent."""
    enc, dec = ZERO.encoder(SPEC), ZERO.decoder(SPEC)
    for _ in range(20):
        update = [rng.integers(-1000, 1001, t.shape).astype(np.float32) for t in SPEC.tensors]
        h = [x.copy() for x in state(enc, "shared")]
        payload, out = deliver(enc, dec, update)
        for g, o, hi, (positions, values) in zip(flat(update), out, h, sent(ZERO, SPEC, payload)):
            assert np.array_equal(o.view(np.uint32), g.view(np.uint32))
            assert np.array_equal(positions, np.flatnonzero(g - hi))
            assert np.array_equal(values, (g - hi)[positions])
        assert all(not e.any() for e in state(enc, "local"))
        assert shared_states_equal(enc, dec)


def test_zero_threshold_reconstructs_any_floats_exactly_against_a_zero_reference(rng):
    """h = 0 in the first round and after a key frame: ĝ is g itself, bit for bit."""
    enc, dec = ZERO.encoder(SPEC), ZERO.decoder(SPEC)
    for r in range(3):
        scale = 10.0 ** rng.integers(-30, 30)
        update = [(scale * rng.standard_normal(t.shape)).astype(np.float32) for t in SPEC.tensors]
        _, out = deliver(enc, dec, update, key_frame=r == 2)
        if r != 1:  # round 1 reconstructs against h = the round-0 update
            assert all(
                np.array_equal(o.view(np.uint32), g.view(np.uint32)) for o, g in zip(out, flat(update))
            )


def test_zero_threshold_is_g_up_to_the_rounding_of_g_minus_h(rng):
    """In general ĝ = fl(h + fl(g − h)): g within a float32 rounding of |g| + |h|."""
    enc, dec = ZERO.encoder(SPEC), ZERO.decoder(SPEC)
    for _ in range(20):
        scale = rng.choice([1e-3, 1.0, 1e3])
        update = [(scale * rng.standard_normal(t.shape)).astype(np.float32) for t in SPEC.tensors]
        h = [x.copy() for x in state(enc, "shared")]
        _, out = deliver(enc, dec, update)
        for g, o, hi in zip(flat(update), out, h):
            assert np.array_equal(o, hi + (g - hi))
            bound = 2.0**-22 * (np.abs(g.astype(np.float64)) + np.abs(hi))
            assert np.all(np.abs(o.astype(np.float64) - g) <= bound)


# --- both ends ----------------------------------------------------------------------


@pytest.mark.parametrize("c", VARIANTS, ids=Codec.describe)
def test_encoder_and_decoder_reconstruct_bit_identically_over_many_rounds(c, rng):
    """The encoder's ĝ (Step.decoded) is the decoder's, and h is the same on both sides."""
    comp = c.compressor(SPEC)
    shared_enc = shared_dec = comp.initial_shared()
    local = comp.initial_local()
    change = ()
    for g in drifting_updates(rng, SPEC, 60):
        out = PayloadWriter()
        ctx = RoundContext(num_clients=5, lr=0.5, model_change_sq=change)
        step = comp.encode(flat(g), shared_enc, local, out, rng, ctx)
        body = PayloadReader(memoryview(b"".join(out.chunks)))
        decoded, shared_dec = comp.decode(body, shared_dec)
        body.finish()
        for a, b in zip(step.decoded, decoded):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
        assert all(
            np.array_equal(shared_dec[k].view(np.uint32), v.view(np.uint32)) for k, v in step.shared.items()
        )
        shared_enc, local = step.shared, step.local
        change = (float(rng.choice([0.0, 0.01, 1.0, 100.0])),)


# --- error correction ---------------------------------------------------------------


def check_error_correction(c: Codec, g, out, e_old, e_new) -> None:
    """ĝ = g + (1 − β)·e_old − e_new per tensor (up to float32 rounding): e is what this
    round dropped, and the client added (1 − β) of what the last round dropped."""
    keep = 1.0 - c.config.beta
    for gi, oi, eo, en in zip(flat(g), out, e_old, e_new):
        expected = gi.astype(np.float64) + keep * eo - en
        assert np.allclose(oi, expected, rtol=0, atol=1e-5 * (1 + np.abs(gi).max() + np.abs(eo).max()))


@pytest.mark.parametrize("c", VARIANTS, ids=Codec.describe)
def test_what_is_dropped_is_sent_once(c, rng):
    """The error correction per round, and what it adds up to at the ends of β: with
    β = 0 (h = 0, plain error feedback) Σ ĝ = Σ g − e, the issue's invariant (what was
    sent plus e equals the accumulated differences); with β = 1, h + e = g, i.e. what
    was sent (h = Σ Δ̂) plus e equals the accumulated gradient differences Σ (g(t) −
    g(t−1)) = g. Under the threshold rules |e_i| ≤ thr, so nothing dropped is lost."""
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    comp = enc.compressor
    owed = [np.zeros(t.size) for t in SPEC.tensors]  # Σ (g − ĝ)
    for r, g in enumerate(drifting_updates(rng, SPEC, 80)):
        ctx = RoundContext(num_clients=3, model_change_sq=(float(rng.uniform(0, 50)),) if r else ())
        e_old = [x.astype(np.float64) for x in state(enc, "local")]
        keep = np.float32(1 - c.config.beta)
        h_old = [np.zeros_like(h) for h in state(enc, "shared")] if r == 40 else state(enc, "shared")
        delta = [gi - hi + keep * ei for gi, hi, ei in zip(flat(g), h_old, state(enc, "local"))]
        _, out = deliver(enc, dec, g, ctx, key_frame=r == 40)  # a key frame resets h, keeps e
        e = [x.astype(np.float64) for x in state(enc, "local")]
        check_error_correction(c, g, out, e_old, e)
        for o, gi, oi in zip(owed, flat(g), out):
            o += gi.astype(np.float64) - oi
        scale = 1e-5 * (1 + max(np.abs(o).max() for o in owed))
        if c.config.beta == 0:
            assert all(np.allclose(o, ei, rtol=0, atol=scale) for o, ei in zip(owed, e))
        if c.config.beta == 1:
            h = state(enc, "shared")
            assert all(np.allclose(hi + ei, gi, rtol=0, atol=1e-5) for hi, ei, gi in zip(h, e, flat(g)))
        thr = comp.threshold(ctx, sum(float(np.sum(d.astype(np.float64) ** 2)) for d in delta))
        if thr is not None and c.config.value_dtype == "float32":
            assert max(np.abs(x).max() for x in e) <= thr
    assert shared_states_equal(enc, dec)


@pytest.mark.parametrize("rule", ["absolute", "lag"])
def test_a_constant_update_costs_nothing_once_within_the_threshold(rule, rng):
    """No double counting: once ĝ is within thr of an update that stops changing, nothing
    more is sent. the paper's Δ = g − h + e (docs/METHODS.md §3) would add each dropped component again on
    top of g − h, which already holds it, until it crossed thr and overshot."""
    c = codec("gdsec", rule=rule, threshold=0.5, xi=3.0)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    g = [rng.uniform(-1, 1, t.shape).astype(np.float32) for t in SPEC.tensors]
    ctx = RoundContext(num_clients=1, model_change_sq=(float(SPEC.size) / 36,))  # lag: thr = 0.5
    _, first = deliver(enc, dec, g, ctx)
    assert 0 < sum(int((np.abs(x) <= 0.5).sum()) for x in flat(g))  # some components were dropped
    for _ in range(20):
        payload, out = deliver(enc, dec, g, ctx)
        assert all(len(positions) == 0 for positions, _ in sent(c, SPEC, payload))
        assert all(np.array_equal(o, f) for o, f in zip(out, first))
    for o, gi in zip(first, flat(g)):
        assert np.all(np.abs(gi - o) <= 0.5)


def test_fp16_rounding_goes_into_the_error_memory(rng):
    c = codec("gdsec", rule="absolute", threshold=0.0, value_dtype="float16")
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    _, out = deliver(enc, dec, update)
    for g, o, e in zip(flat(update), out, state(enc, "local")):
        assert np.array_equal(o, g.astype(np.float16).astype(np.float32))
        assert np.array_equal(e, g - o)


# --- thresholds ---------------------------------------------------------------------


@pytest.mark.parametrize("thr", [0.7, 0.5, 1e-30, 2.0])
def test_the_threshold_keeps_exactly_the_components_above_it(thr, rng):
    """|Δ_i| > thr, compared in exact arithmetic: entries at the float32 neighbours of thr
    (and at thr itself when it is a float32) land on the right side."""
    c = codec("gdsec", rule="absolute", threshold=thr)
    spec = ModelSpec.flat(600)
    g = rng.standard_normal(600).astype(np.float32)
    near = np.float32(thr)
    g[:6] = [near, -near, np.nextafter(near, np.float32(1)), np.nextafter(near, np.float32(0)), 0.0, -0.0]
    enc, dec = c.encoder(spec), c.decoder(spec)
    payload, (out,) = deliver(enc, dec, [g])
    ((positions, values),) = sent(c, spec, payload)
    expected = np.flatnonzero(np.abs(g.astype(np.float64)) > thr)
    assert np.array_equal(positions, expected)
    assert np.array_equal(values, g[expected])
    assert np.array_equal(out[expected], g[expected]) and not np.delete(out, expected).any()
    assert np.array_equal(state(enc, "local")[0], np.where(np.abs(g.astype(np.float64)) > thr, 0, g))


def test_the_lag_threshold_matches_a_hand_computation(rng):
    """thr = ξ·‖w(t) − w(t−1)‖/(α√d), from the newest model change only, for a server that
    averages: K does not enter (the paper's summing server has (ξ/K), with a step K times larger)."""
    c = codec("gdsec", rule="lag", xi=3.0)
    comp = c.compressor(SPEC)
    ctx = RoundContext(num_clients=4, lr=0.5, model_change_sq=(2.25, 100.0))
    hand = 3.0 * 1.5 / (0.5 * math.sqrt(735))
    assert comp.threshold(ctx, 0.0) == pytest.approx(hand, rel=1e-14)
    for other in (dict(model_change_sq=(2.25, 1.0)), dict(num_clients=1), dict(num_clients=50)):
        assert comp.threshold(dataclasses.replace(ctx, **other), 1.0) == comp.threshold(ctx, 0.0)
    update = [rng.standard_normal(t.shape).astype(np.float32) * 0.3 for t in SPEC.tensors]
    payload = c.encoder(SPEC).encode(update, ctx)
    for g, (positions, _) in zip(flat(update), sent(c, SPEC, payload)):
        assert np.array_equal(positions, np.flatnonzero(np.abs(g.astype(np.float64)) > hand))
        assert 0 < len(positions) < len(g)
    assert comp.threshold(RoundContext(num_clients=4, lr=0.0, model_change_sq=(2.25,)), 0.0) == 0.0


def test_without_history_the_lag_rule_sends_the_ratio_largest(rng):
    """The first round has no model change, so no threshold: the `ratio` largest |Δ_i|."""
    c = codec("gdsec", rule="lag", ratio=0.1)
    assert c.compressor(SPEC).threshold(RoundContext(), 1.0) is None
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    payload = c.encoder(SPEC).encode(update)
    for g, (positions, values) in zip(flat(update), sent(c, SPEC, payload)):
        k = kept_count(0.1, g.size)
        assert np.array_equal(positions, np.sort(np.argsort(-np.abs(g), kind="stable")[:k]))
        assert np.array_equal(values, g[positions])


def test_the_relative_threshold_is_xi_times_the_rms_of_the_whole_delta(rng):
    """thr = ξ·‖Δ‖/√d with ‖Δ‖ over every tensor; the round context plays no part, so the
    payload is the same for any K, step and model change, and the first round needs no
    history (the default sends about 13% of Gaussian components: P(|z| > 1.5))."""
    c = codec("gdsec")
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    g = np.concatenate(flat(update)).astype(np.float64)
    hand = 1.5 * math.sqrt(np.sum(g**2) / SPEC.size)
    assert c.compressor(SPEC).threshold(RoundContext(), float(np.sum(g**2))) == pytest.approx(hand, rel=1e-14)
    contexts = [RoundContext(), RoundContext(num_clients=50, lr=0.01, model_change_sq=(1e6, 1.0))]
    payloads = {c.encoder(SPEC).encode(update, ctx) for ctx in contexts}
    (payload,) = payloads
    kept = 0
    for gi, (positions, values) in zip(flat(update), sent(c, SPEC, payload)):
        assert np.array_equal(positions, np.flatnonzero(np.abs(gi.astype(np.float64)) > hand))
        assert np.array_equal(values, gi[positions])
        kept += len(positions)
    assert 0.10 < kept / SPEC.size < 0.17


@pytest.mark.parametrize("xi", [0.3, 0.9])
def test_below_one_the_relative_rule_is_a_contraction(xi, rng):
    """ξ < 1: the largest |Δ_i| ≥ rms(Δ) > thr, so something is sent, and every dropped
    |Δ_i| ≤ ξ·rms gives ‖e‖ ≤ ξ‖Δ‖, even where all |Δ_i| are equal (where ξ = 1.5 sends nothing)."""
    c = codec("gdsec", xi=xi)
    flat_update = [np.where(rng.random(t.shape) < 0.5, 1.0, -1.0).astype(np.float32) for t in SPEC.tensors]
    for update in (flat_update, [rng.standard_cauchy(t.shape).astype(np.float32) for t in SPEC.tensors]):
        enc, dec = c.encoder(SPEC), c.decoder(SPEC)
        payload, _ = deliver(enc, dec, update)
        assert sum(len(p) for p, _ in sent(c, SPEC, payload)) > 0
        e_sq = sum(float(np.sum(e.astype(np.float64) ** 2)) for e in state(enc, "local"))
        assert e_sq <= xi**2 * sum(float(np.sum(g.astype(np.float64) ** 2)) for g in flat(update))
    payload = codec("gdsec").encoder(SPEC).encode(flat_update)
    assert sum(len(p) for p, _ in sent(c, SPEC, payload)) == 0


def test_a_key_frame_resets_h_on_both_sides_and_keeps_e(rng):
    c = codec("gdsec", rule="absolute", threshold=0.5, beta=0.5)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    updates = list(drifting_updates(rng, SPEC, 4))
    for g in updates[:3]:
        deliver(enc, dec, g)
    e = [x.copy() for x in state(enc, "local")]
    assert any(x.any() for x in e)
    payload, out = deliver(enc, dec, updates[3], key_frame=True)
    for g, ei, o, (positions, values) in zip(flat(updates[3]), e, out, sent(c, SPEC, payload)):
        delta = g + np.float32(0.5) * ei  # Δ = g − 0 + (1 − β)·e
        assert np.array_equal(positions, np.flatnonzero(np.abs(delta) > np.float32(0.5)))
        assert np.array_equal(values, delta[positions])
        assert np.array_equal(o[positions], values) and not np.delete(o, positions).any()
    assert shared_states_equal(enc, dec)


# --- state sync under loss ----------------------------------------------------------

ACTIONS = ["delivered", "lost", "late", "skipped", "ack_lost", "key_frame"]
"""As in test_state_sync.py: what can happen to the client in one round."""


@pytest.mark.parametrize("c", VARIANTS, ids=Codec.describe)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    actions=st.lists(st.sampled_from(ACTIONS), min_size=40, max_size=40),
    changes=st.lists(st.sampled_from([None, 0.0, 0.1, 10.0, 1e3]), min_size=40, max_size=40),
    seed=st.integers(0, 2**16),
)
def test_random_loss_keeps_h_identical_and_the_error_correction_exact(c, actions, changes, seed):
    """After every round the client syncs, both ends hold the same h, and each
    *committed* round satisfies the error correction's identity against the e it
    started from: a lost round is rolled back, not half-applied."""
    rng = np.random.default_rng(seed)
    enc, dec = c.encoder(SPEC, seed=seed), c.decoder(SPEC)
    updates = drifting_updates(rng, SPEC, len(actions))
    delivered = None  # (g, ĝ, e before the step) of a round the decoder committed
    for action, change, g in zip(actions, changes, updates):
        if action == "skipped":
            continue
        if enc.pending:  # an ack_lost round: the encoder learns of the delivery now
            assert enc.sync(dec.fingerprint) == "committed"
        if delivered is not None:
            check_error_correction(c, *delivered, state(enc, "local"))
            delivered = None
        e_old = [x.copy() for x in state(enc, "local")]
        ctx = RoundContext(num_clients=2, model_change_sq=() if change is None else (change,))
        payload = enc.encode(g, ctx, key_frame=action == "key_frame")
        if action == "lost":
            assert enc.sync(dec.fingerprint) == "rolled back"
        else:
            out = flat(dec.decode(payload))
            if action == "late":
                dec.rollback()
                assert enc.sync(dec.fingerprint) == "rolled back"
            else:
                dec.commit()
                delivered = (g, out, e_old)
                if action != "ack_lost":
                    assert enc.sync(dec.fingerprint) == "committed"
        if not enc.pending:
            assert enc.fingerprint == dec.fingerprint and shared_states_equal(enc, dec)
            if delivered is None:  # rolled back: e is what it was
                assert all(np.array_equal(a, b) for a, b in zip(state(enc, "local"), e_old))
    if enc.pending:
        assert enc.sync(dec.fingerprint) == "committed"
    if delivered is not None:
        check_error_correction(c, *delivered, state(enc, "local"))


# --- convergence --------------------------------------------------------------------


def quadratic_gd(K: int, d: int = 300, seed: int = 0):
    """K clients, each with a strongly convex quadratic ½(w − c_k)ᵀD_k(w − c_k) (diagonal D_k,
    condition number 50), and `rounds_to_gap(c, limit)`: distributed GD with step 1/L on
    their mean through codec c (None: plain GD) → (rounds to a relative gap of 1e-6,
    components sent per client per round)."""
    rng = np.random.default_rng(seed)
    D = np.geomspace(0.02, 1.0, d) * rng.uniform(0.5, 1.5, (K, d))
    C = rng.standard_normal((K, d))
    w_star = (D * C).mean(0) / D.mean(0)
    alpha = 1.0 / D.mean(0).max()

    def f(w):
        return 0.5 * np.mean(np.sum(D * (w - C) ** 2, axis=1))

    f0, f_star = f(np.zeros(d)), f(w_star)

    def rounds_to_gap(c, limit):
        spec = ModelSpec.flat(d)
        links = [(c.encoder(spec, seed=k), c.decoder(spec)) for k in range(K)] if c else []
        w, change, components = np.zeros(d), (), 0
        for t in range(limit):
            if (f(w) - f_star) / (f0 - f_star) < 1e-6:
                return t, components / (t * K)
            # Flower's mod: the update is the model change lr·∇f_k, the server's step its mean.
            updates = (alpha * D * (w - C)).astype(np.float32)
            if c is not None:
                ctx = RoundContext(num_clients=K, model_change_sq=change)
                decoded = []
                for (enc, dec), g in zip(links, updates):
                    payload, (out,) = deliver(enc, dec, [g], ctx)
                    components += len(sent(c, spec, payload)[0][0])
                    decoded.append(out)
                updates = np.asarray(decoded)
            step = updates.astype(np.float64).mean(0)
            w, change = w - step, (float(step @ step),)
        raise AssertionError(f"gap above 1e-6 after {limit} rounds")

    return rounds_to_gap


@pytest.mark.parametrize("K", [5, 10, 40])
def test_full_batch_gd_converges_linearly_sending_the_same_share_at_any_k(K):
    """GD-SEC with its defaults reaches a relative objective gap of 1e-6 within 1.2× GD's
    rounds at K = 5, 10 and 40, sending at most a sixth of d per client per round (about 11%
    when written, at every K). The former default, (ξ/K)·‖w(t) − w(t−1)‖/√d at ξ = 30, fails
    here at K = 5: its threshold is twice K = 10's, and it took 883 rounds to GD's 239."""
    rounds_to_gap = quadratic_gd(K)
    gd_rounds, _ = rounds_to_gap(None, 2000)
    rounds, per_round = rounds_to_gap(codec("gdsec"), int(1.2 * gd_rounds))
    assert rounds <= 1.2 * gd_rounds
    assert per_round <= 300 / 6, f"{per_round:.1f} components of 300 per client per round"


# --- malformed payloads -------------------------------------------------------------

N = 16


def key_frame(body: PayloadWriter, tensors: int = 1) -> bytes:
    """A key frame around `body`: any decoder state accepts its header."""
    return pack(Header(GDSEC.codec_id, True, 0, tensors), body.chunks)[0]


def body(m: int, positions, values, dtype="<f4", mode: int | None = None) -> PayloadWriter:
    out = PayloadWriter()
    out.struct("I", m)
    if mode is None:
        encode_positions(np.asarray(positions, np.int64), N, out)
    else:
        out.struct("B", mode)
        out.array(np.asarray(positions, np.uint8))
    out.array(np.asarray(values, dtype))
    return out


def test_a_hand_made_body_decodes():
    dec = codec("gdsec").decoder(ModelSpec.flat(N))
    (out,) = dec.decode(key_frame(body(2, [3, 9], [1.5, -2.0])))
    expected = np.zeros(N, np.float32)
    expected[[3, 9]] = [1.5, -2.0]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "c, payload",
    [
        (codec("gdsec"), key_frame(body(N + 1, [], []))),
        (codec("gdsec"), key_frame(body(0xFFFFFFFF, [], []))),
        (codec("gdsec", rule="topk", ratio=0.25), key_frame(body(2, [3, 9], [1.0, 2.0]))),
        (codec("gdsec"), key_frame(body(2, [3, 9], [1.0, np.nan]))),
        (codec("gdsec"), key_frame(body(2, [3, 9], [np.inf, 2.0]))),
        (codec("gdsec", value_dtype="float16"), key_frame(body(1, [4], [np.inf], dtype="<f2"))),
        (codec("gdsec"), key_frame(body(3, [0b00010000, 0], [1.0, 2.0, 3.0], mode=255))),  # bitmap holds 1
        (codec("gdsec"), key_frame(body(2, [3, 9], [1.0]))),  # values truncated
        (codec("gdsec"), key_frame(body(1, [3], [1.0, 2.0]))),  # trailing bytes
        (codec("gdsec"), key_frame(body(1, [3], [1.0]), tensors=2)),  # tensor count
        (codec("gdsec", value_dtype="float16"), key_frame(body(1, [3], [1.0]))),  # fp32 read as fp16
    ],
    ids=[
        "count-above-size",
        "huge-count",
        "topk-count",
        "nan-value",
        "inf-value",
        "fp16-inf",
        "bitmap-count",
        "truncated",
        "trailing",
        "tensor-count",
        "value-width",
    ],
)
def test_malformed_bodies_are_rejected_and_leave_the_state(c, payload, rng):
    spec = ModelSpec.flat(N)
    enc, dec = c.encoder(spec), c.decoder(spec)
    deliver(enc, dec, [rng.standard_normal(N).astype(np.float32)])
    before = {k: v.copy() for k, v in dec.shared.items()}
    with pytest.raises(PayloadError):
        dec.decode(payload)
    assert not dec.pending
    assert all(np.array_equal(dec.shared[k], v) for k, v in before.items())


def test_rice_coded_positions_past_the_tensor_are_rejected():
    out = PayloadWriter()
    out.struct("I", 2)
    encode_positions(np.array([3, 2 * N], np.int64), 4 * N, out)  # coded for a longer tensor
    out.array(np.ones(2, np.float32))
    with pytest.raises(PayloadError):
        codec("gdsec").decoder(ModelSpec.flat(N)).decode(key_frame(out))
