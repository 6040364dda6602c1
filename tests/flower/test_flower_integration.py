"""The client mod and the strategy wrapper, driven in-process through `InlineGrid` (no Ray)."""

import logging
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from flcomp.clients import compression_mod, encoder_state
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed

SIZE = 64
NODES = 4


def make_app(*mods, fail_node: int | None = None) -> ClientApp:
    """A ClientApp whose 'training' pulls w halfway to a per-client target; b counts rounds."""
    app = ClientApp(mods=[*mods, compression_mod])

    @app.train()
    def train(msg: Message, context) -> Message:
        if context.node_id == fail_node:
            raise RuntimeError("this client's training crashed")
        arrays = msg.content["arrays"]
        target = np.random.default_rng(context.node_config["partition-id"]).standard_normal(SIZE)
        w = arrays["w"].numpy()
        local = ArrayRecord(
            {"w": Array((w - 0.5 * (w - target)).astype(np.float32)), "b": Array(arrays["b"].numpy() + 1)}
        )
        metrics = MetricRecord({"num-examples": 10 + context.node_config["partition-id"]})
        return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)

    return app


def initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(SIZE, np.float32)), "b": Array(np.zeros(3, np.float32))})


def run(strategy, app: ClientApp, rounds: int = 3, seed: int = 0):
    random.seed(seed)  # Flower samples nodes with the global `random`
    grid = InlineGrid(app, NODES, first_node_id=101)
    return strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds), grid


def fedavg(**kw):
    return FedAvg(fraction_evaluate=0.0, **kw)


def corrupt_mod(node_id: int):
    """A mod that flips a byte of one client's payload on its way out."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if context.node_id == node_id:
            record = reply.content["arrays"]
            data = bytearray(record[records.PAYLOAD].data)
            data[-1] ^= 0xFF
            record[records.PAYLOAD] = Array(
                dtype="uint8", shape=(len(data),), stype="flcomp/topk", data=bytes(data)
            )
        return reply

    return mod


def test_lossless_codec_matches_plain_fedavg():
    plain, _ = run(fedavg(), make_app())
    wrapped, _ = run(Compressed(fedavg(), codec="fp32"), make_app())
    np.testing.assert_allclose(wrapped.arrays["w"].numpy(), plain.arrays["w"].numpy(), atol=1e-6)
    # b is averaged too: the wrapper sums in client order, FedAvg in arrival order
    np.testing.assert_allclose(wrapped.arrays["b"].numpy(), plain.arrays["b"].numpy(), rtol=1e-6)


def test_mod_passes_plain_instructions_through():
    result, grid = run(fedavg(), make_app())
    assert result.arrays["w"].numpy().any()
    assert all(len(context.state) == 0 for context in grid.contexts.values())


@pytest.mark.parametrize("codec", ["topk:ratio=0.1", "qsgd", "scaled_sign", "lag:rule=relative,xi=0.2"])
def test_both_ends_stay_in_sync(codec):
    strategy = Compressed(fedavg(), codec=codec)
    result, grid = run(strategy, make_app(), rounds=4)
    spec = records.spec_of(result.arrays)
    c = Codec.parse(codec)
    for node, context in grid.contexts.items():
        enc = encoder_state.load_encoder(context.state, c, spec, seed=0)
        assert enc.pending_fingerprint == strategy.pool.fingerprint(str(node))
    assert all(t.accepted == NODES and not t.dropped for t in strategy.traffic.values())


def test_uplink_bytes_are_summed_payload_lengths():
    strategy = Compressed(fedavg(), codec="topk:ratio=0.25")
    result, _ = run(strategy, make_app(), rounds=2)
    for rnd, metrics in result.train_metrics_clientapp.items():
        assert metrics[records.UPLINK_BYTES] == strategy.traffic[rnd].uplink_bytes
        # FedAvg would have averaged it; the sum is about NODES times one payload
        assert metrics[records.UPLINK_BYTES] > 3 * 17 * NODES
        assert metrics["flcomp.clients-accepted"] == NODES


def test_a_malformed_payload_drops_that_client_only(caplog):
    strategy = Compressed(fedavg(), codec="topk:ratio=0.1")
    with caplog.at_level(logging.WARNING):
        result, _ = run(strategy, make_app(corrupt_mod(102)), rounds=3)
    for traffic in strategy.traffic.values():
        assert list(traffic.dropped) == [102] and "malformed payload" in traffic.dropped[102]
        assert traffic.accepted == NODES - 1
    assert "client 102 dropped" in caplog.text
    assert np.isfinite(result.arrays["w"].numpy()).all()


def test_a_failing_client_is_dropped_and_the_run_goes_on():
    strategy = Compressed(fedavg(), codec="scaled_sign")
    result, grid = run(strategy, make_app(fail_node=103), rounds=3)
    for traffic in strategy.traffic.values():
        assert list(traffic.dropped) == [103] and "crashed" in traffic.dropped[103]
    assert result.arrays["w"].numpy().any()


def test_runs_are_reproducible_to_the_bit():
    def once():
        strategy = Compressed(fedavg(fraction_train=0.5), codec="qsgd:levels=4", seed=3)
        result, _ = run(strategy, make_app(), rounds=3, seed=7)
        return result.arrays["w"].numpy(), [t.uplink_bytes for t in strategy.traffic.values()]

    (w1, b1), (w2, b2) = once(), once()
    assert np.array_equal(w1, w2) and b1 == b2


@pytest.mark.parametrize("inner", [FedAdam, FedProx], ids=["FedAdam", "FedProx"])
def test_composes_with_other_strategies(inner):
    kwargs = {"proximal_mu": 0.1} if inner is FedProx else {}
    strategy = Compressed(inner(fraction_evaluate=0.0, **kwargs), codec="topk:ratio=0.2")
    result, _ = run(strategy, make_app(), rounds=3)
    w = result.arrays["w"].numpy()
    assert np.isfinite(w).all() and w.any()
    assert all(t.accepted == NODES for t in strategy.traffic.values())


def replica_of(context):
    return context.state.array_records["flcomp.replica"]


def test_compressed_downlink_keeps_client_replicas_equal_to_the_servers():
    strategy = Compressed(fedavg(), codec="topk:ratio=0.2", downlink="fp16")
    result, grid = run(strategy, make_app(), rounds=4)
    server = strategy.broadcast.replica
    for context in grid.contexts.values():
        assert context.state.config_records["flcomp.replica.meta"]["version"] == 4
        for k in ("w", "b"):
            np.testing.assert_array_equal(replica_of(context)[k].numpy(), server[k].numpy())
    bytes_per_round = [strategy.traffic[r].downlink_bytes for r in (1, 2, 3, 4)]
    assert bytes_per_round[1] < bytes_per_round[0]  # round 1 sends key frames, then fp16 changes
    assert all(t.accepted == NODES for t in strategy.traffic.values())


def test_stale_replicas_get_key_frames():
    strategy = Compressed(fedavg(fraction_train=0.5), codec="fp32", downlink="qsgd:levels=8")
    run(strategy, make_app(), rounds=5, seed=1)
    assert all(t.accepted == NODES // 2 and not t.dropped for t in strategy.traffic.values())


def test_a_client_that_lost_its_replica_is_dropped_once_then_resynchronised():
    def forget_replica(msg, context, call_next):
        if context.node_id == 101 and msg.content["config"]["server-round"] == 3:
            del context.state["flcomp.replica"]
        return call_next(msg, context)

    strategy = Compressed(fedavg(), codec="fp32", downlink="fp16")
    run(strategy, make_app(forget_replica), rounds=4)
    assert list(strategy.traffic[3].dropped) == [101] and "stale replica" in strategy.traffic[3].dropped[101]
    assert strategy.traffic[4].accepted == NODES


def cohorts(strategy, rounds=5, seed=0, disturb=False):
    """The nodes each round instructs."""
    grid = InlineGrid(make_app(), 8, first_node_id=101)
    random.seed(seed)
    arrays = initial()
    out = []
    for rnd in range(1, rounds + 1):
        if disturb:
            random.random()  # another user of the global `random` (Ray does draw from it)
        messages = strategy.configure_train(rnd, arrays, ConfigRecord(), grid)
        out.append(sorted(m.metadata.dst_node_id for m in messages))
        arrays, _ = strategy.aggregate_train(rnd, grid.send_and_receive(messages))
    return out


def test_every_codec_of_a_comparison_trains_the_same_cohorts():
    first = cohorts(Compressed(fedavg(fraction_train=0.5), codec="fp32", seed=4))
    assert len({tuple(c) for c in first}) > 1  # the cohort changes from round to round
    for codec in ("topk:ratio=0.1", "signxor", "tpc"):
        assert cohorts(Compressed(fedavg(fraction_train=0.5), codec=codec, seed=4), disturb=True) == first
    assert cohorts(Compressed(fedavg(fraction_train=0.5), codec="fp32", seed=5)) != first
