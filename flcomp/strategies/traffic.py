"""`RoundTraffic`: what crossed the links in one training round, and how it is reported.

One table of fields makes both the round's metrics (`to_metrics`) and its rounds.csv
fields (`row`), so they cannot drift apart. Everything is summed over the round (not
averaged like the inner strategy's client metrics), but for the codec state's sizes:

    round metric                 rounds.csv column     what
    flcomp.uplink-bytes          uplink_bytes          payload bytes received
    flcomp.downlink-bytes        downlink_bytes        model arrays and side information sent
                                                       (a broadcast counted once)
    flcomp.clients-accepted      clients_accepted      updates aggregated
    flcomp.clients-dropped       clients_dropped       updates not aggregated
    flcomp.encode-seconds        encode_seconds        encoding time the accepted clients report
    codec state after the round (array bytes, `nbytes`):
    flcomp.server-state-bytes    server_state_bytes    every client's decoder state the server holds
    flcomp.clients-held          clients_held          clients whose decoder state it holds
    flcomp.downlink-state-bytes  downlink_state_bytes  the broadcast's replica, encoder and mirror
                                                       (once for all clients; 0 without a downlink)
    flcomp.client-state-bytes    client_state_bytes    a client's own state (encoder; replica and
                                                       downlink decoder), mean over the accepted
    flcomp.client-state-max      client_state_max      the largest of them
    health of error feedback (`flcomp.strategies.health`; empty where it does not apply):
    flcomp.uplink-contraction    uplink_contraction    δ of the decoded updates Δ̂, median over
                                                       the accepted clients (empty without any)
    flcomp.downlink-contraction  downlink_contraction  δ of the vector the broadcast compressed
                                                       (its change plus the server's memory;
                                                       empty without a downlink payload)
    flcomp.server-memory-norm    server_memory_norm    ‖e‖₂ of the server's error memory after
                                                       the round's payload (empty without
                                                       downlink error feedback)
    flcomp.server-memory-ratio   server_memory_ratio   ‖e‖₂ / ‖decoded change‖₂ (empty as well
                                                       when the decoded change is zero)
    bit budgets (`flcomp.strategies.budget`; empty without):
    flcomp.budget-bits           budget_bits           the instructed clients' budgets, summed
    flcomp.clients-over-budget   clients_over_budget   budgeted clients whose payload was longer
    with a channel:
    flcomp.virtual-seconds       virtual_seconds       the round on the virtual clock
    flcomp.clients-delivered     clients_delivered     updates that arrived in time
    flcomp.clients-lost          clients_lost          updates lost or late
    flcomp.uplink-airtime-s      uplink_airtime_s      airtime summed over the clients
    flcomp.downlink-airtime-s    downlink_airtime_s    airtime summed over the clients (a
                                                       broadcast's once)
    flcomp.energy-j              energy_j              the clients' energy
    flcomp.downlink-energy-j     downlink_energy_j     the server's transmit energy
    codec stats:
    flcomp.stat.<name>           stat_<name>           the uplink encoders' `Step.stats`, over
                                                       the accepted clients
    flcomp.downlink-stat.<name>  downlink_stat_<name>  the broadcast encoder's, in rounds where
                                                       it encoded a payload

The stat columns come last in rounds.csv, one for each name the codecs declare
(`Compressor.stats`, `stat_columns`).

Per client (`client_rows`, a simulation's clients.csv): one row per instructed node and
round, with its client id, its own downlink bytes (under broadcast delivery, besides the
broadcast), its payload's bytes, its bit budget, "accepted" or why it was dropped, and
with a channel its round on the virtual clock (delivered, downlink_s, compute_s, uplink_s,
uplink_airtime_s, energy_j: `flcomp.channel.ClientOutcome`); where the server measures
uploads (a budget in deployment), the measured upload and round seconds and the rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np

from flcomp.channel import RoundReport
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.strategies.timing import MeasuredUpload

log = logging.getLogger(__name__)

STAT_COLUMN = "stat_"
"""rounds.csv column prefix of the uplink codec's stats."""
DOWNLINK_STAT_COLUMN = "downlink_stat_"
"""rounds.csv column prefix of the downlink codec's stats."""


class _Field(NamedTuple):
    column: str
    metric: str
    value: Callable[[Any], float]


_FIELDS = (
    _Field("uplink_bytes", records.UPLINK_BYTES, lambda t: t.uplink_bytes),
    _Field("downlink_bytes", "flcomp.downlink-bytes", lambda t: t.downlink_bytes),
    _Field("clients_accepted", "flcomp.clients-accepted", lambda t: t.accepted),
    _Field("clients_dropped", "flcomp.clients-dropped", lambda t: len(t.dropped)),
    _Field("encode_seconds", records.ENCODE_SECONDS, lambda t: t.encode_seconds),
    _Field("server_state_bytes", "flcomp.server-state-bytes", lambda t: t.server_state_bytes),
    _Field("clients_held", "flcomp.clients-held", lambda t: t.clients_held),
    _Field("downlink_state_bytes", "flcomp.downlink-state-bytes", lambda t: t.downlink_state_bytes),
    _Field("client_state_bytes", records.CLIENT_STATE_BYTES, lambda t: t.client_state_bytes),
    _Field("client_state_max", "flcomp.client-state-max", lambda t: int(t.client_state_max)),
    _Field("uplink_contraction", "flcomp.uplink-contraction", lambda t: t.uplink_contraction),
    _Field("downlink_contraction", "flcomp.downlink-contraction", lambda t: t.downlink_contraction),
    _Field("server_memory_norm", "flcomp.server-memory-norm", lambda t: t.server_memory_norm),
    _Field("server_memory_ratio", "flcomp.server-memory-ratio", lambda t: t.server_memory_ratio),
    _Field("budget_bits", "flcomp.budget-bits", lambda t: t.budget_bits),
    _Field("clients_over_budget", "flcomp.clients-over-budget", lambda t: t.clients_over_budget),
)
"""The fields of every round: column, metric name, value of a RoundTraffic (None: the field is
left out, an empty cell)."""
_CHANNEL_FIELDS = (
    _Field("virtual_seconds", "flcomp.virtual-seconds", lambda r: r.seconds),
    _Field("clients_delivered", "flcomp.clients-delivered", lambda r: r.delivered),
    _Field("clients_lost", "flcomp.clients-lost", lambda r: r.lost),
    _Field("uplink_airtime_s", "flcomp.uplink-airtime-s", lambda r: r.uplink_airtime_s),
    _Field("downlink_airtime_s", "flcomp.downlink-airtime-s", lambda r: r.downlink_airtime_s),
    _Field("energy_j", "flcomp.energy-j", lambda r: r.energy_j),
    _Field("downlink_energy_j", "flcomp.downlink-energy-j", lambda r: r.downlink_energy_j),
)
"""The fields of a round on a simulated network: value of its RoundReport."""
CLIENT_CHANNEL_COLUMNS = ("delivered", "downlink_s", "compute_s", "uplink_s", "uplink_airtime_s", "energy_j")
"""clients.csv's columns from the client's `ClientOutcome` (empty without a channel)."""
MEASURED_COLUMNS = ("measured_upload_s", "measured_round_s", "measured_uplink_bps")
"""clients.csv's columns from the measured upload (`flcomp.strategies.timing`; empty unless
the server measures: a budget without a simulated channel)."""
CLIENT_COLUMNS = (
    "round",
    "client",
    "node",
    "downlink_bytes",
    "uplink_bytes",
    "budget_bits",
    "outcome",
    *CLIENT_CHANNEL_COLUMNS,
    *MEASURED_COLUMNS,
)
"""clients.csv's columns: one row per instructed client and round (`RoundTraffic.client_rows`)."""


@dataclass
class RoundTraffic:
    """What crossed the links in one training round (bytes are real payload lengths);
    see the module docstring for its metric names and rounds.csv columns."""

    COLUMNS: ClassVar[tuple[str, ...]] = tuple(f.column for f in _FIELDS + _CHANNEL_FIELDS)
    """rounds.csv's traffic columns, in order (the channel's stay empty without one)."""

    downlink_bytes: int = 0
    accepted: int = 0
    dropped: dict[int, str] = field(default_factory=dict)
    """node id → why its update was not aggregated."""
    encode_seconds: float = 0.0
    """Summed over the accepted clients, as they reported it."""
    downlink_bytes_by_node: dict[int, int] = field(default_factory=dict)
    """Each instructed node's own downlink bytes (under broadcast delivery, besides the broadcast)."""
    broadcast_bytes: int = 0
    """Of downlink_bytes: those broadcast once for everyone (broadcast delivery)."""
    hears_broadcast: set[int] = field(default_factory=set)
    """The nodes that need the round's broadcast."""
    budgets: dict[int, float] = field(default_factory=dict)
    """node → the bit budget its instruction carried (`flcomp.strategies.budget`)."""
    uploads: dict[int, tuple[int, int]] = field(default_factory=dict)
    """node → (its client id, its payload's bytes), for each reply that passed the checks."""
    over_budget: int = 0
    """The budgeted clients whose payload was longer than their budget."""
    side_bytes: int = 0
    """Of downlink_bytes: the codec's side information for the encoders (`DecoderPool.plan_round`)."""
    channel: RoundReport | None = None
    """The round on the simulated network (None without a channel), keyed by client id."""
    measured: dict[int, MeasuredUpload] = field(default_factory=dict)
    """node → its upload as the server measured it (`flcomp.strategies.timing`; deployments
    with a budget)."""
    stats: dict[str, float] = field(default_factory=dict)
    """The uplink codec's stats (`Compressor.stats`), summed over the accepted clients."""
    downlink_stats: dict[str, float] = field(default_factory=dict)
    """The broadcast encoder's stats, when it encoded a payload this round."""
    server_state_bytes: int = 0
    """Bytes of the clients' decoder states the server holds after the round (`DecoderPool.state_bytes`)."""
    clients_held: int = 0
    downlink_state_bytes: int = 0
    """Bytes of the broadcast's server-wide state after the round (`Broadcast.state_bytes`)."""
    client_state_sum: float = 0.0
    """The state bytes the accepted clients report, summed."""
    client_state_max: float = 0.0
    """The largest state the accepted clients report."""
    uplink_contractions: list[float] = field(default_factory=list)
    """δ of each accepted client's decoded update (`health.contraction`; zero updates left out)."""
    downlink_contraction: float | None = None
    """δ of the vector the broadcast encoder compressed this round (`Broadcast.contraction`)."""
    server_memory_norm: float | None = None
    """‖e‖₂ of the server's error memory after the round's payload (`Broadcast.memory_norm`)."""
    server_memory_ratio: float | None = None
    """The server's error memory relative to the decoded change (`Broadcast.memory_ratio`)."""

    @property
    def uplink_bytes(self) -> int:
        """Payload bytes received: the checked replies', lost on the channel or not."""
        return sum(sent for _, sent in self.uploads.values())

    @property
    def uplink_contraction(self) -> float | None:
        """The median δ of the accepted clients' decoded updates (None without any)."""
        return float(np.median(self.uplink_contractions)) if self.uplink_contractions else None

    @property
    def budget_bits(self) -> float | None:
        """The round's budgets, summed (None without any)."""
        return sum(self.budgets.values()) if self.budgets else None

    @property
    def clients_over_budget(self) -> int | None:
        """The budgeted clients whose payload was longer than their budget (None without budgets)."""
        return self.over_budget if self.budgets else None

    @property
    def client_state_bytes(self) -> float:
        """The mean state bytes the accepted clients report (0 without any)."""
        return self.client_state_sum / self.accepted if self.accepted else 0.0

    def add_broadcast(self, sent: int) -> None:
        """Count `sent` bytes put on the air once for every client that hears them."""
        self.broadcast_bytes += sent
        self.downlink_bytes += sent

    def add_downlink(self, node: int, sent: int, side: bool = False) -> None:
        """Count `sent` bytes to `node`: model arrays, or the codec's side information if `side`."""
        self.downlink_bytes += sent
        self.downlink_bytes_by_node[node] = self.downlink_bytes_by_node.get(node, 0) + sent
        if side:
            self.side_bytes += sent

    def add_downlink_health(
        self, contraction: float | None, memory_norm: float | None, memory_ratio: float | None
    ) -> None:
        """Note the broadcast's health this round (`Broadcast.health`)."""
        self.downlink_contraction = contraction
        self.server_memory_norm, self.server_memory_ratio = memory_norm, memory_ratio

    def add_accepted(self, node: int, metrics: Sequence[Mapping], stats: Iterable[str]) -> None:
        """Count one aggregated client: the encode seconds, the state bytes and the stats named
        `stats` (the uplink codec's) that its reply's metric records report."""
        self.accepted += 1
        self.encode_seconds += _reported(metrics, records.ENCODE_SECONDS, node)
        held = _reported(metrics, records.CLIENT_STATE_BYTES, node)
        self.client_state_sum += held
        self.client_state_max = max(self.client_state_max, held)
        for name in stats:
            self.stats[name] = self.stats.get(name, 0.0) + _reported(
                metrics, records.STAT_PREFIX + name, node
            )

    def client_rows(self) -> list[dict[str, int | float | str]]:
        """One clients.csv row (`CLIENT_COLUMNS` but the round) per instructed node, by node id:
        its client id and payload bytes (empty when no checked reply came), its own downlink bytes,
        its budget, "accepted" or why it was dropped, and its round on the simulated network."""
        rows = []
        for node in sorted(self.downlink_bytes_by_node):
            client, sent = self.uploads.get(node, ("", ""))
            outcome = self.dropped.get(node, "accepted" if node in self.uploads else "no reply")
            row = {"client": client, "node": node, "downlink_bytes": self.downlink_bytes_by_node[node]}
            row |= {"uplink_bytes": sent, "budget_bits": self.budgets.get(node, ""), "outcome": outcome}
            on_air = self.channel.clients.get(client) if self.channel is not None and client != "" else None
            if on_air is not None:
                row |= {k: getattr(on_air, k) for k in CLIENT_CHANNEL_COLUMNS}
            measured = self.measured.get(node)
            if measured is not None:
                row |= dict(zip(MEASURED_COLUMNS, (measured.upload_s, measured.round_s, measured.rate_bps)))
            rows.append(row)
        return rows

    def to_metrics(self) -> dict[str, int | float]:
        """The round's metrics (the module docstring's names)."""
        return self._report(lambda f: f.metric, records.STAT_PREFIX, records.DOWNLINK_STAT_PREFIX)

    def row(self) -> dict[str, int | float]:
        """The round's rounds.csv fields, from the same values as `to_metrics`."""
        row = self._report(lambda f: f.column, STAT_COLUMN, DOWNLINK_STAT_COLUMN)
        row["encode_seconds"] = round(self.encode_seconds, 6)  # finer is the clock's noise
        return row

    def _report(self, name: Callable[[_Field], str], stat: str, downlink_stat: str) -> dict[str, int | float]:
        """Every field under `name(field)`, the stats under `stat` + name and `downlink_stat` + name."""
        out = {name(f): v for f in _FIELDS if (v := f.value(self)) is not None}
        if self.channel is not None:
            out |= {name(f): f.value(self.channel) for f in _CHANNEL_FIELDS}
        out |= {stat + k: v for k, v in self.stats.items()}
        return out | {downlink_stat + k: v for k, v in self.downlink_stats.items()}

    @staticmethod
    def empty_row(channel: bool) -> dict[str, int | float]:
        """The fields of a round that sent nothing (round 0, the initial model): no uplink bytes
        and, on a simulated network (`channel`), no virtual seconds or energy; the rest empty."""
        return {"uplink_bytes": 0} | ({"virtual_seconds": 0.0, "energy_j": 0.0} if channel else {})

    @staticmethod
    def stat_columns(uplink: Codec, downlink: Codec | None = None) -> list[str]:
        """The stat columns of a run with these codecs: stat_<name> for each of the uplink
        codec's stats, then downlink_stat_<name> for each of the downlink codec's."""
        columns = [STAT_COLUMN + s for s in uplink.compressor_class.stats]
        if downlink is not None:
            columns += [DOWNLINK_STAT_COLUMN + s for s in downlink.compressor_class.stats]
        return columns


def _reported(metrics: Sequence[Mapping], key: str, node: int) -> float:
    """The sum of `key` over a client's metric records. Clients are untrusted: a value that is
    not a finite number is ignored with a warning."""
    total = 0.0
    for record in metrics:
        value = record.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            log.warning("client %d: ignored %s = %r (not a finite number)", node, key, value)
        else:
            total += value
    return total
