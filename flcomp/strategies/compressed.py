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

import functools
import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flcomp.channel import Channel
from flcomp.codecs import Codec, DecoderPool, ModelSpec
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.protocol.snapshot import Snapshot, SnapshotError, spec_from_json, spec_to_json
from flcomp.strategies import uplink
from flcomp.strategies.budget import DeadlineBudget
from flcomp.strategies.downlink import DELIVERIES, Broadcast, Delivery, on_air
from flcomp.strategies.network import apply_channel
from flcomp.strategies.replies import ClientIds, check_evaluate, check_train, weight
from flcomp.strategies.sampling import seeded_sampling
from flcomp.strategies.timing import MeasuredUpload, TimedGrid, measure_uploads
from flcomp.strategies.traffic import RoundTraffic

log = logging.getLogger(__name__)

_MODEL_CHANGES_KEPT = 10


class Compressed(Strategy):
    """Wrap `strategy` so that clients upload codec payloads; see the module docstring.

    `codec` is a `Codec` or its text ("topk:ratio=0.01"); `downlink`, if given, the
    codec of the server's broadcast (see `flcomp.strategies.downlink`); `channel`, if
    given, a `flcomp.channel.Channel` or its text ("urban-sub6:deadline_s=2"); `seed`
    seeds the encoders (stochastic codecs), the channel and the inner strategy's node
    sampling (`seeded_sampling`), so two runs with the same seed sample the same nodes
    and send the same bytes over the same links.

    `max_client_states` bounds the clients whose codec state the server holds (decoders; under
    a compressed downlink, which replica version each holds): after each round, if more are
    held, the least recently instructed ones (ties: the lower node id) are evicted as departed
    nodes are. An evicted client that returns is resynchronised by key frames: its encoder's
    fingerprint no longer matches the fresh decoder, and the downlink sends it the replica in
    full. None: no bound (the server's memory grows with every client that ever took part).

    `downlink_delivery` says how the model or the downlink payloads travel: "unicast" (Flower's:
    every message its own transmission, counted per client) or "broadcast" (one transmission a
    round reaches the whole population, counted once; see `flcomp.strategies.downlink`; on a
    channel, sent at the rate the worst listener decodes, `flcomp.channel.simulator`).

    `budget` ("deadline", or a `DeadlineBudget`) gives every instructed client a bit budget
    from its link's planned rate and the channel's deadline (`flcomp.strategies.budget`);
    codecs with a rate knob (top-k, STC, QSGD, the ladder) meet it. It needs a channel with a
    deadline or, in deployment, one of its own ("deadline:deadline_s=30"): budgets then come
    from each client's last round as `start` measured it (`flcomp.strategies.timing`).
    """

    def __init__(
        self,
        strategy: Strategy,
        codec: Codec | str = "fp32",
        downlink: Codec | str | None = None,
        channel: Channel | str | None = None,
        seed: int = 0,
        max_client_states: int | None = None,
        downlink_delivery: Delivery = "unicast",
        budget: DeadlineBudget | str | None = None,
    ) -> None:
        if max_client_states is not None and (
            isinstance(max_client_states, bool)
            or not isinstance(max_client_states, int)
            or max_client_states < 1
        ):
            raise ValueError(f"max_client_states must be an integer ≥ 1 or None, got {max_client_states!r}")
        self.max_client_states = max_client_states
        self.strategy = strategy
        self.codec = _as_codec(codec)
        if downlink_delivery not in DELIVERIES:
            raise ValueError(f"unknown downlink delivery {downlink_delivery!r}; one of {DELIVERIES}")
        self.downlink_delivery = downlink_delivery
        self.broadcast = (
            Broadcast(_as_codec(downlink), seed=seed, delivery=downlink_delivery)
            if downlink is not None
            else None
        )
        """The compressed downlink, or None: clients then receive the model as it is."""
        self.channel = Channel.parse(channel) if isinstance(channel, str) else channel
        self.budget = DeadlineBudget.parse(budget) if isinstance(budget, str) else budget
        """The bit-budget policy (`flcomp.strategies.budget`), or None: every client at its codec's rate."""
        if self.budget is not None:
            self.budget.check_deadline(self.channel)
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
        self.client_ids = ClientIds()
        """Which node holds which stable client id (see `flcomp.strategies.replies.ClientIds`)."""
        self._instructions: dict[int, list[Message]] = {}
        """The train instructions of the round in progress (the grid gives them their message ids)."""
        self._compute_s: dict[int, float] = {}
        """client id → its compute seconds the last time the channel ran it (for the budgets)."""
        self._timing: TimedGrid | None = None  # the grid `start` times rounds with (budgets in deployment)
        self._measured: dict[int, MeasuredUpload] = {}
        """client id → its last round as measured (budgets in deployment; not in `state_dict`)."""
        self._last_instructed: dict[int, int] = {}
        """node → the last round that instructed it: the nodes whose codec state the server keeps
        (decoders, replica versions), the least recent first to go under `max_client_states`."""

    def summary(self) -> None:
        log.info("Compressed uplink: %s", self.codec.describe())
        if self.channel is not None:
            log.info("Simulated channel: %s", self.channel.describe())
        if self.broadcast is not None:
            log.info("Compressed downlink: %s", self.broadcast.codec.describe())
        self.strategy.summary()

    def start(self, grid: Grid, *args: Any, **kwargs: Any) -> Result:
        """Flower's `Strategy.start`; with a budget in deployment, on a grid that times the rounds
        (after a resume each client's first round then has no budget, as a new client's)."""
        if self.budget is not None and self._network is None:
            grid = self._timing = TimedGrid(grid)
        return super().start(grid, *args, **kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._track_model(arrays)
        self._evict_departed(server_round, set(grid.get_node_ids()))
        self._global = arrays
        if self.broadcast is not None:
            self.broadcast.advance(server_round, arrays)
            self._global = self.broadcast.replica  # what clients train from: the uplink's w_global
        with seeded_sampling(self.seed, server_round):
            messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        traffic = self.traffic[server_round] = RoundTraffic()
        if self.broadcast is not None:
            traffic.downlink_stats = dict(self.broadcast.stats)
            traffic.add_downlink_health(*self.broadcast.health)
            if self.broadcast.warning:
                log.warning("round %d: %s", server_round, self.broadcast.warning)
        if messages and self.downlink_delivery == "broadcast":  # on the air once, for everyone
            traffic.add_broadcast(self.broadcast.broadcast_bytes if self.broadcast else on_air(arrays))
        side = self.pool.plan_round(server_round, [str(m.metadata.dst_node_id) for m in messages])
        for m in messages:
            self._instruct(m, server_round, len(messages), side.get(str(m.metadata.dst_node_id)), traffic)
        if self.budget is not None:
            client_of = {node: client for client, node in self.client_ids.holder.items()}
            self.budget.instruct(
                self._network, server_round, messages, traffic, client_of, self._compute_s, self._measured
            )
        self._instructions = {server_round: messages}
        self._last_instructed |= {m.metadata.dst_node_id: server_round for m in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        sent = self._instructions.pop(server_round, [])
        check = check_train(
            replies,
            server_round,
            {m.metadata.message_id: m.metadata.dst_node_id for m in sent},
            self.codec,
            self._global,
            self._weight_key,
            self.client_ids,
        )
        for reason in check.ignored:
            log.warning("round %d: ignored %s", server_round, reason)
        traffic.dropped |= check.refused
        self.client_ids.release(check.silent)
        uploads = check.uploads
        traffic.uploads = {n: (u.client, len(u.payload)) for n, u in uploads.items()}
        if self._timing is not None:
            traffic.measured = measure_uploads(self._timing, uploads)
            self._measured |= {uploads[n].client: m for n, m in traffic.measured.items()}
        traffic.over_budget = sum(
            8 * len(u.payload) > traffic.budgets.get(n, math.inf) for n, u in uploads.items()
        )
        replica_current: set[int] = set()  # dropped, but holding this round's model
        if self._network is not None:
            replica_current = apply_channel(self._network, server_round, traffic, uploads)
            self._compute_s |= {c: o.compute_s for c, o in traffic.channel.clients.items() if o.compute_s > 0}
        accepted = uplink.decode(self.pool, self.codec, self._global, uploads, traffic)
        for node, reason in traffic.dropped.items():
            # Channel losses are the simulated network at work; anything else is a fault.
            level = logging.INFO if reason.startswith("channel: ") else logging.WARNING
            log.log(level, "round %d: client %d dropped: %s", server_round, node, reason)
            if self.broadcast is not None and node not in replica_current:
                self.broadcast.forget(node)  # its replica may not hold this round's model

        self._bound_states(server_round)
        self._count_states(traffic)
        arrays, metrics = None, None
        if sum(weight(m, self._weight_key) for m in accepted):
            arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        elif accepted:
            log.warning(
                "round %d: the accepted clients weigh 0 (%s): the model stays", server_round, self._weight_key
            )
        return self._as_model(server_round, arrays), MetricRecord(
            (dict(metrics) if metrics else {}) | traffic.to_metrics()
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        with seeded_sampling(self.seed, -server_round):
            return list(self.strategy.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        kept, refused = check_evaluate(replies, self._weight_key)
        for node, reason in refused.items():
            log.warning("round %d: evaluation of node %d ignored: %s", server_round, node, reason)
        return self.strategy.aggregate_evaluate(server_round, kept) if kept else None

    @property
    def _weight_key(self) -> str:
        """The metric the inner strategy weighs clients by (Flower's strategies: `weighted_by_key`)."""
        return getattr(self.strategy, "weighted_by_key", "num-examples")

    def _as_model(self, server_round: int, arrays: ArrayRecord | None) -> ArrayRecord | None:
        """The inner strategy's aggregate as a model of the global model's keys and dtypes.

        FedAvg averages integer buffers (BatchNorm's `num_batches_tracked`) into float64:
        they are rounded back to their dtype, so the codecs never see them as floats. An
        aggregate with other keys or shapes, or NaN/Inf, is refused: the model stays.
        """
        if arrays is None:
            return None
        out = {}
        for k, a in self._global.items():
            x = to_numpy(arrays[k]) if k in arrays else None
            if x is None or x.shape != tuple(a.shape) or not np.isfinite(x).all():
                log.error(
                    "round %d: the aggregate's %r is missing, misshapen or not finite: the model stays",
                    server_round,
                    k,
                )
                return None
            out[k] = arrays[k] if x.dtype == np.dtype(a.dtype) else from_numpy(_cast(x, np.dtype(a.dtype)))
        return ArrayRecord(out)

    def _evict_departed(self, server_round: int, connected: set[int]) -> None:
        """Forget the nodes that left the grid: their decoders, replica versions and client ids.
        A node that returns starts afresh (its encoder's next payload becomes a key frame, its
        replica gets a key frame)."""
        departed = set(self._last_instructed) - connected
        self._evict(departed)
        if departed:
            log.info("round %d: %d departed nodes' codec states evicted", server_round, len(departed))
        self.client_ids.release(departed)

    def _bound_states(self, server_round: int) -> None:
        """Evict the least recently instructed nodes' codec states (ties: the lower node id)
        beyond `max_client_states`. Their client ids stay held: they are still connected."""
        excess = len(self._last_instructed) - (self.max_client_states or len(self._last_instructed))
        if excess > 0:
            oldest = sorted(self._last_instructed, key=lambda node: (self._last_instructed[node], node))
            self._evict(oldest[:excess])
            log.info("round %d: %d clients' codec states evicted (max_client_states)", server_round, excess)

    def _evict(self, nodes: Iterable[int]) -> None:
        """Forget the codec state of `nodes`: decoders and replica versions."""
        for node in sorted(nodes):
            self.pool.evict(str(node))
            if self.broadcast is not None:
                self.broadcast.forget(node)
            self._last_instructed.pop(node, None)

    def _count_states(self, traffic: RoundTraffic) -> None:
        """Note in `traffic` the codec state the server holds now (array bytes)."""
        held = self.pool.state_bytes() if self.pool is not None else {}
        traffic.server_state_bytes, traffic.clients_held = sum(held.values()), len(held)
        traffic.downlink_state_bytes = self.broadcast.state_bytes() if self.broadcast is not None else 0

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

    def _instruct(
        self, m: Message, server_round: int, num_clients: int, side: bytes | None, traffic: RoundTraffic
    ) -> None:
        """Add the flcomp instructions to `m` (and, under a compressed downlink, its model
        record), counting what it sends to its node in `traffic`."""
        node = m.metadata.dst_node_id
        instructions = {
            records.CODEC: self.codec.describe(),
            records.FINGERPRINT: self.pool.fingerprint(str(node)),
            records.NUM_CLIENTS: num_clients,
            records.MODEL_CHANGE_SQ: list(self._model_changes),
            records.SEED: self.seed,
            records.ROUND: server_round,
        }
        if self._timing is not None:
            instructions[records.REPORT_SENT_AT] = True
        # Strategies may share one RecordDict among their messages (FedAvg does): each
        # message gets its own, whose changed records are new objects.
        m.content = RecordDict(dict(m.content.items()))
        for key, record in list(m.content.array_records.items()):
            if self.broadcast is not None:
                sent = self.broadcast.send(node)
                m.content[key], unicast, hears = sent.record, sent.unicast_bytes, sent.hears_broadcast
                instructions |= sent.instructions
            else:
                unicast, hears = (on_air(record), False) if self.downlink_delivery == "unicast" else (0, True)
            traffic.add_downlink(node, unicast)
            if hears:
                traffic.hears_broadcast.add(node)
        if side:  # the codec's side information for this client's encoder
            instructions[records.SIDE] = side
            traffic.add_downlink(node, len(side), side=True)
        for key, record in list(m.content.config_records.items()):
            m.content[key] = ConfigRecord(dict(record) | instructions)

    _SNAPSHOT_ATTRIBUTES = (
        "_global",
        "_previous",
        "_model_changes",
        "_last_instructed",
        "_compute_s",
        "client_ids.holder",
    )
    """What `state_dict` saves as it is, by attribute path: ArrayRecords, None, or JSON-able
    values (numbers, text, lists, tuples, sets, deques, dicts with any keys). New plain state
    of the server goes here."""

    def state_dict(self) -> Snapshot:
        """The server's flcomp state between rounds, for a checkpoint: the `_SNAPSHOT_ATTRIBUTES`,
        the decoders' spec and states (every client's, pending steps included; LGC's round plans,
        training window and autoencoder), the downlink (`Broadcast.state_dict`), the simulated
        channel's state, and the codec, downlink, channel and seed it was made with.

        Not in it: `traffic` (past rounds' reports) and the inner strategy, which is the
        caller's to save (FedAvg and FedProx keep no state; FedAdam keeps moments).
        """
        s = Snapshot()
        s.put_value("made_with", self._made_with)
        for path in self._SNAPSHOT_ATTRIBUTES:
            s.put_value(path, functools.reduce(getattr, path.split("."), self))
        if self.pool is not None:
            s.put_value("spec", spec_to_json(self._spec))
            s.put_state("pool", self.pool.state_dict())
        if self.broadcast is not None:
            s.put("broadcast", self.broadcast.state_dict())
        if self._network is not None:
            s.put_value("network", self._network.state_dict())
        return s

    def load_state_dict(self, state: Snapshot) -> None:
        """Restore `state_dict()`'s state into this Compressed, made with the same codec, downlink,
        channel and seed. Raises SnapshotError (a ValueError) when the state does not fit, and
        then changes nothing."""
        made_with = state.value("made_with")
        if made_with != self._made_with:
            raise SnapshotError(f"the state is of {made_with}, this strategy is of {self._made_with}")
        pool = spec = broadcast = network = None
        try:
            if "spec" in state:
                spec = spec_from_json(state.value("spec"))
                pool = self.codec.decoder_pool(spec, seed=self.seed)
                pool.load_state_dict(state.state("pool"))
            if self.broadcast is not None:
                broadcast = Broadcast(self.broadcast.codec, seed=self.seed, delivery=self.downlink_delivery)
                broadcast.load_state_dict(state.part("broadcast"))
            if self._network is not None:
                network = self.channel.simulator(self.seed)
                network.load_state_dict(state.value("network"))
        except ValueError as e:
            raise SnapshotError(f"server state: {e}") from None
        values = {}
        for path in self._SNAPSHOT_ATTRIBUTES:
            current, values[path] = functools.reduce(getattr, path.split("."), self), state.value(path)
            if not (current is None or values[path] is None or type(values[path]) is type(current)):
                raise SnapshotError(f"server state: {path} is a {type(values[path]).__name__}")
        for path, value in values.items():
            *owner, name = path.split(".")
            setattr(functools.reduce(getattr, owner, self), name, value)
        self.pool, self._spec, self.broadcast, self._network = pool, spec, broadcast, network

    @property
    def _made_with(self) -> dict:
        """What a saved state must match: codec, downlink, channel, seed, downlink delivery, budget."""
        return {
            "codec": self.codec.describe(),
            "downlink": self.broadcast.codec.describe() if self.broadcast is not None else None,
            "channel": self.channel.describe() if self.channel is not None else None,
            "seed": self.seed,
            "downlink_delivery": self.downlink_delivery,
            "budget": self.budget.describe() if self.budget is not None else None,
        }


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An aggregated array back in its model dtype (integers rounded to the nearest)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return x > 0.5
    return x.astype(dtype)


def _as_codec(codec: Codec | str) -> Codec:
    return codec if isinstance(codec, Codec) else Codec.parse(codec)
