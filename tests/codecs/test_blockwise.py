"""Block-wise absmax quantization: blockwise8 (bitsandbytes' dynamic 8-bit map) and nf4 (QLoRA).

The codes' tables against bitsandbytes' values and constructions; nearest-value lookup
against a brute-force search; the per-block error bound, measured bits, ragged, zero,
tiny and huge blocks; the decoder's checks; the NMSE on Gaussian updates against the
value integrated from the normal distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import forge
from scipy.special import ndtr
from scipy.stats import norm

from flcomp.codecs import ModelSpec, PayloadError, codec
from flcomp.codecs.compressors.blockwise import NF4_VALUES, Blockwise8, dynamic_map
from flcomp.codecs.wire import HEADER_BYTES, PayloadWriter

NAMES = ("blockwise8", "nf4")
CODE = {"blockwise8": Blockwise8.code.values, "nf4": NF4_VALUES}
BITS = {"blockwise8": 8, "nf4": 4}


def roundtrip(name: str, x: list[np.ndarray], **config) -> tuple[bytes, list[np.ndarray]]:
    """One payload of `x` (flat float32 tensors) and its decode, without error feedback."""
    c = codec(name, error_feedback=False, **config)
    spec = ModelSpec.of(x)
    payload = c.encoder(spec).encode(x)
    return payload, c.decoder(spec).decode(payload)


def nearest(values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The nearest value of `values` to each y (float64 brute force; a tie goes to the smaller)."""
    distance = np.abs(y.astype(np.float64)[:, None] - values.astype(np.float64)[None, :])
    return values[np.argmin(distance, axis=1)]


def worst_gap(values: np.ndarray) -> float:
    """The largest distance from a point of [−1, 1] to its nearest value."""
    v = values.astype(np.float64)
    return max(np.diff(v).max() / 2, 1 + v[0], 1 - v[-1])


def test_dynamic_map_is_bitsandbytes():
    """The exact float32 bits of bitsandbytes' create_dynamic_map(signed=True), as PyTorch 2.13
    computes it on CPU, at the ends, around zero and at the exponent boundaries."""
    m = dynamic_map()
    assert m.dtype == np.float32 and m.shape == (256,) and np.all(np.diff(m) > 0)
    known = {
        0: 0xBF7E3333,
        1: 0xBF7A999A,
        63: 0xBDDB3334,
        64: 0xBDC9EB85,
        126: 0xB513A3B7,
        127: 0x00000000,
        128: 0x3513A3B7,
        129: 0x365A1A94,
        190: 0x3DC9EB85,
        191: 0x3DDB3334,
        192: 0x3DF80000,
        254: 0x3F7E3333,
        255: 0x3F800000,
    }
    assert {i: int(m.view(np.uint32)[i]) for i in known} == known
    # Ends: no −1 (the 256th pattern is 1.0), the smallest magnitude is 10⁻⁶·0.55.
    assert m[0] == np.float32(-0.99296875) and m[-1] == 1 and m[128] == pytest.approx(0.55e-6, rel=1e-6)


def test_dynamic_map_structure():
    """Sign, E leading zeros for the exponent 10^−E, then 6 − E bits of linear fraction."""
    m = dynamic_map().astype(np.float64)
    positive = m[m > 0][:-1]  # 1.0 is the extra pattern
    expected = []
    for e in range(7):
        bounds = np.linspace(0.1, 1, 2 ** (6 - e) + 1)
        expected.append(10.0**-e * (bounds[:-1] + bounds[1:]) / 2)
    expected = np.sort(np.concatenate(expected))
    assert len(positive) == 127 and np.allclose(positive, expected, rtol=3e-7, atol=0)
    assert np.array_equal(m[m < 0], -positive[::-1])


def test_nf4_is_qlora():
    """bitsandbytes' table is QLoRA's construction (create_normal_map(0.9677083)): 8 positive
    quantiles of N(0, 1), 7 negative ones, 0, normalised by the largest."""
    offset = 0.9677083
    positive = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([positive, [0.0], negative])) / positive.max()
    assert NF4_VALUES.dtype == np.float32 and NF4_VALUES.shape == (16,)
    assert np.allclose(NF4_VALUES, values, rtol=0, atol=1e-6)
    assert NF4_VALUES[0] == -1 and NF4_VALUES[7] == 0 and NF4_VALUES[15] == 1


@pytest.mark.parametrize("name", NAMES)
def test_nearest_value(name, rng):
    """With N = 1 exactly, the decode is the nearest code value itself: random points,
    tiny ones, and every midpoint and its float32 neighbours."""
    values = CODE[name]
    mid = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
    y = np.concatenate(
        [
            [1.0, -1.0, 0.0, -0.0],
            rng.uniform(-1, 1, 20_000),
            rng.standard_normal(5_000) * 1e-3,
            rng.standard_normal(5_000) * 1e-6,
            mid,
            np.nextafter(mid, np.float32(2)),
            np.nextafter(mid, np.float32(-2)),
        ]
    ).astype(np.float32)
    _, (decoded,) = roundtrip(name, [y], block_size=y.size)
    assert np.array_equal(decoded, nearest(values, y))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("n", "block"), [(1, 64), (63, 64), (64, 64), (65, 64), (1000, 7), (5000, 4096)])
def test_error_within_half_gap_of_each_block(name, n, block, rng):
    """|x − x̂| ≤ N·h in every block (ragged last one included), h the largest distance from
    [−1, 1] to the code, plus the two float32 roundings of x/N and c·N."""
    scale = np.float32(10.0) ** rng.integers(-30, 30, -(-n // block)).repeat(block)[:n]
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    _, (decoded,) = roundtrip(name, [x], block_size=block)
    starts = np.arange(0, n, block)
    absmax = np.maximum.reduceat(np.abs(x), starts).repeat(block)[:n].astype(np.float64)
    error = np.abs(x.astype(np.float64) - decoded)
    assert np.all(error <= absmax * (worst_gap(CODE[name]) + 2.0**-22))
    # The block's largest entry is one of the code's ends: ±1 is sent within 1 − |c|.
    assert np.all(np.abs(decoded) <= absmax)


@pytest.mark.parametrize("name", NAMES)
def test_bits_per_entry(name, rng):
    """The payload is the header, one float32 per block and the packed codes, nothing more."""
    block = codec(name).config.block_size
    sizes = [1_000_003, 4096, 77, 1]
    x = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    payload, _ = roundtrip(name, x)
    body = sum(4 * -(-n // block) + -(-n * BITS[name] // 8) for n in sizes)
    assert len(payload) == HEADER_BYTES + body
    big, _ = roundtrip(name, x[:1])
    bits = 8 * len(big) / sizes[0]
    assert bits == pytest.approx(BITS[name] + 32 / block, abs=1e-3)  # 8.008 and 4.5


@pytest.mark.parametrize("name", NAMES)
def test_zero_tiny_and_huge_blocks(name):
    """An all-zero block decodes to exact zeros (no 0/0), next to blocks of subnormal and of
    near-overflow entries, whose reconstructions stay finite and within the bound."""
    block = 64
    f32 = np.finfo(np.float32)
    x = np.concatenate(
        [
            np.zeros(block),
            -np.zeros(block),
            np.linspace(-1, 1, block) * f32.smallest_subnormal * 50,
            np.linspace(-1, 1, block) * f32.max,
            [f32.max, -f32.max, 0.0],
        ]
    ).astype(np.float32)
    _, (decoded,) = roundtrip(name, [x], block_size=block)
    assert np.all(np.isfinite(decoded))
    assert np.all(decoded[: 2 * block] == 0)
    huge = slice(3 * block, None)
    assert np.all(
        np.abs(decoded[huge].astype(np.float64) - x[huge]) <= f32.max * (worst_gap(CODE[name]) + 1e-6)
    )
    # All-zero tensors, empty tensors and tensors smaller than one block.
    _, decoded = roundtrip(name, [np.zeros(5, np.float32), np.zeros(0, np.float32), np.float32([3.0])])
    assert [d.tolist() for d in decoded] == [[0.0] * 5, [], [3.0]]


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_input_refused(name):
    spec = ModelSpec.flat(10)
    enc = codec(name).encoder(spec)
    with pytest.raises(ValueError, match="NaN"):
        enc.encode([np.float32([np.nan] + [1.0] * 9)])
    # Below the endpoint (what error feedback's memory could overflow into), the compressor refuses too.
    compressor = codec(name, error_feedback=False).compressor(spec)
    with pytest.raises(ValueError, match="NaN or Inf"):
        compressor.encode_tensor(np.float32([np.inf] + [1.0] * 9), spec.tensors[0], PayloadWriter(), None)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [np.nan, np.inf, -1.0])
def test_decoder_refuses_bad_scales(name, scale, rng):
    x = [rng.standard_normal(100).astype(np.float32)]
    payload, _ = roundtrip(name, x, block_size=16)
    body = bytearray(payload[HEADER_BYTES:])
    body[8:12] = np.float32(scale).tobytes()  # the third block's scale
    c = codec(name, error_feedback=False, block_size=16)
    with pytest.raises(PayloadError, match="scales"):
        c.decoder(ModelSpec.of(x)).decode(forge(payload, bytes(body)))


def test_nf4_refuses_a_set_padding_nibble(rng):
    x = [rng.standard_normal(7).astype(np.float32)]
    payload, _ = roundtrip("nf4", x)
    body = bytearray(payload[HEADER_BYTES:])
    body[-1] |= 0x01
    with pytest.raises(PayloadError, match="nibble"):
        codec("nf4").decoder(ModelSpec.of(x)).decode(forge(payload, bytes(body)))


def test_nf4_packs_high_nibble_first():
    """bitsandbytes' order: the first code of a byte in its high nibble."""
    x = np.float32([1.0, -1.0, 0.0])  # codes 15, 0, 7
    payload, _ = roundtrip("nf4", [x])
    assert payload[HEADER_BYTES + 4 :] == bytes([0xF0, 0x70])


def derived_nmse(values: np.ndarray, block: int) -> float:
    """E‖x − Q(x)‖² / E‖x‖² for a block of `block` iid N(0, 1) entries, integrated.

    With M = max |x_i| (density B·2φ(m)·(2Φ(m) − 1)^(B−1)), the largest entry sits at ±M,
    sent with error (1 − c_max)·M or (1 + c_min)·M, and the B − 1 others are N(0, 1) on
    [−M, M], whose errors integrate cell by cell in closed form:
    ∫_a^b (x − c)² φ = [(1 + c²)Φ(x) − (x − 2c)φ(x)]_a^b.
    """
    v = values.astype(np.float64)
    edges = np.concatenate([[-1.0], (v[:-1] + v[1:]) / 2, [1.0]])
    m = np.linspace(1e-6, 9, 6001)[:, None]
    a, b, c = edges[:-1] * m, edges[1:] * m, v * m

    def antiderivative(x):
        return (1 + c**2) * ndtr(x) - (x - 2 * c) * norm.pdf(x)

    inner = (antiderivative(b) - antiderivative(a)).sum(axis=1)  # ∫_{−M}^{M} err² φ
    m = m[:, 0]
    inside = 2 * ndtr(m) - 1
    top = ((1 - v[-1]) ** 2 + (1 + v[0]) ** 2) / 2 * m**2
    total = (
        block * 2 * norm.pdf(m) * (inside ** (block - 1) * top + (block - 1) * inside ** (block - 2) * inner)
    )
    return float(np.trapezoid(total, m) / block)


@pytest.mark.parametrize(("name", "expected_order"), [("blockwise8", 1.7e-4), ("nf4", 9e-3)])
def test_nmse_on_gaussian_updates(name, expected_order):
    """Measured NMSE on 2²² N(0, 1) entries within 3% of the integral (default block sizes)."""
    c = codec(name, error_feedback=False)
    n = 1 << 22
    x = np.random.default_rng(7).standard_normal(n).astype(np.float32)
    spec = ModelSpec.flat(n)
    (decoded,) = c.decoder(spec).decode(c.encoder(spec).encode([x]))
    measured = np.sum((x.astype(np.float64) - decoded) ** 2) / np.sum(x.astype(np.float64) ** 2)
    expected = derived_nmse(CODE[name], c.config.block_size)
    assert expected == pytest.approx(expected_order, rel=0.3)
    assert measured == pytest.approx(expected, rel=0.03)


def test_deterministic_and_default_error_feedback(rng):
    """Nearest rounding draws nothing: two encoders send the same bytes. blockwise8 is
    fp16-like (no error feedback), nf4 coarse and biased (error feedback on)."""
    x = [rng.standard_normal(300).astype(np.float32)]
    spec = ModelSpec.of(x)
    for name in NAMES:
        c = codec(name, error_feedback=False)
        assert (
            c.encoder(spec, seed=1).encode(x)[HEADER_BYTES:]
            == c.encoder(spec, seed=2).encode(x)[HEADER_BYTES:]
        )
    assert not codec("blockwise8").error_feedback and codec("nf4").error_feedback
