"""The uplink's decode step: from checked uploads to the plain models the inner strategy aggregates.

Each upload (a reply that passed `flcomp.strategies.replies`) is decoded by that
node's decoder (`DecoderPool.decode_round`) and replaced by the arrays w_global − Δ̂.
A malformed payload, or one whose model w_global − Δ̂ is not finite (a valid payload
of huge values), is dropped from the round (`RoundTraffic.dropped`) with its
decoder's step rolled back; the others' steps are committed.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from flcomp.codecs import Codec, DecoderPool
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.strategies import health
from flcomp.strategies.replies import Upload
from flcomp.strategies.traffic import RoundTraffic


def decode(
    pool: DecoderPool, codec: Codec, model: ArrayRecord, uploads: dict[int, Upload], traffic: RoundTraffic
) -> list[Message]:
    """Decode the round's uploads (node → upload, in client order) and commit them; return the
    accepted replies, each holding w_global − Δ̂ instead of its payload, in the same order.
    Counts them (and their stats) in `traffic`, the dropped ones in `traffic.dropped`."""
    decoded = pool.decode_round({str(node): u.payload for node, u in uploads.items()})
    w_global = {k: to_numpy(model[k]) for k in records.float_keys(model)}
    accepted = []
    for node, upload in uploads.items():
        if str(node) in decoded.errors:
            traffic.dropped[node] = f"malformed payload: {decoded.errors[str(node)]}"
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # refused just below
            local = {k: w - d for (k, w), d in zip(w_global.items(), decoded.updates[str(node)])}
        if not all(np.isfinite(w).all() for w in local.values()):
            pool.rollback(str(node))
            traffic.dropped[node] = "the decoded update takes the model to NaN or Inf"
            continue
        pool.commit(str(node))
        _replace_with_model(upload.reply, model, local)
        accepted.append(upload.reply)
        traffic.add_accepted(node, [upload.metrics], codec.compressor_class.stats)
        if (delta := health.contraction(decoded.updates[str(node)])) is not None:
            traffic.uplink_contractions.append(delta)
    return accepted


def _replace_with_model(reply: Message, model: ArrayRecord, local: dict[str, np.ndarray]) -> None:
    """Turn a reply's payload into the model arrays w_global − Δ̂ the inner strategy expects;
    its non-float arrays stay as the client sent them."""
    key, record = records.the_record(reply.content.array_records.items())
    arrays = {}
    for k, a in model.items():
        if k in local:
            arrays[k] = from_numpy(local[k].astype(np.dtype(a.dtype), copy=False))
        else:
            arrays[k] = record[k]
    reply.content[key] = ArrayRecord(arrays)
