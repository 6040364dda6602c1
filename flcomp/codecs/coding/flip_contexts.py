"""A context model for binary vectors sent every round: each entry's bit conditioned on its own past.

SignXOR's flip vectors under error feedback mix two populations: entries whose sign
alternates (they flip nearly every round) and entries that hold (nearly never), with
the weak ones in between repeating short patterns (error feedback is a sigma-delta
loop). One Bernoulli rate for all costs h(q) bits an entry; conditioned on each
entry's history the bits are far more predictable. Both sides hold every past vector,
so both compute the contexts and their rates: nothing about the model is sent.

Per entry, the state is a flip-rate average r (uint8, r ← r − ⌊r/16⌋ + 15·b after each
bit b: 0 ≤ r ≤ 240 from zero, r/240 ≈ the fraction of the last ~16 rounds it flipped)
and its last two bits. The context is (⌊r/16⌋, last bit, the one before): `CONTEXTS` =
64 classes. Each class's rate of ones is estimated from the rounds before
(`counts`: entries and ones per class, halved each round, then this round's added; see
`rates_of_ones`). A round's vector is split by class (a
stable sort of the entries, which both sides reproduce from their state) and each
class is range-coded at its rate (`entropy.range_code_bits_at_rates`), in one stream, or
the bits are sent packed when that is no longer (see `encode`).

Why these: on recorded SignXOR flips (an MLP on digits, mini-batch SGD with error feedback)
the last two bits beat the last one, counts of the last rounds beat a pattern of the same
number of classes, and estimating the rates from the past costs fewer bits than sending
each class's count (a count is two bytes; a small model's class holds a few hundred bits).

State (see `initial_state`): ``rates`` (uint8[n]), ``recent`` (uint8[n]: bit 0 the last
bit, bit 1 the one before) and ``counts`` (uint32[2, 64]): 2 bytes an entry. `encode`
and `decode` return the state after the vector, so each side sorts the entries once a
round; the state they are given is left as it is.
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.coding.entropy import (
    check_padding,
    range_code_bits_at_rates,
    range_decode_bits_at_rates,
    uint_format,
)
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader, PayloadWriter

RATE_SHIFT = 4
"""r decays by r >> RATE_SHIFT a round (a memory of ~16 rounds); its top 4 bits are the level."""
FLIP_WEIGHT = 15
"""What a bit of 1 adds to r: with the decay, r stays within 0..240 (a uint8 never overflows)."""
LEVELS = 16
CONTEXTS = 4 * LEVELS
"""(rate level, last bit, the bit before) triples."""

State = dict[str, np.ndarray]


def initial_state(n: int) -> State:
    """No history: every entry in class 0, every class's rate ½."""
    return {
        "rates": np.zeros(n, np.uint8),
        "recent": np.zeros(n, np.uint8),
        "counts": np.zeros((2, CONTEXTS), np.uint32),
    }


def contexts(state: State) -> np.ndarray:
    """Each entry's class in [0, CONTEXTS) (uint8[n]): level × 4 + last two bits."""
    return ((state["rates"] >> RATE_SHIFT) << 2) | (state["recent"] & 3)


def rates_of_ones(state: State) -> np.ndarray:
    """Each class's estimated rate of ones, in (0, 1) (float64[CONTEXTS]).

    Its counts plus one pseudo-entry at the rate of its pool, the classes of the same last
    two bits at every level (plus one pseudo-entry at the rate of all): a class without
    history (an entry's level moves up a class a round while it starts alternating)
    takes what its last two bits say.
    """
    entries, ones = state["counts"].astype(np.float64)
    ones = np.minimum(ones, entries)  # a state's counts are not trusted to be consistent
    overall = (ones.sum() + 0.5) / (entries.sum() + 1.0)
    pool_entries = entries.reshape(LEVELS, 4).sum(axis=0)
    pool = (ones.reshape(LEVELS, 4).sum(axis=0) + overall) / (pool_entries + 1.0)
    return (ones + np.tile(pool, LEVELS)) / (entries + 1.0)


def encode(bits: np.ndarray, state: State, out: PayloadWriter) -> State:
    """Write `bits` (bool[n]): a flag byte, then for flag 0 the words' byte length (as few bytes
    as hold ceil(n/8)) and one range-coded stream of the classes, each at its class's rate;
    for flag 1 the bits packed, when the stream would be no shorter. Nothing when n = 0.
    Returns the state after `bits`."""
    if not bits.size:
        return state
    order, sizes = _classes(state)
    sorted_bits = bits[order]
    q = rates_of_ones(state)
    starts = np.cumsum(sizes) - sizes
    present = [(int(c), int(starts[c]), int(sizes[c])) for c in np.flatnonzero(sizes)]
    vectors = [np.packbits(sorted_bits[start : start + size]) for _, start, size in present]
    words = range_code_bits_at_rates([(v, size, float(q[c])) for v, (c, _, size) in zip(vectors, present)])
    raw = -(-bits.size // 8)
    if words.nbytes < raw:
        out.struct("B", 0)
        out.struct(uint_format(raw), words.nbytes)
        out.array(words)
    else:
        out.struct("B", 1)
        out.array(np.packbits(bits))
    return _after(state, bits, sizes, _ones(vectors, present))


def decode(body: PayloadReader, state: State, n: int) -> tuple[np.ndarray, State]:
    """Read what `encode` wrote from the same state: bool[n], and the state after it.
    PayloadError on a malformed body."""
    if not n:
        return np.zeros(0, np.bool_), state
    raw = -(-n // 8)
    (flag,) = body.struct("B")
    if flag == 1:
        bits = np.unpackbits(check_padding(body.array(np.uint8, raw, limit=raw), n), count=n).view(np.bool_)
        context = contexts(state)
        sizes = np.bincount(context, minlength=CONTEXTS)
        return bits, _after(state, bits, sizes, np.bincount(context[bits], minlength=CONTEXTS))
    if flag != 0:
        raise PayloadError(f"flip coding flag {flag} is neither 0 (range coded) nor 1 (raw)")
    (length,) = body.struct(uint_format(raw))
    words = body.array(np.uint8, length, limit=raw)
    order, sizes = _classes(state)
    q = rates_of_ones(state)
    present = [(int(c), 0, int(sizes[c])) for c in np.flatnonzero(sizes)]
    vectors = range_decode_bits_at_rates(words, [(size, float(q[c])) for c, _, size in present])
    bits = np.empty(n, np.bool_)
    bits[order] = np.concatenate([np.unpackbits(v, count=size) for v, (_, _, size) in zip(vectors, present)])
    return bits, _after(state, bits, sizes, _ones(vectors, present))


def _classes(state: State) -> tuple[np.ndarray, np.ndarray]:
    """The entries in class order (a stable sort: both sides list them alike) and each class's size."""
    context = contexts(state)
    return np.argsort(context, kind="stable"), np.bincount(context, minlength=CONTEXTS)


def _ones(vectors: list[np.ndarray], present: list[tuple[int, int, int]]) -> np.ndarray:
    """The ones of each class from its packed vector (padding bits 0)."""
    ones = np.zeros(CONTEXTS, np.int64)
    for v, (c, _, _) in zip(vectors, present):
        ones[c] = np.bitwise_count(v).sum(dtype=np.int64)
    return ones


def _after(state: State, bits: np.ndarray, entries: np.ndarray, ones: np.ndarray) -> State:
    """The state after `bits` (bool[n]), whose classes held `entries` entries and `ones` ones."""
    # Halving keeps the counts far from uint32's range: at most 2·n + 1 entries per class.
    counts = (state["counts"] >> 1) + np.array([entries, ones], np.uint32)
    b = bits.view(np.uint8)
    rates = state["rates"]
    return {
        "rates": rates - (rates >> RATE_SHIFT) + FLIP_WEIGHT * b,
        "recent": ((state["recent"] << 1) & 2) | b,
        "counts": counts,
    }
