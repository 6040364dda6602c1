"""LAG: the trigger is the paper's LAG-WK rule for a server that averages.

Notation as in flcomp/codecs/compressors/lag.py: x the update, x̂ the last upload, α the
server's step on the mean of the K updates, D the model changes the threshold sums.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SPEC

from flcomp.codecs import HEADER_BYTES, ModelSpec, RoundContext, codec
from flcomp.codecs.compressors.lag import LAG

LAG_WK = codec("lag")


def deliver(enc, dec, update, ctx=RoundContext()):
    """One delivered round; returns (payload, decoded)."""
    payload = enc.encode(update, ctx)
    out = dec.decode(payload)
    dec.commit()
    assert enc.sync(dec.fingerprint) == "committed"
    return payload, out


def is_skip(payload: bytes) -> bool:
    return len(payload) == HEADER_BYTES + 1


def test_the_default_is_lag_wk_with_the_papers_xi_and_memory():
    assert LAG_WK.config.rule == "lag-wk" and LAG_WK.config.xi == 1.0 and LAG_WK.config.memory == 10


def test_the_threshold_is_the_papers_with_the_averaging_servers_step():
    """(1/(α_p K)²)·Σ(ξ/D)‖Δw‖² with α_p = α/K: (ξ/D)·Σ‖Δw‖²/α², the same at every K; only the
    newest D changes count."""
    comp = codec("lag", xi=2.0, memory=3).compressor(SPEC)
    changes = (1.0, 4.0, 9.0, 1e6)
    for k in (1, 10, 100):
        ctx = RoundContext(num_clients=k, lr=0.5, model_change_sq=changes)
        assert comp.threshold(0.0, ctx) == pytest.approx(2.0 / 3 * 14.0 / 0.25, rel=1e-14)
    assert comp.threshold(0.0, RoundContext(num_clients=10, lr=0.0, model_change_sq=changes)) == 0.0


def test_k_clients_repeating_their_updates_skip_as_the_papers_rule_does():
    """K = 10 clients whose updates repeat up to a small change: the server's mean moves by
    u each round, and a client whose update moved by ε with ‖ε‖² = ‖u‖²/20 (within LAG-WK's
    bound, ξ/D·Σ‖Δw‖² = ‖u‖² over D = 10 rounds of change u) skips. The former rule, K² = 100
    times stricter, sent it."""
    K, rng = 10, np.random.default_rng(0)
    spec = ModelSpec.flat(200)
    u = rng.standard_normal(200).astype(np.float32)
    enc, dec = LAG_WK.encoder(spec), LAG_WK.decoder(spec)
    ctx = RoundContext(num_clients=K, model_change_sq=(float(u @ u),) * 10)
    payload, _ = deliver(enc, dec, [u], RoundContext(num_clients=K))
    assert not is_skip(payload)  # no model change yet: the bound is 0
    eps = rng.standard_normal(200).astype(np.float32)
    eps *= np.float32(np.sqrt((u @ u) / 20 / (eps @ eps)))
    payload, (out,) = deliver(enc, dec, [u + eps], ctx)
    assert is_skip(payload) and np.array_equal(out, u)
    assert float((eps @ eps) * K**2) > LAG_WK.compressor(spec).threshold(0.0, ctx)  # the old rule: send


def test_decisions_in_distributed_gd_match_the_papers_rule_for_a_summing_server():
    """Distributed GD on K quadratics through LAG, the server averaging the decoded updates
    x̂_k (x_k = η∇f_k, Flower's model change): every client's send/skip decision is LAG-WK's
    written for the paper's server θ ← θ − α_p Σ_k ∇̂_k with α_p = η/K, in the gradients'
    units. Some rounds skip and some send."""
    K, d, eta, rng = 8, 50, 0.5, np.random.default_rng(1)
    A = rng.uniform(0.2, 1.0, (K, d))
    C = rng.standard_normal((K, d))
    spec = ModelSpec.flat(d)
    links = [(LAG_WK.encoder(spec), LAG_WK.decoder(spec)) for _ in range(K)]
    last_grad = np.zeros((K, d))  # ∇̂_k, the paper's copy of the last upload
    w, changes, decisions = np.zeros(d), [], []
    for _ in range(60):
        grads = A * (w - C)
        ctx = RoundContext(num_clients=K, model_change_sq=tuple(changes[:10]))
        alpha_p = eta / K
        bound = sum(changes[:10]) / 10 / (alpha_p * K) ** 2  # ξ = 1, D = 10
        decoded = []
        for k, ((enc, dec), g) in enumerate(zip(links, grads)):
            x = (eta * g).astype(np.float32)
            payload, (out,) = deliver(enc, dec, [x], ctx)
            x_last = (eta * last_grad[k]).astype(np.float32)
            # The codec compares in float32 update units; the paper's rule in gradient units.
            paper_skip = float(np.sum((x.astype(np.float64) - x_last) ** 2)) / eta**2 <= bound
            assert is_skip(payload) == paper_skip
            if not paper_skip:
                last_grad[k] = x.astype(np.float64) / eta
            decisions.append(paper_skip)
            decoded.append(out.astype(np.float64))
        step = np.mean(decoded, axis=0)
        w = w - step
        changes.insert(0, float(step @ step))
    assert 0.2 < np.mean(decisions) < 0.95


def test_the_relative_rule_ignores_the_round_context(rng):
    c = codec("lag", rule="relative", xi=0.5)
    comp = c.compressor(SPEC)
    for ctx in (RoundContext(), RoundContext(num_clients=50, lr=0.1, model_change_sq=(1e9,))):
        assert comp.threshold(4.0, ctx) == 2.0


def test_a_sent_update_costs_float32_and_a_skip_one_byte(rng):
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    enc, dec = LAG_WK.encoder(SPEC), LAG_WK.decoder(SPEC)
    payload, _ = deliver(enc, dec, update)
    assert len(payload) == HEADER_BYTES + 1 + 4 * SPEC.size
    payload, _ = deliver(enc, dec, update, RoundContext(num_clients=10, model_change_sq=(1.0,)))
    assert len(payload) == HEADER_BYTES + 1  # the same update again: ‖x − x̂‖² = 0


def test_registered_under_its_id():
    assert LAG.name == "lag" and LAG.codec_id == 8
