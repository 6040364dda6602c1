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

In deployment there is no channel to plan from: the deadline is the policy's own
`deadline_s`, and each client's budget comes from what the server measured of its last
round (`flcomp.strategies.timing.MeasuredUpload`): its upload's throughput r_k, and the rest
of that round t_k (delivery of the instruction, start-up, training, encoding), assumed to
repeat. Simulation plans the downlink and compute; deployment measures their sum.

A client the server has not heard from yet (it does not know its stable id, so not its
link or its last round) gets no budget in its first round. Without a deadline there is no
budget.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields

from flwr.app import Message

from flcomp import keyvalue
from flcomp.channel import Channel, ChannelSimulator
from flcomp.channel.loss import airtime
from flcomp.protocol import records
from flcomp.strategies.timing import MeasuredUpload
from flcomp.strategies.traffic import RoundTraffic


@dataclass(frozen=True)
class DeadlineBudget:
    """The deadline rule of the module docstring; `parse("deadline:outage=0.05")`."""

    outage: float = 0.1
    """ε, how often a client's planned rate may exceed what its fading allows (Rayleigh: the
    rate at |h|² = −ln(1 − ε)). Lower it when late uploads cost more than smaller ones; at
    0.1 about one upload in ten meets a fade worse than planned and risks the deadline."""

    deadline_s: float | None = None
    """D in deployments, seconds: the round's deadline, where no simulated channel sets one and
    budgets come from measured uploads (`measured_budgets`). None with a simulated channel:
    its `deadline_s` is D."""

    def __post_init__(self) -> None:
        if not 0 < self.outage < 1:
            raise ValueError(f"the outage probability lies in (0, 1), got {self.outage}")
        if self.deadline_s is not None and not 0 < self.deadline_s < math.inf:
            raise ValueError(f"a deadline is a positive number of seconds, got {self.deadline_s}")

    def check_deadline(self, channel: Channel | None) -> None:
        """ValueError unless there is one deadline: `channel`'s, or (no channel) `deadline_s`."""
        simulated = channel is not None and channel.config.deadline_s is not None
        if simulated == (self.deadline_s is not None):
            raise ValueError(
                "a bit budget needs one deadline: a channel with a deadline (deadline_s) to plan "
                "it from, or, in deployment without a channel, its own (deadline:deadline_s=...)"
            )

    def describe(self) -> str:
        default = DeadlineBudget()
        changed = [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
        params = [f"{name}={getattr(self, name)}" for name in changed]
        return "deadline" + (":" + ",".join(params) if params else "")

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

    def measured_budgets(self, measured: dict[int, MeasuredUpload]) -> dict[int, float]:
        """Budget bits of each measured client (keyed by stable client id), from its last round:
        r_k · (D − t_k) with r_k its upload's rate and t_k the rest of that round."""
        return {c: max(0.0, m.rate_bps * (self.deadline_s - m.other_s)) for c, m in sorted(measured.items())}

    def instruct(
        self,
        network: ChannelSimulator | None,
        server_round: int,
        messages: list[Message],
        traffic: RoundTraffic,
        client_of: dict[int, int],
        compute_s: dict[int, float],
        measured: dict[int, MeasuredUpload],
    ) -> None:
        """Add to each train instruction of the round (`messages`, with their downlink counted in
        `traffic`) whose node's stable id is known (`client_of`: node → client) its budget, and
        note it in `traffic.budgets`: planned on `network`, or without one from the clients'
        `measured` last rounds (client id → upload)."""
        nodes = [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id in client_of]
        if network is None:
            cohort = {client_of[n] for n in nodes}
            budgets = self.measured_budgets({c: m for c, m in measured.items() if c in cohort})
        else:
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
