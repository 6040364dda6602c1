"""The client mod: compress whatever a ClientApp's train function uploads.

    app = ClientApp(mods=[compression_mod])      # nothing else changes in the app

On a train instruction from a `Compressed` strategy, the mod rebuilds the global
model from a compressed broadcast when the server sends one (`receive_broadcast`),
settles its encoder's pending step against the server's decoder fingerprint, lets
the app train, encodes (with the codec's side information, when the server sent any)
Δ = w_global − w_local of the floating-point arrays and replaces the reply's
ArrayRecord with the payload (integer arrays travel as they are). The encoder's
state stays in `context.state` between rounds; the reply's metrics report its bytes
(`records.CLIENT_STATE_BYTES`, the replica's included). Instructions without an flcomp
codec (e.g. evaluation, or a plain strategy) pass through untouched.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from flcomp.clients import encoder_state, replica
from flcomp.codecs import Codec, RoundContext
from flcomp.protocol import records
from flcomp.protocol.arrays import to_numpy


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Encode the update of a train reply; see the module docstring."""
    config = next((c for c in msg.content.config_records.values() if records.CODEC in c), None)
    if msg.metadata.message_type != MessageType.TRAIN or config is None:
        return call_next(msg, context)

    codec = Codec.parse(str(config[records.CODEC]))
    global_key, global_record = records.the_record(msg.content.array_records.items())
    if records.DOWNLINK in config:
        global_record = msg.content[global_key] = replica.receive_broadcast(global_record, config, context)
    keys = records.float_keys(global_record)
    spec = records.spec_of(global_record)
    client = _client_id(context)
    seed = (int(config.get(records.SEED, 0)) * 1_000_003 + client) % 2**63
    encoder = encoder_state.load_encoder(context.state, codec, spec, seed)
    encoder.sync(int(config[records.FINGERPRINT]))

    start = time.perf_counter()
    reply = call_next(msg, context)
    train_seconds = time.perf_counter() - start
    if reply.has_error():
        encoder_state.save_encoder(context.state, codec, spec, encoder)
        return reply

    try:
        reply_key, local_record = records.the_record(reply.content.array_records.items())
        update = _update(global_record, local_record, keys)
    except ValueError as e:
        encoder_state.save_encoder(context.state, codec, spec, encoder)
        return _error(msg, f"the ClientApp's model does not fit the global model: {e}")
    budget = config.get(records.BUDGET_BITS)
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0
    ):
        encoder_state.save_encoder(context.state, codec, spec, encoder)
        return _error(msg, f"the instruction's bit budget {budget!r} is not a number of bits ≥ 0")
    ctx = RoundContext(
        num_clients=max(1, int(config.get(records.NUM_CLIENTS, 1))),
        model_change_sq=tuple(float(c) for c in config.get(records.MODEL_CHANGE_SQ, [])),
        side=bytes(config.get(records.SIDE, b"")),
        budget_bits=None if budget is None else float(budget),
    )
    start = time.perf_counter()
    try:
        payload = encoder.encode(update, ctx)
    except ValueError as e:  # NaN/Inf weights, or an update the codec cannot represent
        encoder_state.save_encoder(context.state, codec, spec, encoder)
        return _error(msg, f"the update cannot be encoded: {e}")
    seconds = time.perf_counter() - start
    encoder_state.save_encoder(context.state, codec, spec, encoder)

    uploaded = {k: a for k, a in local_record.items() if not records.is_float(a)}
    uploaded[records.PAYLOAD] = records.payload_array(codec, payload)
    reply.content[reply_key] = ArrayRecord(uploaded)
    metrics = next(iter(reply.content.metric_records.values()), None)
    if metrics is None:
        metrics = reply.content["metrics"] = MetricRecord()
    metrics[records.CLIENT] = client
    if records.ROUND in config:
        metrics[records.ROUND] = int(config[records.ROUND])
    metrics[records.UPLINK_BYTES] = len(payload)
    metrics[records.ENCODE_SECONDS] = seconds
    metrics[records.TRAIN_SECONDS] = train_seconds
    metrics[records.CLIENT_STATE_BYTES] = encoder.state_bytes + replica.state_bytes(context)
    for name, value in encoder.last_stats.items():
        metrics[records.STAT_PREFIX + name] = float(value)
    if config.get(records.REPORT_SENT_AT) is True:
        metrics[records.SENT_AT] = time.time()  # last: the upload starts when the mod returns
    return reply


def _update(global_record: ArrayRecord, local_record: ArrayRecord, keys: list[str]) -> list[np.ndarray]:
    """Δ = w_global − w_local of the float arrays, in the global model's dtypes; ValueError if the
    local model lacks one or has another shape (NumPy would broadcast a scalar silently)."""
    update = []
    for k in keys:
        if k not in local_record:
            raise ValueError(f"it lacks {k!r}")
        w, local = to_numpy(global_record[k]), to_numpy(local_record[k])
        if local.shape != w.shape or local.dtype.kind != "f":
            raise ValueError(
                f"{k!r} is {local.dtype}{list(local.shape)}, the global model's {w.dtype}{list(w.shape)}"
            )
        update.append((w - local).astype(w.dtype, copy=False))
    return update


def _error(msg: Message, reason: str) -> Message:
    """An error reply to `msg`: the server drops this client from the round, with `reason`."""
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def _client_id(context: Context) -> int:
    """An id that is the same in every run: the `partition-id` that simulation (and a
    well-configured SuperNode) sets, else the node id. Encoder seeds derive from it."""
    return int(context.node_config.get("partition-id", context.node_id))
