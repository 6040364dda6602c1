"""The client's model replica, kept up to date by compressed broadcasts (see flcomp.strategies.downlink)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context

from flcomp.clients import records
from flcomp.codecs import Codec

_REPLICA = "flcomp.replica"
_REPLICA_META = "flcomp.replica.meta"


def receive_broadcast(record: ArrayRecord, config: ConfigRecord, context: Context) -> ArrayRecord:
    """The model a train instruction describes: `record` itself (a key frame) or the stored
    replica advanced by the payload in it. Stores the result as the new replica.

    Raises ValueError when the payload applies to a replica version this client does not
    hold; the server then sends it a key frame next time.
    """
    base = int(config[records.DOWNLINK_BASE])
    if records.PAYLOAD in record:
        held = context.state.array_records.get(_REPLICA)
        meta = context.state.config_records.get(_REPLICA_META)
        version = int(meta["version"]) if meta is not None else -1
        if held is None or version != base:
            raise ValueError(
                f"stale replica: the broadcast applies to version {base}, this client holds {version}"
            )
        codec = Codec.parse(str(config[records.DOWNLINK]))
        keys = records.float_keys(held)
        change = codec.decoder(records.spec_of(held)).decode(record[records.PAYLOAD].data)
        record = records.replica_plus(held, dict(zip(keys, change)), record)
    context.state[_REPLICA] = record
    context.state[_REPLICA_META] = ConfigRecord({"version": int(config[records.DOWNLINK_VERSION])})
    return record
