"""A round on the simulated wireless network (`flcomp.channel`): who it drops.

Each client's real downlink and uplink bytes, and its training work, go through the
channel's links, losses, clock and deadline. A client whose model or update is lost
or late is dropped like a failed client. The channel keys clients by their stable id
(partition-id), so runs with the same seed see the same placements and fading
whatever the codec.
"""

from __future__ import annotations

from flwr.app import Message

from flcomp.channel import ChannelSimulator, ClientLoad
from flcomp.protocol import records
from flcomp.strategies.traffic import RoundTraffic
from flcomp.strategies.uplink import client_id, first_metrics


def apply_channel(
    network: ChannelSimulator,
    server_round: int,
    traffic: RoundTraffic,
    payloads: dict[str, bytes],
    by_node: dict[str, Message],
) -> set[int]:
    """Send the round over `network`, keep its report in `traffic.channel` and drop (from
    `payloads`, `by_node`, into `traffic.dropped`) what it loses; return the dropped nodes
    whose model arrived."""
    clients = {node: client_id(reply) for node, reply in by_node.items()}
    loads = {}
    for node, reply in by_node.items():
        metrics = first_metrics(reply)
        loads[clients[node]] = ClientLoad(
            downlink_bits=8 * traffic.downlink_bytes_by_node.get(int(node), 0),
            uplink_bits=8 * len(payloads[node]),
            samples=max(0, int(metrics.get("num-examples", 0))),
            measured_compute_s=max(0.0, float(metrics.get(records.TRAIN_SECONDS, 0.0))),
        )
    report = traffic.channel = network.run_round(server_round, loads)
    model_arrived = set()
    for node in list(by_node):
        outcome = report.clients[clients[node]]
        if not outcome.delivered:
            traffic.dropped[int(node)] = f"channel: {outcome.reason}"
            del payloads[node], by_node[node]
            if not outcome.reason.startswith("downlink"):
                model_arrived.add(int(node))
    return model_arrived
