"""What each codec promises about decode(encode(x)), and what the endpoints refuse to encode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import CONFIGS, LOSSY_CONFIGS, NAMES, SPEC, config_id, random_update
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flcomp.codecs import HEADER_BYTES, REGISTRY, Codec, ModelSpec, RoundContext, TensorSpec, codec

LOSSLESS = [name for name in NAMES if REGISTRY[name].lossless]
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14
FP32_MIN_NORMAL = float(np.finfo(np.float32).tiny)


def round_trip(c: Codec, update, spec: ModelSpec = SPEC, seed: int = 0):
    """The decoder's output for the first payload of a fresh link."""
    enc, dec = c.encoder(spec, seed=seed), c.decoder(spec)
    return dec.decode(enc.encode(update))


def flat_update(values) -> tuple[ModelSpec, list[np.ndarray]]:
    x = np.asarray(values, np.float32)
    return ModelSpec.flat(x.size), [x]


def float32_arrays(elements, max_size: int = 300):
    return hnp.arrays(np.float32, st.integers(1, max_size), elements=elements)


def signed_range(lo: float, hi: float):
    """float32 values with lo <= |v| <= hi, either sign."""
    mag = st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32)
    return st.one_of(mag, mag.map(lambda v: -v))


# --- lossless -----------------------------------------------------------------------


def test_the_registry_has_a_lossless_codec():
    assert "fp32" in LOSSLESS


@pytest.mark.parametrize("name", LOSSLESS)
@settings(max_examples=50, deadline=None, derandomize=True)
@given(x=float32_arrays(st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_lossless_round_trip_is_bit_exact(name, x):
    spec, update = flat_update(x)
    (out,) = round_trip(codec(name), update, spec)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.array_equal(out.view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_round_trip_keeps_every_shape(name, rng):
    update = random_update(rng)
    out = round_trip(codec(name), update)
    for o, x in zip(out, update):
        assert o.shape == x.shape and o.dtype == x.dtype and np.array_equal(o, x)


# --- half precision -----------------------------------------------------------------


@settings(max_examples=100, deadline=None, derandomize=True)
@given(x=float32_arrays(signed_range(FP16_MIN_NORMAL, FP16_MAX)))
def test_fp16_relative_error_in_the_normal_range(x):
    spec, update = flat_update(x)
    (out,) = round_trip(codec("fp16"), update, spec)
    assert np.all(np.abs(out.astype(np.float64) - x) <= 2.0**-11 * np.abs(x.astype(np.float64)))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(x=float32_arrays(signed_range(0.0, FP16_MIN_NORMAL)))
def test_fp16_absolute_error_below_the_normal_range(x):
    spec, update = flat_update(x)
    (out,) = round_trip(codec("fp16"), update, spec)
    assert np.all(np.abs(out.astype(np.float64) - x) <= 2.0**-25)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(x=float32_arrays(signed_range(65520.0, float(np.finfo(np.float32).max))))
def test_fp16_saturates_huge_entries(x):
    spec, update = flat_update(x)
    (out,) = round_trip(codec("fp16"), update, spec)
    assert np.array_equal(out, np.sign(x) * np.float32(FP16_MAX))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(x=float32_arrays(signed_range(FP32_MIN_NORMAL, float(np.finfo(np.float32).max))))
def test_bf16_relative_error(x):
    spec, update = flat_update(x)
    (out,) = round_trip(codec("bf16"), update, spec)
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(out.astype(np.float64) - x) <= 2.0**-8 * np.abs(x.astype(np.float64)))


def test_bf16_keeps_exactly_representable_values():
    x = np.array([0.0, 1.0, -2.5, 0.15625, 3.0 * 2.0**100, -(2.0**-100)], np.float32)
    spec, update = flat_update(x)
    (out,) = round_trip(codec("bf16"), update, spec)
    assert np.array_equal(out, x)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(x=float32_arrays(signed_range(0.0, FP32_MIN_NORMAL)))
def test_bf16_absolute_error_below_the_normal_range(x):
    """Below float32's normal range the relative bound cannot hold (bf16 keeps fewer
    subnormal bits); the error is at most half a bf16 subnormal step, 2⁻¹³⁴."""
    spec, update = flat_update(x)
    (out,) = round_trip(codec("bf16"), update, spec)
    assert np.all(np.abs(out.astype(np.float64) - x) <= 2.0**-134)


# --- QSGD ---------------------------------------------------------------------------

QSGD_CONFIGS = [c for c in CONFIGS if c.name == "qsgd" and not c.error_feedback] + [
    codec("qsgd", levels=1, bucket_size=64),
    codec("qsgd", levels=127, bucket_size=100, coding="range"),
]


def assert_within_qsgd_bound(c: Codec, x: np.ndarray, out: np.ndarray) -> None:
    """|Q(v)_i − v_i| ≤ ‖v‖₂ / s for every bucket v of B consecutive entries."""
    b, s = c.config.bucket_size, c.config.levels
    x64, out64 = x.astype(np.float64), out.astype(np.float64)
    for start in range(0, x.size, b):
        v, q = x64[start : start + b], out64[start : start + b]
        bound = np.linalg.norm(v) / s * 1.0001
        assert np.all(np.abs(q - v) <= bound), f"bucket at {start}"
        assert np.all(q * v >= 0), f"sign flipped in bucket at {start}"


@pytest.mark.parametrize("c", QSGD_CONFIGS, ids=config_id)
def test_qsgd_error_within_bucket_norm_over_levels(c, rng):
    update = random_update(rng, scale=3.0)
    update[0][3:9] = 0.0
    out = round_trip(c, update, seed=4)
    for x, o in zip(update, out):
        assert_within_qsgd_bound(c, x.reshape(-1), o.reshape(-1))


@pytest.mark.parametrize("c", QSGD_CONFIGS, ids=config_id)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(x=float32_arrays(st.one_of(st.just(0.0), signed_range(1e-6, 1e6)), max_size=1200))
def test_qsgd_bound_on_drawn_vectors(c, x):
    spec, update = flat_update(x)
    (out,) = round_trip(c, update, spec)
    assert_within_qsgd_bound(c, x, out)


@pytest.mark.parametrize("c", QSGD_CONFIGS, ids=config_id)
def test_qsgd_keeps_zeros_and_a_zero_update(c):
    spec, update = flat_update(np.zeros(1000))
    (out,) = round_trip(c, update, spec)
    assert np.array_equal(out, np.zeros(1000, np.float32))


@pytest.mark.parametrize("c", QSGD_CONFIGS, ids=config_id)
def test_qsgd_levels_are_multiples_of_norm_over_s(c, rng):
    x = rng.standard_normal(700).astype(np.float32)
    spec, update = flat_update(x)
    (out,) = round_trip(c, update, spec)
    b, s = c.config.bucket_size, c.config.levels
    for start in range(0, x.size, b):
        step = np.linalg.norm(x[start : start + b].astype(np.float64)) / s
        levels = out[start : start + b] / step
        assert np.allclose(levels, np.round(levels), atol=1e-3)
        assert np.all(np.abs(np.round(levels)) <= s)


# --- top-k --------------------------------------------------------------------------


def expected_k(ratio: float, n: int) -> int:
    return min(n, max(1, math.ceil(ratio * n)))


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
def test_topk_keeps_the_k_largest_entries_of_each_tensor(ratio, value_dtype, rng):
    c = codec("topk", ratio=ratio, value_dtype=value_dtype, error_feedback=False)
    update = random_update(rng)
    out = round_trip(c, update)
    for x, o in zip(update, out):
        x, o = x.reshape(-1), o.reshape(-1)
        k = expected_k(ratio, x.size)
        largest = np.sort(np.argsort(-np.abs(x), kind="stable")[:k])
        assert np.array_equal(np.flatnonzero(o), largest)
        wire = x[largest].astype(value_dtype).astype(np.float32)
        assert np.array_equal(o[largest], wire)


def test_topk_with_error_feedback_still_sends_k_entries(rng):
    c = codec("topk", ratio=0.05)
    assert c.error_feedback
    out = round_trip(c, random_update(rng))
    assert [np.count_nonzero(o) for o in out] == [expected_k(0.05, o.size) for o in out]


def test_topk_selection_is_exact_on_a_large_tensor():
    """Past 4·2¹⁶ entries top-k pre-selects candidates from a sample; the result stays exact."""
    x = np.random.default_rng(8).standard_t(3, size=300_000).astype(np.float32)
    spec, update = flat_update(x)
    (out,) = round_trip(codec("topk", ratio=0.01, error_feedback=False), update, spec)
    largest = np.sort(np.argsort(-np.abs(x), kind="stable")[:3000])
    assert np.array_equal(np.flatnonzero(out), largest)
    assert np.array_equal(out[largest], x[largest])


# --- random-k -----------------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("ratio", [0.01, 0.2, 1.0])
def test_randomk_keeps_k_entries_exact_or_scaled(unbiased, ratio, rng):
    c = codec("randomk", ratio=ratio, unbiased=unbiased, error_feedback=False)
    update = random_update(rng)
    out = round_trip(c, update, seed=3)
    for x, o in zip(update, out):
        x, o = x.reshape(-1), o.reshape(-1)
        k = expected_k(ratio, x.size)
        kept = np.flatnonzero(o)
        assert len(kept) == k
        scale = x.size / k if unbiased else 1.0
        assert np.allclose(o[kept], x[kept] * scale, rtol=1e-6, atol=0)
        if not unbiased:
            assert np.array_equal(o[kept], x[kept])


def test_randomk_positions_depend_on_the_seed(rng):
    c = codec("randomk", ratio=0.1, error_feedback=False)
    update = random_update(rng)
    kept = [np.flatnonzero(round_trip(c, update, seed=s)[0]) for s in range(4)]
    assert len({tuple(k) for k in kept}) == 4


# --- scaled sign --------------------------------------------------------------------


def test_scaled_sign_is_mean_magnitude_times_sign(rng):
    c = codec("scaled_sign", error_feedback=False)
    update = random_update(rng)
    update[1][:5] = 0.0
    out = round_trip(c, update)
    for x, o in zip(update, out):
        alpha = np.abs(x.astype(np.float64)).mean()
        sign = np.where(x < 0, -1.0, 1.0)
        assert np.allclose(o, alpha * sign, rtol=1e-5, atol=0)
        assert np.unique(np.abs(o)).size == 1


# --- PowerSGD -----------------------------------------------------------------------

POWERSGD_CONFIGS = [
    codec("powersgd", rank=r, warm_start=w, error_feedback=False) for r in (1, 2) for w in (True, False)
]


@pytest.mark.parametrize("c", POWERSGD_CONFIGS, ids=config_id)
def test_powersgd_output_has_rank_at_most_r(c, rng):
    update = random_update(rng)
    enc, dec = c.encoder(SPEC, seed=1), c.decoder(SPEC)
    for _ in range(3):  # warm-started rounds too
        out = dec.decode(enc.encode(update))
        dec.commit()
        enc.sync(dec.fingerprint)
        for o in (out[0], out[2]):
            matrix = o.reshape(o.shape[0], -1).astype(np.float64)
            assert np.linalg.matrix_rank(matrix, tol=1e-4 * np.abs(matrix).max()) <= c.config.rank
        assert np.array_equal(out[1], update[1]), "vectors are sent whole"


@pytest.mark.parametrize("c", POWERSGD_CONFIGS, ids=config_id)
def test_powersgd_recovers_a_matrix_of_rank_r(c, rng):
    r = c.config.rank
    m = (rng.standard_normal((20, r)) @ rng.standard_normal((r, 30))).astype(np.float32)
    update = [m, np.zeros(30, np.float32), np.zeros((7, 5, 3), np.float32)]
    out = round_trip(c, update)
    assert np.allclose(out[0], m, rtol=0, atol=1e-4 * np.abs(m).max())


def test_powersgd_sends_small_matrices_whole(rng):
    spec = ModelSpec.of([np.zeros((2, 3), np.float32), np.zeros((3, 2, 1), np.float32)])
    update = random_update(rng, spec)
    out = round_trip(codec("powersgd", error_feedback=False), update, spec)
    assert all(np.array_equal(o, x) for o, x in zip(out, update))


def test_powersgd_rank_above_the_smaller_side_round_trips(rng):
    """With min_compression_rate < 1, a tensor thinner than the rank is still decodable."""
    spec = ModelSpec.of([np.zeros((3, 40), np.float32)])
    c = codec("powersgd", rank=4, min_compression_rate=0.5, error_feedback=False)
    update = random_update(rng, spec)
    (out,) = round_trip(c, update, spec)
    assert np.allclose(out, update[0], atol=1e-4)


# --- LAG ----------------------------------------------------------------------------

LAG = codec("lag", rule="relative", xi=0.5)


def test_lag_sends_the_first_update_exactly(rng):
    update = random_update(rng)
    enc, dec = LAG.encoder(SPEC), LAG.decoder(SPEC)
    payload = enc.encode(update)
    assert len(payload) > HEADER_BYTES + 1
    out = dec.decode(payload)
    assert all(np.array_equal(o, x) for o, x in zip(out, update))


def test_lag_skips_a_repeated_update_and_reuses_the_last_one(rng):
    first, second = random_update(rng), random_update(rng)
    enc, dec = LAG.encoder(SPEC), LAG.decoder(SPEC)
    for update in (first, second):
        dec.decode(enc.encode(update))
        dec.commit()
        enc.sync(dec.fingerprint)
    payload = enc.encode([x.copy() for x in second])
    assert len(payload) == HEADER_BYTES + 1
    out = dec.decode(payload)
    assert all(np.array_equal(o, x) for o, x in zip(out, second))


def test_lag_wk_sends_without_history_and_skips_with_large_model_changes(rng):
    c = codec("lag")
    update = random_update(rng)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    payload = enc.encode(update)
    assert len(payload) > HEADER_BYTES + 1
    assert all(np.array_equal(o, x) for o, x in zip(dec.decode(payload), update))
    enc.rollback()
    # ‖g − 0‖² ≤ (ξ/D)·Σ changes / (α K)²: large past model changes make it skip.
    ctx = RoundContext(num_clients=1, lr=1.0, model_change_sq=(1e9,) * 10)
    assert len(enc.encode(update, ctx)) == HEADER_BYTES + 1


@pytest.mark.parametrize("ctx", [dict(lr=0.0), dict(num_clients=0)], ids=["lr=0", "no-clients"])
def test_lag_wk_with_a_zero_step_size_encodes_or_refuses_with_value_error(ctx, rng):
    enc = codec("lag").encoder(SPEC)
    try:
        enc.encode(random_update(rng), RoundContext(**ctx, model_change_sq=(1.0,)))
    except ValueError:
        assert not enc.pending


# --- huge but finite updates --------------------------------------------------------

HUGE_OK = [c for c in CONFIGS if not (c.name == "randomk" and c.config.unbiased)]
"""Unbiased random-k scales kept entries by n/k: past float32's range at this size, by design."""


OVERFLOW_WARNINGS = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


@OVERFLOW_WARNINGS
@pytest.mark.parametrize("c", HUGE_OK, ids=config_id)
def test_huge_finite_updates_decode_to_finite_values(c, rng):
    update = random_update(rng, scale=1e36)
    out = round_trip(c, update)
    assert all(np.isfinite(o).all() for o in out)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_qsgd_encodes_a_huge_finite_update_decodably():
    """‖v‖² of a full bucket of 1e18 entries overflows a float32 sum; the norm must not."""
    spec, update = flat_update(np.full(512, 1e18))
    (out,) = round_trip(codec("qsgd"), update, spec)
    assert np.all(np.isfinite(out))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_scaled_sign_encodes_a_huge_finite_update_decodably():
    """Σ|x| overflows a float32 sum, mean |x| = 1e36 does not."""
    spec, update = flat_update(np.full(1000, 1e36))
    (out,) = round_trip(codec("scaled_sign", error_feedback=False), update, spec)
    assert np.allclose(out, 1e36, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lag_relative_sends_a_huge_first_update():
    """‖g‖² overflows float32; the trigger must not read inf ≤ ξ·inf as a skip."""
    spec, update = flat_update(np.full(1000, 1e20))
    enc = LAG.encoder(spec)
    assert len(enc.encode(update)) > HEADER_BYTES + 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("c", HUGE_OK, ids=config_id)
def test_an_update_at_float32s_limit_is_refused_or_decodable(c):
    """Never a payload that the decoder must reject: ValueError up front is fine."""
    spec, update = flat_update(np.full(600, 3e38))
    enc, dec = c.encoder(spec), c.decoder(spec)
    try:
        payload = enc.encode(update)
    except ValueError:
        assert not enc.pending
        return
    assert all(np.isfinite(o).all() for o in dec.decode(payload))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_powersgd_warm_start_survives_large_updates(rng):
    c = codec("powersgd", error_feedback=False)
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for _ in range(2):
        out = dec.decode(enc.encode(random_update(rng, scale=1e19)))
        dec.commit()
        enc.sync(dec.fingerprint)
        assert all(np.isfinite(o).all() for o in out)


# --- dtypes, shapes, refused updates ------------------------------------------------

MIXED_SPEC = ModelSpec.of(
    [np.zeros((6, 40), np.float64), np.zeros(25, np.float16), np.zeros((3, 4), np.float32)]
)


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_decoded_dtypes_and_shapes_follow_the_spec(c, rng):
    update = random_update(rng, MIXED_SPEC)
    out = round_trip(c, update, MIXED_SPEC)
    assert [o.dtype for o in out] == [t.dtype for t in MIXED_SPEC.tensors]
    assert [o.shape for o in out] == [t.shape for t in MIXED_SPEC.tensors]
    assert all(np.isfinite(o).all() for o in out)


def test_float64_update_through_fp32_is_rounded_to_float32(rng):
    update = random_update(rng, MIXED_SPEC)
    out = round_trip(codec("fp32"), update, MIXED_SPEC)
    assert np.array_equal(out[0], update[0].astype(np.float32).astype(np.float64))
    assert np.array_equal(out[1], update[1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_float16_spec_tensors_decode_finite():
    """The unbiased estimate 100 × 1000 is past float16's range: it saturates, not inf."""
    spec = ModelSpec.of([np.zeros(100, np.float16)])
    c = codec("randomk", ratio=0.01, unbiased=True, error_feedback=False)
    (out,) = round_trip(c, [np.full(100, 1000, np.float16)], spec)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    assert np.abs(out).max() == FP16_MAX


def test_updates_in_any_memory_layout_are_read_by_value(rng):
    x = random_update(rng)
    layouts = [
        np.asfortranarray(x[0]),
        x[1].astype(">f4"),
        np.ascontiguousarray(x[2].transpose(2, 1, 0)).transpose(2, 1, 0),
    ]
    out = round_trip(codec("fp32"), layouts)
    assert all(np.array_equal(o, xi) for o, xi in zip(out, x))


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_encode_leaves_the_callers_update_untouched(c, rng):
    update = random_update(rng)
    kept = [x.copy() for x in update]
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    for _ in range(2):
        dec.decode(enc.encode(update))
        dec.commit()
        enc.sync(dec.fingerprint)
    assert all(np.array_equal(x, k) for x, k in zip(update, kept))


EDGE_SPEC = ModelSpec.of([np.zeros(s, np.float32) for s in [(0,), (), (1,), (4, 0), (0, 4), (3, 4)]])


@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
def test_empty_and_scalar_tensors_round_trip(c, rng):
    update = random_update(rng, EDGE_SPEC)
    enc, dec = c.encoder(EDGE_SPEC), c.decoder(EDGE_SPEC)
    for _ in range(2):
        out = dec.decode(enc.encode(update))
        dec.commit()
        enc.sync(dec.fingerprint)
        assert [o.shape for o in out] == [t.shape for t in EDGE_SPEC.tensors]


@pytest.mark.parametrize(
    "c",
    CONFIGS,
    ids=config_id,
)
def test_a_spec_without_tensors_round_trips(c):
    spec = ModelSpec(())
    enc, dec = c.encoder(spec), c.decoder(spec)
    assert dec.decode(enc.encode([])) == []


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "bool", "complex64"])
def test_tensor_spec_refuses_non_float_dtypes(dtype):
    with pytest.raises(ValueError):
        TensorSpec((3,), np.dtype(dtype))
    with pytest.raises(ValueError):
        ModelSpec.of([np.zeros(3, dtype)])


def test_tensor_spec_refuses_negative_dimensions():
    with pytest.raises(ValueError):
        TensorSpec((3, -1), np.float32)


def bad_updates(rng):
    good = random_update(rng)
    nan, inf = [x.copy() for x in good], [x.copy() for x in good]
    nan[0][2, 3] = np.nan
    inf[2][1, 1, 1] = -np.inf
    huge64 = [x.astype(np.float64) for x in good]
    huge64[1][0] = 1e300  # finite in float64, inf in float32
    return {
        "nan": nan,
        "inf": inf,
        "float64-overflow": huge64,
        "transposed": [good[0].T, good[1], good[2]],
        "flattened": [good[0].reshape(-1), good[1], good[2]],
        "too-few-tensors": good[:2],
        "too-many-tensors": good + [good[1]],
    }


@OVERFLOW_WARNINGS
@pytest.mark.parametrize("c", CONFIGS, ids=config_id)
@pytest.mark.parametrize("case", list(bad_updates(np.random.default_rng(0))))
def test_encode_refuses_nan_inf_and_misshapen_updates(c, case):
    update = bad_updates(np.random.default_rng(0))[case]
    enc = c.encoder(SPEC)
    with pytest.raises(ValueError):
        enc.encode(update)
    assert not enc.pending and enc.steps == 0


# --- registry -----------------------------------------------------------------------


@pytest.mark.parametrize("c", CONFIGS + [codec("fp16", error_feedback=True)], ids=config_id)
def test_describe_parses_back_to_the_same_codec(c):
    assert Codec.parse(c.describe()) == c


# LAG and TPC send the update as it is in their first round (LAG's full update, TPC's
# warm-up residual against an empty memory), a byte or two above fp32.
@pytest.mark.parametrize("c", [c for c in LOSSY_CONFIGS if c.name not in ("lag", "tpc")], ids=config_id)
def test_lossy_codecs_compress_below_fp32(c, rng):
    payload = c.encoder(SPEC).encode(random_update(rng))
    assert len(payload) < HEADER_BYTES + 4 * SPEC.size


def test_codec_refuses_unknown_names_parameters_and_lossless_error_feedback():
    with pytest.raises(ValueError):
        codec("nope")
    with pytest.raises(ValueError):
        codec("topk", ratio=0.1, nope=1)
    with pytest.raises(ValueError):
        codec("fp32", error_feedback=True)
    with pytest.raises(ValueError):
        codec("topk", ratio=0.0)
