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

A client whose replica is older (it skipped rounds) gets a *catch-up*: the payloads
it missed, oldest first, which it decodes in turn exactly as the mirror did, so its
replica and decoder state end bit for bit where the mirror's are. The server keeps
the latest payloads up to one key frame's bytes (a longer catch-up is never cheaper;
under broadcast delivery `Broadcast.BROADCAST_HISTORY` key frames').
A client the catch-up cannot reach (it is new, its last message failed or was
lost, it was evicted) gets a *key frame* instead: the replica ŵ(t) in full plus
the mirror decoder's state (its arrays in the record, its fingerprint in the
instructions), after which it decodes the next payload like everyone else.
Clients then train from ŵ(t), and the uplink's w_global is ŵ(t) on both ends.

Delivery ("unicast", the default, or "broadcast") says what the downlink's bytes are:
- unicast: every message is its own transmission (Flower's own model): each client's
  payloads, catch-up or key frame count as its downlink bytes;
- broadcast: one transmitter reaches the whole population (a cell's base station):
  each round's payload goes on the air once, and every client of the population
  receives it, trained that round or not. The replica's starting model is broadcast
  once too. The simulation hands a sampled client the broadcasts it received since
  its last round (a catch-up, from the starting model for one not seen yet), so
  only key frames, for the clients the kept payloads no longer reach, count per
  client: the accounting errs towards more bytes, never fewer.

Invariant of the server's error memory e (for a codec with error feedback), over
the rounds since the replica started at w(1):

    ŵ(t) + e(t) = w(1) + Σ_{s=2..t} (w(s) − ŵ(s−1))

what the clients hold plus what is still owed is everything the server meant to send.
"""

from __future__ import annotations

from collections import deque
from typing import Literal, NamedTuple

import numpy as np
from flwr.app import ArrayRecord

from flcomp.codecs import Codec, Decoder, Encoder, Stats
from flcomp.codecs.wrappers.error_feedback import ErrorFeedback
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.protocol.snapshot import Snapshot, SnapshotError
from flcomp.strategies import health

Delivery = Literal["unicast", "broadcast"]
DELIVERIES: tuple[Delivery, ...] = ("unicast", "broadcast")
"""How the downlink's bytes travel (see the module docstring); "unicast" is Flower's own."""


class Sent(NamedTuple):
    """What the server sends one client: the record, its flcomp instructions, the bytes that count
    as that client's own downlink (all of the record's under unicast delivery), and whether it
    needs this round's broadcast (broadcast delivery)."""

    record: ArrayRecord
    instructions: dict
    unicast_bytes: int
    hears_broadcast: bool = False


def on_air(record: ArrayRecord) -> int:
    """The bytes a record's arrays put on the link (their data, as Flower carries it)."""
    return sum(len(a.data) for a in record.values())


class Broadcast:
    """The server's side of the downlink: its encoder and mirror decoder, the replica, the latest
    payloads, what each client holds."""

    BROADCAST_HISTORY = 16
    """Under broadcast delivery, the payloads kept for catch-ups, in key frames' bytes (under
    unicast one: a longer catch-up is never cheaper than a key frame). Every client received
    every broadcast, so a client the kept payloads no longer reach costs a key frame only
    because the simulation let them go: at 16, 32 rounds of fp16 payloads (half a model each)
    or hundreds of sparse ones; raise it for long absences, at that many models of memory."""

    def __init__(self, codec: Codec, seed: int = 0, delivery: Delivery = "unicast") -> None:
        if delivery not in DELIVERIES:
            raise ValueError(f"unknown downlink delivery {delivery!r}; one of {DELIVERIES}")
        self.codec = codec
        self.seed = seed
        self.delivery = delivery
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
        self.contraction: float | None = None
        """δ of the vector the encoder compressed this round: the change plus the server's error memory
        (`flcomp.strategies.health`); None in a round without a payload, for a lossless codec or a
        zero vector."""
        self.memory_norm: float | None = None
        """‖e‖₂ of the server's error memory after this round's payload; None in a round without one
        or for a codec without error feedback."""
        self.step_norm: float | None = None
        """‖decoded change‖₂ of this round's payload (what the replicas moved by); None without one."""
        self.watch = health.MemoryWatch()
        """Whether the server's error memory keeps growing (restarts with the replica)."""
        self.warning: str | None = None
        """What to log in the round the watch fires (once), else None."""
        self.broadcast_bytes = 0
        """Broadcast delivery: the bytes this round put on the air once for everyone (the payload
        and the model's non-float arrays; the starting model in the round the replica started)."""
        self._history: deque[tuple[int, bytes]] = deque()
        """(version it applies to, payload) of the latest payloads, oldest first, each applying to
        the replica the one before it made: at most one key frame's bytes (`BROADCAST_HISTORY`)."""
        self._start: tuple[int, ArrayRecord] | None = None
        """Broadcast delivery: the version and model the replica started from, while the kept
        payloads reach back to it (every client of the population received it)."""
        self._held: dict[int, int] = {}
        """node → replica version it holds (as far as the server knows)."""

    def advance(self, server_round: int, arrays: ArrayRecord) -> None:
        """Move the replica to round `server_round`'s model: encode its change, once for everyone."""
        spec = records.spec_of(arrays)
        if self.replica is None or spec != records.spec_of(self.replica):
            self.replica, self.payload, self.stats = arrays, None, {}
            self.contraction = self.memory_norm = self.step_norm = self.warning = None
            self.watch = health.MemoryWatch()
            self.encoder = self.codec.encoder(spec, seed=self.seed)
            self.mirror = self.codec.decoder(spec)
            self._history.clear()
            self._held.clear()
            broadcasting = self.delivery == "broadcast"
            self._start = (server_round, arrays) if broadcasting else None
            self.broadcast_bytes = on_air(self._key_frame(arrays, self.mirror)) if broadcasting else 0
        else:
            keys = records.float_keys(arrays)
            change = [to_numpy(arrays[k]) - to_numpy(self.replica[k]) for k in keys]
            memory = self._memory()
            if not self.codec.compressor_class.lossless:  # a lossless downlink leaves nothing behind
                compressed = [c.reshape(-1) + e for c, e in zip(change, memory)] if memory else change
                self.contraction = health.contraction(compressed)
            self.payload = self.encoder.encode(change)
            self.stats = dict(self.encoder.last_stats)
            self.encoder.commit()  # the mirror is always delivered
            decoded = self.mirror.decode(self.payload)
            self.mirror.commit()
            memory = self._memory()
            self.memory_norm = health.norm(memory) if memory else None
            self.step_norm = health.norm(decoded)
            self.warning = self.watch.warning if self.watch.observe(self.memory_norm) else None
            self.replica = records.replica_plus(self.replica, dict(zip(keys, decoded)), arrays)
            self._history.append((self.version, self.payload))
            self._trim()
            if self.delivery == "broadcast":
                self.broadcast_bytes = len(self.payload) + on_air(self._raw())
        self.version = server_round

    def send(self, node: int) -> Sent:
        """What `node` receives this round: the payloads since the version it holds (a catch-up;
        one payload when it is one round behind), else a key frame."""
        held, start = self._held.get(node), None
        if held is None and self._start is not None:
            held, start = self._start  # broadcast delivery: it received the starting model
        chain = self._since(held)
        self._held[node] = self.version
        if chain is None:
            record = self._key_frame(self.replica, self.mirror)
            config = {
                records.DOWNLINK_BASE: -1,
                records.DOWNLINK_FINGERPRINT: self.mirror.fingerprint,
                records.DOWNLINK_PAYLOADS: 0,
            }
            return Sent(record, self._config() | config, on_air(record))
        arrays = {}
        config = {records.DOWNLINK_BASE: held, records.DOWNLINK_PAYLOADS: len(chain)}
        if start is not None:  # the starting model first: the round's own non-float arrays replace its
            fresh = self.codec.decoder(records.spec_of(start))
            arrays = dict(self._key_frame(start, fresh).items())
            config[records.DOWNLINK_FINGERPRINT] = fresh.fingerprint
        arrays |= self._raw() | {
            k: records.payload_array(self.codec, p) for k, p in zip(records.catch_up_keys(len(chain)), chain)
        }
        record = ArrayRecord(arrays)
        if self.delivery == "unicast":
            return Sent(record, self._config() | config, on_air(record))
        return Sent(record, self._config() | config, 0, hears_broadcast=bool(chain) or start is not None)

    @property
    def health(self) -> tuple[float | None, float | None, float | None]:
        """This round's (contraction, memory_norm, memory_ratio), for `RoundTraffic.add_downlink_health`."""
        return self.contraction, self.memory_norm, self.memory_ratio

    @property
    def memory_ratio(self) -> float | None:
        """‖e‖₂ / ‖decoded change‖₂ after this round's payload: the server's memory relative to its
        step; None without error feedback or a payload, or when the decoded change is zero."""
        if self.memory_norm is None or not self.step_norm:
            return None
        return self.memory_norm / self.step_norm

    def state_bytes(self) -> int:
        """Bytes the broadcast holds, once for all clients: the replica, the encoder's state (the
        server's error memory), the mirror decoder's, the kept payloads and the starting model."""
        if self.replica is None:
            return 0
        held = records.record_nbytes(self.replica) + self.encoder.state_bytes + self.mirror.state_bytes
        held += sum(len(p) for _, p in self._history)
        return held + (records.record_nbytes(self._start[1]) if self._start is not None else 0)

    def forget(self, node: int) -> None:
        """`node` may not hold the latest replica (its reply failed), or the server forgets it
        (it left, or its state was evicted): its next message is a key frame (under broadcast
        delivery, while the kept payloads reach back to the starting model, the catch-up from it)."""
        self._held.pop(node, None)

    def _since(self, held: int | None) -> list[bytes] | None:
        """The kept payloads from version `held` to the replica's, oldest first ([] if it holds the
        replica); None if they do not reach back to `held`."""
        if held == self.version:
            return []
        bases = [v for v, _ in self._history]
        if held not in bases:
            return None
        return [p for _, p in list(self._history)[bases.index(held) :]]

    def _trim(self) -> None:
        """Keep the latest payloads up to one key frame's bytes (`BROADCAST_HISTORY` under broadcast
        delivery; this round's at least); drop the starting model when they no longer reach it."""
        limit = records.record_nbytes(self.replica) + self.mirror.state_bytes
        limit *= self.BROADCAST_HISTORY if self.delivery == "broadcast" else 1
        kept = sum(len(p) for _, p in self._history)
        while kept > limit and len(self._history) > 1:  # this round's payload stays, whatever its size
            kept -= len(self._history.popleft()[1])
        if self._start is not None and (not self._history or self._history[0][0] != self._start[0]):
            self._start = None

    def _memory(self) -> list[np.ndarray] | None:
        """The server's error memory (the encoder's), one flat array per tensor; None without one."""
        return ErrorFeedback.memory(self.encoder.compressor, self.encoder.local)

    def _raw(self) -> dict:
        """The replica's non-float arrays: they travel with every payload as they are."""
        return {k: a for k, a in self.replica.items() if not records.is_float(a)}

    def _key_frame(self, replica: ArrayRecord, decoder: Decoder) -> ArrayRecord:
        """`replica` in full and `decoder`'s state arrays (its fingerprint goes in the instructions)."""
        state = {k: v for k, v in decoder.state_dict().items() if k != "fingerprint"}
        return ArrayRecord(
            dict(replica.items()) | {records.STATE_PREFIX + k: from_numpy(v) for k, v in state.items()}
        )

    def _config(self) -> dict:
        """The instructions every downlink message carries: the codec and the version it brings."""
        return {records.DOWNLINK: self.codec.describe(), records.DOWNLINK_VERSION: self.version}

    def state_dict(self) -> Snapshot:
        """The version, the replica, this round's payload, stats and broadcast bytes, the kept
        payloads, the starting model, what each node holds, and the encoder's (the server's error
        memory, pending step included) and the mirror's states."""
        s = Snapshot()
        for name in ("version", "replica", "payload", "stats", "broadcast_bytes"):
            s.put_value(name, getattr(self, name))
        s.put_value("held", self._held)
        s.put_value("history", self._history)
        s.put_value("start_version", self._start[0] if self._start is not None else None)
        s.put_value("start", self._start[1] if self._start is not None else None)
        if self.encoder is not None:
            s.put_state("encoder", self.encoder.state_dict())
            s.put_state("mirror", self.mirror.state_dict())
        return s

    def load_state_dict(self, state: Snapshot) -> None:
        """Restore `state_dict()`'s state (saved with the same codec, seed and delivery);
        SnapshotError (a ValueError) when it does not fit."""
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
        history, start = state.value("history"), state.value("start")
        if not (isinstance(history, deque) and all(_is_entry(e) for e in history)):
            raise SnapshotError("downlink state: the kept payloads are not (version, bytes) pairs")
        self.version, self.payload = int(state.value("version")), state.value("payload")
        self.stats, self._held = dict(state.value("stats")), dict(state.value("held"))
        self.broadcast_bytes = int(state.value("broadcast_bytes"))
        self._history = history
        self._start = (int(state.value("start_version")), start) if start is not None else None
        self.replica, self.encoder, self.mirror = replica, encoder, mirror


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], int)
        and isinstance(entry[1], bytes)
    )
