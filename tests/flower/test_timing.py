"""Budgets in deployment (`budget="deadline:deadline_s=D"`, no channel): the server times each
round (`flcomp.strategies.timing.TimedGrid`), measures every upload from the send time the
client reports, and budgets the next round from it, r_k · (D − t_k)."""

from __future__ import annotations

import time

import pytest
from test_flower_integration import NODES, fedavg, initial, make_app

from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed
from flcomp.strategies.timing import MeasuredUpload, TimedGrid

DELAY_S = {101: 0.1, 102: 0.2, 103: 0.3, 104: 0.4}
"""Each node's upload: its reply reaches the SuperLink this long after the ClientApp returns."""


class DelayingGrid(InlineGrid):
    """An InlineGrid with Flower's push and pull: a reply becomes pullable DELAY_S after its
    client's ClientApp returned."""

    def __init__(self, app) -> None:
        super().__init__(app, NODES, first_node_id=101)
        self.ready: dict[str, tuple[float, object]] = {}

    def push_messages(self, messages):
        ids = []
        for message in messages:
            (reply,) = super().send_and_receive([message])
            ids.append(message.metadata.message_id)
            self.ready[ids[-1]] = (time.time() + DELAY_S[message.metadata.dst_node_id], reply)
        return ids

    def pull_messages(self, message_ids):
        now = time.time()
        due = [i for i in message_ids if i in self.ready and self.ready[i][0] <= now]
        return [self.ready.pop(i)[1] for i in due]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("the budget's rounds go through TimedGrid's pulls")


def run(strategy: Compressed, rounds: int, *mods) -> None:
    strategy.start(grid=DelayingGrid(make_app(*mods)), initial_arrays=initial(), num_rounds=rounds)


def test_each_upload_is_measured_and_the_next_round_budgeted_from_it():
    deadline = 0.3
    strategy = Compressed(fedavg(), codec="topk:ratio=0.5", budget=f"deadline:deadline_s={deadline}")
    run(strategy, 3)
    first = strategy.traffic[1]
    assert first.budgets == {} and sorted(first.measured) == sorted(DELAY_S)
    for t in (1, 2):
        measured, nxt = strategy.traffic[t].measured, strategy.traffic[t + 1]
        for node, m in measured.items():
            # The reply left after its send time and was pullable DELAY_S later.
            assert DELAY_S[node] <= m.upload_s <= m.round_s < DELAY_S[node] + 2
            assert m.bits == 8 * strategy.traffic[t].uploads[node][1]
            assert nxt.budgets[node] == pytest.approx(max(0.0, m.rate_bps * (deadline - m.other_s)))
        # A slow upload gets less of the deadline, and each payload fits its budget.
        assert nxt.budgets[104] < nxt.budgets[101]
        assert all(8 * nxt.uploads[n][1] <= nxt.budgets[n] for n in nxt.uploads) and nxt.over_budget == 0
    assert strategy.traffic[2].uploads[104][1] < first.uploads[104][1], "the slowest client's budget binds"
    rows = strategy.traffic[2].client_rows()
    assert all(r["measured_uplink_bps"] == strategy.traffic[2].measured[r["node"]].rate_bps for r in rows)


def test_a_send_time_that_lies_is_clamped_into_the_round():
    def lie(msg, context, call_next):
        reply = call_next(msg, context)
        if context.node_id == 101:
            reply.content["metrics"][records.SENT_AT] = 0.0  # the epoch: an "upload" of decades
        if context.node_id == 102:
            reply.content["metrics"][records.SENT_AT] = time.time() + 1e6  # from the future
        return reply

    strategy = Compressed(fedavg(), codec="topk:ratio=0.5", budget="deadline:deadline_s=5")
    run(strategy, 2, lie)
    measured = strategy.traffic[1].measured
    assert measured[101].upload_s == measured[101].round_s
    assert measured[102].upload_s == 0.05  # the poll interval
    assert all(b > 0 for b in strategy.traffic[2].budgets.values())


def test_without_a_send_time_nothing_is_measured_and_no_budget_is_given():
    def strip(msg, context, call_next):
        reply = call_next(msg, context)
        del reply.content["metrics"][records.SENT_AT]
        return reply

    strategy = Compressed(fedavg(), codec="topk:ratio=0.5", budget="deadline:deadline_s=5")
    run(strategy, 2, strip)
    assert strategy.traffic[1].measured == {} and strategy.traffic[2].budgets == {}


def test_timed_grid_refuses_a_bad_poll_interval_and_a_measured_upload_reads_as_documented():
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="poll interval"):
            TimedGrid(DelayingGrid(make_app()), poll_s=bad)
    m = MeasuredUpload(bits=8000, upload_s=0.5, round_s=2.0)
    assert m.rate_bps == 16000 and m.other_s == 1.5


def test_a_simulation_takes_its_deadline_from_the_channel_not_the_budget():
    from flcomp.sim import RunConfig

    with pytest.raises(ValueError, match="deployments"):
        RunConfig(channel="urban-sub6:deadline_s=1", budget="deadline:deadline_s=1")
    assert RunConfig(channel="urban-sub6:deadline_s=1", budget="deadline").budget == "deadline"
