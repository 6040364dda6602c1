"""TPC (temporal predictive coding): what the method promises, beyond the shared codec checks.

The shared suites (test_roundtrip, test_state_sync, test_malformed) already run TPC's
configs from conftest through round trips, lossy links and forged payloads; here:
exactness with an always-sent residual, prediction of an AR(2) sequence, the
trigger at its threshold, the payload's exact length, memory sync under loss, and
TPC's own malformed fields.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import copied_state, forge, random_update, transmit
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, PayloadError, codec
from flcomp.codecs.compressors.tpc import TemporalPredictiveCoding

SPEC = ModelSpec.flat(600, 300, 100)
"""Three tensors, 1000 entries."""


def norm(x) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(xi, np.float64) ** 2) for xi in x)))


def flat(x) -> list[np.ndarray]:
    return [np.asarray(xi, np.float32).reshape(-1) for xi in x]


def prediction(enc, update) -> list[np.ndarray]:
    """p = G a, as the encoder will compute it for `update` from its committed memory."""
    comp: TemporalPredictiveCoding = enc.compressor
    x = flat(update)
    return comp.predict(comp.fit(x, enc.shared), enc.shared)


def ar2_sequence(rng, rounds: int, coefficients, noise: float = 1e-6, spec: ModelSpec = SPEC):
    """g(t) = a1·g(t−1) + a2·g(t−2) + noise, each tensor with its own (a1, a2)."""
    older, old = random_update(rng, spec), random_update(rng, spec)
    for _ in range(rounds):
        g = [
            (a1 * x1 + a2 * x2 + noise * rng.standard_normal(x1.shape)).astype(np.float32)
            for (a1, a2), x1, x2 in zip(coefficients, old, older)
        ]
        older, old = old, g
        yield g


def no_residual_bytes(c: Codec, spec: ModelSpec = SPEC) -> int:
    """header + s float32 coefficients (per tensor with per_tensor) + the trigger byte."""
    groups = len(spec) if c.config.per_tensor else 1
    return HEADER_BYTES + 4 * c.config.memory * groups + 1


# --- exact reconstruction -----------------------------------------------------------


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("threshold", ["relative", "absolute"])
def test_an_always_sent_fp32_residual_reconstructs_the_update(per_tensor, threshold, rng):
    """τ = 0, fp32 inner: ĝ = p + (g − p) in float32. Bit for bit wherever g − p is exact
    in float32 (always while the memory is empty), else within float32's rounding of
    that sum, 2⁻²³·(|g| + |p|); exactly equal bit patterns are impossible in general
    (g = 1, p = 2³⁰: g − p rounds to −2³⁰)."""
    c = codec("tpc", tau=0.0, threshold=threshold, per_tensor=per_tensor)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    updates = list(ar2_sequence(rng, 4, [(0.9, 0.05)] * 3, noise=0.3)) + [random_update(rng, SPEC)]
    inexact = 0
    for t, update in enumerate(updates):
        p = prediction(enc, update)
        payload = enc.encode(update)
        m = min(t, c.config.memory)
        groups = len(SPEC) if per_tensor else 1
        assert len(payload) == HEADER_BYTES + 4 * m * groups + 1 + 4 * SPEC.size, "residual sent"
        out = dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
        for g, pi, o in zip(update, p, out):
            g64, p64 = g.astype(np.float64), pi.astype(np.float64)
            exact = g64 - p64 == (g - pi).astype(np.float64)
            assert np.array_equal(o.view(np.uint32)[exact], g.view(np.uint32)[exact])
            assert np.all(np.abs(o - g64) <= 2.0**-23 * (np.abs(g64) + np.abs(p64)))
            inexact += int((~exact).sum())
            if t == 0:
                assert exact.all()
    assert 0 < inexact < len(updates) * SPEC.size // 2, "both cases are exercised"


def test_a_negative_zero_survives_the_warm_up():
    spec = ModelSpec.flat(3)
    update = [np.array([-0.0, 1.0, -2.0], np.float32)]
    c = codec("tpc", tau=0.0)
    (out,) = c.decoder(spec).decode(c.encoder(spec).encode(update))
    assert np.array_equal(out.view(np.uint32), update[0].view(np.uint32))


# --- prediction ---------------------------------------------------------------------


def test_an_ar2_sequence_is_predicted_far_below_its_norm(rng):
    """After the warm-up the memory holds g(t−1), g(t−2) (up to tiny errors): the
    least-squares fit recovers a1, a2, and no residual is sent."""
    c = codec("tpc")
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for t, g in enumerate(ar2_sequence(rng, 20, [(1.6, -0.8)] * 3)):
        residual = norm([gi - pi for gi, pi in zip(g, prediction(enc, g))])
        payload = enc.encode(g)
        out = dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
        if t >= 4:
            assert residual <= 1e-3 * norm(g)
            assert len(payload) == no_residual_bytes(c)
            assert norm([o - gi for o, gi in zip(out, g)]) <= 1e-3 * norm(g)


def test_per_tensor_coefficients_predict_tensors_with_different_dynamics(rng):
    dynamics = [(1.6, -0.8), (0.5, 0.3), (-0.2, 0.7)]
    residuals = {}
    for per_tensor in (False, True):
        c = codec("tpc", per_tensor=per_tensor)
        enc, dec = c.encoder(SPEC), c.decoder(SPEC)
        for g in ar2_sequence(np.random.default_rng(3), 12, dynamics):
            residuals[per_tensor] = norm([gi - pi for gi, pi in zip(g, prediction(enc, g))]) / norm(g)
            transmit(enc, dec, g, delivered=True)
    assert residuals[True] <= 1e-3
    assert residuals[False] >= 100 * residuals[True]


@pytest.mark.parametrize("update", ["repeated", "zero"])
def test_a_rank_deficient_memory_gives_finite_coefficients(update, rng):
    """The same update again and again (identical columns of G) or zeros (G = 0)."""
    c = codec("tpc")
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    g = (
        random_update(rng, SPEC)
        if update == "repeated"
        else [np.zeros(t.shape, np.float32) for t in SPEC.tensors]
    )
    for _ in range(5):
        out = transmit(enc, dec, [x.copy() for x in g], delivered=True)
        assert np.isfinite(enc.compressor.fit(flat(g), enc.shared)).all()
        assert norm([o - x for o, x in zip(out, g)]) <= 1e-6 * max(norm(g), 1.0)
    assert int(enc.shared["filled"]) == c.config.memory


# --- the trigger --------------------------------------------------------------------

TRIGGER_SPEC = ModelSpec.flat(4)


def trigger_link(**config):
    """A link whose memory holds (0, 0, 0, 2), and the update g = (1, 1, 1, 3): the
    fit is a = 1.5, p = (0, 0, 0, 3), r = (1, 1, 1, 0): ‖r‖ = √3 = ‖g‖/2 exactly."""
    c = codec("tpc", **config)
    enc, dec = c.encoder(TRIGGER_SPEC), c.decoder(TRIGGER_SPEC)
    first = transmit(enc, dec, [np.array([0, 0, 0, 2], np.float32)], delivered=True)
    assert np.array_equal(first[0], [0, 0, 0, 2])
    return enc, dec, [np.array([1, 1, 1, 3], np.float32)]


@pytest.mark.parametrize(
    "threshold, at",
    [("relative", 0.5), ("absolute", float(np.sqrt(3.0)))],
)
def test_the_residual_is_sent_only_above_the_threshold(threshold, at):
    """‖r‖ = τ·‖g‖ (relative) or ‖r‖ = τ (absolute) exactly: not sent; with τ one float
    below: sent; one float above: not sent."""
    assert np.sqrt(3.0) == 0.5 * np.sqrt(12.0)
    for tau, sent in [(at, False), (np.nextafter(at, -np.inf), True), (np.nextafter(at, np.inf), False)]:
        enc, dec, g = trigger_link(tau=float(tau), threshold=threshold, memory=1)
        payload = enc.encode(g)
        (out,) = dec.decode(payload)
        assert payload[HEADER_BYTES : HEADER_BYTES + 4] == np.float32(1.5).tobytes()
        assert payload[HEADER_BYTES + 4] == sent
        if sent:
            assert len(payload) == HEADER_BYTES + 4 + 1 + 4 * 4
            assert np.array_equal(out, g[0])
        else:
            assert len(payload) == HEADER_BYTES + 4 + 1
            assert np.array_equal(out, [0, 0, 0, 3])


# --- bits ---------------------------------------------------------------------------


@pytest.mark.parametrize("c", [codec("tpc"), codec("tpc", memory=5, per_tensor=True)], ids=Codec.describe)
def test_a_round_without_residual_costs_header_coefficients_and_trigger(c, rng):
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    groups = len(SPEC) if c.config.per_tensor else 1
    g = random_update(rng, SPEC)
    for m in range(c.config.memory):
        # Warm-up: m coefficients; g itself is sent in fp32, then multiples of it are predicted.
        payload = enc.encode([(1 + m) * x for x in g])
        residual = 4 * SPEC.size if m == 0 else 0
        assert len(payload) == HEADER_BYTES + 4 * m * groups + 1 + residual
        dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
    payload = enc.encode([0.5 * x for x in g])  # in the memory's span: predicted exactly enough
    assert len(payload) == no_residual_bytes(c) == HEADER_BYTES + 4 * c.config.memory * groups + 1


# --- state sync ---------------------------------------------------------------------

SYNC_CONFIGS = [
    codec("tpc"),
    codec("tpc", per_tensor=True, inner="topk:ratio=0.2"),
    codec("tpc", memory=2, threshold="absolute", tau=0.5, inner="qsgd:levels=4"),
]


def assert_same_memory(enc, dec) -> None:
    assert enc.fingerprint == dec.fingerprint
    assert enc.shared.keys() == dec.shared.keys()
    for k, v in dec.shared.items():
        assert v.dtype == enc.shared[k].dtype and np.array_equal(v, enc.shared[k]), k


@pytest.mark.parametrize("c", SYNC_CONFIGS, ids=Codec.describe)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    outcomes=st.lists(
        st.sampled_from(["delivered", "lost", "ack_lost", "key_frame"]), min_size=1, max_size=30
    ),
    seed=st.integers(0, 2**16),
)
def test_random_loss_keeps_both_memories_identical(c, outcomes, seed):
    rng = np.random.default_rng(seed)
    enc, dec = c.encoder(SPEC, seed=seed), c.decoder(SPEC)
    updates = ar2_sequence(rng, len(outcomes), [(1.2, -0.4)] * 3, noise=0.05)
    for outcome, g in zip(outcomes, updates):
        enc.sync(dec.fingerprint)  # commits an unacknowledged step, rolls back a lost one
        payload = enc.encode(g, key_frame=outcome == "key_frame")
        if outcome == "lost":
            enc.sync(dec.fingerprint)
            assert_same_memory(enc, dec)
            continue
        out = dec.decode(payload)
        dec.commit()
        # The decoded update is what both ends pushed into their memories.
        for i, o in enumerate(out):
            assert np.array_equal(o.reshape(-1), dec.shared[f"memory/{i}/0"])
        if outcome == "key_frame":
            assert int(dec.shared["filled"]) == 1
        if outcome != "ack_lost":
            enc.sync(dec.fingerprint)
            assert_same_memory(enc, dec)
            for i, o in enumerate(out):
                assert np.array_equal(o.reshape(-1), enc.shared[f"memory/{i}/0"])
    enc.sync(dec.fingerprint)
    assert_same_memory(enc, dec)


def test_the_inner_codecs_state_lives_under_tpcs_keys(rng):
    c = codec("tpc", inner="topk:ratio=0.1", tau=0.0)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    assert sorted(enc.local) == [f"inner/ef/{i}" for i in range(len(SPEC))]
    transmit(enc, dec, random_update(rng, SPEC), delivered=True)
    error = {k: v.copy() for k, v in enc.local.items()}
    assert any(np.any(v) for v in error.values()), "top-k's error feedback kept the dropped residual"
    enc.encode(random_update(rng, SPEC))
    enc.rollback()
    assert all(np.array_equal(enc.local[k], v) for k, v in error.items()), "rolled back with the step"
    transmit(enc, dec, random_update(rng, SPEC), delivered=True)
    # A key frame empties the memory but keeps the encoder-local error feedback: its
    # residual carries the feedback, unlike a fresh encoder's first payload.
    g = random_update(rng, SPEC)
    enc.request_key_frame()
    key_frame = enc.encode(g)
    assert key_frame != c.encoder(SPEC).encode(g)
    dec.decode(key_frame)
    dec.commit()
    assert enc.sync(dec.fingerprint) == "committed"
    assert int(enc.shared["filled"]) == int(dec.shared["filled"]) == 1


# --- malformed payloads -------------------------------------------------------------


@pytest.fixture(scope="module")
def warmed_link():
    """(decoder state, payload with residual, payload without) after the memory filled."""
    c = codec("tpc", tau=0.05)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    rng = np.random.default_rng(4)
    updates = list(ar2_sequence(rng, 6, [(1.6, -0.8)] * 3))
    for g in updates[:5]:
        transmit(enc, dec, g, delivered=True)
    without = enc.encode(updates[5])
    enc.rollback()
    with_residual = enc.encode(random_update(rng, SPEC))
    enc.rollback()
    assert len(without) == no_residual_bytes(c) < len(with_residual)
    return c, copied_state(dec.state_dict()), with_residual, without


def rejected(c, state, payload) -> bool:
    dec = c.decoder(SPEC)
    dec.load_state_dict(state)
    try:
        dec.decode(payload)
    except PayloadError:
        assert not dec.pending and all(np.array_equal(dec.state_dict()[k], v) for k, v in state.items())
        return True
    return False


def body(payload: bytes) -> bytearray:
    return bytearray(payload[HEADER_BYTES:])


def test_every_truncation_is_rejected(warmed_link):
    c, state, with_residual, without = warmed_link
    for payload in (with_residual, without):
        assert not rejected(c, state, payload)
        for n in range(len(payload)):
            assert rejected(c, state, payload[:n])
            assert rejected(c, state, forge(payload, payload[HEADER_BYTES:n]))


@pytest.mark.parametrize("trigger", [2, 0x80, 0xFF])
def test_a_trigger_other_than_0_or_1_is_rejected(warmed_link, trigger):
    c, state, with_residual, without = warmed_link
    for payload in (with_residual, without):
        b = body(payload)
        b[4 * c.config.memory] = trigger
        assert rejected(c, state, forge(payload, bytes(b)))


def test_a_flipped_trigger_is_rejected(warmed_link):
    """1 → 0 leaves the residual as trailing bytes; 0 → 1 announces a residual that is not there."""
    c, state, with_residual, without = warmed_link
    for payload in (with_residual, without):
        b = body(payload)
        b[4 * c.config.memory] ^= 1
        assert rejected(c, state, forge(payload, bytes(b)))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38])
def test_non_finite_or_overflowing_coefficients_are_rejected(warmed_link, value):
    """NaN/Inf coefficients, and a finite one whose prediction overflows float32."""
    c, state, with_residual, without = warmed_link
    for payload in (with_residual, without):
        for j in range(c.config.memory):
            b = body(payload)
            b[4 * j : 4 * j + 4] = np.float32(value).tobytes()
            assert rejected(c, state, forge(payload, bytes(b)))


def test_a_missing_or_extra_coefficient_is_rejected(warmed_link):
    c, state, with_residual, without = warmed_link
    for payload in (with_residual, without):
        b = body(payload)
        assert rejected(c, state, forge(payload, bytes(b[4:])))
        assert rejected(c, state, forge(payload, bytes(b[:4] + b)))


def test_a_corrupted_memory_count_is_refused(warmed_link):
    c, state, with_residual, _ = warmed_link
    for filled in (-1, c.config.memory + 1):
        bad = {**state, "shared/filled": np.array(filled, np.int64)}
        assert rejected(c, bad, with_residual)
        enc = c.encoder(SPEC)
        enc.load_state_dict({**copied_state(enc.state_dict()), "shared/filled": np.array(filled, np.int64)})
        with pytest.raises(ValueError):
            enc.encode(random_update(np.random.default_rng(0), SPEC))


def test_an_overflowing_prediction_is_replaced_by_none(monkeypatch, rng):
    """Coefficients whose prediction leaves float32's range: the encoder predicts 0, sends g."""
    c = codec("tpc", tau=0.0)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    transmit(enc, dec, random_update(rng, SPEC, scale=1e30), delivered=True)
    monkeypatch.setattr(enc.compressor, "fit", lambda x, shared: np.full((1, 1), 3e38, np.float32))
    g = random_update(rng, SPEC)
    payload = enc.encode(g)
    assert payload[HEADER_BYTES : HEADER_BYTES + 4] == np.float32(0).tobytes()
    out = dec.decode(payload)
    assert all(np.array_equal(o, x) for o, x in zip(out, g))


# --- config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "tpc",
        "tpc:memory=5,tau=0.1,threshold=absolute,per_tensor=true",
        "tpc:inner=topk:ratio=0.1;value_dtype=float16;error_feedback=false",
        "tpc:inner=qsgd:levels=4,error_feedback=true",
    ],
)
def test_describe_parses_back(text):
    c = Codec.parse(text)
    assert Codec.parse(c.describe()) == c
    assert c.config == Codec.parse(c.describe()).config


def test_inner_text_is_canonical():
    assert (
        codec("tpc", inner="topk:ratio=0.1").config
        == codec("tpc", inner="topk:value_dtype=float32;ratio=0.1,error_feedback=true").config
    )
    assert codec("tpc").config.inner == "fp32"


@pytest.mark.parametrize(
    "params",
    [
        dict(memory=0),
        dict(memory=65),
        dict(tau=-0.1),
        dict(tau=float("inf")),
        dict(tau=float("nan")),
        dict(tau=1.0),
        dict(inner="nope"),
        dict(inner="tpc"),
        dict(inner="topk:ratio=2"),
    ],
)
def test_bad_configs_are_refused(params):
    with pytest.raises(ValueError):
        codec("tpc", **params)


def test_absolute_threshold_accepts_any_finite_tau():
    assert codec("tpc", threshold="absolute", tau=10.0).config.tau == 10.0
