"""The client's model replica, kept up to date by compressed broadcasts (see flcomp.strategies.downlink).

`context.state` holds the replica (an ArrayRecord), its version (the round whose
model it is) and the downlink decoder's state: its arrays, and its fingerprint
beside the version. A payload advances both; a key frame replaces both.
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
    """The model a train instruction describes: a key frame's replica, or the stored replica
    advanced by the payload in `record`. Stores the result and the decoder state as the new ones.

    Raises ValueError when the payload applies to a replica version or a decoder state this
    client does not hold; the server then sends it a key frame next time.
    """
    codec = Codec.parse(str(config[records.DOWNLINK]))
    if records.PAYLOAD in record:
        replica, decoder = _apply_payload(record, config, context, codec)
    else:
        replica = ArrayRecord({k: a for k, a in record.items() if not k.startswith(records.STATE_PREFIX)})
        decoder = codec.decoder(records.spec_of(replica))
        state = {
            k[len(records.STATE_PREFIX) :]: to_numpy(a)
            for k, a in record.items()
            if k.startswith(records.STATE_PREFIX)
        }
        decoder.load_state_dict(state | {"fingerprint": int(config[records.DOWNLINK_FINGERPRINT])})
    context.state[_REPLICA] = replica
    context.state[_DECODER] = ArrayRecord(
        {k: from_numpy(v) for k, v in decoder.state_dict().items() if k != "fingerprint"}
    )
    context.state[_REPLICA_META] = ConfigRecord(
        {"version": int(config[records.DOWNLINK_VERSION]), "fingerprint": decoder.fingerprint}
    )
    return replica


def state_bytes(context: Context) -> int:
    """Bytes of the replica's and the downlink decoder's arrays in `context.state` (0 without)."""
    held = context.state.array_records
    return sum(records.record_nbytes(held[k]) for k in (_REPLICA, _DECODER) if k in held)


def _apply_payload(
    record: ArrayRecord, config: ConfigRecord, context: Context, codec: Codec
) -> tuple[ArrayRecord, Decoder]:
    """The stored replica plus the payload's decoded change, and the decoder that decoded it."""
    base = int(config[records.DOWNLINK_BASE])
    held = context.state.array_records.get(_REPLICA)
    meta = context.state.config_records.get(_REPLICA_META)
    version = int(meta["version"]) if meta is not None else -1
    if held is None or meta is None or version != base:
        raise ValueError(
            f"stale replica: the broadcast applies to version {base}, this client holds {version}"
        )
    decoder = codec.decoder(records.spec_of(held))
    stored = context.state.array_records.get(_DECODER, ArrayRecord())
    decoder.load_state_dict(
        {k: to_numpy(a) for k, a in stored.items()} | {"fingerprint": int(meta["fingerprint"])}
    )
    try:
        change = decoder.decode(record[records.PAYLOAD].data)
    except PayloadError as e:
        raise ValueError(f"stale downlink state: {e}") from e
    decoder.commit()
    keys = records.float_keys(held)
    return records.replica_plus(held, dict(zip(keys, change)), record), decoder
