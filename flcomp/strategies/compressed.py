"""`Compressed`: any Flower strategy, fed by compressed uploads.

    strategy = Compressed(FedAvg(...), codec="topk:ratio=0.01")
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=10)

Each train instruction carries the codec, the fingerprint of that client's decoder
(so the client settles its pending step: delivered payloads are committed on both
ends, lost ones rolled back), the round's client count and the recent model
changes, and any side information the codec's server plans for the encoders
(`DecoderPool.plan_round`, e.g. LGC's roles, index sets and autoencoder weights).
The replies are decoded (`flcomp.strategies.uplink`) and handed to the inner
strategy as plain models, so FedAvg, FedAdam, FedProx, ... aggregate as usual.
With a `downlink` codec the model itself travels compressed
(`flcomp.strategies.downlink`); with a `channel` every round also runs on a
simulated wireless network (`flcomp.strategies.network`), and a client whose model
or update is lost or late is dropped (its encoder rolls the step back at the next
instruction; a lost model costs it a key frame).

What crossed the links joins the round's metrics (`flcomp.strategies.traffic`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flcomp.channel import Channel
from flcomp.codecs import Codec, DecoderPool, ModelSpec
from flcomp.protocol import records
from flcomp.protocol.arrays import to_numpy
from flcomp.strategies import uplink
from flcomp.strategies.downlink import Broadcast
from flcomp.strategies.network import apply_channel
from flcomp.strategies.traffic import RoundTraffic

log = logging.getLogger(__name__)

_MODEL_CHANGES_KEPT = 10


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
        if self.broadcast is not None:
            traffic.downlink_stats = dict(self.broadcast.stats)
        side = self.pool.plan_round(server_round, [str(m.metadata.dst_node_id) for m in messages])
        for m in messages:
            self._instruct(m, len(messages), side.get(str(m.metadata.dst_node_id)), traffic)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        payloads, by_node = uplink.collect(replies, self.codec, self._global, traffic)
        traffic.uplink_bytes = sum(len(p) for p in payloads.values())
        replica_current: set[int] = set()  # dropped, but holding this round's model
        if self._network is not None:
            replica_current = apply_channel(self._network, server_round, traffic, payloads, by_node)
        accepted = uplink.decode(self.pool, self.codec, self._global, payloads, by_node, traffic)
        for node, reason in traffic.dropped.items():
            # Channel losses are the simulated network at work; anything else is a fault.
            level = logging.INFO if reason.startswith("channel: ") else logging.WARNING
            log.log(level, "round %d: client %d dropped: %s", server_round, node, reason)
            if self.broadcast is not None and node not in replica_current:
                self.broadcast.forget(node)  # its replica may not hold this round's model

        arrays, metrics = self.strategy.aggregate_train(server_round, accepted) if accepted else (None, None)
        return arrays, MetricRecord((dict(metrics) if metrics else {}) | traffic.to_metrics())

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

    def _instruct(self, m: Message, num_clients: int, side: bytes | None, traffic: RoundTraffic) -> None:
        """Add the flcomp instructions to `m` (and, under a compressed downlink, its model
        record), counting what it sends to its node in `traffic`."""
        node = m.metadata.dst_node_id
        instructions = {
            records.CODEC: self.codec.describe(),
            records.FINGERPRINT: self.pool.fingerprint(str(node)),
            records.NUM_CLIENTS: num_clients,
            records.MODEL_CHANGE_SQ: list(self._model_changes),
            records.SEED: self.seed,
        }
        # Strategies may share one RecordDict among their messages (FedAvg does): each
        # message gets its own, whose changed records are new objects.
        m.content = RecordDict(dict(m.content.items()))
        for key, record in list(m.content.array_records.items()):
            if self.broadcast is not None:
                record = m.content[key] = self.broadcast.record_for(node)
                instructions |= self.broadcast.instructions(record)
            traffic.add_downlink(node, sum(len(a.data) for a in record.values()))
        if side:  # the codec's side information for this client's encoder
            instructions[records.SIDE] = side
            traffic.add_downlink(node, len(side), side=True)
        for key, record in list(m.content.config_records.items()):
            m.content[key] = ConfigRecord(dict(record) | instructions)


def _as_codec(codec: Codec | str) -> Codec:
    return codec if isinstance(codec, Codec) else Codec.parse(codec)
