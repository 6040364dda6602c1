"""Clients' codec state kept out of Flower's per-message Context, in a run's directory.

`compression_mod` keeps a client's codec state (its encoder: error-feedback memory,
shared state, the pending step; under a compressed downlink its replica and downlink
decoder) in `context.state`, under keys that start with `records.CLIENT_STATE_PREFIX`.
In a simulation that Context travels with every message: Flower's Ray engine ships it
to the actor that runs the client and back, and `InlineGrid` holds every node's in
memory. `ClientStore`, the outermost mod of a simulated ClientApp, keeps that state in
a file per client instead:

    <directory>/<partition-id>.npz, .json     a `flcomp.protocol.snapshot.Snapshot` (no pickle)

(a simulated run's `directory` is results/<run>/client-state/, `STORE_DIR`).

Before a train instruction reaches the inner mods it moves the client's stored records
into `context.state`; after the reply (or an exception) it moves them back out, so the
Context holds none of them between rounds. Files, not a per-process dict, so that every
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
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from flcomp.protocol import records
from flcomp.protocol.snapshot import FORMAT, Snapshot, SnapshotError, load

log = logging.getLogger(__name__)

STORE_DIR = "client-state"
"""The store's directory inside a run's results directory (`flcomp.sim.apps.client_app`)."""
_NAME = "state"
"""The RecordDict's name inside each client's Snapshot."""


@dataclass(frozen=True)
class ClientStore:
    """A ClientApp mod that keeps each client's flcomp state in `directory` (see the module
    docstring), keyed by its partition-id (else its node id)."""

    directory: Path

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        flcomp = any(records.CODEC in c for c in msg.content.config_records.values())
        if msg.metadata.message_type != MessageType.TRAIN or not flcomp:
            return call_next(msg, context)  # the state is flcomp's: other messages leave it where it is
        stem = self.path(context)
        self._move_in(stem, context)
        try:
            return call_next(msg, context)
        finally:
            self._move_out(stem, context)

    def path(self, context: Context) -> Path:
        """The stem of a client's files (`.npz` and `.json` beside it)."""
        return Path(self.directory) / str(int(context.node_config.get("partition-id", context.node_id)))

    def clear(self) -> None:
        """Remove every client's stored state (and the directory)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _move_in(stem: Path, context: Context) -> None:
        """Put the stored records into `context.state`; none when the entry is missing, and a
        warning when it is unreadable (the client then starts afresh)."""
        if not stem.with_suffix(".json").is_file():
            return
        try:
            stored = load(stem).records(_NAME)
        except SnapshotError as e:
            log.warning("stored client state unusable, the client starts afresh: %s", e)
            return
        for key, record in stored.items():
            context.state[key] = record

    @staticmethod
    def _move_out(stem: Path, context: Context) -> None:
        """Write the flcomp records of `context.state` to `stem` and remove them from it."""
        keys = [k for k in context.state.keys() if k.startswith(records.CLIENT_STATE_PREFIX)]
        if not keys:
            return
        s = Snapshot()
        s.put_records(_NAME, RecordDict({k: context.state[k] for k in keys}))
        stem.parent.mkdir(parents=True, exist_ok=True)
        # snapshot.save's format, without its fsyncs: the store is rebuilt at every start.
        index = {k: [v.dtype.str, list(v.shape)] for k, v in s.arrays.items()}
        with open(stem.with_suffix(".npz"), "wb") as f:
            np.savez(f, **s.arrays)
        text = json.dumps({"format": FORMAT, "arrays": index, "meta": s.meta}, allow_nan=False)
        stem.with_suffix(".json").write_text(text + "\n")
        for k in keys:
            del context.state[k]
