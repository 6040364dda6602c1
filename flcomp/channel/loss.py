"""Loss models: whether a payload arrives over a link, and the airtime it took.

Outages (a payload too large for the link before the deadline) are the clock's
business (`flcomp.channel.simulator`); these models add errors on top of the rate.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from flcomp.channel import radio
from flcomp.channel.links import LinkQuality


@dataclass(frozen=True)
class Transmission:
    """One payload over one link."""

    delivered: bool
    airtime_s: float
    """Seconds the transmitter was on, retransmissions included."""
    reason: str = ""
    """Why it was lost ("" when delivered)."""


class LossModel(ABC):
    @abstractmethod
    def transmit(self, bits: int, link: LinkQuality, rng: np.random.Generator) -> Transmission:
        """Send `bits` over `link`, drawing any randomness from `rng`."""


def airtime(bits: float, link: LinkQuality) -> float:
    """Seconds to send `bits` at the link's rate (0 for nothing or an infinite rate)."""
    return 0.0 if bits == 0 or math.isinf(link.rate_bps) else bits / link.rate_bps


class Lossless(LossModel):
    """Every payload arrives."""

    def transmit(self, bits, link, rng):
        return Transmission(True, airtime(bits, link))


@dataclass(frozen=True)
class Erasure(LossModel):
    """Each payload is lost with probability `probability`, independently (an erasure channel)."""

    probability: float

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError("the erasure probability must be in [0, 1]")

    def transmit(self, bits, link, rng):
        lost = rng.uniform() < self.probability
        return Transmission(not lost, airtime(bits, link), "erased" if lost else "")


@dataclass(frozen=True)
class PacketErrors(LossModel):
    """Payloads cut into packets of `packet_bits`; each packet fails on a bit error.

    A packet of L bits fails with probability 1 − (1 − BER)^L, BER = Q(√(2·SNR)) (BPSK
    on AWGN at the round's SNR), and is resent up to `retransmissions` times (ARQ).
    The payload is lost when any packet still fails; every attempt costs airtime.
    """

    packet_bits: int = 12_000
    """1500-byte packets (an Ethernet MTU). Larger packets fail more often."""
    retransmissions: int = 0
    """Extra attempts per packet; 0 sends each packet once."""

    def __post_init__(self) -> None:
        if self.packet_bits < 1 or self.retransmissions < 0:
            raise ValueError("packet_bits must be ≥ 1 and retransmissions ≥ 0")

    def packet_error_rate(self, bits: int, snr: float) -> float:
        """Probability that one packet of `bits` bits fails at `snr`."""
        ber = float(radio.bpsk_bit_error_rate(snr)) if math.isfinite(snr) else 0.0
        return float(-np.expm1(bits * np.log1p(-ber))) if ber < 1 else 1.0

    def transmit(self, bits, link, rng):
        if bits == 0:
            return Transmission(True, 0.0)
        full, last = divmod(bits, self.packet_bits)
        sizes = np.full(full + (last > 0), float(self.packet_bits))
        success = np.full(len(sizes), 1.0 - self.packet_error_rate(self.packet_bits, link.snr))
        if last:
            sizes[-1], success[-1] = last, 1.0 - self.packet_error_rate(last, link.snr)
        allowed = 1 + self.retransmissions
        # Attempts until a packet gets through (geometric); beyond `allowed` it failed.
        needed = np.where(success > 0, rng.geometric(np.where(success > 0, success, 1.0)), allowed + 1)
        attempts = np.minimum(needed, allowed)
        sent = float(np.sum(attempts * sizes))
        if np.all(needed <= allowed):
            return Transmission(True, airtime(sent, link))
        return Transmission(False, airtime(sent, link), "packet errors")
