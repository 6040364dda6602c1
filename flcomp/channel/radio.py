"""Radio physics in SI units: dB conversions, path loss, fading, Shannon rate, bit errors.

Powers in W (or dBm where marked), distances in m, bandwidths in Hz, rates in bits/s,
SNR linear unless a name ends in `_db`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats
from scipy.special import erfc

Fading = Literal["none", "rayleigh", "rician"]

THERMAL_NOISE_DBM_PER_HZ = -174.0
"""kT at 290 K, in dBm/Hz."""


def db_to_linear(db: float | np.ndarray) -> float | np.ndarray:
    """A power ratio in dB as a plain ratio."""
    return 10.0 ** (np.asarray(db, dtype=np.float64) / 10.0)


def dbm_to_watts(dbm: float | np.ndarray) -> float | np.ndarray:
    """A power in dBm as watts (30 dBm = 1 W)."""
    return 10.0 ** ((np.asarray(dbm, dtype=np.float64) - 30.0) / 10.0)


def path_loss_db(distance_m: float | np.ndarray, loss_at_1m_db: float, exponent: float) -> np.ndarray:
    """Log-distance path loss PL(d) = PL(1 m) + 10·n·log10(d / 1 m), in dB."""
    d = np.asarray(distance_m, dtype=np.float64)
    if np.any(d <= 0):
        raise ValueError("distances must be positive")
    return loss_at_1m_db + 10.0 * exponent * np.log10(d)


def noise_watts(bandwidth_hz: float | np.ndarray, noise_figure_db: float) -> np.ndarray:
    """Receiver noise power N0·NF·B in W."""
    return np.asarray(dbm_to_watts(THERMAL_NOISE_DBM_PER_HZ + noise_figure_db)) * bandwidth_hz


def fading_gain(rng: np.random.Generator, fading: Fading, rician_k: float = 0.0, size: int = 1) -> np.ndarray:
    """Block-fading power gains |h|², mean 1, one per draw.

    Rayleigh: |h|² ~ Exp(1). Rician with K-factor `rician_k` (line-of-sight power over
    scattered power, linear): h = √(K/(K+1)) + √(1/(K+1))·CN(0, 1); K = 0 is Rayleigh.
    """
    if fading == "none":
        return np.ones(size)
    if fading == "rayleigh":
        return rng.exponential(1.0, size)
    if fading == "rician":
        if rician_k < 0:
            raise ValueError("the Rician K-factor must be ≥ 0")
        scattered = rng.standard_normal((2, size)) / np.sqrt(2.0)
        los = np.sqrt(rician_k / (rician_k + 1.0))
        s = np.sqrt(1.0 / (rician_k + 1.0))
        return (los + s * scattered[0]) ** 2 + (s * scattered[1]) ** 2
    raise ValueError(f"unknown fading {fading!r}; choose none, rayleigh or rician")


def fading_quantile(fading: Fading, rician_k: float, probability: float) -> float:
    """The power gain |h|² that block fading falls below with `probability` (mean-1 gains, as
    `fading_gain` draws them): a link planned at it is in outage that often."""
    if not 0 < probability < 1:
        raise ValueError(f"an outage probability lies in (0, 1), got {probability}")
    if fading == "none":
        return 1.0
    if fading == "rayleigh":
        return float(-np.log1p(-probability))
    if fading == "rician":
        # |h|² = χ'²(2 dof, non-centrality 2K) / (2(K + 1)) for the mean-1 Rician gain
        return (
            float(stats.ncx2.ppf(probability, 2, 2 * rician_k) / (2 * (rician_k + 1)))
            if rician_k
            else float(-np.log1p(-probability))
        )
    raise ValueError(f"unknown fading {fading!r}; choose none, rayleigh or rician")


def shannon_rate(bandwidth_hz: float | np.ndarray, snr: float | np.ndarray) -> np.ndarray:
    """Capacity B·log2(1 + SNR) in bits/s."""
    return np.asarray(bandwidth_hz, dtype=np.float64) * np.log2(1.0 + np.asarray(snr, dtype=np.float64))


def bpsk_bit_error_rate(snr: float | np.ndarray) -> np.ndarray:
    """Bit error probability Q(√(2·SNR)) of coherent BPSK on an AWGN channel."""
    return 0.5 * erfc(np.sqrt(np.asarray(snr, dtype=np.float64)))


def rayleigh_outage_probability(rate_bps: float, bandwidth_hz: float, mean_snr: float) -> float:
    """P(B·log2(1 + SNR̄·|h|²) < R) for Rayleigh |h|²: 1 − exp(−(2^(R/B) − 1)/SNR̄)."""
    return float(-np.expm1(-(2.0 ** (rate_bps / bandwidth_hz) - 1.0) / mean_snr))
