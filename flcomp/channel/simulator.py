"""The virtual clock: one round's downlink, compute and uplink for every client.

    round seconds = max over the round's clients of (downlink + compute + uplink),
                    capped at the deadline, which drops every client that misses it.

A transfer takes latency + airtime (retransmissions included). A client whose
downlink is lost never trains; one whose uplink is lost or late is not aggregated.
Client energy is uplink transmit power × airtime plus compute power × compute time,
both counted only up to the deadline (a straggler stops there); the server's is the
downlink's transmit power × airtime.
"""

from __future__ import annotations

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
    uplink_airtime_s: float
    energy_j: float
    """The client's: uplink transmission and compute, up to the deadline."""
    downlink_energy_j: float
    """The server's, sending this client its model."""

    @property
    def finish_s(self) -> float:
        return self.downlink_s + self.compute_s + self.uplink_s


@dataclass(frozen=True)
class RoundReport:
    """All clients of one round."""

    seconds: float
    """The round's length on the virtual clock."""
    clients: dict[int, ClientOutcome]

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
        return sum(o.downlink_airtime_s for o in self.clients.values())

    @property
    def energy_j(self) -> float:
        return sum(o.energy_j for o in self.clients.values())

    @property
    def downlink_energy_j(self) -> float:
        return sum(o.downlink_energy_j for o in self.clients.values())


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
        averages = self.link._average if isinstance(self.link, CellLink) else {}
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
            self.link._average = averages

    def run_round(self, server_round: int, loads: Mapping[int, ClientLoad]) -> RoundReport:
        """The round's outcome for the clients in `loads` (keyed by stable client id)."""
        for c, load in loads.items():
            if min(load.downlink_bits, load.uplink_bits, load.samples, load.measured_compute_s) < 0:
                raise ValueError(f"client {c}: negative load {load}")
        clients = sorted(loads)
        down_links = self.link.qualities(server_round, clients, "downlink")
        down = {
            c: self._send(server_round, c, loads[c].downlink_bits, down_links[c], "downlink") for c in clients
        }
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
        return RoundReport(seconds, outcomes)

    def _send(
        self, server_round: int, client: int, bits: int, link: LinkQuality, direction: Direction
    ) -> tuple[Transmission, float]:
        """The transmission and its duration (latency + airtime)."""
        rng = stream(self.seed, LOSS, client, server_round, DIRECTIONS.index(direction))
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
