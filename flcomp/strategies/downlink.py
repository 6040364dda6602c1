"""Downlink compression: the server broadcasts compressed model changes to client replicas.

Each client keeps a replica ŵ of the global model in `context.state`, with the
state of its downlink decoder beside it (`flcomp.clients.replica`). At round t the
server encodes the change w(t) − ŵ(t−1) once, with one encoder, and decodes it
with one *mirror* decoder: the decoder every up-to-date client holds. It advances
its own replica by the decoded change and sends that one payload, the same bytes,
to every client whose replica is at version t−1, which applies it the same way.

Any codec works, stateful ones included, so both directions can run the same
scheme: the encoder's error feedback is the server's error memory (two-way error
feedback, Zheng et al. 2019), and shared state such as SignXOR's previous signs
lives in the encoder and the mirror, and in each up-to-date client's decoder.

A client whose replica is older (it skipped rounds, it is new, its last message
failed or was lost) gets a *key frame* instead: the replica ŵ(t) in full plus the
mirror decoder's state (its arrays in the record, its fingerprint in the
instructions), after which it decodes the next payload like everyone else. Both
count as downlink bytes. Clients then train from ŵ(t), and the uplink's w_global
is ŵ(t) on both ends.

Invariant of the server's error memory e (for a codec with error feedback), over
the rounds since the replica started at w(1):

    ŵ(t) + e(t) = w(1) + Σ_{s=2..t} (w(s) − ŵ(s−1))

what the clients hold plus what is still owed is everything the server meant to send.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from flcomp.codecs import Codec, Decoder, Encoder, Stats
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.protocol.snapshot import Snapshot, SnapshotError


class Broadcast:
    """The server's side of the downlink: its encoder and mirror decoder, the replica, what each
    client holds."""

    def __init__(self, codec: Codec, seed: int = 0) -> None:
        self.codec = codec
        self.seed = seed
        self.version = -1
        """The round whose model the replica holds; -1 before the first."""
        self.replica: ArrayRecord | None = None
        self.encoder: Encoder | None = None
        """The server's encoder: its local state is the server's error memory."""
        self.mirror: Decoder | None = None
        """The decoder state of every client whose replica is at `version`."""
        self.payload: bytes | None = None
        """This round's broadcast payload (None when the replica just (re)started)."""
        self.stats: Stats = {}
        """What the encoder reported for this round's payload (`Encoder.last_stats`); empty without one."""
        self._held: dict[int, int] = {}
        """node → replica version it holds (as far as the server knows)."""

    def advance(self, server_round: int, arrays: ArrayRecord) -> None:
        """Move the replica to round `server_round`'s model: encode its change, once for everyone."""
        spec = records.spec_of(arrays)
        if self.replica is None or spec != records.spec_of(self.replica):
            self.replica, self.payload, self.stats = arrays, None, {}
            self.encoder = self.codec.encoder(spec, seed=self.seed)
            self.mirror = self.codec.decoder(spec)
        else:
            keys = records.float_keys(arrays)
            change = [to_numpy(arrays[k]) - to_numpy(self.replica[k]) for k in keys]
            self.payload = self.encoder.encode(change)
            self.stats = dict(self.encoder.last_stats)
            self.encoder.commit()  # the mirror is always delivered
            decoded = self.mirror.decode(self.payload)
            self.mirror.commit()
            self.replica = records.replica_plus(self.replica, dict(zip(keys, decoded)), arrays)
        self.version = server_round

    def record_for(self, node: int) -> ArrayRecord:
        """What `node` receives: the payload if its replica is one version behind, else a key frame."""
        behind = self._held.get(node) == self.version - 1 and self.payload is not None
        self._held[node] = self.version
        if behind:
            raw = {k: a for k, a in self.replica.items() if not records.is_float(a)}
            return ArrayRecord({**raw, records.PAYLOAD: records.payload_array(self.codec, self.payload)})
        state = {k: v for k, v in self.mirror.state_dict().items() if k != "fingerprint"}
        return ArrayRecord(
            dict(self.replica.items()) | {records.STATE_PREFIX + k: from_numpy(v) for k, v in state.items()}
        )

    def instructions(self, record: ArrayRecord) -> dict:
        """The ConfigRecord entries that go with `record`: the codec, the replica version it
        describes, the version a payload applies to (-1 for a key frame) and, with a key frame,
        the mirror decoder's fingerprint."""
        out = {records.DOWNLINK: self.codec.describe(), records.DOWNLINK_VERSION: self.version}
        if records.PAYLOAD in record:
            return out | {records.DOWNLINK_BASE: self.version - 1}
        return out | {records.DOWNLINK_BASE: -1, records.DOWNLINK_FINGERPRINT: self.mirror.fingerprint}

    def state_bytes(self) -> int:
        """Bytes of the arrays the broadcast holds, once for all clients: the replica, the
        encoder's state (the server's error memory) and the mirror decoder's."""
        if self.replica is None:
            return 0
        return records.record_nbytes(self.replica) + self.encoder.state_bytes + self.mirror.state_bytes

    def forget(self, node: int) -> None:
        """`node` may not hold the latest replica (its reply failed), or the server forgets it
        (it left, or its state was evicted): its next message is a key frame."""
        self._held.pop(node, None)

    def state_dict(self) -> Snapshot:
        """The version, the replica, this round's payload and stats, what each node holds, and
        the encoder's (the server's error memory, pending step included) and the mirror's states."""
        s = Snapshot()
        for name in ("version", "replica", "payload", "stats"):
            s.put_value(name, getattr(self, name))
        s.put_value("held", self._held)
        if self.encoder is not None:
            s.put_state("encoder", self.encoder.state_dict())
            s.put_state("mirror", self.mirror.state_dict())
        return s

    def load_state_dict(self, state: Snapshot) -> None:
        """Restore `state_dict()`'s state (saved with the same codec and seed); SnapshotError
        (a ValueError) when it does not fit."""
        replica = state.value("replica")
        encoder = mirror = None
        if replica is not None:
            spec = records.spec_of(replica)
            encoder, mirror = self.codec.encoder(spec, seed=self.seed), self.codec.decoder(spec)
            try:
                encoder.load_state_dict(state.state("encoder"))
                mirror.load_state_dict(state.state("mirror"))
            except ValueError as e:
                raise SnapshotError(f"downlink state: {e}") from None
        self.version, self.payload = int(state.value("version")), state.value("payload")
        self.stats, self._held = dict(state.value("stats")), dict(state.value("held"))
        self.replica, self.encoder, self.mirror = replica, encoder, mirror
