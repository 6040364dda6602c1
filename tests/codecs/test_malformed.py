"""Malformed payloads: a decoder raises PayloadError, nothing else, and keeps its state.

Two layers are attacked. Damaged payloads (truncated, extended, bit-flipped, another
codec's or version's, garbage, not bytes) must be caught by the header and CRC
checks. Forged payloads carry a correct CRC around a mutated body (`conftest.forge`),
so the codecs' body parsers themselves are fuzzed: each must decode to finite arrays
of the spec's shapes or raise PayloadError, quickly, and within a small multiple of
the model's size in memory, whatever counts the body claims.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from conftest import CONFIGS, NAMES, TINY_SPEC, config_id, copied_state, forge, no_hang, random_update
from hypothesis import given, settings
from hypothesis import strategies as st

from flcomp.codecs import HEADER_BYTES, REGISTRY, PayloadError, StateMismatchError, codec

# Forged values overflow in the decoders' float32 arithmetic by design; the decoder
# must turn that into PayloadError, which the tests check, so the warnings are noise.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SPEC = TINY_SPEC
MODEL_BYTES = 4 * SPEC.size
MEMORY_LIMIT = 16 * MODEL_BYTES + 2**20

_LINKS: dict[str, tuple[dict, list[bytes]]] = {}


def link(c):
    """(decoder state, payloads) for `c`: the decoder after two delivered rounds, and
    payloads encoded for it: the next update, for LAG also a skip, then a key frame."""
    key = c.describe()
    if key not in _LINKS:
        rng = np.random.default_rng(31)
        enc, dec = c.encoder(SPEC, seed=5), c.decoder(SPEC)
        updates = [random_update(rng, SPEC) for _ in range(3)]
        for update in updates[:2]:
            dec.decode(enc.encode(update))
            dec.commit()
            enc.sync(dec.fingerprint)
        payloads = [enc.encode(updates[2])]
        enc.rollback()
        if c.name == "lag":
            payloads.append(enc.encode([x.copy() for x in updates[1]]))
            assert len(payloads[-1]) == HEADER_BYTES + 1
            enc.rollback()
        payloads.append(enc.encode(updates[2], key_frame=True))
        enc.rollback()
        _LINKS[key] = (copied_state(dec.state_dict()), payloads)
    return _LINKS[key]


def decoder(c):
    dec = c.decoder(SPEC)
    dec.load_state_dict(link(c)[0])
    return dec


def payloads(c) -> list[bytes]:
    return link(c)[1]


def assert_rejected(dec, payload, error=PayloadError) -> None:
    """`payload` raises `error` (a PayloadError), and the decoder's state is untouched."""
    before = copied_state(dec.state_dict())
    with pytest.raises(error):
        dec.decode(payload)
    assert not dec.pending
    after = dec.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], v) for k, v in before.items())


def assert_decodes_or_rejected(dec, payload) -> None:
    """Finite arrays of the spec's shapes and dtypes, or PayloadError with the state untouched."""
    fingerprint = dec.fingerprint
    try:
        with no_hang(10):
            out = dec.decode(payload)
    except PayloadError:
        assert not dec.pending and dec.fingerprint == fingerprint
        return
    assert [o.shape for o in out] == [t.shape for t in SPEC.tensors]
    assert [o.dtype for o in out] == [t.dtype for t in SPEC.tensors]
    assert all(np.isfinite(o).all() for o in out)
    dec.rollback()


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_the_base_payloads_decode_and_forge_rebuilds_them(c):
    for payload in payloads(c):
        assert forge(payload, payload[HEADER_BYTES:]) == payload
        dec = decoder(c)
        dec.decode(payload)
        dec.commit()


# --- damaged payloads ---------------------------------------------------------------


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_every_truncation_is_rejected(c):
    dec = decoder(c)
    for payload in payloads(c):
        for n in range(len(payload)):
            assert_rejected(dec, payload[:n])


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_extended_payloads_are_rejected(c):
    dec = decoder(c)
    rng = np.random.default_rng(1)
    for payload in payloads(c):
        for extra in [b"\x00", b"\xff" * 3, rng.bytes(100), payload]:
            assert_rejected(dec, payload + extra)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
def test_bit_flips_are_rejected(c, data):
    payload = data.draw(st.sampled_from(payloads(c)))
    # CRC-32 detects every error of up to 3 bits in payloads this short.
    bits = data.draw(st.sets(st.integers(0, 8 * len(payload) - 1), min_size=1, max_size=3))
    flipped = bytearray(payload)
    for b in bits:
        flipped[b // 8] ^= 0x80 >> (b % 8)
    assert_rejected(decoder(c), bytes(flipped))


def other_codec_payloads(c) -> list[bytes]:
    rng = np.random.default_rng(2)
    others = [n for n in NAMES if REGISTRY[n].codec_id != REGISTRY[c.name].codec_id]
    return [codec(n).encoder(SPEC).encode(random_update(rng, SPEC)) for n in others]


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_another_codecs_payload_is_rejected(c):
    dec = decoder(c)
    for payload in other_codec_payloads(c):
        assert_rejected(dec, payload)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_a_patched_codec_id_is_rejected_with_or_without_a_fixed_crc(c):
    dec = decoder(c)
    payload = payloads(c)[0]
    for cid in {0, 255} | {REGISTRY[n].codec_id for n in NAMES} - {REGISTRY[c.name].codec_id}:
        assert_rejected(dec, payload[:3] + bytes([cid]) + payload[4:])
        assert_rejected(dec, forge(payload, payload[HEADER_BYTES:], codec_id=cid))


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@pytest.mark.parametrize("version", [0, 2, 255])
def test_another_format_version_is_rejected(c, version):
    dec = decoder(c)
    payload = payloads(c)[0]
    assert_rejected(dec, payload[:2] + bytes([version]) + payload[3:])
    assert_rejected(dec, forge(payload, payload[HEADER_BYTES:], version=version))


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_forged_header_fields_are_rejected(c):
    dec = decoder(c)
    payload = payloads(c)[0]
    body = payload[HEADER_BYTES:]
    for fields in [
        dict(magic=b"CF"),
        dict(magic=b"\x00\x00"),
        dict(flags=0x02),
        dict(flags=0x81),
        dict(count=len(SPEC) + 1),
        dict(count=0),
        dict(count=0xFFFFFFFF),
        dict(flags=0x01, fingerprint=dec.fingerprint or 1),  # a key frame on a past state
    ]:
        assert_rejected(dec, forge(payload, body, **fields))


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_a_stale_fingerprint_is_a_state_mismatch(c):
    dec = decoder(c)
    payload = payloads(c)[0]
    for fingerprint in [dec.fingerprint ^ 1, 0, 0xFFFFFFFF]:
        if fingerprint != dec.fingerprint:
            forged = forge(payload, payload[HEADER_BYTES:], fingerprint=fingerprint)
            assert_rejected(dec, forged, StateMismatchError)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(garbage=st.binary(max_size=600))
def test_random_bytes_are_rejected(c, garbage):
    assert_rejected(decoder(c), garbage)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=20, deadline=None, derandomize=True)
@given(garbage=st.binary(max_size=600))
def test_random_bytes_behind_a_valid_header_are_rejected(c, garbage):
    payload = payloads(c)[0]
    assert_rejected(decoder(c), payload[:HEADER_BYTES] + garbage)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@pytest.mark.parametrize(
    "thing", [None, "FC\x01", 42, 3.5, [70, 67, 1], ("FC",), object()], ids=lambda t: type(t).__name__
)
def test_non_bytes_are_rejected(c, thing):
    assert_rejected(decoder(c), thing)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_payload_as_str_or_array_is_rejected(c):
    payload = payloads(c)[0]
    dec = decoder(c)
    assert_rejected(dec, payload.decode("latin-1"))
    assert_rejected(dec, np.frombuffer(payload, np.uint8))


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=lambda w: w.__name__)
def test_bytes_like_payloads_decode(c, wrap):
    dec = decoder(c)
    expected = dec.decode(payloads(c)[0])
    dec.rollback()
    data = bytearray(payloads(c)[0])
    out = dec.decode(wrap(data))
    assert all(np.array_equal(a, b) for a, b in zip(out, expected))
    assert data == payloads(c)[0], "the decoder wrote into the caller's buffer"


def test_a_strided_memoryview_is_decoded_or_rejected():
    c = codec("fp32")
    payload = payloads(c)[0]
    strided = memoryview(np.repeat(np.frombuffer(payload, np.uint8), 2)[::2])
    assert_decodes_or_rejected(decoder(c), strided)


# --- forged bodies: the parsers themselves ------------------------------------------

HUGE = [0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFF, 0x10000, 0xFFFF, 0xFF]


@st.composite
def forged_bodies(draw, body: bytes) -> bytes:
    """A real body mutated: bytes replaced, truncated, extended, a u32 field set to a
    huge count, a byte range duplicated, or replaced wholesale by random bytes."""
    b = bytearray(body)
    kind = draw(st.sampled_from(["mutate", "truncate", "extend", "u32", "splice", "random"]))
    if kind == "mutate" and b:
        for _ in range(draw(st.integers(1, 8))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[: draw(st.integers(0, max(0, len(b) - 1)))]
    elif kind == "extend":
        b += draw(st.binary(min_size=1, max_size=64))
    elif kind == "u32":
        i = draw(st.integers(0, len(b)))
        b[i : i + 4] = struct.pack("<I", draw(st.sampled_from(HUGE + [len(body), 0, 1])))
    elif kind == "splice" and b:
        i = draw(st.integers(0, len(b) - 1))
        j = draw(st.integers(i, len(b)))
        b[i:i] = b[i:j]
    elif kind == "random":
        b = bytearray(draw(st.binary(max_size=2 * len(body) + 16)))
    return bytes(b)


def forged_payload(data, c) -> bytes:
    payload = data.draw(st.sampled_from(payloads(c)), label="base payload")
    body = data.draw(forged_bodies(payload[HEADER_BYTES:]), label="body")
    as_key_frame = data.draw(st.booleans(), label="as key frame")
    if as_key_frame:
        return forge(payload, body, flags=0x01, fingerprint=0)
    return forge(payload, body)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(data=st.data())
def test_forged_bodies_decode_or_raise_payload_error(c, data):
    assert_decodes_or_rejected(decoder(c), forged_payload(data, c))


def huge_count_bodies(body: bytes):
    """Every u32 window of the body set to each huge value, and every byte set to 0xFF."""
    for i in range(len(body)):
        yield body[:i] + b"\xff" + body[i + 1 :]
        for value in (0xFFFFFFFF, 0x80000000):
            yield body[:i] + struct.pack("<I", value) + body[i + 4 :]


def traced_peak(dec, payload) -> int:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    assert_decodes_or_rejected(dec, payload)
    return tracemalloc.get_traced_memory()[1] - base


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_huge_counts_allocate_within_a_multiple_of_the_model(c, traced):
    """Python- and NumPy-side allocations (tracemalloc sees those, not constriction's)."""
    dec = decoder(c)
    for payload in payloads(c):
        for body in huge_count_bodies(payload[HEADER_BYTES:]):
            peak = traced_peak(dec, forge(payload, body))
            assert peak <= MEMORY_LIMIT, f"{peak} bytes traced for a {MODEL_BYTES}-byte model"


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@settings(max_examples=50, deadline=None, derandomize=True)
@given(data=st.data())
def test_forged_bodies_allocate_within_a_multiple_of_the_model(c, data):
    payload = forged_payload(data, c)
    tracemalloc.start()
    try:
        peak = traced_peak(decoder(c), payload)
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_LIMIT
