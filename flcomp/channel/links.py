"""Link models: what each client's link offers in one round, per direction.

A `LinkModel` answers, for the clients scheduled in a round, each link's rate,
latency, receiver SNR and transmit power (`LinkQuality`). Randomness is drawn from
`np.random.default_rng((seed, stream, client, ...))`, so a client's draws do not
depend on which other clients take part or on the order of the calls: two runs (two
codecs) with the same seed see the same placements and fading.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import numbers
import typing
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from flcomp.channel import radio

Direction = Literal["uplink", "downlink"]
DIRECTIONS: tuple[Direction, ...] = ("uplink", "downlink")
Sharing = Literal["dedicated", "equal", "proportional-fair"]

# Random streams: one per kind of draw, so adding a draw of one kind moves no other.
PLACEMENT, FADING, LOSS, DEVICE = range(4)


def _powers_ok(*watts: float) -> bool:
    return all(0 <= w < math.inf for w in watts)


def stream(seed: int, kind: int, *ids: int) -> np.random.Generator:
    """The generator of one kind of draw for one (client, round, direction, ...)."""
    return np.random.default_rng((seed, kind, *ids))


@dataclass(frozen=True)
class LinkQuality:
    """One link in one round."""

    rate_bps: float
    """Bits per second the link carries."""
    latency_s: float
    """One-way delay added to every transfer, in s."""
    snr: float
    """Receiver SNR (linear; inf on an error-free link), for the packet-error model."""
    tx_power_w: float
    """Transmitter power while sending, in W (energy = power × airtime)."""


class LinkModel(ABC):
    """The links of all clients; `qualities` is called once per round and direction."""

    @abstractmethod
    def qualities(
        self, server_round: int, clients: Sequence[int], direction: Direction
    ) -> dict[int, LinkQuality]:
        """Each scheduled client's link this round (`clients` are stable client ids)."""

    def planned_qualities(
        self,
        server_round: int,
        clients: Sequence[int],
        direction: Direction,
        outage: float,
        shared: bool = True,
    ) -> dict[int, LinkQuality]:
        """Each scheduled client's link as the server can plan it before the round: what the
        link carries at least with probability 1 − `outage`, from what is known before the
        fading draw; `shared=False`: with the whole band (a broadcast's). The default, for links
        without fading or sharing: their qualities (no state changes)."""
        return self.qualities(server_round, clients, direction)

    def broadcast_qualities(self, server_round: int, clients: Sequence[int]) -> dict[int, LinkQuality]:
        """Each client's downlink this round when one transmission takes the whole downlink (a
        broadcast). The default, for links whose rate no client shares: the downlink's qualities."""
        return self.qualities(server_round, clients, "downlink")


class IdealLink(LinkModel):
    """Infinite rate, no delay, no errors, no energy."""

    def qualities(self, server_round, clients, direction):
        return {c: LinkQuality(math.inf, 0.0, math.inf, 0.0) for c in clients}


@dataclass
class FixedLink(LinkModel):
    """The same rate and latency for every client and round; no errors."""

    uplink_bps: float
    downlink_bps: float
    latency_s: float = 0.0
    tx_power_w: float = 0.2
    """The client's transmit power (the uplink's; the downlink's is the server's `bs_power_w`)."""
    bs_power_w: float = 20.0

    def __post_init__(self) -> None:
        if not (0 < self.uplink_bps < math.inf and 0 < self.downlink_bps < math.inf):
            raise ValueError(f"rates must be finite and positive, got {self.uplink_bps}, {self.downlink_bps}")
        if not (0 <= self.latency_s < math.inf and _powers_ok(self.tx_power_w, self.bs_power_w)):
            raise ValueError("latency and transmit powers must be finite and non-negative")

    def qualities(self, server_round, clients, direction):
        rate = self.uplink_bps if direction == "uplink" else self.downlink_bps
        power = self.tx_power_w if direction == "uplink" else self.bs_power_w
        return {c: LinkQuality(rate, self.latency_s, math.inf, power) for c in clients}


@dataclass
class CellLink(LinkModel):
    """One base station and its clients: Shannon rates over path loss and block fading.

    Each client sits at a distance drawn uniformly over the cell's area (r = R·√U,
    at least `min_distance_m`) with a log-normal shadowing (σ `shadowing_db`), both
    fixed for the run. Each round and direction redraws the fading |h|². A client
    given bandwidth b receives SNR = P·G·|h|²/(N0·NF·b) and carries
    min(b·log2(1 + SNR), b·`max_bits_per_hz`) bits/s. Bandwidth is split among the
    round's scheduled clients (see `sharing`).
    """

    seed: int
    bandwidth_hz: float
    """Uplink bandwidth of the cell, in Hz (shared per `sharing`)."""
    downlink_bandwidth_hz: float
    ue_power_dbm: float
    bs_power_dbm: float
    ue_noise_figure_db: float
    bs_noise_figure_db: float
    path_loss_1m_db: float
    path_loss_exponent: float
    radius_m: float
    min_distance_m: float
    shadowing_db: float
    fading: radio.Fading
    rician_k: float
    sharing: Sharing
    """dedicated: every client has the whole band (no contention); equal: B/n each;
    proportional-fair: b_k ∝ r_k/R̄_k, client k's rate at an equal split over its
    running average (window `fair_window` rounds): clients in a good fade get more."""
    fair_window: float
    max_bits_per_hz: float
    """Spectral-efficiency cap of the modulation and coding (inf: pure Shannon)."""
    latency_s: float

    def __post_init__(self) -> None:
        # inf is meaningful only as the spectral-efficiency cap (none); NaN nowhere
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Real) and not (
                math.isfinite(value) or (f.name == "max_bits_per_hz" and value == math.inf)
            ):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if not 0 < self.min_distance_m < self.radius_m:
            raise ValueError("need 0 < min_distance_m < radius_m")
        if not (self.bandwidth_hz > 0 and self.downlink_bandwidth_hz > 0 and self.max_bits_per_hz > 0):
            raise ValueError("bandwidths and max_bits_per_hz must be positive")
        if not self.fair_window >= 1:
            raise ValueError(f"fair_window is a number of rounds, ≥ 1, got {self.fair_window}")
        nonnegative = ("ue_noise_figure_db", "bs_noise_figure_db", "shadowing_db", "rician_k", "latency_s")
        if not (self.path_loss_exponent > 0 and all(getattr(self, name) >= 0 for name in nonnegative)):
            raise ValueError(f"need path_loss_exponent > 0 and {', '.join(nonnegative)} ≥ 0")
        fadings, sharings = typing.get_args(radio.Fading), typing.get_args(Sharing)
        if self.fading not in fadings or self.sharing not in sharings:
            raise ValueError(f"fading must be one of {fadings} and sharing one of {sharings}")
        self.fair_averages: dict[tuple[Direction, int], float] = {}
        """Proportional-fair sharing's running rate averages, (direction, client) → bit/s: the
        state earlier rounds leave (what a checkpoint saves); empty under other sharings."""

    def distance_m(self, client: int) -> float:
        """The client's distance to the base station (fixed for the run)."""
        u = stream(self.seed, PLACEMENT, client).uniform()
        r_min2 = (self.min_distance_m / self.radius_m) ** 2
        return self.radius_m * math.sqrt(r_min2 + (1 - r_min2) * u)

    def gain(self, client: int) -> float:
        """Large-scale power gain: path loss and shadowing (linear, ≤ 1)."""
        rng = stream(self.seed, PLACEMENT, client)
        rng.uniform()  # the distance's draw
        shadow = self.shadowing_db * rng.standard_normal()
        loss = radio.path_loss_db(self.distance_m(client), self.path_loss_1m_db, self.path_loss_exponent)
        return float(radio.db_to_linear(-(loss + shadow)))

    def qualities(self, server_round, clients, direction):
        if not clients:
            return {}
        band = self.bandwidth_hz if direction == "uplink" else self.downlink_bandwidth_hz
        received, power, nf = self._received(server_round, clients, direction)
        n = len(clients)
        share = np.full(n, band if self.sharing == "dedicated" else band / n)
        if self.sharing == "proportional-fair":
            at_equal, _ = self._rates(received, share, nf)
            average = np.array([self.fair_averages.get((direction, c), r) for c, r in zip(clients, at_equal)])
            weight = at_equal / average
            share = band * weight / weight.sum()
        rate, snr = self._rates(received, share, nf)
        if self.sharing == "proportional-fair":
            step = 1.0 / self.fair_window
            for c, r, a in zip(clients, rate, average):
                self.fair_averages[(direction, c)] = (1 - step) * a + step * r
        return {
            c: LinkQuality(float(r), self.latency_s, float(s), power) for c, r, s in zip(clients, rate, snr)
        }

    def planned_qualities(self, server_round, clients, direction, outage, shared=True):
        """Large-scale gain (path loss, shadowing) and the fading gain exceeded with probability
        1 − `outage`, at an equal share of the band (the whole band if dedicated or not shared)."""
        if not clients:
            return {}
        up = direction == "uplink"
        band = self.bandwidth_hz if up else self.downlink_bandwidth_hz
        power = float(radio.dbm_to_watts(self.ue_power_dbm if up else self.bs_power_dbm))
        nf = self.bs_noise_figure_db if up else self.ue_noise_figure_db
        h2 = radio.fading_quantile(self.fading, self.rician_k, outage)
        received = power * np.array([self.gain(c) for c in clients]) * h2
        whole = self.sharing == "dedicated" or not shared
        share = np.full(len(clients), band if whole else band / len(clients))
        rate, snr = self._rates(received, share, nf)
        return {
            c: LinkQuality(float(r), self.latency_s, float(s), power) for c, r, s in zip(clients, rate, snr)
        }

    def broadcast_qualities(self, server_round, clients):
        """The whole downlink band for every client, at this round's fading (the unicast draws)."""
        if not clients:
            return {}
        received, power, nf = self._received(server_round, clients, "downlink")
        rate, snr = self._rates(received, np.full(len(clients), self.downlink_bandwidth_hz), nf)
        return {
            c: LinkQuality(float(r), self.latency_s, float(s), power) for c, r, s in zip(clients, rate, snr)
        }

    def _received(
        self, server_round: int, clients: Sequence[int], direction: Direction
    ) -> tuple[np.ndarray, float, float]:
        """Each client's received power this round (W), the transmit power (W) and the
        receiver's noise figure (dB)."""
        up = direction == "uplink"
        power = float(radio.dbm_to_watts(self.ue_power_dbm if up else self.bs_power_dbm))
        nf = self.bs_noise_figure_db if up else self.ue_noise_figure_db  # the receiver's
        d = DIRECTIONS.index(direction)
        h2 = np.array(
            [
                radio.fading_gain(stream(self.seed, FADING, c, server_round, d), self.fading, self.rician_k)[
                    0
                ]
                for c in clients
            ]
        )
        return power * np.array([self.gain(c) for c in clients]) * h2, power, nf

    def _rates(self, received: np.ndarray, share: np.ndarray, nf: float) -> tuple[np.ndarray, np.ndarray]:
        """Rates (bit/s) and SNRs at bandwidths `share` (Hz)."""
        snr = received / radio.noise_watts(share, nf)
        return np.minimum(radio.shannon_rate(share, snr), share * self.max_bits_per_hz), snr


@dataclass
class TraceLink(LinkModel):
    """Rates read from a CSV file of measured or generated bandwidth traces.

    Columns: `round`, `uplink_bps`, `downlink_bps`, optional `client` and `latency_s`.
    With a `client` column, row (client, round) gives that client's links; without,
    every client follows the one trace. Simulated client k uses the trace of the
    k-th listed client modulo their number, and round t beyond the trace's last
    round wraps around (a cyclic trace). No errors; energy from `tx_power_w`.
    """

    path: str
    tx_power_w: float = 0.2
    bs_power_w: float = 20.0

    def __post_init__(self) -> None:
        if not _powers_ok(self.tx_power_w, self.bs_power_w):
            raise ValueError("transmit powers must be finite and non-negative")
        try:
            with Path(self.path).open(newline="") as f:
                rows = list(csv.DictReader(f))
        except csv.Error as e:  # NUL bytes, oversized fields: a malformed file, like a bad row
            raise ValueError(f"{self.path}: {e}") from e
        if not rows:
            raise ValueError(f"{self.path}: no rows")
        missing = {"round", "uplink_bps", "downlink_bps"} - set(rows[0])
        if missing:
            raise ValueError(f"{self.path}: missing columns {sorted(missing)}")
        table: dict[int, dict[int, tuple[float, float, float]]] = {}
        for i, row in enumerate(rows, start=2):
            try:
                client = int(row.get("client") or 0)
                rnd = int(row["round"])
                values = (
                    float(row["uplink_bps"]),
                    float(row["downlink_bps"]),
                    float(row.get("latency_s") or 0),
                )
            except ValueError as e:
                raise ValueError(f"{self.path}, line {i}: {e}") from e
            if not (values[0] > 0 and values[1] > 0 and values[2] >= 0 and math.isfinite(sum(values))):
                raise ValueError(f"{self.path}, line {i}: rates must be positive and finite")
            table.setdefault(client, {})[rnd] = values
        self._clients = sorted(table)
        self._table = {c: [table[c][r] for r in sorted(table[c])] for c in self._clients}

    def qualities(self, server_round, clients, direction):
        out = {}
        for c in clients:
            trace = self._table[self._clients[c % len(self._clients)]]
            up, down, latency = trace[(server_round - 1) % len(trace)]
            rate, power = (up, self.tx_power_w) if direction == "uplink" else (down, self.bs_power_w)
            out[c] = LinkQuality(rate, latency, math.inf, power)
        return out
