"""DGC (deep gradient compression): what the method promises, beyond the shared codec checks.

The shared suites run DGC's default config through round trips, lossy links and forged
payloads; here: the warm-up schedule read back from the payloads' bytes, momentum
correction and momentum factor masking against a plain reference, clipping, what is
conserved (nothing accumulated is lost), the encoder-only state across lost payloads,
key frames and checkpoints, the decoder's check of the stage, overflow, and a
distributed-GD run that converges.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import copied_state, forge, transmit

from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, PayloadError, RoundContext, codec
from flcomp.codecs.coding.positions import decode_positions
from flcomp.codecs.coding.sparse import read_values
from flcomp.codecs.compressors.dgc import DGC
from flcomp.codecs.wire import unpack

SPEC = ModelSpec.flat(4000, 900, 37)
"""Three tensors, 4937 entries."""

PAPER_DENSITIES = [0.25, 0.0625, 0.015625, 0.004, 0.001]
"""The paper's warm-up: 75%, 93.75%, 98.4375%, 99.6% sparsity, then 99.9%."""


def updates(rng: np.random.Generator, rounds: int, spec: ModelSpec = SPEC, scale: float = 1.0):
    return [
        [(scale * rng.standard_normal(t.size)).astype(np.float32) for t in spec.tensors]
        for _ in range(rounds)
    ]


def body_counts(c: Codec, payload: bytes, decoded: list[np.ndarray]) -> tuple[int, list[int]]:
    """(stage, values per tensor) of a payload: u32 stage | per tensor positions | values.

    The counts are the `decoded` tensors' nonzeros (the updates are Gaussian), and the body
    is parsed with them to its last byte, so they are what the bytes carry.
    """
    counts = [int(np.count_nonzero(o)) for o in decoded]
    _, body = unpack(payload, DGC.codec_id, len(SPEC))
    (stage,) = body.struct("I")
    for t, k in zip(SPEC.tensors, counts):
        decode_positions(body, k, t.size)
        read_values(body, c.config.value_dtype, k)
    body.finish()
    return stage, counts


class Reference:
    """DGC written out plainly, one tensor list at a time (float32, the paper's order)."""

    def __init__(self, spec: ModelSpec, ratio: float, m: float, warmup: int, clip: float | None = None):
        self.ratio, self.m, self.warmup, self.clip = ratio, np.float32(m), warmup, clip
        self.u = [np.zeros(t.size, np.float32) for t in spec.tensors]
        self.v = [np.zeros(t.size, np.float32) for t in spec.tensors]
        self.step = 0

    def density(self) -> float:
        s, w = self.step, self.warmup
        return self.ratio ** ((s + 1) / (w + 1)) if s < w else self.ratio

    def encode(self, g: list[np.ndarray], num_clients: int = 1) -> list[np.ndarray]:
        if self.clip is not None:
            norm = math.sqrt(sum(float(np.sum(gi.astype(np.float64) ** 2)) for gi in g))
            if norm > self.clip / math.sqrt(num_clients):
                g = [gi * np.float32(self.clip / math.sqrt(num_clients) / norm) for gi in g]
        sent = []
        for i, gi in enumerate(g):
            self.u[i] = self.m * self.u[i] + gi
            self.v[i] = self.v[i] + self.u[i]
            k = min(len(gi), max(1, math.ceil(self.density() * len(gi))))
            top = np.argsort(-np.abs(self.v[i]), kind="stable")[:k]
            out = np.zeros_like(gi)
            out[top] = self.v[i][top]
            self.v[i][top] = 0
            self.u[i][top] = 0
            sent.append(out)
        self.step = min(self.step + 1, self.warmup)
        return sent


def local(enc, key: str) -> list[np.ndarray]:
    d = enc.state_dict()
    return [np.asarray(d[f"local/{key}/{i}"]) for i in range(len(enc.compressor.spec))]


# --- warm-up -----------------------------------------------------------------------


def test_warmup_counts_read_from_the_payloads_follow_the_papers_schedule(rng):
    c = codec("dgc")
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for s, g in enumerate(updates(rng, 7)):
        payload = enc.encode(g)
        stage, counts = body_counts(c, payload, dec.decode(payload))
        assert stage == min(s, 4)
        density = PAPER_DENSITIES[min(s, 4)]
        for t, k in zip(SPEC.tensors, counts):
            # The paper's factor of 4 a stage against ratio^((s+1)/5): within 2.5% (and rounding).
            assert abs(k - density * t.size) <= 0.025 * density * t.size + 1
            assert k == max(1, math.ceil(enc.compressor.density(stage) * t.size))
        assert enc.last_stats == {"entries_sent": float(sum(counts))}
        dec.commit()
        enc.sync(dec.fingerprint)


def test_without_warmup_the_first_round_sends_the_final_ratio(rng):
    c = codec("dgc", warmup_rounds=0, ratio=0.01)
    payload = c.encoder(SPEC).encode(updates(rng, 1)[0])
    stage, counts = body_counts(c, payload, c.decoder(SPEC).decode(payload))
    assert stage == 0 and counts == [40, 9, 1]


def test_steady_state_bits_per_entry_at_the_papers_ratio(rng):
    spec = ModelSpec.flat(1_000_000)
    enc = codec("dgc", warmup_rounds=0).encoder(spec)
    payload = enc.encode(updates(rng, 1, spec)[0])
    bits = 8 * len(payload) / spec.size
    # 1000 float32 values (0.032 bits an entry) and ~10 bits a Rice-coded position.
    assert 0.040 < bits < 0.045


# --- momentum correction and masking -----------------------------------------------


@pytest.mark.parametrize("m", [0.9, 0.5, 0.0])
def test_momentum_correction_and_masking_match_a_reference_exactly(m, rng):
    c = codec("dgc", ratio=0.01, m=m, warmup_rounds=3)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    ref = Reference(SPEC, ratio=0.01, m=m, warmup=3)
    for g in updates(rng, 8):
        expected = ref.encode(g)
        out = transmit(enc, dec, g, delivered=True)
        assert all(np.array_equal(o, e) for o, e in zip(out, expected))
        assert all(np.array_equal(v, r) for v, r in zip(local(enc, "v"), ref.v))
        if m:
            u = local(enc, "u")
            assert all(np.array_equal(ui, r) for ui, r in zip(u, ref.u))
            # Masking: the momentum is zero exactly where a value was sent, and only there.
            assert all(np.array_equal(ui == 0, o != 0) for ui, o in zip(u, out))
        else:
            assert "local/u/0" not in enc.state_dict()


def test_masking_restarts_the_momentum_of_sent_entries():
    """A constant g: a sent entry's velocity restarts from g, an unsent one keeps growing."""
    spec = ModelSpec.flat(4)
    c = codec("dgc", ratio=0.25, warmup_rounds=0)
    enc, dec = c.encoder(spec), c.decoder(spec)
    g = [np.array([4.0, 3.0, 2.0, 1.0], np.float32)]
    (first,) = transmit(enc, dec, g, delivered=True)
    assert first.tolist() == [4.0, 0, 0, 0]
    (u,) = local(enc, "u")
    (v,) = local(enc, "v")
    assert u.tolist() == [0.0, 3.0, 2.0, 1.0] and v.tolist() == [0.0, 3.0, 2.0, 1.0]
    transmit(enc, dec, g, delivered=True)  # v = [4, 3 + 5.7, ...]: entry 1 is sent
    (u,) = local(enc, "u")
    m = np.float32(0.9)
    np.testing.assert_array_equal(u, np.float32([4.0, 0.0, m * 2 + 2, m * 1 + 1]))


# --- clipping ----------------------------------------------------------------------


@pytest.mark.parametrize("num_clients", [1, 4])
def test_clipping_scales_the_whole_update_to_the_threshold_over_root_k(num_clients, rng):
    c = codec("dgc", ratio=1.0, warmup_rounds=0, m=0.0, clip_norm=2.0)
    bound = 2.0 / math.sqrt(num_clients)
    ctx = RoundContext(num_clients=num_clients)
    (g,) = updates(rng, 1)
    norm = math.sqrt(sum(float(np.sum(gi.astype(np.float64) ** 2)) for gi in g))
    out = c.decoder(SPEC).decode(c.encoder(SPEC).encode(g, ctx))
    out_norm = math.sqrt(sum(float(np.sum(o.astype(np.float64) ** 2)) for o in out))
    assert norm > 10 * bound and out_norm == pytest.approx(bound, rel=1e-6)
    # The whole update is scaled by one factor: each tensor keeps its direction and share.
    for o, gi in zip(out, g):
        np.testing.assert_allclose(o, gi * (bound / norm), rtol=1e-6, atol=0)
    small = [gi * np.float32(0.5 * bound / norm) for gi in g]
    out = c.decoder(SPEC).decode(c.encoder(SPEC).encode(small, ctx))
    assert all(np.array_equal(o, s) for o, s in zip(out, small)), "an update below the bound is sent as it is"


def test_clipping_happens_before_the_accumulation(rng):
    c = codec("dgc", ratio=0.01, warmup_rounds=1, clip_norm=1.0)
    ctx = RoundContext(num_clients=3)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    ref = Reference(SPEC, ratio=0.01, m=0.9, warmup=1, clip=1.0)
    for g in updates(rng, 4, scale=3.0):
        out = dec.decode(enc.encode(g, ctx))
        dec.commit()
        enc.commit()
        expected = ref.encode(g, num_clients=3)
        for o, e in zip(out, expected):
            np.testing.assert_allclose(o, e, rtol=1e-6, atol=1e-7)


def test_clipping_is_off_by_default_and_the_threshold_must_be_positive():
    assert codec("dgc").config.clip_norm is None
    assert Codec.parse("dgc:clip_norm=none") == codec("dgc")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            codec("dgc", clip_norm=bad)


# --- nothing is lost ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["dgc", "dgc:value_dtype=float16", "dgc:m=0", "dgc:clip_norm=20,ratio=0.01", "dgc:ratio=0.3"]
)
def test_sent_plus_memory_is_the_accumulated_velocity(text):
    """Σ ĝ_t + v_T = Σ u_t over the committed steps, u_t = m·(masked u_{t−1}) + clip(g_t):
    at m = 0 this is Σ clip(g_t), error feedback's invariant."""
    c = Codec.parse(text)
    rng = np.random.default_rng(3)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    cfg, comp = c.config, enc.compressor
    velocity = [np.zeros(t.size) for t in SPEC.tensors]
    got = [np.zeros(t.size) for t in SPEC.tensors]
    for g in updates(rng, 20, scale=5.0):
        clipped = comp.clipped(g, 1)
        u_before = local(enc, "u") if cfg.m else [np.zeros(t.size, np.float32) for t in SPEC.tensors]
        out = transmit(enc, dec, g, delivered=bool(rng.random() < 0.7))
        if out is None:
            continue
        for acc, ui, gi in zip(velocity, u_before, clipped):
            acc += np.float32(cfg.m) * ui.astype(np.float64) + gi
        for acc, o in zip(got, out):
            acc += o
    for s, g_sum, v in zip(velocity, got, local(enc, "v")):
        scale = max(1.0, float(np.abs(s).max()))
        np.testing.assert_allclose(g_sum + v, s, rtol=0, atol=2e-5 * scale)


# --- state across the link ---------------------------------------------------------


def test_a_lost_payload_and_a_key_frame_leave_the_warmup_and_memory_in_sync(rng):
    """Link A loses its third payload and sends its sixth as a key frame to a decoder that
    lost its state; link B never saw the lost update. Bodies and outputs are the same."""
    c = codec("dgc", ratio=0.01)
    seq = updates(rng, 8)
    lost = updates(rng, 1)[0]
    enc_a, dec_a = c.encoder(SPEC), c.decoder(SPEC)
    enc_b, dec_b = c.encoder(SPEC), c.decoder(SPEC)
    for r, g in enumerate(seq):
        if r == 2:
            before = copied_state(enc_a.state_dict())
            assert transmit(enc_a, dec_a, lost, delivered=False) is None
            after = enc_a.state_dict()
            assert all(np.array_equal(after[k], v) for k, v in before.items()), "rollback restores u, v, step"
        if r == 5:
            dec_a = c.decoder(SPEC)  # the server evicted the client: a key frame resynchronises
            enc_a.request_key_frame()
        payload_a = enc_a.encode(g)
        payload_b = enc_b.encode(g)
        assert payload_a[HEADER_BYTES:] == payload_b[HEADER_BYTES:]  # the key frame too: the warm-up goes on
        assert bool(payload_a[4] & 1) == (r == 5)
        out_a, out_b = dec_a.decode(payload_a), dec_b.decode(payload_b)
        assert all(np.array_equal(a, b) for a, b in zip(out_a, out_b))
        for enc, dec in ((enc_a, dec_a), (enc_b, dec_b)):
            dec.commit()
            assert enc.sync(dec.fingerprint) == "committed"
    assert int(enc_a.state_dict()["local/step"]) == 4


def test_an_encoder_restored_from_its_state_dict_continues_the_same_link(rng):
    c = codec("dgc", ratio=0.02)
    seq = updates(rng, 6)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for g in seq[:2]:
        transmit(enc, dec, g, delivered=True)
    restored = c.encoder(SPEC)
    restored.load_state_dict(copied_state(enc.state_dict()))
    for g in seq[2:]:
        assert restored.encode(g) == enc.encode(g)
        restored.commit()
        enc.commit()


# --- the decoder's checks ----------------------------------------------------------


def test_the_decoder_refuses_a_stage_past_the_warmup_or_a_count_it_does_not_carry(rng):
    c = codec("dgc", ratio=0.01)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    first = enc.encode(updates(rng, 1)[0])
    enc.commit()
    for g in updates(rng, 4):
        enc.encode(g)
        enc.commit()
    steady = enc.encode(updates(rng, 1)[0], key_frame=True)  # stage 4 = W, decodable from scratch
    dec.decode(steady)
    dec.rollback()
    # A stage past W = 4 would read the final ratio's counts, which this body holds: only the
    # stage check refuses it. Stage 1 on stage 0's body reads counts the body does not carry.
    for payload, stage in ((steady, 5), (steady, 2**32 - 1), (first, 1)):
        body = stage.to_bytes(4, "little") + payload[HEADER_BYTES + 4 :]
        with pytest.raises(PayloadError):
            c.decoder(SPEC).decode(forge(payload, body))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_overflowing_velocity_is_refused_and_leaves_the_encoder_as_it_was():
    spec = ModelSpec.flat(4)
    c = codec("dgc", ratio=0.25, warmup_rounds=0)
    enc, dec = c.encoder(spec), c.decoder(spec)
    g = [np.full(4, 3e38, np.float32)]
    (out,) = transmit(enc, dec, g, delivered=True)
    assert np.isfinite(out).all()
    before = copied_state(enc.state_dict())
    with pytest.raises(ValueError):
        enc.encode(g)  # u = 0.9·3e38 + 3e38 overflows
    assert not enc.pending
    assert all(np.array_equal(enc.state_dict()[k], v) for k, v in before.items())


def test_the_generic_error_feedback_is_refused_and_bad_configs_raise():
    assert DGC.own_error_feedback and not codec("dgc").error_feedback
    with pytest.raises(ValueError):
        codec("dgc", error_feedback=True)
    for bad in (dict(ratio=0.0), dict(ratio=1.5), dict(m=1.0), dict(m=-0.1), dict(warmup_rounds=-1)):
        with pytest.raises(ValueError):
            codec("dgc", **bad)


# --- it trains ---------------------------------------------------------------------


def test_distributed_gd_on_least_squares_converges_with_dgc():
    """K = 4 clients whose data share one optimum, full-batch gradients, the server steps by
    the mean of what it decodes, lr scaled by (1 − m) as the config's docstring says: at 5%
    density the gap shrinks linearly, as GD's does."""
    rng = np.random.default_rng(0)
    d, k, rows = 100, 4, 400
    a = [rng.standard_normal((rows, d)) / np.sqrt(rows) for _ in range(k)]
    w_star = rng.standard_normal(d)
    spec = ModelSpec.flat(d)
    c = codec("dgc", ratio=0.05)
    links = [(c.encoder(spec, seed=i), c.decoder(spec)) for i in range(k)]
    w = np.zeros(d)
    lr = 0.1 * (1 - c.config.m)
    gaps = []
    for _ in range(400):
        step = np.zeros(d)
        for (enc, dec), ai in zip(links, a):
            grad = (ai.T @ (ai @ (w - w_star))).astype(np.float32)
            (out,) = transmit(enc, dec, [grad], delivered=True)
            step += out
        w -= lr * step / k
        gaps.append(np.linalg.norm(w - w_star) / np.linalg.norm(w_star))
    assert gaps[199] < 1e-2 and gaps[-1] < 1e-4
