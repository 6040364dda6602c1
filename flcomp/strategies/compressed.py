"""`Compressed`: any Flower strategy, fed by compressed uploads.

    strategy = Compressed(FedAvg(...), codec="topk:ratio=0.01")
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

Each train instruction carries the codec, the fingerprint of that client's decoder
(so the client settles its pending step: delivered payloads are committed on both
ends, lost ones rolled back), the round's client count and the recent model
changes. Each reply's payload is decoded by that client's decoder (one per node,
`DecoderPool.decode_round`), committed, and handed to the inner strategy as the
plain arrays w_global − Δ̂, so FedAvg, FedAdam, FedProx, ... aggregate as usual.
A client whose reply is an error, lacks a payload or holds a malformed one is
dropped from the round with a logged reason.

Byte counts are the payloads' real lengths, summed over the round (not averaged
like the inner strategy's metrics): `flcomp.uplink-bytes`, and
`flcomp.downlink-bytes` for the model arrays sent (their serialized Array bytes)
plus any side information the codec's server plans for the encoders
(`DecoderPool.plan_round`, e.g. LGC's roles, index sets and autoencoder weights),
which travels in the instruction's ConfigRecord.

With a `channel` (`flcomp.channel`), every round also runs on a simulated wireless
network: each client's real downlink and uplink bytes, and its training work, go
through the channel's links, losses, clock and deadline. A client whose model or
update is lost or late is dropped like a failed client (its encoder rolls the step
back at the next instruction; a lost model costs it a key frame), and the round's
virtual seconds, airtimes and energy join the metrics (`flcomp.virtual-seconds`, ...).
The channel keys clients by their stable id (partition-id), so runs with the same
seed see the same placements and fading whatever the codec.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flcomp.channel import Channel, ClientLoad, RoundReport
from flcomp.codecs import Codec, DecoderPool, ModelSpec
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.strategies.downlink import Broadcast

log = logging.getLogger(__name__)

_MODEL_CHANGES_KEPT = 10


@dataclass
class RoundTraffic:
    """What crossed the links in one training round (bytes are real payload lengths)."""

    uplink_bytes: int = 0
    downlink_bytes: int = 0
    accepted: int = 0
    dropped: dict[int, str] = field(default_factory=dict)
    """node id → why its update was not aggregated."""
    encode_seconds: float = 0.0
    """Summed over the accepted clients, as they reported it."""
    downlink_bytes_by_node: dict[int, int] = field(default_factory=dict)
    side_bytes: int = 0
    """Of downlink_bytes: the codec's side information for the encoders (`DecoderPool.plan_round`)."""
    channel: RoundReport | None = None
    """The round on the simulated network (None without a channel), keyed by client id."""


class Compressed(Strategy):
    """Wrap `strategy` so that clients upload codec payloads; see the module docstring.

    `codec` is a `Codec` or its text ("topk:ratio=0.01"); `downlink`, if given, the
    codec of the server's broadcast (see `flcomp.strategies.downlink`); `channel`, if
    given, a `flcomp.channel.Channel` or its text ("urban-sub6:deadline_s=2"); `seed`
    seeds the encoders (stochastic codecs) and the channel, so two runs with the same
    seed send the same bytes over the same links.
    """

    def __init__(
        self,
        strategy: Strategy,
        codec: Codec | str = "fp32",
        downlink: Codec | str | None = None,
        channel: Channel | str | None = None,
        seed: int = 0,
    ) -> None:
        self.strategy = strategy
        self.codec = _as_codec(codec)
        self.broadcast = Broadcast(_as_codec(downlink), seed=seed) if downlink is not None else None
        """The compressed downlink, or None: clients then receive the model as it is."""
        self.channel = Channel.parse(channel) if isinstance(channel, str) else channel
        self._network = self.channel.simulator(seed) if self.channel is not None else None
        self.seed = seed
        self.pool: DecoderPool | None = None
        self._spec: ModelSpec | None = None
        self.traffic: dict[int, RoundTraffic] = {}
        """Per training round."""
        self._global: ArrayRecord | None = None
        """The model the round's clients train from (the replica under a compressed downlink)."""
        self._previous: ArrayRecord | None = None
        """The previous round's global model, for the model-change history."""
        self._model_changes: deque[float] = deque(maxlen=_MODEL_CHANGES_KEPT)

    def summary(self) -> None:
        log.info("Compressed uplink: %s", self.codec.describe())
        if self.channel is not None:
            log.info("Simulated channel: %s", self.channel.describe())
        if self.broadcast is not None:
            log.info("Compressed downlink: %s", self.broadcast.codec.describe())
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_model(arrays)
        self._global = arrays
        if self.broadcast is not None:
            self.broadcast.advance(server_round, arrays)
            self._global = self.broadcast.replica  # what clients train from: the uplink's w_global
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        traffic = self.traffic[server_round] = RoundTraffic()
        side = self.pool.plan_round(server_round, [str(m.metadata.dst_node_id) for m in messages])
        for m in messages:
            # Strategies may share one RecordDict among their messages (FedAvg does):
            # each message gets its own, whose changed records are new objects.
            node = m.metadata.dst_node_id
            instructions = self._instructions(node, len(messages))
            m.content = RecordDict(dict(m.content.items()))
            for key, record in list(m.content.array_records.items()):
                if self.broadcast is not None:
                    record = m.content[key] = self.broadcast.record_for(node)
                    instructions |= self.broadcast.instructions(record)
                sent = sum(len(a.data) for a in record.values())
                traffic.downlink_bytes += sent
                traffic.downlink_bytes_by_node[node] = traffic.downlink_bytes_by_node.get(node, 0) + sent
            if side.get(str(node)):  # the codec's side information for this client's encoder
                instructions[records.SIDE] = side[str(node)]
                sent = len(side[str(node)])
                traffic.side_bytes += sent
                traffic.downlink_bytes += sent
                traffic.downlink_bytes_by_node[node] = traffic.downlink_bytes_by_node.get(node, 0) + sent
            for key, record in list(m.content.config_records.items()):
                m.content[key] = ConfigRecord(dict(record) | instructions)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        payloads, by_node = {}, {}
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                payloads[str(node)] = self._payload(reply)
                by_node[str(node)] = reply
            except ValueError as e:
                traffic.dropped[node] = str(e)
        traffic.uplink_bytes = sum(len(p) for p in payloads.values())
        replica_current: set[int] = set()  # dropped, but holding this round's model
        if self._network is not None:
            replica_current = self._apply_channel(server_round, traffic, payloads, by_node)

        decoded = self.pool.decode_round(payloads)
        w_global = {k: to_numpy(self._global[k]) for k in records.float_keys(self._global)}
        accepted = []
        for node, reply in by_node.items():
            if node in decoded.errors:
                traffic.dropped[int(node)] = f"malformed payload: {decoded.errors[node]}"
                continue
            self.pool.commit(node)
            self._replace_with_model(reply, w_global, decoded.updates[node])
            accepted.append(reply)
        accepted.sort(key=_client_order)
        traffic.accepted = len(accepted)
        traffic.encode_seconds = sum(
            float(m.get(records.ENCODE_SECONDS, 0.0))
            for r in accepted
            for m in r.content.metric_records.values()
        )
        for node, reason in traffic.dropped.items():
            # Channel losses are the simulated network at work; anything else is a fault.
            level = logging.INFO if reason.startswith("channel: ") else logging.WARNING
            log.log(level, "round %d: client %d dropped: %s", server_round, node, reason)
            if self.broadcast is not None and node not in replica_current:
                self.broadcast.forget(node)  # its replica may not hold this round's model

        arrays, metrics = self.strategy.aggregate_train(server_round, accepted) if accepted else (None, None)
        return arrays, self._round_metrics(metrics, traffic)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def _track_model(self, arrays: ArrayRecord) -> None:
        """Note the model's change since the last round; (re)build the decoders for its spec."""
        spec = records.spec_of(arrays)
        if self.pool is None or spec != self._spec:
            if self.pool is not None:
                log.warning("the model's float arrays changed shape or dtype: codec states restart")
            self.pool, self._spec = self.codec.decoder_pool(spec, seed=self.seed), spec
        if self._previous is not None and spec == records.spec_of(self._previous):
            change = sum(
                float(np.sum((to_numpy(arrays[k]).astype(np.float64) - to_numpy(self._previous[k])) ** 2))
                for k in records.float_keys(arrays)
            )
            self._model_changes.appendleft(change)
        self._previous = arrays

    def _instructions(self, node: int, num_clients: int) -> dict:
        return {
            records.CODEC: self.codec.describe(),
            records.FINGERPRINT: self.pool.fingerprint(str(node)),
            records.NUM_CLIENTS: num_clients,
            records.MODEL_CHANGE_SQ: list(self._model_changes),
            records.SEED: self.seed,
        }

    def _payload(self, reply: Message) -> bytes:
        """The payload bytes of a reply; ValueError saying why there is none."""
        if reply.has_error():
            raise ValueError(f"client error: {reply.error.reason}")
        _, record = records.the_record(reply.content.array_records.items())
        array = record.get(records.PAYLOAD)
        if array is None or array.stype != records.STYPE_PREFIX + self.codec.name:
            raise ValueError("no flcomp payload in the reply (is compression_mod on the ClientApp?)")
        missing = [k for k, a in self._global.items() if not records.is_float(a) and k not in record]
        if missing:
            raise ValueError(f"reply lacks the non-float arrays {missing}")
        return array.data

    def _replace_with_model(
        self, reply: Message, w_global: dict[str, np.ndarray], update: list[np.ndarray]
    ) -> None:
        """Turn a reply's payload into the arrays w_global − Δ̂ the inner strategy expects.

        `w_global` holds the float arrays of the round's model, deserialized once per round.
        """
        key, record = records.the_record(reply.content.array_records.items())
        local = dict(zip(w_global, update))
        arrays = {}
        for k in self._global.keys():
            if k in local:
                w = w_global[k]
                arrays[k] = from_numpy((w - local[k]).astype(w.dtype, copy=False))
            else:
                arrays[k] = record[k]
        reply.content[key] = ArrayRecord(arrays)

    def _apply_channel(
        self,
        server_round: int,
        traffic: RoundTraffic,
        payloads: dict[str, bytes],
        by_node: dict[str, Message],
    ) -> set[int]:
        """Send the round over the simulated network and drop (from `payloads`, `by_node`) what
        it loses; return the dropped nodes whose model arrived."""
        clients = {node: _client_id(reply) for node, reply in by_node.items()}
        loads = {}
        for node, reply in by_node.items():
            metrics = _first_metrics(reply)
            loads[clients[node]] = ClientLoad(
                downlink_bits=8 * traffic.downlink_bytes_by_node.get(int(node), 0),
                uplink_bits=8 * len(payloads[node]),
                samples=max(0, int(metrics.get("num-examples", 0))),
                measured_compute_s=max(0.0, float(metrics.get(records.TRAIN_SECONDS, 0.0))),
            )
        report = traffic.channel = self._network.run_round(server_round, loads)
        model_arrived = set()
        for node in list(by_node):
            outcome = report.clients[clients[node]]
            if not outcome.delivered:
                traffic.dropped[int(node)] = f"channel: {outcome.reason}"
                del payloads[node], by_node[node]
                if not outcome.reason.startswith("downlink"):
                    model_arrived.add(int(node))
        return model_arrived

    def _round_metrics(self, inner: MetricRecord | None, traffic: RoundTraffic) -> MetricRecord:
        metrics = MetricRecord(dict(inner) if inner else {})
        metrics[records.UPLINK_BYTES] = traffic.uplink_bytes
        metrics["flcomp.downlink-bytes"] = traffic.downlink_bytes
        metrics[records.ENCODE_SECONDS] = traffic.encode_seconds
        metrics["flcomp.clients-accepted"] = traffic.accepted
        metrics["flcomp.clients-dropped"] = len(traffic.dropped)
        if traffic.channel is not None:
            r = traffic.channel
            metrics["flcomp.virtual-seconds"] = r.seconds
            metrics["flcomp.clients-delivered"] = r.delivered
            metrics["flcomp.clients-lost"] = r.lost
            metrics["flcomp.uplink-airtime-s"] = r.uplink_airtime_s
            metrics["flcomp.downlink-airtime-s"] = r.downlink_airtime_s
            metrics["flcomp.energy-j"] = r.energy_j
        return metrics


def _first_metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()), MetricRecord())


def _client_id(reply: Message) -> int:
    """The client's stable id as its mod reported it, else its node id."""
    ids = [m[records.CLIENT] for m in reply.content.metric_records.values() if records.CLIENT in m]
    return int(ids[0]) if ids else reply.metadata.src_node_id


def _client_order(reply: Message) -> tuple[int, int]:
    """Aggregation order: the client's stable id, so that sums are reproducible."""
    return (_client_id(reply), reply.metadata.src_node_id)


def _as_codec(codec: Codec | str) -> Codec:
    return codec if isinstance(codec, Codec) else Codec.parse(codec)
