"""Clients' codec state kept out of Flower's per-message Context, in a run's directory.

`compression_mod` keeps a client's codec state (its encoder: error-feedback memory,
shared state, the pending step; under a compressed downlink its replica and downlink
decoder) in `context.state`, under keys that start with `records.CLIENT_STATE_PREFIX`.
In a simulation that Context travels with every message: Flower's Ray engine ships it
to the actor that runs the client and back, and `InlineGrid` holds every node's in
memory. `ClientStore`, the outermost mod of a simulated ClientApp, keeps that state in
a file per client instead:

    <directory>/<partition-id>.state     b"FLC2", CRC-32 of the rest (u32 LE), then:
        u32 LE   length of the index
        index    JSON: {"small": bytes of the small records,
                        "arrays": {record key: [[name, dtype, shape, stype, bytes], ...]}}
        small    the records that are not ArrayRecords (ConfigRecords, MetricRecords) as
                 Flower's own protobuf RecordDict (no pickle)
        arrays   each ArrayRecord's Arrays' bytes as they are, in the index's order

(a simulated run's `directory` is results/<run>/client-state/, `STORE_DIR`).

Before a train instruction reaches the inner mods it moves the client's stored records
into `context.state`; after the reply (or an exception) it moves them back out, so the
Context holds none of them between rounds. The Arrays' bytes are written and read as they
are, not through protobuf (at 1,000 clients a round, every copy and parse shows).
Files, not a per-process dict, so that every
Ray actor on the machine sees the same state whichever actor Ray runs a client on, and
runs stay reproducible.

A client whose entry is missing (a cluster of several machines without shared storage,
a deleted directory) or unreadable starts with an empty state, as a new client does: its
encoder's fingerprint no longer matches the server's decoder, so `Encoder.sync` makes
its next payload a key frame, and the server sends its replica in full (its replica
version no longer answers a payload, `receive_broadcast` refuses it, and the failed
reply makes the server forget the version it held).

The store lasts one run: it is cleared when a run starts (`flcomp.sim.checkpoint.start_fresh`),
when it finishes (`flcomp.sim.runner.run`), or resumes (`prepare_resume`: the checkpoint's
`ClientSnapshots`, inside this mod, then restores each client's state from before the
checkpoint's round). Writes are not flushed to disk: no later run reads them. Messages
without an flcomp codec (evaluation, a plain strategy's rounds) leave the store alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto
from google.protobuf.message import DecodeError
from isal.isal_zlib import crc32

from flcomp.protocol import records

log = logging.getLogger(__name__)

STORE_DIR = "client-state"
"""The store's directory inside a run's results directory (`flcomp.sim.apps.client_app`)."""
_MAGIC = b"FLC2"
_HEADER = struct.Struct("<4sI")
_INDEX_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class ClientStore:
    """A ClientApp mod that keeps each client's flcomp state in `directory` (see the module
    docstring), keyed by its partition-id (else its node id)."""

    directory: Path

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        flcomp = any(records.CODEC in c for c in msg.content.config_records.values())
        if msg.metadata.message_type != MessageType.TRAIN or not flcomp:
            return call_next(msg, context)  # the state is flcomp's: other messages leave it where it is
        path = self.path(context)
        self._move_in(path, context)
        try:
            return call_next(msg, context)
        finally:
            self._move_out(path, context)

    def path(self, context: Context) -> Path:
        """The file of the state of the client that `context` is for."""
        return self.file(int(context.node_config.get("partition-id", context.node_id)))

    def file(self, client: int) -> Path:
        """The file of client `client`'s state (its partition id)."""
        return Path(self.directory) / f"{client}.state"

    def records(self, client: int) -> RecordDict:
        """What the store holds for a client: FileNotFoundError if nothing, ValueError if damaged."""
        return _parse(self.file(client).read_bytes())

    def clear(self) -> None:
        """Remove every client's stored state (and the directory)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _move_in(path: Path, context: Context) -> None:
        """Put the stored records into `context.state`; none when the entry is missing, and a
        warning when it is unreadable (the client then starts afresh)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        try:
            stored = _parse(data)
        except ValueError as e:
            log.warning("stored client state unusable, the client starts afresh: %s: %s", path, e)
            return
        for key, record in stored.items():
            context.state[key] = record

    @staticmethod
    def _move_out(path: Path, context: Context) -> None:
        """Write the flcomp records of `context.state` to `path` and remove them from it."""
        keys = [k for k in context.state.keys() if k.startswith(records.CLIENT_STATE_PREFIX)]
        if not keys:
            return
        body = _serialise({k: context.state[k] for k in keys})
        path.parent.mkdir(parents=True, exist_ok=True)
        _overwrite(path, _HEADER.pack(_MAGIC, crc32(body)) + body)
        for k in keys:
            del context.state[k]


def _serialise(stored: dict) -> bytes:
    """The body of a state file (see the module docstring) holding the records `stored`."""
    small = RecordDict({k: r for k, r in stored.items() if not isinstance(r, ArrayRecord)})
    small_bytes = recorddict_to_proto(small).SerializeToString()
    arrays, blobs = {}, [small_bytes]
    for key, record in stored.items():
        if isinstance(record, ArrayRecord):
            arrays[key] = [[n, a.dtype, list(a.shape), a.stype, len(a.data)] for n, a in record.items()]
            blobs += [a.data for a in record.values()]
    index = json.dumps({"small": len(small_bytes), "arrays": arrays}).encode()
    return b"".join([_INDEX_LENGTH.pack(len(index)), index, *blobs])


def _overwrite(path: Path, data: bytes) -> None:
    """Write `data` over the file's old bytes, then cut it to length, without flushing (the
    store is rebuilt at every start). Not `open(path, "wb")`: ext4 flushes a file truncated to
    zero when it is closed (auto_da_alloc), a millisecond per client and round. A write cut
    short leaves a file whose CRC-32 fails: that client starts afresh."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _parse(data: bytes) -> RecordDict:
    """The records of a stored file; ValueError when it is not one, or is damaged."""
    if len(data) < _HEADER.size:
        raise ValueError("truncated")
    magic, crc = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size :]
    if magic != _MAGIC or crc32(body) != crc:
        raise ValueError("not a client state file, or damaged (CRC-32)")
    try:
        (length,) = _INDEX_LENGTH.unpack_from(body)
        index = json.loads(bytes(body[_INDEX_LENGTH.size : _INDEX_LENGTH.size + length]))
        offset = _INDEX_LENGTH.size + length
        if not (isinstance(index["small"], int) and 0 <= index["small"] <= len(body) - offset):
            raise ValueError("the small records run past the end of the file")
        proto = RecordDictProto()
        proto.ParseFromString(body[offset : offset + index["small"]])
        stored = recorddict_from_proto(proto)
        offset += index["small"]
        for key, layout in index["arrays"].items():
            record = ArrayRecord()
            for name, dtype, shape, stype, nbytes in layout:
                if not 0 <= nbytes <= len(body) - offset:
                    raise ValueError("an array runs past the end of the file")
                record[name] = Array(
                    dtype=dtype, shape=tuple(shape), stype=stype, data=bytes(body[offset : offset + nbytes])
                )
                offset += nbytes
            stored[key] = record
    except (DecodeError, ValueError, TypeError, KeyError, AttributeError, struct.error) as e:
        raise ValueError(f"unreadable records ({e!r})") from None
    if offset != len(body):
        raise ValueError("the file is longer than its index")
    return stored
