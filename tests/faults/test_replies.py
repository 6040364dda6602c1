"""Hostile and unlucky replies at the Flower boundary: each is dropped with its reason, and the
round goes on exactly as if that client had failed (honest clients' codec states and the
global model as in that run, never a crash or a NaN model)."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flcomp.clients import compression_mod, encoder_state
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed

SIZE = 32
NODES = 4
FIRST = 101
HOSTILE = 102
CODEC = "topk:ratio=0.25"
"""Lossy with error feedback: a wrongly committed or rolled-back step would show."""


def make_app(*mods, app_fault=None) -> ClientApp:
    """Clients pull w towards a target of their own; `count` is an integer buffer (BatchNorm's
    num_batches_tracked, say) that training increments. `app_fault(node, arrays)` may spoil
    what the ClientApp itself returns."""
    app = ClientApp(mods=[*mods, compression_mod])

    @app.train()
    def train(msg: Message, context) -> Message:
        arrays = msg.content["arrays"]
        target = np.random.default_rng(context.node_config["partition-id"]).standard_normal(SIZE)
        w = arrays["w"].numpy()
        local = {
            "w": (w - 0.5 * (w - target)).astype(np.float32),
            "count": np.asarray(arrays["count"].numpy() + 1),
        }
        if app_fault is not None:
            local = app_fault(context.node_id, local)
        metrics = MetricRecord({"num-examples": 10 + context.node_config["partition-id"]})
        content = RecordDict(
            {"arrays": ArrayRecord({k: Array(v) for k, v in local.items()}), "metrics": metrics}
        )
        return Message(content, reply_to=msg)

    return app


def initial() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros(SIZE, np.float32)), "count": Array(np.zeros((), np.int64))})


def run(app: ClientApp, rounds: int = 3, grid_cls=InlineGrid, **strategy_kw):
    random.seed(0)
    strategy = Compressed(FedAvg(fraction_evaluate=0.0), codec=CODEC, **strategy_kw)
    grid = grid_cls(app, NODES, first_node_id=FIRST)
    result = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds)
    return result.arrays, strategy, grid


def reply_mod(spoil):
    """A mod on the hostile node that spoils its compressed reply with `spoil(reply)`."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if context.node_id == HOSTILE and not reply.has_error():
            spoil(reply)
        return reply

    return mod


def fail(msg, context, call_next):
    """The reference: the hostile node's reply is an error instead."""
    reply = call_next(msg, context)
    if context.node_id == HOSTILE:
        return Message(Error(code=2, reason="failed"), reply_to=msg)
    return reply


def set_metric(key, value):
    def spoil(reply):
        reply.content["metrics"][key] = value

    return spoil


def set_array(key, array):
    def spoil(reply):
        reply.content["arrays"][key] = array

    return spoil


def drop_array(key):
    def spoil(reply):
        del reply.content["arrays"][key]

    return spoil


def huge_fp32_payload(reply):
    """A valid fp32 payload of float32's maximum with the sign of the model: w_global − Δ̂
    overflows once the model has grown (one such round makes it grow)."""
    w = -np.ones(SIZE, np.float32)  # what round 1's aggregate makes of w: Δ̂ = +max drives it negative
    enc = Codec.parse("fp32").encoder(records.spec_of(initial()))
    payload = enc.encode([np.full(SIZE, np.finfo(np.float32).max, np.float32) * -np.sign(w)], key_frame=True)
    reply.content["arrays"][records.PAYLOAD] = Array(
        dtype="uint8", shape=(len(payload),), stype="flcomp/fp32", data=payload
    )


REPLY_FAULTS = {
    "client id NaN": set_metric(records.CLIENT, float("nan")),
    "client id inf": set_metric(records.CLIENT, float("inf")),
    "client id a list": set_metric(records.CLIENT, [1, 2]),
    "client id negative": set_metric(records.CLIENT, -1),
    "client id fractional": set_metric(records.CLIENT, 2.5),
    "num-examples NaN": set_metric("num-examples", float("nan")),
    "num-examples negative": set_metric("num-examples", -3),
    "num-examples inf": set_metric("num-examples", float("inf")),
    "num-examples a list": set_metric("num-examples", [1.0]),
    "an extra metric": set_metric("surprise", 1.0),
    "no round tag": lambda reply: reply.content["metrics"].pop(records.ROUND),
    "the last round's tag": lambda reply: set_metric(
        records.ROUND, reply.content["metrics"][records.ROUND] - 1
    )(reply),
    "integer buffer misshapen": set_array("count", Array(np.zeros(3, np.int64))),
    "integer buffer a float64 NaN": set_array("count", Array(np.array(np.nan))),
    "integer buffer missing": drop_array("count"),
    "an extra array": set_array("extra", Array(np.zeros(2, np.int64))),
    "no payload": drop_array(records.PAYLOAD),
}


@pytest.fixture(scope="module")
def reference():
    """The run in which the hostile node fails every round."""
    arrays, strategy, grid = run(make_app(fail))
    return arrays, strategy, grid


def assert_as_if_failed(result, reference, reason_part):
    arrays, strategy, grid = result
    ref_arrays, ref_strategy, ref_grid = reference
    for k in ("w", "count"):
        np.testing.assert_array_equal(arrays[k].numpy(), ref_arrays[k].numpy())
    assert arrays["count"].dtype == "int64"
    for node in range(FIRST, FIRST + NODES):
        if node != HOSTILE:
            assert strategy.pool.fingerprint(str(node)) == ref_strategy.pool.fingerprint(str(node))
    for traffic in strategy.traffic.values():
        assert list(traffic.dropped) == [HOSTILE], traffic.dropped
        assert reason_part in traffic.dropped[HOSTILE], traffic.dropped[HOSTILE]
        assert traffic.accepted == NODES - 1


REASONS = {
    "an extra metric": "metrics differ",
    "no round tag": "answers round None",
    "the last round's tag": "stale or replayed",
    "integer buffer misshapen": "array 'count' is int64[3]",
    "integer buffer a float64 NaN": "array 'count' is float64[]",
    "an extra array": "arrays the model does not upload",
    "no payload": "no flcomp payload",
    "integer buffer missing": "lacks the non-float array",
}


@pytest.mark.parametrize("fault", list(REPLY_FAULTS))
def test_a_hostile_reply_is_dropped_as_if_the_client_had_failed(fault, reference, caplog):
    with caplog.at_level(logging.WARNING):
        result = run(make_app(reply_mod(REPLY_FAULTS[fault])))
    reason = REASONS.get(fault, fault.split(" ")[0])
    assert_as_if_failed(result, reference, reason)
    assert f"client {HOSTILE} dropped" in caplog.text


@pytest.mark.parametrize(
    "spoil",
    [
        lambda node, local: local | {"w": np.array(1.0, np.float32)},
        lambda node, local: local | {"w": np.ones(1, np.float32)},
        lambda node, local: local | {"w": np.full(SIZE, np.nan, np.float32)},
        lambda node, local: {"count": local["count"]},
    ],
    ids=["a scalar weight", "a (1,)-shaped weight", "NaN weights", "no weight"],
)
def test_a_client_app_that_returns_a_wrong_model_is_refused_on_the_client(spoil, reference):
    arrays, strategy, grid = run(
        make_app(app_fault=lambda node, local: spoil(node, local) if node == HOSTILE else local)
    )
    assert_as_if_failed((arrays, strategy, grid), reference, "client error")
    # the hostile client's encoder is still in step with its decoder: it rolled its steps back
    enc = encoder_state.load_encoder(
        grid.contexts[HOSTILE].state, Codec.parse(CODEC), records.spec_of(arrays), 0
    )
    assert enc.fingerprint == strategy.pool.fingerprint(str(HOSTILE))


def test_a_payload_that_takes_the_model_to_inf_is_refused():
    random.seed(0)
    strategy = Compressed(FedAvg(fraction_evaluate=0.0), codec="fp32")
    grid = InlineGrid(make_app(reply_mod(huge_fp32_payload)), NODES, first_node_id=FIRST)
    arrays = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=3).arrays
    assert np.isfinite(arrays["w"].numpy()).all()
    assert not strategy.traffic[1].dropped  # finite, if absurd: w − Δ̂ = -max
    for rnd in (2, 3):
        assert strategy.traffic[rnd].dropped == {HOSTILE: "the decoded update takes the model to NaN or Inf"}


def test_a_round_whose_clients_all_weigh_zero_keeps_the_model():
    arrays, strategy, _ = run(make_app(set_all_weights_zero), rounds=2)
    assert len(arrays) == 0  # no round produced an aggregate: the model is the initial one
    assert all(t.accepted == NODES for t in strategy.traffic.values())


def set_all_weights_zero(msg, context, call_next):
    reply = call_next(msg, context)
    reply.content["metrics"]["num-examples"] = 0
    return reply


def claim_id_zero(from_round: int):
    """The hostile node (partition 1) claims partition 0's id from round `from_round` on."""

    def mod(msg, context, call_next):
        reply = call_next(msg, context)
        if context.node_id == HOSTILE and msg.content["config"]["server-round"] >= from_round:
            reply.content["metrics"][records.CLIENT] = 0
        return reply

    return mod


def test_a_claimed_id_under_a_channel_does_not_take_the_victims_link():
    arrays, strategy, _ = run(make_app(claim_id_zero(from_round=2)), channel="urban-sub6")
    assert set(strategy.traffic[1].channel.clients) == {0, 1, 2, 3}
    for rnd in (2, 3):
        assert list(strategy.traffic[rnd].dropped) == [HOSTILE]
        assert "held by node 101" in strategy.traffic[rnd].dropped[HOSTILE]
        assert set(strategy.traffic[rnd].channel.clients) == {0, 2, 3}  # the victim's link is its own
    assert np.isfinite(arrays["w"].numpy()).all()


def test_two_nodes_claiming_one_free_id_are_both_refused():
    """Nothing tells which of them is partition 0 (two SuperNodes configured alike, say)."""
    _, strategy, _ = run(make_app(claim_id_zero(from_round=1)))
    for traffic in strategy.traffic.values():
        assert set(traffic.dropped) == {FIRST, HOSTILE}
        assert all("claimed by 2 nodes" in reason for reason in traffic.dropped.values())


def test_num_examples_nan_under_a_channel_is_refused():
    arrays, strategy, _ = run(
        make_app(reply_mod(set_metric("num-examples", float("nan")))), channel="urban-sub6"
    )
    assert all("num-examples" in t.dropped[HOSTILE] for t in strategy.traffic.values())
    assert np.isfinite(arrays["w"].numpy()).all()
