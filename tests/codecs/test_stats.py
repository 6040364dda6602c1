"""What the compressors report in `Step.stats` is what their payloads hold, read back from the bytes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CONFIGS, config_id, random_update

from flcomp.codecs import Codec, ModelSpec, RoundContext, codec
from flcomp.codecs.coding.positions import decode_positions
from flcomp.codecs.coding.sparse import read_values
from flcomp.codecs.compressors.signxor import flip_counts
from flcomp.codecs.wire import unpack

SPEC = ModelSpec.of([np.zeros((4, 50), np.float32), np.zeros(7, np.float32)])
CTX = RoundContext(num_clients=2, model_change_sq=(1.0,))
"""A round with a model change, so that the event-triggered codecs have a threshold."""


def payloads(c: Codec, rounds: int, rng: np.random.Generator, scale: float = 1.0):
    """(payload, stats) of `rounds` committed encodes of slowly changing updates."""
    encoder, update = c.encoder(SPEC), random_update(rng, SPEC)
    for _ in range(rounds):
        payload = encoder.encode(update, CTX)
        yield payload, dict(encoder.last_stats)
        encoder.commit()
        update = [u + np.float32(scale) * v for u, v in zip(update, random_update(rng, SPEC))]


def sparse_entries(c: Codec, payload: bytes) -> int:
    """The values a top-k or GD-SEC body carries: per tensor u32 m | positions | m values."""
    _, body = unpack(payload, c.compressor_class.codec_id, len(SPEC))
    total = 0
    for t in SPEC.tensors:
        (m,) = body.struct("I")
        decode_positions(body, m, t.size)
        read_values(body, c.config.value_dtype, m)
        total += m
    body.finish()
    return total


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_every_step_reports_exactly_the_declared_names(c, rng):
    for _, stats in payloads(c, 3, rng):
        assert set(stats) == set(c.compressor_class.stats)
        assert all(isinstance(v, float) for v in stats.values())


@pytest.mark.parametrize(
    "text",
    ["topk:ratio=0.1", "topk:ratio=0.5,value_dtype=float16", "gdsec", "gdsec:rule=absolute,threshold=1.0"],
)
def test_entries_sent_are_the_values_in_the_body(text, rng):
    c = Codec.parse(text)
    counts = [(sparse_entries(c, p), s["entries_sent"]) for p, s in payloads(c, 4, rng, scale=0.1)]
    assert all(found == reported for found, reported in counts)
    assert len({found for found, _ in counts}) > 1 or c.name == "topk"  # GD-SEC's count varies


def test_random_k_reports_the_values_it_writes(rng):
    c = codec("randomk", ratio=0.1)
    for payload, stats in payloads(c, 2, rng):
        _, body = unpack(payload, c.compressor_class.codec_id, len(SPEC))
        seeds_bytes = 4 * len(SPEC)
        assert stats["entries_sent"] == 20 + 1  # ⌈0.1·n⌉ of each tensor
        assert body.remaining == seeds_bytes + 4 * stats["entries_sent"]


def tpc_trigger(c: Codec, payload: bytes, filled: int) -> int:
    """The trigger byte of a TPC body: after the (groups × m) float32 coefficients."""
    _, body = unpack(payload, c.compressor_class.codec_id, len(SPEC))
    body.array(np.float32, filled, limit=filled)
    return body.struct("B")[0]


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_tpc_reports_whether_the_decoder_got_a_residual(tau, rng):
    c = codec("tpc", tau=tau)
    sent = []
    for t, (payload, stats) in enumerate(payloads(c, 6, rng, scale=0.01)):
        assert stats["residual_sent"] == tpc_trigger(c, payload, min(t, c.config.memory))
        sent.append(stats["residual_sent"])
    assert sent[0] == 1.0  # nothing to predict from: the residual is the update
    assert (0.0 in sent) == (tau > 0)


def test_lag_reports_whether_it_sent_the_update(rng):
    c = codec("lag")
    encoder, update = c.encoder(SPEC), random_update(rng, SPEC)
    for expected in (1.0, 0.0):  # the second round repeats the first update: skipped
        payload = encoder.encode(update, CTX)
        _, body = unpack(payload, c.compressor_class.codec_id, len(SPEC))
        assert encoder.last_stats == {"sent": expected} and body.struct("B")[0] == expected
        encoder.commit()


@pytest.mark.parametrize("text", ["signxor", "signxor:lam=1", "signxor:momentum=0.9"])
def test_signxor_reports_the_signs_it_codes_and_the_flips_in_the_payload(text, rng):
    c = Codec.parse(text)
    encoder, update = c.encoder(SPEC), random_update(rng, SPEC)
    for _ in range(4):
        shared = dict(encoder.shared)  # the flips' context split depends on the state encoded from
        payload = encoder.encode(update, CTX)
        assert encoder.last_stats["signs"] == SPEC.size
        assert encoder.last_stats["flips"] == sum(flip_counts(payload, SPEC, c.config, shared))
        encoder.commit()
        update = [u + v for u, v in zip(update, random_update(rng, SPEC))]
