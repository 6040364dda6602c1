"""The uplink's decode step: from clients' replies to the plain models the inner strategy aggregates.

Each reply's payload is decoded by that client's decoder (one per node,
`DecoderPool.decode_round`), committed, and replaced by the arrays w_global − Δ̂.
A reply that is an error, lacks a payload or holds a malformed one is dropped
from the round (`RoundTraffic.dropped`) with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from flcomp.codecs import Codec, DecoderPool
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.strategies.traffic import RoundTraffic


def collect(
    replies: Iterable[Message], codec: Codec, model: ArrayRecord, traffic: RoundTraffic
) -> tuple[dict[str, bytes], dict[str, Message]]:
    """The payloads and the replies, by node id (as text), of the replies that hold one; the
    others go to `traffic.dropped`. `model` is the round's global model."""
    payloads, by_node = {}, {}
    for reply in replies:
        node = reply.metadata.src_node_id
        try:
            payloads[str(node)] = _payload(reply, codec, model)
            by_node[str(node)] = reply
        except ValueError as e:
            traffic.dropped[node] = str(e)
    return payloads, by_node


def decode(
    pool: DecoderPool,
    codec: Codec,
    model: ArrayRecord,
    payloads: dict[str, bytes],
    by_node: dict[str, Message],
    traffic: RoundTraffic,
) -> list[Message]:
    """Decode the round's payloads and commit them; return the accepted replies, each holding
    w_global − Δ̂ instead of its payload, in client order (so sums are reproducible). Counts
    them (and their stats) in `traffic`, malformed payloads in `traffic.dropped`."""
    decoded = pool.decode_round(payloads)
    w_global = {k: to_numpy(model[k]) for k in records.float_keys(model)}
    accepted = []
    for node, reply in by_node.items():
        if node in decoded.errors:
            traffic.dropped[int(node)] = f"malformed payload: {decoded.errors[node]}"
            continue
        pool.commit(node)
        _replace_with_model(reply, model, w_global, decoded.updates[node])
        accepted.append(reply)
    accepted.sort(key=_client_order)
    for reply in accepted:
        metrics = list(reply.content.metric_records.values())
        traffic.add_accepted(reply.metadata.src_node_id, metrics, codec.compressor_class.stats)
    return accepted


def client_id(reply: Message) -> int:
    """The client's stable id as its mod reported it, else its node id."""
    ids = [m[records.CLIENT] for m in reply.content.metric_records.values() if records.CLIENT in m]
    return int(ids[0]) if ids else reply.metadata.src_node_id


def first_metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()), MetricRecord())


def _client_order(reply: Message) -> tuple[int, int]:
    return (client_id(reply), reply.metadata.src_node_id)


def _payload(reply: Message, codec: Codec, model: ArrayRecord) -> bytes:
    """The payload bytes of a reply; ValueError saying why there is none."""
    if reply.has_error():
        raise ValueError(f"client error: {reply.error.reason}")
    _, record = records.the_record(reply.content.array_records.items())
    array = record.get(records.PAYLOAD)
    if array is None or array.stype != records.STYPE_PREFIX + codec.name:
        raise ValueError("no flcomp payload in the reply (is compression_mod on the ClientApp?)")
    missing = [k for k, a in model.items() if not records.is_float(a) and k not in record]
    if missing:
        raise ValueError(f"reply lacks the non-float arrays {missing}")
    return array.data


def _replace_with_model(
    reply: Message, model: ArrayRecord, w_global: dict[str, np.ndarray], update: list[np.ndarray]
) -> None:
    """Turn a reply's payload into the arrays w_global − Δ̂ the inner strategy expects.

    `w_global` holds the float arrays of `model`, deserialized once per round.
    """
    key, record = records.the_record(reply.content.array_records.items())
    local = dict(zip(w_global, update))
    arrays = {}
    for k in model.keys():
        if k in local:
            w = w_global[k]
            arrays[k] = from_numpy((w - local[k]).astype(w.dtype, copy=False))
        else:
            arrays[k] = record[k]
    reply.content[key] = ArrayRecord(arrays)
