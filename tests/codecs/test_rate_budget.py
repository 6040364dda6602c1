"""Bit budgets (`RoundContext.budget_bits`): the codecs with a rate knob (top-k, STC: entries kept;
QSGD: levels) fit their payload into the budget, never send more than their config, and error
feedback keeps what top-k and STC drop."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import forge

from flcomp.codecs import Codec, ModelSpec, PayloadError, RoundContext, TensorSpec, codec
from flcomp.codecs.coding.sparse import budgeted_counts
from flcomp.codecs.wire import HEADER_BYTES

SPEC = ModelSpec(
    (TensorSpec((200, 50), "float32"), TensorSpec((50,), "float32"), TensorSpec((3000,), "float32"))
)
KNOBBED = [
    "topk:ratio=0.1",
    "topk:ratio=0.1,value_dtype=float16",
    "stc:ratio=0.1",
    "stc:ratio=0.1,per_tensor=False",
]


def update(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]


@pytest.mark.parametrize("text", KNOBBED)
@pytest.mark.parametrize("budget", [2_000, 8_000, 30_000, 100_000])
def test_the_payload_fits_the_budget_and_decodes(text, budget):
    codec = Codec.parse(text)
    encoder, decoder = codec.encoder(SPEC), codec.decoder(SPEC)
    unbounded = len(codec.encoder(SPEC).encode(update(0)))
    payload = encoder.encode(update(0), RoundContext(budget_bits=budget))
    assert 8 * len(payload) <= max(budget, 8 * HEADER_BYTES + 112 * 3)
    assert len(payload) <= unbounded, "never more than the config keeps"
    if 8 * unbounded > budget:
        assert 8 * len(payload) > 0.6 * budget, "the budget is used, not wasted"
    decoded = decoder.decode(payload)
    assert sum(int(np.count_nonzero(d)) for d in decoded) == encoder.last_stats["entries_sent"]


@pytest.mark.parametrize("text", KNOBBED)
def test_a_generous_budget_changes_nothing(text):
    codec = Codec.parse(text)
    assert codec.encoder(SPEC).encode(update(1), RoundContext(budget_bits=1e9)) == codec.encoder(SPEC).encode(
        update(1)
    )


def test_error_feedback_keeps_what_the_budget_drops():
    codec = Codec.parse("topk:ratio=0.1")
    encoder, decoder = codec.encoder(SPEC), codec.decoder(SPEC)
    x = update(2)
    decoded = decoder.decode(encoder.encode(x, RoundContext(budget_bits=4_000)))
    encoder.commit()
    memory = [encoder.local[f"ef/{i}"] for i in range(len(x))]
    for xi, di, ei in zip(x, decoded, memory):
        np.testing.assert_allclose(di + ei.reshape(di.shape), xi, rtol=0, atol=1e-6)


def test_budgeted_counts_scale_every_group_alike_within_the_config():
    sizes, counts = [10_000, 50, 3000], [1000, 5, 300]
    assert budgeted_counts(sizes, counts, None, 32, 72) == counts
    assert budgeted_counts(sizes, counts, 1e9, 32, 72) == counts
    fitted = budgeted_counts(sizes, counts, 20_000, 32, 72)
    assert all(f <= c for f, c in zip(fitted, counts)) and sum(fitted) < sum(counts)
    assert abs(fitted[0] / sizes[0] - fitted[2] / sizes[2]) < 1e-3
    assert budgeted_counts(sizes, counts, 0, 32, 72) == [0, 0, 0]


def test_a_bad_budget_is_refused():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="budget"):
            RoundContext(budget_bits=bad)


# --- QSGD: fewer levels -------------------------------------------------------------


def qsgd_levels(payload: bytes) -> int:
    """The levels a QSGD payload says it uses: its body's first byte."""
    return payload[HEADER_BYTES]


@pytest.mark.parametrize(
    "params", [{"levels": 16}, {"levels": 127, "coding": "range"}, {"levels": 5, "error_feedback": True}]
)
def test_qsgd_halves_its_levels_until_the_payload_fits(params):
    """Under a budget the payload is the one the largest of s, ⌈s/2⌉, …, 1 that fits sends (the
    same dither as that config draws), or s = 1's when none fits; it decodes with the config's s."""

    def payload(levels: int, budget: float | None = None) -> bytes:
        c = codec("qsgd", **(params | {"levels": levels}))
        return c.encoder(SPEC).encode(update(3), RoundContext(budget_bits=budget))

    configured = codec("qsgd", **params)
    s = configured.config.levels
    ladder = [s]
    while ladder[-1] > 1:
        ladder.append(-(-ladder[-1] // 2))
    sizes = {level: len(payload(level)) for level in ladder}
    assert all(sizes[a] > sizes[b] for a, b in zip(ladder, ladder[1:])), sizes
    for budget in [0, 8 * sizes[1] - 1, *(8 * sizes[level] for level in ladder), 8 * sizes[s] - 1, 1e9]:
        fitting = [level for level in ladder if 8 * sizes[level] <= budget]
        chosen = fitting[0] if fitting else 1
        sent = payload(s, budget)
        assert qsgd_levels(sent) == chosen and sent == payload(chosen), (budget, chosen)
        decoded = configured.decoder(SPEC).decode(sent)
        for x, d in zip(update(3), decoded):
            assert np.all(d * x >= 0) and np.isfinite(d).all()


def test_a_qsgd_payload_with_more_levels_than_its_config_is_refused():
    big = codec("qsgd", levels=16).encoder(SPEC).encode(update(4))
    with pytest.raises(PayloadError, match="levels"):
        codec("qsgd", levels=8).decoder(SPEC).decode(big)


# --- the ladder: the first rung that fits -------------------------------------------

LADDER = "ladder:rungs=fp16/qsgd/topk:ratio=0.05"
RUNGS = ["fp16", "qsgd", "topk:ratio=0.05"]


def test_the_ladder_sends_the_first_rung_that_fits():
    x = update(5)
    alone = [len(Codec.parse(r).encoder(SPEC).encode(x)) + 1 for r in RUNGS]  # + the rung's index byte
    assert alone[0] > alone[1] > alone[2]
    ladder = Codec.parse(LADDER)
    for budget, expected in [
        (None, 0),
        (1e9, 0),
        (8 * alone[0], 0),
        (8 * alone[0] - 1, 1),
        (8 * alone[1], 1),
        (8 * alone[1] - 1, 2),
        (8 * alone[2], 2),
        (0, 2),
    ]:
        encoder = ladder.encoder(SPEC)
        payload = encoder.encode(x, RoundContext(budget_bits=budget))
        assert encoder.last_stats == {"rung": float(expected)}, budget
        assert payload[HEADER_BYTES] == expected and 8 * len(payload) <= (budget or np.inf), budget
        if expected == len(RUNGS) - 1:  # the last rung meets the budget by its own (cautious) knob
            assert len(payload) <= alone[expected]
            continue
        assert len(payload) == alone[expected], budget
        decoded = ladder.decoder(SPEC).decode(payload)
        if expected == 0:  # fp16 draws nothing: the same reconstruction as fp16 alone
            reference = Codec.parse(RUNGS[expected]).decoder(SPEC)
            reference_out = reference.decode(Codec.parse(RUNGS[expected]).encoder(SPEC).encode(x))
            assert all(np.array_equal(a, b) for a, b in zip(decoded, reference_out)), budget


def test_the_last_rung_meets_the_budget_by_its_own_knob():
    payload = Codec.parse(LADDER).encoder(SPEC).encode(update(6), RoundContext(budget_bits=3_000))
    assert payload[HEADER_BYTES] == 2 and 8 * len(payload) <= 3_000


def test_error_feedback_wraps_the_whole_ladder():
    ladder = Codec.parse(LADDER)
    encoder, decoder = ladder.encoder(SPEC), ladder.decoder(SPEC)
    x = update(7)
    decoded = decoder.decode(encoder.encode(x, RoundContext(budget_bits=6_000)))
    encoder.commit()
    for i, (xi, di) in enumerate(zip(x, decoded)):
        np.testing.assert_allclose(di + encoder.local[f"ef/{i}"].reshape(di.shape), xi, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "text, match",
    [
        ("ladder:rungs=fp16/signxor", "keeps state"),
        ("ladder:rungs=powersgd", "keeps state"),
        ("ladder:rungs=lgc", "keeps state"),
        ("ladder:rungs=fp16/ladder", "may not be a ladder"),
        ("ladder:rungs=topk:momentum=0.9", "whole ladder"),
        ("ladder:rungs=fp16/nonesuch", "unknown codec"),
        ("ladder:rungs=topk:ratio=2", "ratio"),
    ],
)
def test_a_bad_ladder_is_refused_when_parsed(text, match):
    with pytest.raises(ValueError, match=match):
        Codec.parse(text)


def test_a_rung_past_the_ladder_is_refused():
    ladder = Codec.parse("ladder:rungs=fp16")
    payload = ladder.encoder(SPEC).encode(update(8))
    forged = forge(payload, bytes([1]) + payload[HEADER_BYTES + 1 :])
    with pytest.raises(PayloadError, match="rung 1 of a ladder of 1"):
        ladder.decoder(SPEC).decode(forged)
