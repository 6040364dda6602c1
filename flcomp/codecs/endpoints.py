"""The two ends of a link: `Encoder` (client) and `Decoder` (server), and `DecoderPool`.

Loss-safe protocol. Every `encode` or `decode` is a *pending* step: the new state is
kept aside until the link's outcome is known, then `commit()` (delivered) or
`rollback()` (lost) settles it. Both sides keep a 32-bit *fingerprint* of their
shared state, a hash chain over the CRCs of the payloads they committed:

    fingerprint' = blake2b(fingerprint ‖ payload CRC)[:4]        (0 at the start)

where a step that came with side information from the server (`RoundContext.side`,
planned by `DecoderPool.plan_round`) extends the CRC over those bytes, so the chain
covers it too. Each payload carries the sender's fingerprint, and the decoder refuses
(with `StateMismatchError`) a payload encoded against a state it does not hold. The
recovery is a *key frame*: a payload flagged as depending on no past state, before
which both sides reset their shared state (local state, e.g. error feedback, is kept).

The usual driver: the server commits what it decoded and tells the client its
decoder's fingerprint; the client calls `Encoder.sync(fingerprint)` before its
next encode, which commits or rolls back the pending step to match, and asks for a
key frame when neither matches (an acknowledgement lost in both directions, a
client restored from an old checkpoint).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Stats, Step, StepRng
from flcomp.codecs.errors import PayloadError, ProtocolError, StateMismatchError
from flcomp.codecs.spec import ModelSpec, all_finite
from flcomp.codecs.wire import HEADER_BYTES, Header, PayloadWriter, pack, unpack

INITIAL_FINGERPRINT = 0


def max_payload_bytes(spec: ModelSpec) -> int:
    """An upper bound on any codec's payload for `spec`: 8 bytes an entry, 1 KiB a tensor."""
    return HEADER_BYTES + 64 + 8 * spec.size + 1024 * len(spec)


def arrays_nbytes(*states: State) -> int:
    """The bytes the arrays of `states` hold (their `nbytes`; scalars and bookkeeping not counted)."""
    return sum(int(np.asarray(v).nbytes) for state in states for v in state.values())


def next_fingerprint(fingerprint: int, crc: int) -> int:
    """The fingerprint after committing a payload with CRC `crc`."""
    digest = hashlib.blake2b(
        fingerprint.to_bytes(4, "little") + crc.to_bytes(4, "little"), digest_size=4
    ).digest()
    return int.from_bytes(digest, "little")


@dataclass
class _Pending:
    shared: State
    local: State
    fingerprint: int


class Encoder:
    """Client end of a link: turns updates into payloads, one pending step at a time.

    `seed` makes the codec's randomness (stochastic rounding, random-k) reproducible:
    step n draws from `np.random.default_rng((seed, n))`.
    """

    def __init__(self, compressor: Compressor, seed: int = 0) -> None:
        self.compressor = compressor
        self.seed = seed
        self.shared = compressor.initial_shared()
        self.local = compressor.initial_local()
        self.fingerprint = INITIAL_FINGERPRINT
        self.steps = 0
        """Committed steps."""
        self.key_frame_requested = False
        self.last_stats: Stats = {}
        """What the last `encode` did (`Compressor.stats` names), whatever became of its step."""
        self._pending: _Pending | None = None

    @property
    def pending(self) -> bool:
        """Whether a step awaits `commit()` or `rollback()`."""
        return self._pending is not None

    @property
    def pending_fingerprint(self) -> int | None:
        """The fingerprint the decoder will hold once the pending step is delivered."""
        return None if self._pending is None else self._pending.fingerprint

    @property
    def state_bytes(self) -> int:
        """Bytes of the arrays this encoder holds: shared, local and the pending step's."""
        pending = (self._pending.shared, self._pending.local) if self._pending is not None else ()
        return arrays_nbytes(self.shared, self.local, *pending)

    def encode(
        self,
        update: Sequence[np.ndarray],
        ctx: RoundContext = RoundContext(),
        key_frame: bool = False,
    ) -> bytes:
        """Encode one update (arrays shaped as the spec) into the payload's bytes.

        The step stays pending until `commit()`, `rollback()` or `sync()`. A key frame
        is sent when asked here or by `request_key_frame()`. Raises ValueError on an
        update that does not fit the spec or holds NaN/Inf, ProtocolError when a step
        is still pending.
        """
        if self._pending is not None:
            raise ProtocolError("a step is pending: commit(), rollback() or sync() it first")
        x = self.compressor.spec.check(update)
        key_frame = key_frame or self.key_frame_requested
        shared = self.compressor.initial_shared() if key_frame else self.shared
        shared = self.compressor.receive(ctx.side, shared)
        base_fingerprint = INITIAL_FINGERPRINT if key_frame else self.fingerprint
        out = PayloadWriter()
        rng = StepRng((self.seed, self.steps))
        step: Step = self.compressor.encode(x, shared, self.local, out, rng, ctx)
        if not (self.compressor.lossless or self.compressor.finite_reconstruction) and not all(
            all_finite(d) for d in step.reconstruction()
        ):
            raise ValueError(
                f"{self.compressor.name} cannot represent this update in float32 "
                "(its reconstruction overflows); scale the update down"
            )
        if set(step.stats) != set(self.compressor.stats):
            raise RuntimeError(
                f"{self.compressor.name} reported {sorted(step.stats)}, not {self.compressor.stats}"
            )
        self.last_stats = step.stats
        header = Header(self.compressor.codec_id, key_frame, base_fingerprint, len(x))
        payload, crc = pack(header, out.chunks)
        self._pending = _Pending(
            step.shared, step.local, next_fingerprint(base_fingerprint, _crc(crc, ctx.side))
        )
        return payload

    def commit(self) -> None:
        """The pending payload was delivered: its state change becomes permanent."""
        if self._pending is None:
            raise ProtocolError("no pending step to commit")
        p, self._pending = self._pending, None
        self.shared, self.local, self.fingerprint = p.shared, p.local, p.fingerprint
        self.steps += 1
        self.key_frame_requested = False

    def rollback(self) -> None:
        """The pending payload was lost: the state is as if it was never encoded."""
        if self._pending is None:
            raise ProtocolError("no pending step to roll back")
        self._pending = None

    def request_key_frame(self) -> None:
        """Make the next payload a key frame (it resets the shared state on both sides)."""
        self.key_frame_requested = True

    def sync(self, remote_fingerprint: int) -> str:
        """Match the decoder whose fingerprint is `remote_fingerprint`.

        Commits the pending step if the decoder holds its outcome, rolls it back if
        the decoder holds the committed state, and otherwise rolls back and asks for
        a key frame. Returns "committed", "rolled back", "in sync" or "key frame".
        """
        if self._pending is not None and self._pending.fingerprint == remote_fingerprint:
            self.commit()
            return "committed"
        outcome = "in sync"
        if self._pending is not None:
            self.rollback()
            outcome = "rolled back"
        if self.fingerprint != remote_fingerprint:
            self.request_key_frame()
            outcome = "key frame"
        return outcome

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Everything needed to resume, pending step included: arrays and ints only."""
        d: dict[str, np.ndarray | int] = {
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            "steps": self.steps,
            "key_frame_requested": int(self.key_frame_requested),
            **_prefixed("shared/", self.shared),
            **_prefixed("local/", self.local),
        }
        if self._pending is not None:
            d["pending/fingerprint"] = self._pending.fingerprint
            d.update(_prefixed("pending/shared/", self._pending.shared))
            d.update(_prefixed("pending/local/", self._pending.local))
        return d

    def load_state_dict(self, d: Mapping[str, np.ndarray | int]) -> None:
        """Restore from `state_dict()`; raises ValueError on missing or misshapen entries."""
        shared0, local0 = self.compressor.initial_shared(), self.compressor.initial_local()
        shared = _unprefixed(d, "shared/", shared0)
        local = _unprefixed(d, "local/", local0)
        pending = None
        if "pending/fingerprint" in d:
            pending = _Pending(
                _unprefixed(d, "pending/shared/", shared0),
                _unprefixed(d, "pending/local/", local0),
                _uint32(d, "pending/fingerprint"),
            )
        self.seed = _count(d, "seed")
        self.fingerprint = _uint32(d, "fingerprint")
        self.steps = _count(d, "steps")
        self.key_frame_requested = bool(_count(d, "key_frame_requested"))
        self.shared, self.local, self._pending = shared, local, pending


class Decoder:
    """Server end of one client's link: turns that client's payloads back into updates."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.shared = compressor.initial_shared()
        self.fingerprint = INITIAL_FINGERPRINT
        self._pending: _Pending | None = None

    @property
    def pending(self) -> bool:
        """Whether a decoded step awaits `commit()` or `rollback()`."""
        return self._pending is not None

    @property
    def state_bytes(self) -> int:
        """Bytes of the arrays this decoder holds: its shared state and the pending step's."""
        return arrays_nbytes(self.shared, *((self._pending.shared,) if self._pending is not None else ()))

    def decode(self, payload: bytes, side: bytes = b"") -> list[np.ndarray]:
        """Decode a payload into arrays shaped as the spec; the step stays pending.

        `side` is the side information the encoder was sent for this step (b"": none).
        Raises PayloadError (StateMismatchError for a fingerprint mismatch) and then
        leaves the state untouched; ProtocolError when a step is still pending.
        """
        if self._pending is not None:
            raise ProtocolError("a step is pending: commit() or rollback() it first")
        spec = self.compressor.spec
        if isinstance(payload, (bytes, bytearray, memoryview)) and len(payload) > max_payload_bytes(spec):
            raise PayloadError(f"payload of {len(payload)} bytes is too long for this model")
        header, body = unpack(payload, self.compressor.codec_id, len(spec))
        if header.key_frame:
            if header.fingerprint != INITIAL_FINGERPRINT:
                raise PayloadError("a key frame must carry the initial fingerprint")
            shared, base = self.compressor.initial_shared(), INITIAL_FINGERPRINT
        elif header.fingerprint != self.fingerprint:
            raise StateMismatchError(
                f"payload encoded against state {header.fingerprint:08x}, "
                f"decoder holds {self.fingerprint:08x}: a key frame is needed"
            )
        else:
            shared, base = self.shared, self.fingerprint
        try:
            flat, new_shared = self.compressor.decode(body, self.compressor.receive(side, shared))
        except PayloadError:
            raise
        except (ValueError, IndexError, OverflowError, RuntimeError) as e:
            raise PayloadError(f"malformed body: {e}") from e
        body.finish()
        for i, xi in enumerate(flat):
            if xi.dtype != np.float32 or xi.shape != (spec.tensors[i].size,):
                raise PayloadError(f"tensor {i} decodes to {xi.dtype}{list(xi.shape)}")
            if not all_finite(xi):
                raise PayloadError(f"tensor {i} decodes to NaN or Inf")
        self._pending = _Pending(new_shared, {}, next_fingerprint(base, _crc(header.crc, side)))
        return spec.restore(flat)

    def commit(self) -> None:
        """Accept the pending decoded step."""
        if self._pending is None:
            raise ProtocolError("no pending step to commit")
        p, self._pending = self._pending, None
        self.shared, self.fingerprint = p.shared, p.fingerprint

    def rollback(self) -> None:
        """Discard the pending decoded step (e.g. the update arrived past the deadline)."""
        if self._pending is None:
            raise ProtocolError("no pending step to roll back")
        self._pending = None

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Everything needed to resume, a pending decoded step included: arrays and ints only."""
        d: dict[str, np.ndarray | int] = {"fingerprint": self.fingerprint}
        d.update(_prefixed("shared/", self.shared))
        if self._pending is not None:
            d["pending/fingerprint"] = self._pending.fingerprint
            d.update(_prefixed("pending/shared/", self._pending.shared))
        return d

    def load_state_dict(self, d: Mapping[str, np.ndarray | int]) -> None:
        """Restore from `state_dict()`; raises ValueError on missing or misshapen entries."""
        shared0 = self.compressor.initial_shared()
        shared = _unprefixed(d, "shared/", shared0)
        pending = None
        if "pending/fingerprint" in d:
            pending_shared = _unprefixed(d, "pending/shared/", shared0)
            pending = _Pending(pending_shared, {}, _uint32(d, "pending/fingerprint"))
        self.fingerprint = _uint32(d, "fingerprint")
        self.shared, self._pending = shared, pending


@dataclass
class RoundDecoding:
    """The outcome of decoding one round: updates of the accepted clients, errors of the others."""

    updates: dict[str, list[np.ndarray]] = field(default_factory=dict)
    errors: dict[str, PayloadError] = field(default_factory=dict)


class DecoderPool:
    """Server side of a codec: one `Decoder` per client, created on first contact.

    Each round, `plan_round` may give clients side information for their encoders
    (none here), and `decode_round` decodes each payload on its own with it; codecs
    that plan rounds or decode clients jointly (LGC) subclass it (see
    `Compressor.decoder_pool`). Decoded steps are pending until `commit(client)`.
    """

    def __init__(self, make_decoder: Callable[[], Decoder]) -> None:
        self._make_decoder = make_decoder
        self.decoders: dict[str, Decoder] = {}
        self.side: dict[str, bytes] = {}
        """This round's side information per client (absent: none), from `plan_round`."""

    def decoder(self, client: str) -> Decoder:
        """The decoder of `client`, created in the initial state if new."""
        if client not in self.decoders:
            self.decoders[client] = self._make_decoder()
        return self.decoders[client]

    def fingerprint(self, client: str) -> int:
        """The committed fingerprint of `client`'s decoder (what `Encoder.sync` takes)."""
        return self.decoder(client).fingerprint

    def plan_round(self, server_round: int, clients: Sequence[str]) -> dict[str, bytes]:
        """Side information for the encoders of the round's `clients` (instructed in
        round `server_round`): client → bytes, absent for none. The driver sends each
        client its bytes with the instruction (`RoundContext.side` on the client) and
        counts them as downlink; `decode_round` decodes with them. Plans nothing here."""
        self.side = {}
        return self.side

    def decode_round(self, payloads: Mapping[str, bytes]) -> RoundDecoding:
        """Decode every client's payload; a malformed one lands in `errors`, not raised."""
        result = RoundDecoding()
        for client, payload in payloads.items():
            try:
                result.updates[client] = self.decoder(client).decode(payload, self.side.get(client, b""))
            except PayloadError as e:
                result.errors[client] = e
        return result

    def state_bytes(self) -> dict[str, int]:
        """client → bytes of the arrays the pool holds for it (its decoder's state, pending step
        included; subclasses add their other per-client state). Every client held is a key."""
        return {c: dec.state_bytes for c, dec in self.decoders.items()}

    def evict(self, client: str) -> None:
        """Forget `client` (it left, or the server bounds its states): if it returns, its decoder
        starts in the initial state, and its encoder's next payload is a key frame."""
        self.decoders.pop(client, None)
        self.side.pop(client, None)

    def commit(self, client: str) -> None:
        """Accept `client`'s pending step."""
        self.decoder(client).commit()

    def rollback(self, client: str) -> None:
        """Discard `client`'s pending step."""
        self.decoder(client).rollback()

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Every client's decoder state under "<client>/..." keys."""
        return {f"{c}/{k}": v for c, dec in self.decoders.items() for k, v in dec.state_dict().items()}

    def load_state_dict(self, d: Mapping[str, np.ndarray | int]) -> None:
        """Restore from `state_dict()`: every client's decoder, pending steps included."""
        ends = ("/fingerprint", "/pending/fingerprint")
        keys = [k for k in d if k.endswith(ends[0]) and not k.endswith(ends[1])]
        clients = dict.fromkeys(k[: -len(ends[0])] for k in keys)  # in the saved order
        decoders = {}
        for c in clients:
            dec = self._make_decoder()
            dec.load_state_dict({k[len(c) + 1 :]: v for k, v in d.items() if k.startswith(c + "/")})
            decoders[c] = dec
        self.decoders = decoders


def _crc(payload_crc: int, side: bytes) -> int:
    """The CRC a step enters in the fingerprint chain: the payload's, extended over any side information."""
    return zlib.crc32(side, payload_crc) if side else payload_crc


def _prefixed(prefix: str, state: State) -> dict[str, np.ndarray]:
    return {prefix + k: v for k, v in state.items()}


def _unprefixed(d: Mapping[str, np.ndarray | int], prefix: str, like: State) -> State:
    """The entries of `d` under `prefix`, checked against the shapes and dtypes of `like`."""
    out = {}
    for k, ref in like.items():
        v = d.get(prefix + k)
        if v is None:
            raise ValueError(f"state entry {prefix + k!r} is missing")
        v = np.asarray(v)
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise ValueError(
                f"state entry {prefix + k!r}: {v.dtype}{list(v.shape)}, expected {ref.dtype}{list(ref.shape)}"
            )
        out[k] = v.copy()
    return out


def _count(d: Mapping[str, np.ndarray | int], key: str) -> int:
    if key not in d:
        raise ValueError(f"state entry {key!r} is missing")
    v = int(d[key])
    if v < 0:
        raise ValueError(f"state entry {key!r} is negative")
    return v


def _uint32(d: Mapping[str, np.ndarray | int], key: str) -> int:
    v = _count(d, key)
    if v >= 2**32:
        raise ValueError(f"state entry {key!r} is not a 32-bit fingerprint")
    return v
