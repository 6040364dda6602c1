"""Bit budgets from the channel (`Compressed(..., budget="deadline")`): each known client's
instruction carries what its link carries by the deadline, its top-k payload fits it, and the
round's uploads arrive where the codec's own rate misses the deadline (top-k by its entries, a ladder
by its rung)."""

from __future__ import annotations

import pytest
from test_flower_integration import NODES, fedavg, make_app, run

from flcomp.channel import Channel
from flcomp.protocol import records
from flcomp.strategies import Compressed
from flcomp.strategies.budget import DeadlineBudget

TIGHT = "fixed:uplink_bps=20000,deadline_s=0.05"
"""The codec's own 688-byte round (4 clients) misses the 50 ms deadline at 20 kbit/s."""


@pytest.mark.parametrize("codec", ["topk:ratio=0.5", "ladder:rungs=fp32/topk:ratio=0.5"])
def test_known_clients_get_budgets_that_their_payloads_fit_and_the_uploads_arrive(codec):
    budgeted = Compressed(fedavg(), codec=codec, channel=TIGHT, budget="deadline")
    plain = Compressed(fedavg(), codec=codec, channel=TIGHT)
    run(budgeted, make_app(), rounds=4)
    run(plain, make_app(), rounds=4)
    assert budgeted.traffic[1].budgets == {}, "nothing known of the clients before they answer"
    for t in (2, 3, 4):
        traffic = budgeted.traffic[t]
        assert sorted(traffic.budgets) == [101, 102, 103, 104]
        # 20 kbit/s × (50 ms − the downlink at 10 Mbit/s): about a kilobit each
        assert all(900 < b < 1000 for b in traffic.budgets.values())
        assert traffic.uplink_bytes <= sum(traffic.budgets.values()) / 8
        assert traffic.channel.delivered == NODES
        assert plain.traffic[t].channel.delivered == 0
        row = traffic.row()
        assert row["budget_bits"] == sum(traffic.budgets.values()) and row["clients_over_budget"] == 0
    assert "budget_bits" not in budgeted.traffic[1].row() and "budget_bits" not in plain.traffic[2].row()
    assert budgeted.traffic[2].to_metrics()["flcomp.budget-bits"] == budgeted.traffic[2].budget_bits


def test_the_budget_rides_in_the_instruction(monkeypatch):
    seen = []

    def spy(msg, context, call_next):
        seen.append(msg.content["config"].get(records.BUDGET_BITS))
        return call_next(msg, context)

    run(
        Compressed(fedavg(), codec="stc:ratio=0.5", channel=TIGHT, budget="deadline"), make_app(spy), rounds=2
    )
    assert seen[:NODES] == [None] * NODES and all(900 < b < 1000 for b in seen[NODES:])


def test_a_bad_budget_in_an_instruction_is_an_error_reply_not_a_crash():
    def corrupt(msg, context, call_next):
        msg.content["config"][records.BUDGET_BITS] = -5.0
        return call_next(msg, context)

    strategy = Compressed(fedavg(), codec="topk", channel=TIGHT, budget="deadline")
    run(strategy, make_app(corrupt), rounds=1)
    assert all("bit budget" in why for why in strategy.traffic[1].dropped.values())


def test_the_planned_rate_is_the_outage_rate_of_the_cells_fading():
    network = Channel.parse("urban-sub6:deadline_s=1").simulator(seed=0)
    strict, loose = DeadlineBudget(outage=0.01), DeadlineBudget(outage=0.5)
    bits = {c: 0 for c in range(10)}
    tight, wide = strict.budgets(network, 1, bits, {}), loose.budgets(network, 1, bits, {})
    assert all(0 < tight[c] < wide[c] for c in bits)
    # No deadline, no budget; the rest of the round counts against it.
    assert DeadlineBudget().budgets(Channel.parse("urban-sub6").simulator(0), 1, bits, {}) == {}
    later = DeadlineBudget().budgets(network, 1, bits, {c: 0.5 for c in bits})
    assert all(later[c] < DeadlineBudget().budgets(network, 1, bits, {})[c] for c in bits)


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(budget="deadline"), "channel with a deadline"),
        (dict(budget="deadline", channel="urban-sub6"), "channel with a deadline"),
        (dict(budget="deadline:outage=1.5", channel=TIGHT), "outage"),
        (dict(budget="deadline:deadline_s=1", channel=TIGHT), "one deadline"),
        (dict(budget="deadline:deadline_s=0"), "positive number of seconds"),
        (dict(budget="fastest", channel=TIGHT), "unknown budget policy"),
    ],
)
def test_a_budget_without_a_deadline_or_a_bad_policy_is_refused(kwargs, says):
    with pytest.raises(ValueError, match=says):
        Compressed(fedavg(), codec="topk", **kwargs)
