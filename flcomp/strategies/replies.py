"""Reply validation: what a client's reply must be before anything on the server changes.

Clients are untrusted and networks lose, delay and repeat messages, so `check_train`
runs every check a train reply can fail before any decoder, binding or model is
touched. A reply is attributed to the node its instruction went to (its `reply_to`:
the SuperLink answers for a node that stopped answering with an error reply whose
sender id is not that node's) and refused, with a logged reason, when it

- answers no instruction of this round (stale, replayed, unknown), or one already answered;
- is an error reply, or comes from another node than the one instructed;
- carries another round's tag (`records.ROUND`, which `compression_mod` echoes);
- lacks the flcomp payload;
- reports a client id that is not a non-negative integer, or one another node holds
  (`ClientIds`);
- reports a weight (`num-examples`) that is not a finite non-negative integer;
- has non-float arrays other than the model's, or of another dtype or shape;
- has other metric keys than the round's other replies (Flower's strategies average
  metrics key by key and refuse a round whose replies differ in them).

Decoding, and the check that w_global − Δ̂ is finite, come after (`flcomp.strategies.uplink`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flcomp.codecs import Codec
from flcomp.protocol import records


class Refused(ValueError):
    """A reply that fails a check; its message says which."""


@dataclass(frozen=True)
class Upload:
    """A train reply that passed every check before decoding."""

    node: int
    """The node its instruction went to."""
    client: int
    """Its stable client id (partition-id)."""
    payload: bytes
    reply: Message

    @property
    def metrics(self) -> MetricRecord:
        return next(iter(self.reply.content.metric_records.values()))


@dataclass
class RoundCheck:
    """The outcome of checking one round's train replies."""

    uploads: dict[int, Upload]
    """node → its upload, in client order (so sums over them are reproducible)."""
    refused: dict[int, str]
    """node → why its reply was refused (an instructed node that sent none included)."""
    silent: set[int]
    """The refused nodes that did not answer: no reply, or an error reply."""
    ignored: list[str]
    """Replies that answer no instruction of the round (stale, replayed, duplicated), described."""


class ClientIds:
    """Which node holds which stable client id (partition-id).

    Simulated channels, encoder seeds and the aggregation order key clients by this id,
    and clients report it themselves, so a node could claim another's. The first node
    to report an id holds it; another node's claim is refused while the holder is
    connected and answering. A holder releases its id when it leaves the grid or fails
    to answer an instruction (`release`), so a restarted device (a new node id, the
    same partition-id) takes its id back from the next round after its old node failed
    or was dropped by the SuperLink.
    """

    def __init__(self) -> None:
        self.holder: dict[int, int] = {}
        """client id → node."""

    def claims(self, uploads: Iterable[Upload]) -> dict[int, str]:
        """The refused claims among a round's uploads (node → reason); holds the others' ids."""
        uploads = list(uploads)
        claimants = Counter(u.client for u in uploads)
        node_ids = {node: client for client, node in self.holder.items()}
        refused = {}
        for u in uploads:
            holder = self.holder.get(u.client)
            if holder is not None and holder != u.node:
                refused[u.node] = f"client id {u.client} is held by node {holder}"
            elif node_ids.get(u.node, u.client) != u.client:
                refused[u.node] = (
                    f"node {u.node} reported client id {node_ids[u.node]} before, now {u.client}"
                )
            elif holder is None and claimants[u.client] > 1:
                refused[u.node] = f"client id {u.client} is claimed by {claimants[u.client]} nodes"
        for u in uploads:
            if u.node not in refused:
                self.holder[u.client] = u.node
        return refused

    def release(self, nodes: Iterable[int]) -> None:
        """The ids these nodes held are free again."""
        gone = set(nodes)
        self.holder = {c: n for c, n in self.holder.items() if n not in gone}


def check_train(
    replies: Iterable[Message],
    server_round: int,
    instructed: Mapping[str, int],
    codec: Codec,
    model: ArrayRecord,
    weight_key: str,
    client_ids: ClientIds,
) -> RoundCheck:
    """Check a round's train replies (see the module docstring). `instructed` maps each
    instruction's message id to its node; `model` is the global model the round's clients
    train from; `weight_key` the metric the inner strategy weighs by. Only `client_ids`
    changes: it holds the ids of the uploads that pass."""
    by_node, ignored, refused = _attribute(replies, instructed)
    silent = set(refused) | {node for node, reply in by_node.items() if reply.has_error()}
    uploads = []
    for node, reply in by_node.items():
        try:
            uploads.append(_upload(node, reply, server_round, codec, model, weight_key))
        except Refused as e:
            refused[node] = str(e)
    uploads = _consistent_metrics(uploads, refused)
    refused |= client_ids.claims(uploads)
    uploads.sort(key=lambda u: (u.client, u.node))
    return RoundCheck({u.node: u for u in uploads if u.node not in refused}, refused, silent, ignored)


def check_evaluate(replies: Iterable[Message], weight_key: str) -> tuple[list[Message], dict[int, str]]:
    """The evaluate replies an inner strategy can aggregate (no error, a valid weight, the
    round's metric keys), and the refused ones' reasons by sender."""
    kept, refused = [], {}
    for reply in replies:
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise Refused(f"client error: {reply.error.reason}")
            _weight(_metrics(reply), weight_key)
            kept.append(reply)
        except Refused as e:
            refused[node] = str(e)
    keys = _round_keys(_metrics(r) for r in kept)
    for reply in kept:
        if set(_metrics(reply).keys()) != keys:
            refused[reply.metadata.src_node_id] = _other_keys(_metrics(reply), keys)
    return [r for r in kept if r.metadata.src_node_id not in refused], refused


def _attribute(
    replies: Iterable[Message], instructed: Mapping[str, int]
) -> tuple[dict[int, Message], list[str], dict[int, str]]:
    """Each reply by the node it answers; the replies that answer nothing (described); the
    instructed nodes without a reply ("no reply"). Without message ids (a Grid that assigns
    none), the sender id is all there is to go by."""
    by_id = all(instructed)
    nodes = set(instructed.values())
    by_node: dict[int, Message] = {}
    ignored = []
    for reply in replies:
        src = reply.metadata.src_node_id
        node = instructed.get(reply.metadata.reply_to_message_id) if by_id else src
        if node not in nodes:
            ignored.append(f"a reply from node {src} answers no instruction of this round")
        elif node in by_node:
            ignored.append(f"a second reply to node {node}'s instruction")
        else:
            by_node[node] = reply
    refused = {node: "no reply" for node in nodes if node not in by_node}
    return by_node, ignored, refused


def _upload(
    node: int, reply: Message, server_round: int, codec: Codec, model: ArrayRecord, weight_key: str
) -> Upload:
    if reply.has_error():
        raise Refused(f"client error: {reply.error.reason}")
    if reply.metadata.src_node_id != node:
        raise Refused(f"the reply to node {node}'s instruction comes from node {reply.metadata.src_node_id}")
    metrics = _metrics(reply)
    answered = metrics.get(records.ROUND)
    if answered != server_round:
        raise Refused(f"the reply answers round {answered!r}, not {server_round} (stale or replayed)")
    try:
        _, arrays = records.the_record(reply.content.array_records.items())
    except ValueError as e:
        raise Refused(str(e)) from e
    payload = arrays.get(records.PAYLOAD)
    if payload is None or payload.stype != records.STYPE_PREFIX + codec.name:
        raise Refused("no flcomp payload in the reply (is compression_mod on the ClientApp?)")
    _check_raw_arrays(arrays, model)
    _weight(metrics, weight_key)
    return Upload(node, _count(metrics.get(records.CLIENT), records.CLIENT), payload.data, reply)


def _check_raw_arrays(arrays: ArrayRecord, model: ArrayRecord) -> None:
    """The reply's arrays beside the payload must be the model's non-float ones, as the model has them."""
    raw = {k: a for k, a in model.items() if not records.is_float(a)}
    extra = sorted(set(arrays) - set(raw) - {records.PAYLOAD})
    if extra:
        raise Refused(f"the reply has arrays the model does not upload as they are: {extra}")
    for k, a in raw.items():
        if k not in arrays:
            raise Refused(f"the reply lacks the non-float array {k!r}")
        got = arrays[k]
        if got.dtype != a.dtype or tuple(got.shape) != tuple(a.shape):
            raise Refused(
                f"array {k!r} is {got.dtype}{list(got.shape)}, the model's {a.dtype}{list(a.shape)}"
            )
        try:
            np.asarray(got.numpy())  # its bytes must hold what its metadata says
        except (ValueError, TypeError) as e:
            raise Refused(f"array {k!r} does not parse: {e}") from e


def _metrics(reply: Message) -> MetricRecord:
    metric_records = list(reply.content.metric_records.values())
    if len(metric_records) != 1:
        raise Refused(f"expected one MetricRecord in the reply, found {len(metric_records)}")
    return metric_records[0]


def weight(reply: Message, key: str) -> int:
    """The weight (`key`, e.g. num-examples) a checked reply reports."""
    return _weight(_metrics(reply), key)


def _weight(metrics: MetricRecord, key: str) -> int:
    return _count(metrics.get(key), key)


def _count(value: object, key: str) -> int:
    """A reported count: a non-negative integer (an integral float too, as Flower's metrics may hold)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"{key} = {value!r} is not a number")
    if not math.isfinite(value) or value != int(value) or not value >= 0:
        raise Refused(f"{key} = {value!r} is not a non-negative integer")
    return int(value)


def _consistent_metrics(uploads: list[Upload], refused: dict[int, str]) -> list[Upload]:
    """The uploads whose metric keys are the round's (the most common set); the others refused."""
    keys = _round_keys(u.metrics for u in uploads)
    for u in uploads:
        if set(u.metrics.keys()) != keys:
            refused[u.node] = _other_keys(u.metrics, keys)
    return [u for u in uploads if u.node not in refused]


def _round_keys(metrics: Iterable[MetricRecord]) -> set[str]:
    """The metric keys most replies of a round have (ties: the first set seen)."""
    counts = Counter(frozenset(m.keys()) for m in metrics)
    return set(counts.most_common(1)[0][0]) if counts else set()


def _other_keys(metrics: MetricRecord, keys: set[str]) -> str:
    got = set(metrics.keys())
    return f"its metrics differ from the round's: extra {sorted(got - keys)}, missing {sorted(keys - got)}"
