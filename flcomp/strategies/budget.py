"""Per-client bit budgets: what each client's uplink can carry before the round's deadline.

    budget_k = r_k · (D − t_k)

D is the round's deadline (the channel's `deadline_s`). r_k is client k's uplink rate as
the server can plan it before the round (`LinkModel.planned_qualities`): its link's
large-scale gain (path loss, shadowing) at the band share a cohort of this size gets, and
the fading gain the link exceeds with probability 1 − `outage` (the ε-outage rate). t_k
is the rest of its round as the server knows it: the downlink it is about to receive (its
own bits at its planned downlink rate, latency included; the round's broadcast at the
whole band and the worst listener's planned rate), its compute seconds the last time it
trained, and the uplink's latency. The instruction carries the budget
(`records.BUDGET_BITS`); codecs with a rate knob meet it (`RoundContext.budget_bits`: top-k
and STC keep fewer entries, error feedback keeping what they drop; QSGD uses fewer levels).

A client the server has not heard from yet (it does not know its stable id, so not its
link) gets no budget in its first round. Without a deadline there is no budget.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from flwr.app import Message

from flcomp import keyvalue
from flcomp.channel import ChannelSimulator
from flcomp.channel.loss import airtime
from flcomp.protocol import records
from flcomp.strategies.traffic import RoundTraffic


@dataclass(frozen=True)
class DeadlineBudget:
    """The deadline rule of the module docstring; `parse("deadline:outage=0.05")`."""

    outage: float = 0.1
    """ε, how often a client's planned rate may exceed what its fading allows (Rayleigh: the
    rate at |h|² = −ln(1 − ε)). Lower it when late uploads cost more than smaller ones; at
    0.1 about one upload in ten meets a fade worse than planned and risks the deadline."""

    def __post_init__(self) -> None:
        if not 0 < self.outage < 1:
            raise ValueError(f"the outage probability lies in (0, 1), got {self.outage}")

    def describe(self) -> str:
        return "deadline" if self == DeadlineBudget() else f"deadline:outage={self.outage}"

    @classmethod
    def parse(cls, text: str) -> DeadlineBudget:
        name, params = keyvalue.split(text, "budget")
        if name != "deadline":
            raise ValueError(f"unknown budget policy {name!r}; the one policy is 'deadline'")
        return cls(**keyvalue.typed(params, cls))

    def budgets(
        self,
        network: ChannelSimulator,
        server_round: int,
        downlink_bits: dict[int, int],
        compute_s: dict[int, float],
        broadcast_bits: int = 0,
        listeners: frozenset[int] = frozenset(),
    ) -> dict[int, float]:
        """Budget bits of each client of the round, keyed by stable client id: `downlink_bits`
        holds each one's own downlink (all of the cohort the server knows), `compute_s` each
        one's last compute seconds (the median of the others' for one that has none yet); the
        `listeners` also wait for the round's broadcast of `broadcast_bits`, planned at the
        whole band and the worst listener's rate, as the channel sends it."""
        if network.deadline_s is None or not downlink_bits:
            return {}
        clients = sorted(downlink_bits)
        link = network.link
        up = link.planned_qualities(server_round, clients, "uplink", self.outage)
        down = link.planned_qualities(server_round, clients, "downlink", self.outage)
        heard = sorted(listeners & set(clients))
        broadcast_s = 0.0
        if broadcast_bits and heard:
            whole = link.planned_qualities(server_round, heard, "downlink", self.outage, shared=False)
            broadcast_s = airtime(broadcast_bits, min(whole.values(), key=lambda q: q.rate_bps))
        typical = statistics.median(compute_s.values()) if compute_s else 0.0
        out = {}
        for c in clients:
            receive = down[c].latency_s + airtime(downlink_bits[c], down[c])
            receive += broadcast_s if c in listeners else 0.0
            rest = receive + compute_s.get(c, typical) + up[c].latency_s
            out[c] = max(0.0, up[c].rate_bps * (network.deadline_s - rest))
        return out

    def instruct(
        self,
        network: ChannelSimulator,
        server_round: int,
        messages: list[Message],
        traffic: RoundTraffic,
        client_of: dict[int, int],
        compute_s: dict[int, float],
    ) -> None:
        """Add to each train instruction of the round (`messages`, with their downlink counted in
        `traffic`) whose node's stable id is known (`client_of`: node → client) its budget, and
        note it in `traffic.budgets`."""
        nodes = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id in client_of]
        downlink = {client_of[n]: 8 * traffic.downlink_bytes_by_node.get(n, 0) for n in nodes}
        listeners = frozenset(client_of[n] for n in nodes if n in traffic.hears_broadcast)
        broadcast = 8 * traffic.broadcast_bytes
        budgets = self.budgets(network, server_round, downlink, compute_s, broadcast, listeners)
        for m in messages:
            client = client_of.get(m.metadata.dst_node_id)
            if client in budgets:
                traffic.budgets[m.metadata.dst_node_id] = budgets[client]
                for record in m.content.config_records.values():
                    record[records.BUDGET_BITS] = budgets[client]
