"""Downlink compression: the server broadcasts compressed model changes to client replicas.

Each client keeps a replica ŵ of the global model in `context.state`. At round t
the server encodes the change w(t) − ŵ(t−1) once (the downlink codec, with its
error feedback on the server), adds the decoded change to its own copy of the
replica, and sends that payload to every client whose replica is at version t−1.
A client whose replica is older (it skipped rounds, it is new, its last message
failed) gets a key frame: the replica ŵ(t) itself, in full. Clients then train
from ŵ(t), and the uplink's w_global is ŵ(t) on both ends.

Each payload is a key frame of the codec's wire format, so a client decodes it
with a fresh decoder: downlink codecs must keep no shared state (all the
baselines qualify; error feedback is encoder-local).
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from flcomp.clients import records
from flcomp.clients.arrays import to_numpy
from flcomp.codecs import Codec, Encoder


class Broadcast:
    """The server's side of the downlink: its encoder, the replica, what each client holds."""

    def __init__(self, codec: Codec, seed: int = 0) -> None:
        self.codec = codec
        self.seed = seed
        self.version = -1
        """The round whose model the replica holds; -1 before the first."""
        self.replica: ArrayRecord | None = None
        self._payload: bytes | None = None
        self._encoder: Encoder | None = None
        self._held: dict[int, int] = {}
        """node → replica version it holds (as far as the server knows)."""

    def advance(self, server_round: int, arrays: ArrayRecord) -> None:
        """Move the replica to round `server_round`'s model: encode its change, once for everyone."""
        keys = records.float_keys(arrays)
        if self.replica is None or records.spec_of(arrays) != records.spec_of(self.replica):
            self.replica, self._payload = arrays, None
            self._encoder = self.codec.encoder(records.spec_of(arrays), seed=self.seed)
            if self._encoder.shared:
                raise ValueError(
                    f"downlink codec {self.codec.name!r} keeps shared state; use a stateless one"
                )
        else:
            change = [to_numpy(arrays[k]) - to_numpy(self.replica[k]) for k in keys]
            self._payload = self._encoder.encode(change, key_frame=True)
            self._encoder.commit()
            decoded = self.codec.decoder(records.spec_of(arrays)).decode(self._payload)
            self.replica = records.replica_plus(self.replica, dict(zip(keys, decoded)), arrays)
        self.version = server_round

    def record_for(self, node: int) -> ArrayRecord:
        """What `node` receives: the payload if its replica is one version behind, else the replica."""
        behind = self._held.get(node) == self.version - 1 and self._payload is not None
        self._held[node] = self.version
        if not behind:
            return self.replica
        raw = {k: a for k, a in self.replica.items() if not records.is_float(a)}
        return ArrayRecord({**raw, records.PAYLOAD: records.payload_array(self.codec, self._payload)})

    def base_version(self, record: ArrayRecord) -> int:
        """The replica version a record applies to: version − 1 for a payload, -1 for a key frame."""
        return self.version - 1 if records.PAYLOAD in record else -1

    def forget(self, node: int) -> None:
        """`node` may not hold the latest replica (its reply failed): its next message is a key frame."""
        self._held.pop(node, None)
