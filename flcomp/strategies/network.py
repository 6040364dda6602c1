"""A round on the simulated wireless network (`flcomp.channel`): who it drops.

Each client's real downlink and uplink bytes (and the round's broadcast, under broadcast
delivery), and its training work, go through the channel's links, losses, clock and
deadline. A client whose model or update is lost or late is dropped like a failed
client. The channel keys clients by their stable id (partition-id, checked by
`flcomp.strategies.replies.ClientIds`), so runs with the same seed see the same
placements and fading whatever the codec.
"""

from __future__ import annotations

import math

from flcomp.channel import ChannelSimulator, ClientLoad
from flcomp.protocol import records
from flcomp.strategies.replies import Upload
from flcomp.strategies.traffic import RoundTraffic


def apply_channel(
    network: ChannelSimulator, server_round: int, traffic: RoundTraffic, uploads: dict[int, Upload]
) -> set[int]:
    """Send the round over `network`, keep its report in `traffic.channel` and drop (from
    `uploads`, into `traffic.dropped`) what it loses; return the dropped nodes whose model
    arrived."""
    loads = {}
    for node, upload in uploads.items():
        loads[upload.client] = ClientLoad(
            downlink_bits=8 * traffic.downlink_bytes_by_node.get(node, 0),
            uplink_bits=8 * len(upload.payload),
            samples=int(_reported(upload.metrics.get("num-examples"))),
            measured_compute_s=_reported(upload.metrics.get(records.TRAIN_SECONDS)),
            hears_broadcast=node in traffic.hears_broadcast,
        )
    report = traffic.channel = network.run_round(server_round, loads, 8 * traffic.broadcast_bytes)
    model_arrived = set()
    for node in list(uploads):
        outcome = report.clients[uploads[node].client]
        if not outcome.delivered:
            traffic.dropped[node] = f"channel: {outcome.reason}"
            del uploads[node]
            if not outcome.reason.startswith("downlink"):
                model_arrived.add(node)
    return model_arrived


def _reported(value: object) -> float:
    """A number a client reported; anything but a finite non-negative number counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))
