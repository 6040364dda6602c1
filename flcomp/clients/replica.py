"""The client's model replica, kept up to date by compressed broadcasts (see flcomp.strategies.downlink).

`context.state` holds the replica (an ArrayRecord), its version (the round whose
model it is) and the downlink decoder's state: its arrays, and its fingerprint
beside the version. Payloads (one a round, or a catch-up of several) advance both; a key
frame replaces both.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context

from flcomp.codecs import Codec, Decoder, PayloadError
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy

_REPLICA = records.CLIENT_STATE_PREFIX + "replica"
_REPLICA_META = records.CLIENT_STATE_PREFIX + "replica.meta"
_DECODER = records.CLIENT_STATE_PREFIX + "replica.decoder"


def receive_broadcast(record: ArrayRecord, config: ConfigRecord, context: Context) -> ArrayRecord:
    """The model a train instruction describes: a key frame's replica, or the stored one, advanced
    by the message's payloads in turn (a catch-up; none, one or several). Stores the result and
    the decoder state as the new ones.

    Raises ValueError when the payloads apply to a replica version or a decoder state this
    client does not hold, or the message is malformed; the server then sends it a key frame
    next time.
    """
    codec = Codec.parse(str(config[records.DOWNLINK]))
    payloads = _payloads(record, int(config[records.DOWNLINK_PAYLOADS]))
    # The payloads apply to version `base`; without any, the message brings version `version`.
    base, version = int(config[records.DOWNLINK_BASE]), int(config[records.DOWNLINK_VERSION])
    start = base if payloads else version
    if any(records.is_float(a) for k, a in record.items() if _is_model_key(k)):
        (replica, decoder), held = _key_frame(record, config, codec), start
    else:
        replica, decoder, held = _held(context, codec)
    if held != start:
        raise ValueError(f"stale replica: the broadcast applies to version {start}, this client holds {held}")
    keys = records.float_keys(replica)
    for payload in payloads:
        try:
            change = decoder.decode(payload)
        except PayloadError as e:
            raise ValueError(f"stale downlink state: {e}") from e
        decoder.commit()
        replica = records.replica_plus(replica, dict(zip(keys, change)), record)
    context.state[_REPLICA] = replica
    context.state[_DECODER] = ArrayRecord(
        {k: from_numpy(v) for k, v in decoder.state_dict().items() if k != "fingerprint"}
    )
    context.state[_REPLICA_META] = ConfigRecord({"version": version, "fingerprint": decoder.fingerprint})
    return replica


def state_bytes(context: Context) -> int:
    """Bytes of the replica's and the downlink decoder's arrays in `context.state` (0 without)."""
    held = context.state.array_records
    return sum(records.record_nbytes(held[k]) for k in (_REPLICA, _DECODER) if k in held)


def _is_model_key(key: str) -> bool:
    return not (key.startswith(records.STATE_PREFIX) or records.is_payload_key(key))


def _payloads(record: ArrayRecord, n: int) -> list[bytes]:
    """The message's n payloads, oldest first; ValueError unless it holds n, under `catch_up_keys(n)`."""
    held = sum(records.is_payload_key(k) for k in record)
    if held != n or any(k not in record for k in records.catch_up_keys(n)):
        raise ValueError(f"malformed downlink message: {n} payloads announced, payload keys {sorted(record)}")
    return [record[k].data for k in records.catch_up_keys(n)]


def _key_frame(record: ArrayRecord, config: ConfigRecord, codec: Codec) -> tuple[ArrayRecord, Decoder]:
    """A key frame's replica (its model arrays) and the decoder its state arrays describe."""
    replica = ArrayRecord({k: a for k, a in record.items() if _is_model_key(k)})
    decoder = codec.decoder(records.spec_of(replica))
    prefix = records.STATE_PREFIX
    state = {k[len(prefix) :]: to_numpy(a) for k, a in record.items() if k.startswith(prefix)}
    decoder.load_state_dict(state | {"fingerprint": int(config[records.DOWNLINK_FINGERPRINT])})
    return replica, decoder


def _held(context: Context, codec: Codec) -> tuple[ArrayRecord, Decoder, int]:
    """The stored replica, its decoder and its version; ValueError if there is none."""
    held = context.state.array_records.get(_REPLICA)
    meta = context.state.config_records.get(_REPLICA_META)
    if held is None or meta is None:
        raise ValueError("stale replica: the broadcast applies to a replica this client does not hold")
    decoder = codec.decoder(records.spec_of(held))
    stored = context.state.array_records.get(_DECODER, ArrayRecord())
    decoder.load_state_dict(
        {k: to_numpy(a) for k, a in stored.items()} | {"fingerprint": int(meta["fingerprint"])}
    )
    return held, decoder, int(meta["version"])
