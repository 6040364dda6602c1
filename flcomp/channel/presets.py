"""Named channels and their knobs: `Channel.parse("urban-sub6:deadline_s=2")`.

Every channel has the knobs of `ChannelConfig` (deadline, loss, compute); each kind
adds its link's. The two cell presets are one model (`CellConfig`) with sourced
defaults:

- "urban-sub6": a 3GPP urban macro cell at 3.5 GHz. Path loss of TR 38.901 Table
  7.4.1-1, UMa NLOS (the PL'_NLOS term): 13.54 + 39.08·log10(d) + 20·log10(3.5)
  = 24.42 dB at 1 m and exponent 3.908, shadowing σ = 6 dB; inter-site distance
  500 m (TR 38.901 Table 7.2-1), so cell radius 500/√3 ≈ 289 m, minimum distance
  35 m; 20 MHz each way; UE 23 dBm (power class 3, TS 38.101-1), BS 49 dBm per
  20 MHz and noise figures BS 5 dB, UE 9 dB (TR 36.814 Tables A.2.1.1-2/-3);
  Rayleigh fading (NLOS); spectral efficiency capped at 7.41 bit/s/Hz (256-QAM,
  CQI 15 of TS 38.214 Table 5.2.2.1-3); 10 ms one-way latency [our choice].
- "iot-lowpower": an NB-IoT-like uplink: one 180 kHz resource block each way,
  UE 23 dBm, BS 43 dBm (TR 45.820, stand-alone NB-IoT); the same UMa NLOS law
  at 900 MHz (12.62 dB at 1 m); inter-site distance 1732 m (TR 45.820's macro
  layout), radius 1000 m; spectral efficiency capped at 1 bit/s/Hz (NB-IoT peaks
  near 160 kbit/s in 180 kHz); 100 ms one-way latency [our choice].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from flcomp import keyvalue
from flcomp.channel import radio
from flcomp.channel.links import CellLink, FixedLink, IdealLink, LinkModel, Sharing, TraceLink
from flcomp.channel.loss import Erasure, Lossless, LossModel, PacketErrors
from flcomp.channel.simulator import ChannelSimulator, ComputeModel


@dataclass(frozen=True)
class ChannelConfig:
    """The knobs of every channel: deadline, losses beyond the rate, compute."""

    deadline_s: float | None = None
    """Round deadline in s; clients that would finish later are dropped. None: wait for all."""
    loss: Literal["none", "erasure", "packet"] = "none"
    """none: only deadlines lose payloads; erasure: each payload lost with
    `erasure_probability`; packet: bit errors at the link's SNR (see `PacketErrors`)."""
    erasure_probability: float = 0.0
    packet_bits: int = 12_000
    """Packet size of the packet-error model, in bits (1500 bytes)."""
    retransmissions: int = 0
    """ARQ retransmissions per packet in the packet-error model."""
    seconds_per_sample: float = 0.0
    """Median device's compute time per training sample, in s (0: compute is instant)."""
    heterogeneity: float = 0.0
    """σ of ln(device slowness) across clients (0: identical devices; 1: ~100× spread)."""
    compute_power_w: float = 0.0
    """Device power while computing, in W (0: count transmit energy only)."""
    measured_compute: bool = False
    """Use the clients' measured training seconds instead of seconds_per_sample."""

    _unbounded: ClassVar[tuple[str, ...]] = ()
    """Number fields for which +inf means something (no limit); NaN is refused everywhere."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Real) and not (
                math.isfinite(value) or (value == math.inf and f.name in self._unbounded)
            ):
                raise ValueError(f"channel parameter {f.name} must be a finite number, got {value}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive seconds (or none), got {self.deadline_s}")
        if not 0 <= self.erasure_probability <= 1:
            raise ValueError(f"erasure_probability must be in [0, 1], got {self.erasure_probability}")
        if not (self.packet_bits >= 1 and self.retransmissions >= 0):
            raise ValueError("packet_bits must be ≥ 1 and retransmissions ≥ 0")
        if not min(self.seconds_per_sample, self.heterogeneity, self.compute_power_w) >= 0:
            raise ValueError("seconds_per_sample, heterogeneity and compute_power_w must be ≥ 0")

    def loss_model(self) -> LossModel:
        if self.loss == "erasure":
            return Erasure(self.erasure_probability)
        if self.loss == "packet":
            return PacketErrors(self.packet_bits, self.retransmissions)
        return Lossless()

    def compute_model(self) -> ComputeModel:
        return ComputeModel(
            self.seconds_per_sample, self.heterogeneity, self.compute_power_w, self.measured_compute
        )


@dataclass(frozen=True)
class FixedConfig(ChannelConfig):
    uplink_bps: float = 1e6
    downlink_bps: float = 10e6
    latency_s: float = 0.0
    ue_power_w: float = 0.2
    bs_power_w: float = 20.0


@dataclass(frozen=True)
class TraceConfig(ChannelConfig):
    path: str = ""
    """CSV file with columns round, uplink_bps, downlink_bps[, client, latency_s]."""
    ue_power_w: float = 0.2
    bs_power_w: float = 20.0


@dataclass(frozen=True)
class CellConfig(ChannelConfig):
    """A Shannon cell (`CellLink`); defaults are "urban-sub6"'s."""

    bandwidth_hz: float = 20e6
    """Uplink band, shared among the round's clients per `sharing`."""
    downlink_bandwidth_hz: float = 20e6
    ue_power_dbm: float = 23.0
    bs_power_dbm: float = 49.0
    ue_noise_figure_db: float = 9.0
    bs_noise_figure_db: float = 5.0
    path_loss_1m_db: float = 24.42
    path_loss_exponent: float = 3.908
    radius_m: float = 289.0
    min_distance_m: float = 35.0
    shadowing_db: float = 6.0
    fading: radio.Fading = "rayleigh"
    rician_k: float = 0.0
    """Rician K-factor (linear), used when fading=rician."""
    sharing: Sharing = "equal"
    fair_window: float = 10.0
    """Rounds in the proportional-fair running average."""
    max_bits_per_hz: float = 7.41
    """Spectral-efficiency cap, bit/s/Hz. inf (pure Shannon) only from Python: text values
    must be finite (1e3 caps nothing in practice)."""
    latency_s: float = 0.01

    _unbounded: ClassVar[tuple[str, ...]] = ("max_bits_per_hz",)


def _cell(config: CellConfig, seed: int) -> LinkModel:
    fields = {f.name for f in dataclasses.fields(CellLink)} - {"seed"}
    return CellLink(seed=seed, **{k: getattr(config, k) for k in fields})


@dataclass(frozen=True)
class _Kind:
    config: type[ChannelConfig]
    link: Callable[[Any, int], LinkModel]
    preset: dict[str, Any] = dataclasses.field(default_factory=dict)


CHANNELS: dict[str, _Kind] = {
    "ideal": _Kind(ChannelConfig, lambda c, seed: IdealLink()),
    "fixed": _Kind(
        FixedConfig,
        lambda c, seed: FixedLink(c.uplink_bps, c.downlink_bps, c.latency_s, c.ue_power_w, c.bs_power_w),
    ),
    "trace": _Kind(TraceConfig, lambda c, seed: TraceLink(c.path, c.ue_power_w, c.bs_power_w)),
    "urban-sub6": _Kind(CellConfig, _cell),
    "iot-lowpower": _Kind(
        CellConfig,
        _cell,
        dict(
            bandwidth_hz=180e3,
            downlink_bandwidth_hz=180e3,
            bs_power_dbm=43.0,
            path_loss_1m_db=12.62,
            radius_m=1000.0,
            max_bits_per_hz=1.0,
            latency_s=0.1,
        ),
    ),
}
"""Channel name → its config class, link and preset defaults."""


@dataclass(frozen=True)
class Channel:
    """A named channel with its config; `simulator(seed)` runs it."""

    name: str
    config: ChannelConfig

    def __post_init__(self) -> None:
        if self.name not in CHANNELS:
            raise ValueError(f"unknown channel {self.name!r}; available: {', '.join(sorted(CHANNELS))}")
        if type(self.config) is not CHANNELS[self.name].config:
            raise TypeError(f"channel {self.name!r} takes a {CHANNELS[self.name].config.__name__}")
        self.simulator()  # validates the link's parameters now, not mid-run

    def simulator(self, seed: int = 0) -> ChannelSimulator:
        """A fresh simulator (placements and fading drawn from `seed`)."""
        c = self.config
        link = CHANNELS[self.name].link(c, seed)
        return ChannelSimulator(link, c.loss_model(), c.compute_model(), c.deadline_s, seed)

    def describe(self) -> str:
        """The channel as `parse` reads it back: the name and every knob that differs from it."""
        kind = CHANNELS[self.name]
        default = kind.config(**kind.preset)
        params = [
            f"{f.name}={getattr(self.config, f.name)}"
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != getattr(default, f.name)
        ]
        return ":".join([self.name, ",".join(params)]) if params else self.name

    @classmethod
    def parse(cls, text: str) -> Channel:
        """Read "name" or "name:key=value,..." (values typed from the config)."""
        return _parse(text)


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> Channel:
    name, params = keyvalue.split(text, "channel")
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; available: {', '.join(sorted(CHANNELS))}")
    return channel(name, **keyvalue.typed(params, CHANNELS[name].config))


def channel(name: str, **params: Any) -> Channel:
    """Look up a channel by name; `params` override its (preset) defaults."""
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; available: {', '.join(sorted(CHANNELS))}")
    kind = CHANNELS[name]
    known = {f.name for f in dataclasses.fields(kind.config)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"channel {name!r} has no parameter {sorted(unknown)}; it has {sorted(known)}")
    return Channel(name, kind.config(**(kind.preset | params)))
