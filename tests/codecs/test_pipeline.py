"""The pipeline codec: every sparsifier × quantizer within its bound, its text form, its bits,
QSGD's unbiasedness on a support, the shorter-of coding, refused configs, and a Flower round."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import forge
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from test_unbiased import X, bias_check, decode_many

from flcomp.clients import compression_mod, encoder_state
from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec, PayloadError, RoundContext, codec
from flcomp.codecs.coding import entropy
from flcomp.codecs.coding.bfloat16 import to_bfloat16
from flcomp.codecs.coding.levels import pack_levels
from flcomp.codecs.coding.shorter import decode_levels, decode_signs, encode_levels, encode_signs
from flcomp.codecs.coding.sparse import kept_count
from flcomp.codecs.compressor import StepRng
from flcomp.codecs.compressors.pipeline import QUANTIZERS, SPARSIFIERS
from flcomp.codecs.wire import PayloadReader, PayloadWriter, unpack
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed

SPEC = ModelSpec.of([np.zeros(s, np.float32) for s in [(40, 25), (300,), (3,)]])
BLOCK, LEVELS, THRESHOLD = 64, 4, 1.0
"""Several blocks a support with a ragged last one; the threshold keeps about a third."""


def update(seed: int = 0, spec: ModelSpec = SPEC) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.shape).astype(np.float32) for t in spec.tensors]


def pipeline(sparsifier: str, quantizer: str, **kw) -> Codec:
    kw = dict(threshold=THRESHOLD, levels=LEVELS, block_size=BLOCK, error_feedback=False) | kw
    return codec("pipeline", sparsifier=sparsifier, quantizer=quantizer, **kw)


def supports(c: Codec, payload: bytes, spec: ModelSpec = SPEC) -> list[np.ndarray]:
    """Each tensor's support as the payload gives it, read with the codec's own stages."""
    comp = c.compressor(spec)
    _, body = unpack(payload, comp.codec_id, len(spec))
    found = []
    for t in spec.tensors:
        s = comp.sparsifier.read(body, t.size)
        s = np.arange(t.size) if isinstance(s, slice) else s
        comp.quantizer.decode(body, len(s))
        found.append(s)
    body.finish()
    return found


def blocks(v: np.ndarray) -> list[np.ndarray]:
    return [v[i : i + BLOCK] for i in range(0, v.size, BLOCK)]


def check_bound(quantizer: str, v: np.ndarray, q: np.ndarray) -> None:
    """The bound of the pipeline's docstring on kept values v decoded as q."""
    v64, q64 = v.astype(np.float64), q.astype(np.float64)
    err = np.abs(q64 - v64)
    if quantizer == "fp32":
        assert np.array_equal(q, v)
    elif quantizer == "fp16":
        assert np.all(err <= 2.0**-11 * np.abs(v64))
    elif quantizer == "bf16":
        assert np.all(err <= 2.0**-8 * np.abs(v64))
    elif quantizer in ("sign", "ternary"):
        mu = np.abs(v64).mean() if v.size else 0.0
        np.testing.assert_allclose(q64, np.where(v < 0, -mu, mu), rtol=1e-6)
    elif quantizer == "qsgd":
        for vb, eb in zip(blocks(v64), blocks(err)):
            assert np.all(eb <= np.linalg.norm(vb) / LEVELS * (1 + 1e-6))
    elif quantizer == "blockwise":
        for vb, eb in zip(blocks(v64), blocks(err)):
            assert np.all(eb <= np.abs(vb).max() * (1 / 254 + 1e-6))
    else:
        raise AssertionError(f"no bound for {quantizer}")


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("sparsifier", sorted(SPARSIFIERS))
def test_every_combination_round_trips_within_its_bound(sparsifier, quantizer):
    c = pipeline(sparsifier, quantizer, ratio=0.1)
    x = update(1)
    payload = c.encoder(SPEC, seed=3).encode(x)
    out = c.decoder(SPEC).decode(payload)
    for xi, oi, s in zip(x, out, supports(c, payload)):
        xi, oi = xi.ravel(), oi.ravel()
        n = xi.size
        expected = {
            "none": np.arange(n),
            "topk": np.sort(np.argsort(-np.abs(xi), kind="stable")[: kept_count(0.1, n)]),
            "threshold": np.flatnonzero(np.abs(xi) >= THRESHOLD),
        }.get(sparsifier)
        if expected is None:  # randomk: k distinct positions drawn from the seed
            assert len(np.unique(s)) == kept_count(0.1, n)
        else:
            assert np.array_equal(s, expected)
        off = np.ones(n, bool)
        off[s] = False
        assert not oi[off].any()
        check_bound(quantizer, xi[s], oi[s])


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("sparsifier", sorted(SPARSIFIERS))
def test_the_encoders_reconstruction_is_what_the_decoder_returns(sparsifier, quantizer):
    comp = pipeline(sparsifier, quantizer, ratio=0.1).compressor(SPEC)
    out = PayloadWriter()
    x = [xi.ravel() for xi in update(3)]
    step = comp.encode(x, {}, {}, out, StepRng((1, 0)), RoundContext())
    decoded, _ = comp.decode(_read(out), {})
    for a, b in zip(step.reconstruction(), decoded):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_unbiased_random_k_scales_the_kept_values_by_n_over_k():
    biased, unbiased = (pipeline("randomk", "fp32", ratio=0.1, unbiased=u) for u in (False, True))
    x = update(2)
    a = biased.decoder(SPEC).decode(biased.encoder(SPEC, seed=4).encode(x))
    b = unbiased.decoder(SPEC).decode(unbiased.encoder(SPEC, seed=4).encode(x))
    for t, ai, bi in zip(SPEC.tensors, a, b):
        np.testing.assert_array_equal(bi, ai * np.float32(t.size / kept_count(0.1, t.size)))


def test_random_k_positions_follow_the_step_seed():
    c = pipeline("randomk", "fp32", ratio=0.1)
    enc, x = c.encoder(SPEC, seed=1), update(0)
    first = supports(c, enc.encode(x))
    enc.commit()
    second = supports(c, enc.encode(x))
    assert not np.array_equal(first[0], second[0])
    assert np.array_equal(first[0], supports(c, c.encoder(SPEC, seed=1).encode(x))[0])


def test_threshold_reports_the_entries_it_keeps():
    c = pipeline("threshold", "sign")
    enc, x = c.encoder(SPEC), update(5)
    enc.encode(x)
    assert enc.last_stats["entries_sent"] == sum(np.count_nonzero(np.abs(xi) >= THRESHOLD) for xi in x)


def test_bf16_stage_rounds_as_the_bf16_codec_does():
    x = np.concatenate([update(6)[0].ravel() * 1e3, np.float32([3.4e38, -3.4e38, 1e-40, 0.0])])
    payload = codec("bf16").encoder(ModelSpec.flat(x.size)).encode([x])
    assert payload[HEADER_BYTES:] == to_bfloat16(x).tobytes()


# --- text form and refused configs ----------------------------------------------------

TEXTS = [
    "pipeline",
    "pipeline:sparsifier=topk,ratio=0.01,quantizer=ternary",
    "pipeline:sparsifier=randomk,ratio=0.2,unbiased=true,quantizer=qsgd,levels=2,error_feedback=false",
    "pipeline:sparsifier=threshold,threshold=0.05,quantizer=blockwise,block_size=64",
    "pipeline:sparsifier=none,quantizer=bf16,momentum=0.9",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_text_form_round_trips(text):
    c = Codec.parse(text)
    assert Codec.parse(c.describe()) == c
    assert c.describe().startswith("pipeline:sparsifier=")


def test_the_text_form_is_typed_and_error_feedback_is_on_by_default():
    c = Codec.parse("pipeline:sparsifier=randomk,ratio=0.25,unbiased=true,quantizer=qsgd,levels=8")
    assert (c.config.ratio, c.config.unbiased, c.config.levels) == (0.25, True, 8)
    assert type(c.config.levels) is int and c.error_feedback and c.momentum == 0
    default = codec("pipeline").config
    assert (default.sparsifier, default.ratio, default.quantizer) == ("topk", 0.01, "ternary")


@pytest.mark.parametrize(
    "params, words",
    [
        (dict(sparsifier="bottomk"), ["unknown sparsifier 'bottomk'", "none, randomk, threshold, topk"]),
        (dict(quantizer="int4"), ["unknown quantizer 'int4'", "bf16, blockwise, fp16, fp32, qsgd"]),
        (dict(ratio=0.0), ["ratio"]),
        (dict(ratio=1.5), ["ratio"]),
        (dict(threshold=-1.0), ["threshold"]),
        (dict(levels=0), ["levels"]),
        (dict(levels=128), ["levels"]),
        (dict(block_size=0), ["block_size"]),
        (dict(sparsifier="topk", unbiased=True), ["sparsifier=randomk"]),
    ],
)
def test_refused_configs_say_why(params, words):
    with pytest.raises(ValueError) as e:
        codec("pipeline", **params)
    assert all(w in str(e.value) for w in words), e.value


def test_an_unknown_stage_in_text_is_a_clear_value_error():
    with pytest.raises(ValueError, match="unknown quantizer 'nf4'; available: "):
        Codec.parse("pipeline:quantizer=nf4")


# --- bits -------------------------------------------------------------------------------

BIG = ModelSpec.flat(100_000)


def bits_per_entry(c: Codec, spec: ModelSpec = BIG) -> float:
    return 8 * len(c.encoder(spec).encode(update(7, spec))) / spec.size


def test_top_k_with_sign_values_costs_a_quarter_of_top_k():
    plain = bits_per_entry(codec("topk", ratio=0.01))
    signed = bits_per_entry(codec("pipeline", sparsifier="topk", ratio=0.01, quantizer="sign"))
    assert signed < 0.12 < 0.35 < plain
    assert signed < plain / 4


def test_pipeline_top_k_with_fp32_values_costs_what_top_k_does():
    """The same positions and values; the pipeline leaves out top-k's u32 count."""
    plain = codec("topk", ratio=0.01).encoder(BIG).encode(update(7, BIG))
    piped = codec("pipeline", ratio=0.01, quantizer="fp32").encoder(BIG).encode(update(7, BIG))
    assert len(piped) == len(plain) - 4


def test_more_levels_cost_more_bits_and_err_less():
    x = update(8, BIG)
    results = []
    for levels in (1, 4, 32):
        c = pipeline("none", "qsgd", levels=levels, block_size=256)
        payload = c.encoder(BIG).encode(x)
        (out,) = c.decoder(BIG).decode(payload)
        results.append((len(payload), float(np.linalg.norm(out - x[0]))))
    assert results == sorted(results, key=lambda r: r[0]) == sorted(results, key=lambda r: -r[1])


# --- the shorter of packing and range coding --------------------------------------------


def _alone_lengths_of_levels(levels: np.ndarray) -> tuple[int, int]:
    largest = int(np.abs(levels).max()) if levels.size else 0
    packed, ranged = PayloadWriter(), PayloadWriter()
    packed.struct("B", largest)
    packed.array(pack_levels(levels, largest))
    ranged.struct("B", largest)
    entropy.encode_symbols(levels.astype(np.int32) + largest, 2 * largest + 1, ranged)
    return packed.nbytes, ranged.nbytes


def _read(out: PayloadWriter) -> PayloadReader:
    return PayloadReader(memoryview(b"".join(bytes(c) for c in out.chunks)))


LEVEL_CASES = {
    "empty": np.zeros(0, np.int8),
    "zeros": np.zeros(100, np.int8),
    "short uniform": np.int8([3, -2, 1, 0, -3]),
    "skewed ternary": np.random.default_rng(0).choice([-1, 0, 1], 20_000, p=[0.05, 0.9, 0.05]),
    "uniform 255": np.random.default_rng(1).integers(-127, 128, 20_000),
    "bell 255": np.clip(np.rint(np.random.default_rng(2).standard_normal(20_000) * 30), -127, 127),
}


@pytest.mark.parametrize("name", LEVEL_CASES)
def test_levels_cost_the_shorter_coding_plus_the_tag(name):
    levels = LEVEL_CASES[name].astype(np.int8)
    out = PayloadWriter()
    encode_levels(levels, out)
    assert out.nbytes == 1 + min(_alone_lengths_of_levels(levels))
    assert np.array_equal(decode_levels(_read(out), levels.size, 127), levels)


def test_each_coding_wins_somewhere():
    packed, ranged = _alone_lengths_of_levels(LEVEL_CASES["skewed ternary"].astype(np.int8))
    assert ranged < packed / 2
    packed, ranged = _alone_lengths_of_levels(LEVEL_CASES["uniform 255"].astype(np.int8))
    assert packed < ranged


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 13, 10_000])
def test_signs_cost_the_shorter_coding_plus_the_tag(rate, n):
    negative = np.random.default_rng(n).random(n) < rate
    out, ranged = PayloadWriter(), PayloadWriter()
    bits = encode_signs(negative, out)
    entropy.encode_bit_vectors([(np.packbits(negative), n)], ranged)
    assert out.nbytes == 1 + min(-(-n // 8), ranged.nbytes)
    assert np.array_equal(np.unpackbits(decode_signs(_read(out), n), count=n).astype(bool), negative)
    assert np.array_equal(bits, np.packbits(negative))


def test_a_level_beyond_the_limit_or_an_unknown_tag_is_refused():
    out = PayloadWriter()
    encode_levels(np.int8([5, -5, 0]), out)
    with pytest.raises(PayloadError, match="beyond"):
        decode_levels(_read(out), 3, 4)
    with pytest.raises(PayloadError, match="tag"):
        decode_levels(PayloadReader(memoryview(b"\x07\x01")), 3, 4)


def test_a_forged_threshold_count_is_refused():
    c = pipeline("threshold", "fp32")
    payload = c.encoder(SPEC).encode(update(0))
    body = b"\xff\xff\xff\x7f" + payload[HEADER_BYTES + 4 :]
    with pytest.raises(PayloadError, match="kept entries"):
        c.decoder(SPEC).decode(forge(payload, body))


# --- unbiasedness -----------------------------------------------------------------------


def top_k(x: np.ndarray, ratio: float) -> np.ndarray:
    kept = np.zeros_like(x, dtype=np.float64)
    s = np.argsort(-np.abs(x), kind="stable")[: kept_count(ratio, x.size)]
    kept[s] = x[s]
    return kept


def test_qsgd_is_unbiased_given_a_top_k_support():
    c = pipeline("topk", "qsgd", ratio=0.25, levels=1, block_size=128)
    check = bias_check(decode_many(c, 1_500), top_k(X, 0.25))
    assert check.unbiased, check


@pytest.mark.parametrize("quantizer", ["sign", "blockwise"])
def test_negative_control_biased_quantizers_on_the_support_fail_the_check(quantizer):
    c = pipeline("topk", quantizer, ratio=0.25, block_size=128)
    assert not bias_check(decode_many(c, 50), top_k(X, 0.25)).unbiased


def test_unbiased_random_k_with_qsgd_is_unbiased():
    c = pipeline("randomk", "qsgd", ratio=0.1, unbiased=True, levels=2, block_size=128)
    check = bias_check(decode_many(c, 3_000), X.astype(np.float64))
    assert check.unbiased, check


def test_negative_control_random_k_with_qsgd_unscaled_fails_the_check():
    c = pipeline("randomk", "qsgd", ratio=0.1, levels=2, block_size=128)
    assert not bias_check(decode_many(c, 3_000), X.astype(np.float64)).unbiased


# --- error feedback and a Flower round --------------------------------------------------


def mean_of_rounds(c: Codec, x: list[np.ndarray], rounds: int) -> list[np.ndarray]:
    enc, dec = c.encoder(SPEC), c.decoder(SPEC)
    total = [np.zeros(t.size) for t in SPEC.tensors]
    for _ in range(rounds):
        for tot, o in zip(total, dec.decode(enc.encode(x))):
            tot += o.ravel()
        dec.commit()
        enc.sync(dec.fingerprint)
    return [tot / rounds for tot in total]


def test_error_feedback_delivers_over_rounds_what_one_round_drops():
    """The default wraps the pipeline in error feedback: the mean of what arrives tends to x."""
    x = update(9)
    flat = np.concatenate([xi.ravel() for xi in x])
    with_ef = np.concatenate(mean_of_rounds(codec("pipeline", ratio=0.05), x, 200))
    without = np.concatenate(mean_of_rounds(codec("pipeline", ratio=0.05, error_feedback=False), x, 200))
    assert np.linalg.norm(with_ef - flat) < 0.1 * np.linalg.norm(flat)
    assert np.linalg.norm(without - flat) > 0.5 * np.linalg.norm(flat)


SIZE, NODES = 1_000, 4
FLOWER_TEXT = "pipeline:sparsifier=topk,ratio=0.05,quantizer=qsgd,levels=4,block_size=64"


def make_app() -> ClientApp:
    """Each client pulls w halfway to its own target; b counts rounds."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context) -> Message:
        arrays = msg.content["arrays"]
        target = np.random.default_rng(context.node_config["partition-id"]).standard_normal(SIZE)
        w = arrays["w"].numpy()
        local = ArrayRecord(
            {"w": Array((w - 0.5 * (w - target)).astype(np.float32)), "b": Array(arrays["b"].numpy() + 1)}
        )
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)

    return app


def test_a_pipeline_given_as_text_runs_flower_rounds_in_sync():
    random.seed(0)  # Flower samples nodes with the global `random`
    strategy = Compressed(FedAvg(fraction_evaluate=0.0), codec=FLOWER_TEXT)
    grid = InlineGrid(make_app(), NODES, first_node_id=101)
    initial = ArrayRecord({"w": Array(np.zeros(SIZE, np.float32)), "b": Array(np.zeros(3, np.float32))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=3)
    spec = records.spec_of(result.arrays)
    c = Codec.parse(FLOWER_TEXT)
    for node, context in grid.contexts.items():
        enc = encoder_state.load_encoder(context.state, c, spec, seed=0)
        assert enc.pending_fingerprint == strategy.pool.fingerprint(str(node))
    assert all(t.accepted == NODES and not t.dropped for t in strategy.traffic.values())
    # 5% of the entries, a few bits each: far below fp32's 4 bytes an entry
    assert all(t.uplink_bytes < NODES * SIZE for t in strategy.traffic.values())
    assert np.abs(result.arrays["w"].numpy()).max() > 0
