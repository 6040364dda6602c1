"""STC (Sattler et al. 2019): the top-k as ±μ, the bits of its Golomb-coded positions against the
paper's formula, and STC as the server's broadcast codec (two-way STC, the paper's Algorithm 2)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flcomp.clients import compression_mod
from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, codec
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed
from flcomp.strategies.downlink import Broadcast

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


# --- STC as the downlink codec: the server's broadcast -----------------------------------------


def test_the_broadcasts_residual_keeps_everything_the_server_meant_to_send():
    """ŵ(t) + e(t) = w(1) + Σ (w(s) − ŵ(s−1)): the server's STC residual (error feedback) loses nothing."""
    rng = np.random.default_rng(0)
    broadcast = Broadcast(Codec.parse("stc:ratio=0.05"), seed=1)
    w = rng.standard_normal(400).astype(np.float32)
    broadcast.advance(1, ArrayRecord({"w": Array(w)}))
    meant = w.astype(np.float64)
    for t in range(2, 30):
        replica = broadcast.replica["w"].numpy()
        w = (replica - 0.1 * rng.standard_normal(400)).astype(np.float32)
        meant += w.astype(np.float64) - replica
        broadcast.advance(t, ArrayRecord({"w": Array(w)}))
        assert np.count_nonzero(broadcast.replica["w"].numpy() - replica) <= 20
        np.testing.assert_allclose(
            broadcast.replica["w"].numpy() + broadcast.encoder.local["ef/0"], meant, atol=1e-4
        )


SIZE, NODES, PULL = 64, 4, 0.1


def client_app() -> ClientApp:
    """Each client pulls w a step PULL toward its own target; b counts rounds."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context) -> Message:
        arrays = msg.content["arrays"]
        target = np.random.default_rng(context.node_config["partition-id"]).standard_normal(SIZE)
        w = arrays["w"].numpy()
        local = ArrayRecord(
            {"w": Array((w - PULL * (w - target)).astype(np.float32)), "b": Array(arrays["b"].numpy() + 1)}
        )
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)

    return app


class RecordingGrid(InlineGrid):
    """Keeps the arrays of each train message: (round, node) → ArrayRecord."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: dict[tuple[int, int], ArrayRecord] = {}

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            self.sent[int(m.content["config"]["server-round"]), m.metadata.dst_node_id] = m.content["arrays"]
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("channel", [None, "fixed:loss=erasure,erasure_probability=0.3"])
def test_two_way_stc_through_the_flower_apps(channel):
    random.seed(0)
    rounds = 30
    strategy = Compressed(
        FedAvg(fraction_evaluate=0.0), codec="stc:ratio=0.1", downlink="stc:ratio=0.1", channel=channel
    )
    grid = RecordingGrid(client_app(), NODES, first_node_id=101)
    initial = ArrayRecord({"w": Array(np.zeros(SIZE, np.float32)), "b": Array(np.zeros(3, np.float32))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)

    for t in range(2, rounds + 1):
        payloads = {
            r[records.PAYLOAD].data for (s, _), r in grid.sent.items() if s == t and records.PAYLOAD in r
        }
        assert len(payloads) <= 1, "one broadcast payload a round, the same bytes for all"
        if channel is None:
            (payload,) = payloads
            assert strategy.traffic[t].downlink_bytes == NODES * len(payload)
            # w: 7 of 64 entries, b: 1 of 3; per tensor m, μ, the mode byte, at most a bitmap, signs.
            assert len(payload) <= HEADER_BYTES + (9 + 8 + 1) + (9 + 1 + 1)
    current = [
        c
        for c in grid.contexts.values()
        if c.state.config_records["flcomp.replica.meta"]["version"] == rounds
    ]
    assert current
    for context in current:
        replica = context.state.array_records["flcomp.replica"]
        np.testing.assert_array_equal(replica["w"].numpy(), strategy.broadcast.replica["w"].numpy())

    if channel is not None:
        return
    # Both directions sparse and ternary, and still FedAvg's fixed point is approached.
    optimum = np.mean([np.random.default_rng(i).standard_normal(SIZE) for i in range(NODES)], axis=0)
    assert np.linalg.norm(result.arrays["w"].numpy() - optimum) < 0.3 * np.linalg.norm(optimum)
