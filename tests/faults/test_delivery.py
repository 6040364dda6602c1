"""Unlucky deliveries at the Flower boundary: nodes that stop answering, late, replayed and
duplicated replies, nodes that leave the grid and come back."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg
from test_replies import FIRST, NODES, initial, make_app

from flcomp.clients import encoder_state
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed

SUPERLINK = 1
"""The sender id of the error replies the SuperLink makes for a node that does not answer."""


class FaultyGrid(InlineGrid):
    """An InlineGrid whose network misbehaves as a test plans it.

    `dead[r]`: nodes that do not answer in round r (the SuperLink answers for them);
    `away[r]`: nodes that are not connected when round r starts;
    `tamper(r, replies, history)`: the replies round r delivers, given the honest ones and
    every earlier round's honest ones (round → replies).
    """

    def __init__(self, *args, dead=None, away=None, tamper=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dead, self.away, self.tamper = dead or {}, away or {}, tamper
        self.history: dict[int, list[Message]] = {}
        self.round = 0

    def get_node_ids(self):
        return [n for n in super().get_node_ids() if n not in self.away.get(self.round + 1, ())]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if not messages:  # an evaluation round with no evaluating clients
            return []
        self.round = rnd = int(messages[0].content["config"]["server-round"])
        live = [m for m in messages if m.metadata.dst_node_id not in self.dead.get(rnd, ())]
        replies = super().send_and_receive(live)
        for m in messages:
            if m not in live:
                m.metadata.__dict__["_message_id"] = f"lost-{rnd}-{m.metadata.dst_node_id}"
                reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK
                replies.append(reply)
        delivered = self.tamper(rnd, replies, self.history) if self.tamper is not None else replies
        self.history[rnd] = replies
        return delivered


def run(rounds=4, codec="topk:ratio=0.25", downlink=None, **grid_kw):
    random.seed(0)
    strategy = Compressed(FedAvg(fraction_evaluate=0.0), codec=codec, downlink=downlink)
    grid = FaultyGrid(make_app(), NODES, first_node_id=FIRST, **grid_kw)
    arrays = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds).arrays
    return arrays, strategy, grid


def from_node(replies, node):
    return next(r for r in replies if r.metadata.src_node_id == node)


def in_sync(strategy, grid, codec="topk:ratio=0.25"):
    """Every client's encoder settles against its decoder at the next instruction."""
    for node, context in grid.contexts.items():
        enc = encoder_state.load_encoder(context.state, Codec.parse(codec), records.spec_of(initial()), 0)
        if str(node) in strategy.pool.decoders:
            assert strategy.pool.fingerprint(str(node)) in (enc.fingerprint, enc.pending_fingerprint)


@pytest.mark.parametrize("downlink", [None, "fp16"])
def test_nodes_that_stop_answering_are_dropped_by_their_own_ids(downlink):
    _, strategy, grid = run(dead={2: {102, 104}}, downlink=downlink)
    assert set(strategy.traffic[2].dropped) == {102, 104}
    assert all("node unavailable" in r for r in strategy.traffic[2].dropped.values())
    assert SUPERLINK not in strategy.traffic[2].dropped
    # back in round 3, each rejoins at once: a key frame of the replica, not one more lost round
    assert strategy.traffic[3].accepted == NODES and not strategy.traffic[3].dropped
    in_sync(strategy, grid)


def late(node, by_rounds=1):
    """`node`'s reply arrives `by_rounds` rounds late, in place of its fresh one."""

    def tamper(rnd, replies, history):
        if rnd <= by_rounds:
            return [r for r in replies if r.metadata.src_node_id != node]
        old = from_node(history[rnd - by_rounds], node)
        return [r for r in replies if r.metadata.src_node_id != node] + [old]

    return tamper


def test_a_late_reply_is_ignored_and_the_client_resynchronises():
    _, strategy, grid = run(tamper=late(103))
    for rnd in (2, 3, 4):
        assert strategy.traffic[rnd].dropped == {103: "no reply"}
        assert strategy.traffic[rnd].accepted == NODES - 1
    in_sync(strategy, grid)


def relabelled(node, from_round, into_round):
    """`node`'s reply of `from_round` is delivered in `into_round` as the answer to that round's
    instruction (its reply_to rewritten), in place of the fresh one."""

    def tamper(rnd, replies, history):
        if rnd != into_round:
            return replies
        fresh = from_node(replies, node)
        old = from_node(history[from_round], node)
        old.metadata.__dict__["_reply_to_message_id"] = fresh.metadata.reply_to_message_id
        return [r for r in replies if r is not fresh] + [old]

    return tamper


def test_a_replayed_key_frame_is_refused_whatever_the_decoders_state():
    """Round 1's reply is a key frame (first contact); replayed in round 3 it would reset the
    decoder to round 1's state. Its round tag gives it away."""
    arrays, strategy, grid = run(tamper=relabelled(102, from_round=1, into_round=3))
    assert "answers round 1, not 3" in strategy.traffic[3].dropped[102]
    reference, ref_strategy, _ = run(dead={3: {102}})
    np.testing.assert_array_equal(arrays["w"].numpy(), reference["w"].numpy())
    assert strategy.pool.fingerprint("102") == ref_strategy.pool.fingerprint("102")
    in_sync(strategy, grid)


def duplicated(node, rnd_dup):
    def tamper(rnd, replies, history):
        return replies + [from_node(replies, node)] if rnd == rnd_dup else replies

    return tamper


def replayed_later(node, from_round, into_round):
    def tamper(rnd, replies, history):
        return replies + [from_node(history[from_round], node)] if rnd == into_round else replies

    return tamper


@pytest.mark.parametrize(
    "tamper",
    [duplicated(102, 2), replayed_later(102, 1, 3)],
    ids=["a duplicated reply", "a reply replayed beside the fresh one"],
)
def test_an_extra_copy_of_a_reply_changes_nothing(tamper):
    arrays, strategy, _ = run(tamper=tamper)
    clean, clean_strategy, _ = run()
    np.testing.assert_array_equal(arrays["w"].numpy(), clean["w"].numpy())
    assert [t.accepted for t in strategy.traffic.values()] == [NODES] * 4
    assert strategy.pool.fingerprint("102") == clean_strategy.pool.fingerprint("102")


@pytest.mark.parametrize("downlink", [None, "topk:ratio=0.5"])
def test_departed_nodes_are_evicted_and_return_afresh(downlink):
    _, strategy, grid = run(rounds=6, away={3: {104}, 4: {104}}, downlink=downlink)
    assert [t.accepted for t in strategy.traffic.values()] == [4, 4, 3, 3, 4, 4]
    assert not any(t.dropped for t in strategy.traffic.values())
    assert "104" in strategy.pool.decoders  # back since round 5
    in_sync(strategy, grid)


def test_a_departed_nodes_decoder_is_gone_while_it_is_away():
    _, strategy, _ = run(rounds=3, away={3: {104}})
    assert "104" not in strategy.pool.decoders
    assert 104 not in strategy.client_ids.holder.values()
