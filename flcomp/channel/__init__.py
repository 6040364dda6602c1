"""flcomp.channel: wireless links, losses, a virtual clock and energy. Pure NumPy/SciPy.

    from flcomp.channel import Channel, ClientLoad
    sim = Channel.parse("urban-sub6:deadline_s=2").simulator(seed=0)
    report = sim.run_round(1, {k: ClientLoad(downlink_bits=8e6, uplink_bits=1e6) for k in range(10)})
    report.seconds, report.delivered, report.energy_j

Clients are keyed by stable ids; everything is seeded and deterministic.
"""

from flcomp.channel.links import CellLink, FixedLink, IdealLink, LinkModel, LinkQuality, TraceLink
from flcomp.channel.loss import Erasure, Lossless, LossModel, PacketErrors, Transmission
from flcomp.channel.presets import (
    CHANNELS,
    CellConfig,
    Channel,
    ChannelConfig,
    FixedConfig,
    TraceConfig,
    channel,
)
from flcomp.channel.simulator import ChannelSimulator, ClientLoad, ClientOutcome, ComputeModel, RoundReport

__all__ = [
    "CHANNELS",
    "CellConfig",
    "CellLink",
    "Channel",
    "ChannelConfig",
    "ChannelSimulator",
    "ClientLoad",
    "ClientOutcome",
    "ComputeModel",
    "Erasure",
    "FixedConfig",
    "FixedLink",
    "IdealLink",
    "LinkModel",
    "LinkQuality",
    "LossModel",
    "Lossless",
    "PacketErrors",
    "RoundReport",
    "TraceConfig",
    "TraceLink",
    "Transmission",
    "channel",
]
