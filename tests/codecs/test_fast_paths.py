"""The fast paths of issue 18 give what the slow ones gave, bit for bit."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest

from flcomp.codecs import HEADER_BYTES, ModelSpec, PayloadError, codec
from flcomp.codecs.coding.half import narrow_half, widen_half
from flcomp.codecs.coding.sparse import top_k_positions
from flcomp.codecs.compressor import Step, StepRng
from flcomp.codecs.compressors.powersgd import _orthonormal, _product
from flcomp.codecs.spec import all_finite

ALL_HALVES = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def test_widen_half_is_numpys_cast_on_every_finite_pattern():
    finite = np.isfinite(ALL_HALVES)
    widened = widen_half(ALL_HALVES[finite])
    assert widened.dtype == np.float32
    assert np.array_equal(widened.view(np.uint32), ALL_HALVES[finite].astype(np.float32).view(np.uint32))


def test_widen_half_checked_refuses_each_inf_and_nan_pattern():
    for h in ALL_HALVES[~np.isfinite(ALL_HALVES)][::97]:
        with pytest.raises(PayloadError):
            widen_half(np.array([1.0, h], np.float16), checked=True)
    # In a later block too, and past a block of finite entries.
    late = np.zeros(200_000, np.float16)
    late[150_001] = np.inf
    with pytest.raises(PayloadError):
        widen_half(late, checked=True)
    assert widen_half(np.zeros(0, np.float16), checked=True).size == 0


def saturating_cast(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(x, -65504, 65504).astype(np.float16)


def test_narrow_half_is_numpys_saturating_cast_on_float32_patterns():
    # Every 89th pattern of all 2³²: each exponent, both signs, NaN included.
    patterns = np.arange(0, 2**32, 89, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert np.array_equal(narrow_half(patterns).view(np.uint16), saturating_cast(patterns).view(np.uint16))


def test_narrow_half_rounds_each_float16_boundary_as_numpy_does():
    # Each float16 value and the float32 patterns at, just below and just above the
    # midpoints to its neighbours (ties to even), in blocks mixing every range.
    finite = ALL_HALVES[np.isfinite(ALL_HALVES)].astype(np.float32)
    wide = finite.view(np.uint32).astype(np.int64)
    near = np.concatenate([wide + d for d in (-1, 0, 1, 0xFFF, 0x1000, 0x1001, 0x2000)])
    x = np.random.default_rng(0).permutation((near % 2**32).astype(np.uint32).view(np.float32))
    # Blocks without an entry that saturates take the two passes; the others NumPy's cast.
    for blocks in (x[np.abs(x) <= 65504], x):
        assert np.array_equal(narrow_half(blocks).view(np.uint16), saturating_cast(blocks).view(np.uint16))
    assert narrow_half(np.zeros(0, np.float32)).size == 0


def test_fp16_saturates_without_warnings_and_decodes_what_the_encoder_kept():
    x = np.array([70000.0, -1e30, 65504.0, 65519.0, 65520.0, 2.0**-25, -3 * 2.0**-26, 0.1], np.float32)
    spec = ModelSpec.flat(x.size)
    enc, dec = codec("fp16", error_feedback=True).encoder(spec), codec("fp16").decoder(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (out,) = dec.decode(enc.encode([x]))
    expected = np.clip(x, -65504, 65504).astype(np.float16).astype(np.float32)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))
    # The error memory holds what the reconstruction dropped: x minus the decoded update.
    assert np.array_equal(enc._pending.local["ef/0"], x - expected)


def test_all_finite_is_exact_past_the_overflow_of_the_fast_test():
    assert all_finite(np.zeros(0, np.float32))
    assert all_finite(np.array([3e38, -3e38, 1e20], np.float32))  # x·x overflows; the entries do not
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones(1000, np.float32)
        x[-1] = bad
        assert not all_finite(x)


def reference_top_k(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the k largest, ties broken by position (a stable sort)."""
    order = np.argsort(-magnitude, kind="stable")
    return np.sort(order[:k])


@pytest.mark.parametrize("n", [1, 7, 1000, 20_000, 100_000, 300_000])
def test_top_k_positions_match_a_stable_sort_with_and_without_ties(n):
    rng = np.random.default_rng(n)
    for magnitude in (
        np.abs(rng.standard_normal(n, dtype=np.float32)),
        rng.integers(0, 4, n).astype(np.float32),  # heavy ties at the k-th value
    ):
        for k in {1, max(1, n // 100), max(1, n // 3), n}:
            assert np.array_equal(top_k_positions(magnitude, k), reference_top_k(magnitude, k))


def test_step_rng_draws_what_default_rng_draws_and_only_when_used():
    rng = StepRng((3, 5))
    assert rng._generator is None
    assert rng.integers(2**32) == np.random.default_rng((3, 5)).integers(2**32)


def test_a_deferred_reconstruction_is_computed_once():
    calls = []
    step = Step(lambda: calls.append(1) or [np.ones(2, np.float32)])
    assert step.reconstruction() is step.reconstruction()
    assert calls == [1]


def test_orthonormal_matches_qr_up_to_sign_and_maps_zero_to_e1():
    a = np.random.default_rng(0).standard_normal((50, 1)).astype(np.float32)
    q = np.linalg.qr(a)[0]
    assert np.allclose(np.abs(_orthonormal(a)), np.abs(q), atol=1e-6)
    assert np.array_equal(_orthonormal(np.zeros((4, 1), np.float32)), np.eye(4, 1, dtype=np.float32))
    p, qq = a, np.arange(3, dtype=np.float32).reshape(3, 1)
    assert np.allclose(_product(p, qq), (p @ qq.T).reshape(-1))


def test_the_payload_check_is_still_zlibs_crc32():
    spec = ModelSpec.flat(1000)
    payload = codec("topk").encoder(spec).encode([np.arange(1000, dtype=np.float32)])
    (crc,) = struct.unpack_from("<I", payload, HEADER_BYTES - 4)
    assert crc == zlib.crc32(payload[HEADER_BYTES:], zlib.crc32(payload[: HEADER_BYTES - 4]))


def test_bf16_rounds_to_nearest_even_and_saturates_across_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3 * 2**16 + 5).astype(np.float32) * np.float32(1e30)
    x[:6] = [3.4028235e38, -3.4028235e38, 3.39e38, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -0.0]
    bits = x.view(np.uint32).astype(np.uint64)
    top = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    top[(top & 0x7F80) == 0x7F80] = (top[(top & 0x7F80) == 0x7F80] & 0x8000) | 0x7F7F
    expected = (top.astype(np.uint32) << 16).view(np.float32)
    spec = ModelSpec.flat(x.size)
    (out,) = codec("bf16").decoder(spec).decode(codec("bf16").encoder(spec).encode([x]))
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))
