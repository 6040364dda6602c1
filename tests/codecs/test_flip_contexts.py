"""The flips' context model: each entry's bit coded at the rate of its history's class."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import no_hang

from flcomp.codecs import PayloadError
from flcomp.codecs.coding import flip_contexts
from flcomp.codecs.wire import PayloadReader, PayloadWriter


def coded(bits: np.ndarray, state: dict) -> tuple[bytes, dict]:
    out = PayloadWriter()
    after = flip_contexts.encode(bits, state, out)
    return b"".join(bytes(c) for c in out.chunks), after


def written(bits: np.ndarray, state: dict) -> bytes:
    return coded(bits, state)[0]


def read(data: bytes, state: dict, n: int) -> np.ndarray:
    body = PayloadReader(memoryview(data))
    bits, _ = flip_contexts.decode(body, state, n)
    body.finish()
    return bits


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def random_state(rng: np.random.Generator, n: int) -> dict:
    """Any state a run can reach, and some it cannot (rates above 240, large counts)."""
    return {
        "rates": rng.integers(0, 256, n).astype(np.uint8),
        "recent": rng.integers(0, 256, n).astype(np.uint8),
        "counts": rng.integers(0, 2**20, (2, flip_contexts.CONTEXTS)).astype(np.uint32),
    }


def run(stream, n: int) -> list[int]:
    """Bytes a round of a stream of bool[n] vectors, encoded and decoded from the evolving state."""
    state, sizes = flip_contexts.initial_state(n), []
    for bits in stream:
        data, after = coded(bits, state)
        body = PayloadReader(memoryview(data))
        decoded, decoder_after = flip_contexts.decode(body, state, n)
        assert np.array_equal(decoded, bits) and states_equal(after, decoder_after)
        sizes.append(len(data))
        state = after
    return sizes


@pytest.mark.parametrize("n", [0, 1, 7, 9, 1000, 100_003])
@pytest.mark.parametrize("rate", [0.0, 0.02, 0.5, 0.97, 1.0])
def test_round_trips_from_any_state(n, rate, rng):
    state = random_state(rng, n)
    bits = rng.random(n) < rate
    data = written(bits, state)
    assert np.array_equal(read(data, state, n), bits)
    assert len(data) <= (2 + (n + 7) // 8 if n else 0)  # a flag, and never more than the raw bits


def test_alternating_and_holding_entries_cost_almost_nothing(rng):
    """Half the entries flip every round, half never (error feedback's two populations): one rate
    would say q = 1/2, a bit an entry; each entry's own history says which it is."""
    n = 20_000
    alternating = rng.random(n) < 0.5
    sizes = run([alternating.copy() for _ in range(12)], n)
    assert sizes[0] <= 2 + n // 8 + 2
    assert max(sizes[4:]) < 0.05 * n / 8, sizes


def test_memoryless_flips_cost_about_their_entropy_once_the_rates_are_learnt(rng):
    n, q = 200_000, 0.05
    sizes = run([rng.random(n) < q for _ in range(6)], n)
    entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    assert sizes[0] <= 2 + n // 8 + 2  # no history: every rate 1/2, sent raw
    assert all(8 * s <= 1.03 * n * entropy + 64 for s in sizes[1:]), sizes


def test_rates_far_from_the_data_fall_back_to_the_raw_bits(rng):
    n = 10_000
    state = flip_contexts.initial_state(n)
    state["counts"][:] = [[2 * n] * flip_contexts.CONTEXTS, [0] * flip_contexts.CONTEXTS]  # q ≈ 0
    bits = rng.random(n) < 0.5
    data = written(bits, state)
    assert data[0] == 1 and len(data) == 1 + n // 8
    assert np.array_equal(read(data, state, n), bits)


def test_the_state_stays_bounded_and_is_not_modified_in_place(rng):
    n = 1000
    state = flip_contexts.initial_state(n)
    previous, flags = np.zeros(n, bool), []
    for r in range(100):
        before = {k: v.copy() for k, v in state.items()}
        bits = rng.random(n) < (0.9 if r < 50 else 0.5)  # range coded, then raw
        data, new = coded(bits, state)
        flags.append(data[0])
        assert states_equal(state, before)
        assert new["rates"].max() <= 240 and new["counts"].max() <= 2 * n + 1
        assert np.array_equal(new["recent"], bits | (previous << 1))
        sizes = np.bincount(flip_contexts.contexts(state), minlength=flip_contexts.CONTEXTS)
        assert np.array_equal(new["counts"][0], (state["counts"][0] >> 1) + sizes)
        state, previous = new, bits
    assert flip_contexts.contexts(state).max() < flip_contexts.CONTEXTS
    assert set(flags[2:50]) == {0} and set(flags[52:]) == {1}, flags


@pytest.fixture
def range_coded(rng):
    """A state, bits and their range-coded body (flag 0)."""
    n = 4000
    _, state = coded(rng.random(n) < 0.1, flip_contexts.initial_state(n))
    bits = rng.random(n) < 0.1
    data = written(bits, state)
    assert data[0] == 0
    return state, n, data


@pytest.mark.parametrize(
    "forge",
    [
        lambda d: b"\x02" + d[1:],  # an unknown flag
        lambda d: d[:1] + len(d).to_bytes(2, "little") + d[3:],  # words past the body
        lambda d: d[:1] + (501).to_bytes(2, "little") + d[3:],  # words longer than the raw bits
        lambda d: (
            d[:1] + (int.from_bytes(d[1:3], "little") - 1).to_bytes(2, "little") + d[3:-1]
        ),  # not whole words
        lambda d: d[:-4],  # truncated
        lambda d: b"\x01" + d[1:],  # raw, too short
    ],
    ids=["flag", "past-end", "over-raw", "ragged-words", "truncated", "raw-short"],
)
def test_malformed_bodies_are_refused(range_coded, forge):
    state, n, data = range_coded
    with no_hang(10), pytest.raises(PayloadError):
        read(forge(data), state, n)


def test_set_padding_bits_of_raw_flips_are_refused():
    n = 12
    state = flip_contexts.initial_state(n)
    with pytest.raises(PayloadError, match="padding"):
        read(b"\x01\xff\xff", state, n)
