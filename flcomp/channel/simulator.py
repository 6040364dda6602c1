"""The virtual clock: one round's downlink, compute and uplink for every client.

    round seconds = max over the round's clients of (downlink + compute + uplink),
                    capped at the deadline, which drops every client that misses it.

A transfer takes latency + airtime (retransmissions included). A client whose
downlink is lost never trains; one whose uplink is lost or late is not aggregated.
Client energy is uplink transmit power × airtime plus compute power × compute time,
both counted only up to the deadline (a straggler stops there); the server's is the
downlink's transmit power × airtime.

A round may open with a broadcast: bits common to the clients that hear it, sent once
over the whole downlink band at the rate the worst of them decodes (each client's
rate at the whole band, this round's fading: the base station picks the rate from
its clients' channel reports). Each listener receives it at its own SNR (its own
loss draw, and airtime where packets are resent); the transmitter is on for the
longest of them, once, whatever the number of listeners. Per-client (unicast) bits
follow the broadcast, sharing the band as the link model says.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from flcomp.channel.links import DEVICE, DIRECTIONS, LOSS, CellLink, Direction, LinkModel, LinkQuality, stream
from flcomp.channel.loss import LossModel, Transmission


@dataclass(frozen=True)
class ClientLoad:
    """What one client sends, receives and computes in a round."""

    downlink_bits: int
    uplink_bits: int
    samples: int = 0
    """Training samples processed (for the per-sample device model)."""
    measured_compute_s: float = 0.0
    """Wall seconds the client reported for training (for the measured model)."""
    hears_broadcast: bool = False
    """Whether the client needs the round's broadcast (`run_round`'s broadcast_bits) besides
    its own downlink_bits."""


@dataclass(frozen=True)
class ComputeModel:
    """How long a client computes: its device speed times its work, or what it measured.

    Client k's device takes `seconds_per_sample`·exp(σ·z_k) s per sample, z_k ~ N(0, 1)
    fixed for the run (σ = `heterogeneity`: 0 makes all devices alike; 1 spreads the
    fastest and slowest of 100 clients over ~100×). With `measured`, the client's
    reported wall seconds replace seconds-per-sample × samples (still times the
    device factor).
    """

    seconds_per_sample: float = 0.0
    heterogeneity: float = 0.0
    power_w: float = 0.0
    """Power drawn while computing, in W (0 counts transmit energy only)."""
    measured: bool = False

    def __post_init__(self) -> None:
        if min(self.seconds_per_sample, self.heterogeneity, self.power_w) < 0:
            raise ValueError("compute parameters must be non-negative")

    def seconds(self, seed: int, client: int, load: ClientLoad) -> float:
        work = load.measured_compute_s if self.measured else self.seconds_per_sample * load.samples
        if work == 0 or self.heterogeneity == 0:
            return work
        return work * math.exp(self.heterogeneity * stream(seed, DEVICE, client).standard_normal())


@dataclass(frozen=True)
class ClientOutcome:
    """One client's round on the virtual clock (seconds from the round's start)."""

    delivered: bool
    """Whether its update reached the server in time."""
    reason: str
    downlink_s: float
    compute_s: float
    uplink_s: float
    downlink_airtime_s: float
    """Of the client's own downlink bits (the broadcast's is the round's, `RoundReport`)."""
    uplink_airtime_s: float
    energy_j: float
    """The client's: uplink transmission and compute, up to the deadline."""
    downlink_energy_j: float
    """The server's, sending this client its own downlink bits."""

    @property
    def finish_s(self) -> float:
        return self.downlink_s + self.compute_s + self.uplink_s


@dataclass(frozen=True)
class RoundReport:
    """All clients of one round."""

    seconds: float
    """The round's length on the virtual clock."""
    clients: dict[int, ClientOutcome]
    broadcast_airtime_s: float = 0.0
    """The broadcast transmitter's airtime, once for all listeners (0 without a broadcast)."""
    broadcast_energy_j: float = 0.0
    """The server's energy for the broadcast, up to the deadline."""

    @property
    def delivered(self) -> int:
        return sum(o.delivered for o in self.clients.values())

    @property
    def lost(self) -> int:
        return len(self.clients) - self.delivered

    @property
    def uplink_airtime_s(self) -> float:
        return sum(o.uplink_airtime_s for o in self.clients.values())

    @property
    def downlink_airtime_s(self) -> float:
        """Every client's own downlink airtime, plus the broadcast's once."""
        return self.broadcast_airtime_s + sum(o.downlink_airtime_s for o in self.clients.values())

    @property
    def energy_j(self) -> float:
        return sum(o.energy_j for o in self.clients.values())

    @property
    def downlink_energy_j(self) -> float:
        """The server's: every client's own downlink and the broadcast once."""
        return self.broadcast_energy_j + sum(o.downlink_energy_j for o in self.clients.values())


class ChannelSimulator:
    """Links, losses, compute and a deadline; `run_round` is its one entry point.

    Deterministic: the outcome of a round depends only on the seed, the round, the
    loads and (for proportional-fair sharing) the earlier rounds, whose running rate
    averages are the one state it keeps (`state_dict`).
    """

    def __init__(
        self,
        link: LinkModel,
        loss: LossModel,
        compute: ComputeModel = ComputeModel(),
        deadline_s: float | None = None,
        seed: int = 0,
    ) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError("the deadline must be positive seconds (or None)")
        self.link, self.loss, self.compute, self.deadline_s, self.seed = link, loss, compute, deadline_s, seed

    def state_dict(self) -> dict[str, list]:
        """What the earlier rounds left, as JSON-able lists: a cell's proportional-fair running
        rate averages, [direction, client, bit/s] (empty for every other link)."""
        averages = self.link.fair_averages if isinstance(self.link, CellLink) else {}
        return {"fair_average": [[d, c, r] for (d, c), r in sorted(averages.items())]}

    def load_state_dict(self, state: Mapping[str, list]) -> None:
        """Restore `state_dict()`'s state; ValueError when it does not fit this channel."""
        rows = state.get("fair_average") if isinstance(state, Mapping) else None
        if not isinstance(rows, list) or (rows and not isinstance(self.link, CellLink)):
            raise ValueError("channel state: no proportional-fair averages for this link")
        averages = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3 and row[0] in DIRECTIONS):
                raise ValueError(f"channel state: bad running average {row!r}")
            d, c, r = row
            if not (isinstance(c, int) and isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
                raise ValueError(f"channel state: bad running average {row!r}")
            averages[(d, c)] = float(r)
        if isinstance(self.link, CellLink):
            self.link.fair_averages = averages

    def run_round(
        self, server_round: int, loads: Mapping[int, ClientLoad], broadcast_bits: int = 0
    ) -> RoundReport:
        """The round's outcome for the clients in `loads` (keyed by stable client id), opened by a
        broadcast of `broadcast_bits` to those that hear it (see the module docstring)."""
        for c, load in loads.items():
            if min(load.downlink_bits, load.uplink_bits, load.samples, load.measured_compute_s) < 0:
                raise ValueError(f"client {c}: negative load {load}")
        if not broadcast_bits >= 0:
            raise ValueError(f"negative broadcast: {broadcast_bits} bits")
        clients = sorted(loads)
        listeners = [c for c in clients if loads[c].hears_broadcast]
        heard, power = self._broadcast(server_round, listeners, broadcast_bits)
        on_air = max((t.airtime_s for t, _ in heard.values()), default=0.0)
        down_links = self.link.qualities(server_round, clients, "downlink")
        down = {}
        for c in clients:
            if c in heard and not loads[c].downlink_bits:  # the broadcast is all it receives
                t, own_s = heard[c]
                own = Transmission(t.delivered, 0.0, t.reason and f"broadcast {t.reason}")
            else:
                own, own_s = self._send(server_round, c, loads[c].downlink_bits, down_links[c], "downlink")
                own_s += on_air if loads[c].downlink_bits else 0.0  # its own bits follow the broadcast
                if c in heard and not heard[c][0].delivered:
                    own = Transmission(False, own.airtime_s, f"broadcast {heard[c][0].reason}")
            down[c] = own, own_s
        trained = [c for c in clients if down[c][0].delivered]
        up_links = self.link.qualities(server_round, trained, "uplink")
        outcomes = {}
        for c in clients:
            dl, dl_s = down[c]
            if c not in up_links:
                outcomes[c] = self._outcome(dl, dl_s, down_links[c].tx_power_w)
                continue
            compute_s = self.compute.seconds(self.seed, c, loads[c])
            ul, ul_s = self._send(server_round, c, loads[c].uplink_bits, up_links[c], "uplink")
            outcomes[c] = self._outcome(
                dl, dl_s, down_links[c].tx_power_w, compute_s, ul, ul_s, up_links[c].tx_power_w
            )
        finish = max((o.finish_s for o in outcomes.values()), default=0.0)
        seconds = finish if self.deadline_s is None else min(finish, self.deadline_s)
        end = math.inf if self.deadline_s is None else self.deadline_s
        return RoundReport(seconds, outcomes, on_air, power * min(on_air, end))

    def _broadcast(
        self, server_round: int, listeners: list[int], bits: int
    ) -> tuple[dict[int, tuple[Transmission, float]], float]:
        """Each listener's reception of a broadcast of `bits` and its duration (latency +
        airtime), and the transmitter's power in W."""
        if not (listeners and bits):
            return {}, 0.0
        links = self.link.broadcast_qualities(server_round, listeners)
        rate = min(q.rate_bps for q in links.values())
        heard = {
            c: self._send(server_round, c, bits, dataclasses.replace(links[c], rate_bps=rate), "broadcast")
            for c in listeners
        }
        return heard, links[listeners[0]].tx_power_w

    def _send(
        self, server_round: int, client: int, bits: int, link: LinkQuality, direction: Direction | str
    ) -> tuple[Transmission, float]:
        """The transmission and its duration (latency + airtime); `direction` "broadcast" draws
        from a stream of its own."""
        rng = stream(self.seed, LOSS, client, server_round, (*DIRECTIONS, "broadcast").index(direction))
        t = self.loss.transmit(bits, link, rng)
        return t, link.latency_s + t.airtime_s

    def _outcome(
        self,
        dl: Transmission,
        dl_s: float,
        dl_power_w: float,
        compute_s: float = 0.0,
        ul: Transmission | None = None,
        ul_s: float = 0.0,
        ul_power_w: float = 0.0,
    ) -> ClientOutcome:
        """One client's outcome; the deadline truncates what happens after it."""
        end = math.inf if self.deadline_s is None else self.deadline_s
        ul_airtime = 0.0 if ul is None else ul.airtime_s
        computing = min(compute_s, max(0.0, end - dl_s))
        sending = min(ul_airtime, max(0.0, end - dl_s - compute_s))  # it transmits, then the latency
        energy = self.compute.power_w * computing + ul_power_w * sending
        dl_energy = dl_power_w * min(dl.airtime_s, end)
        if not dl.delivered:
            reason = f"downlink {dl.reason}"
        elif ul is not None and not ul.delivered:
            reason = f"uplink {ul.reason}"
        elif dl_s + compute_s + ul_s > end:
            reason = f"deadline: would finish at {dl_s + compute_s + ul_s:.3g} s > {end:.3g} s"
        else:
            reason = ""
        return ClientOutcome(
            not reason, reason, dl_s, compute_s, ul_s, dl.airtime_s, ul_airtime, energy, dl_energy
        )
