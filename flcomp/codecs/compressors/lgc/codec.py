"""LGC: learned gradient compression, parameter-server variant.

Abrahamyan, Chen, Bekoulis, Deligiannis, "Learned Gradient Compression for Distributed
Deep Learning", IEEE TNNLS 2021 (arXiv 2103.08870). The updates of different clients
are correlated; LGC trains an autoencoder on them while training runs, then lets one
client per round (the *leader*) send a short latent code of its update and every
client only its *innovation*, from which the server decodes each client jointly.

Three stages, by server round t (T1 = `stage1_rounds`, T2 = `stage2_rounds`):

    stage 1, t ≤ T1        warm-up: each client sends its update whole ("plain") or
                           its own top-k ("topk", `warmup`)
    stage 2, t ≤ T1 + T2   each client sends its values on the round's index set I_t;
                           the server trains the autoencoder on them
    stage 3, t > T1 + T2   the leader sends the latent code of its values on I_t and its
                           innovation; every other client only its innovation

The server plans every round (`flcomp.codecs.compressors.lgc.pool.LGCPool.plan_round`): it
picks the leader among the round's clients, deterministic from the run's seed and the
round, and sends each client *side information* with its instruction (its mode,
I_t, and for a leader that lacks it the frozen encoder), counted as downlink. The
client's encoder folds it into the step (`Compressor.receive`), so the fingerprint
chain covers it and a lost instruction or payload is rolled back on both ends: a
leader whose copy of the encoder was not committed gets it again.

Index set [decision]. Clients train in parallel, so the leader's index set of a
round cannot reach the others in the same round: I_t is the one the leader of
round t − 1 proposed. A proposing leader sends, besides its payload, the top-k
positions of |e′ + x| per tensor (e′ its error memory after the step, x its update:
its best guess of what it will need to send next). When the proposer's payload is
lost, the previous set stays; before any set exists (T1 = 0, or the proposal was
lost) a round falls back to every client's own top-k.

Values. Tensor i (n_i entries) contributes k_i = ⌈ratio·n_i⌉ positions to I_t
(`flcomp.codecs.coding.sparse.kept_count`): n = Σ k_i values v = p[I_t], concatenated in tensor order. The
innovation [decision] is the m = ⌈innovation_fraction·n⌉ entries of v of largest
magnitude, sent exactly (positions within [0, n), values), with the RMS scale s of
v for the conv autoencoder, which works on v / s.

Error feedback (part of the method; keep the generic `error_feedback` off): the
client adds its error memory e to the update, p = x + e, and keeps
e ← p − (what it counts as delivered): nothing in "plain" (e = 0), its own top-k,
or p on I_t in stage 2. In stage 3 (`feedback` [decision]) either only its
innovation counts (the default: the rest of its values stays in e, while the
server also fills it in from the leader's code), or all of p on I_t, as the joint
decode means to reconstruct it (the reimplementation's reading: the autoencoder's
reconstruction error, which the client cannot know, is then never sent).

Decoding. `decode` (one payload on its own, what the encoder's `decoded` is)
returns everything a payload determines by itself: the whole update (plain), the
top-k or the values on I_t, or, in stage 3, only the innovation. The server's
`LGCPool.decode_round` decodes stage-3 payloads jointly: client c's values on I_t
are s_c·D_c(z, innovation_c / s_c) from the leader's code z and c's own decoder D_c
(or the shared decoder when c has none), its innovation entries exact. With
`autoencoder="identity"` (no learning: the ablation, and the test of the plumbing)
the code is the leader's values themselves and a client's estimate is the leader's
values, its own innovation entries overriding.

Shared state: "encoder_tag", the tag of the encoder copy the server knows the
client holds (0: none). Local state: "ef/<i>" (e per tensor), "encoder" (the copy,
flat float32, zeros until received) and "encoder_tag" (its tag).

Payload body:

    u8 mode | u8 flags (bit 0: a proposal follows) | body of the mode | [proposal]
    mode 0 plain       per tensor: n_i float32
    mode 1 topk        per tensor: positions (k_i of n_i) | k_i values
    mode 2 values      n values
    mode 3 latent      code (autoencoder-dependent count of values) | innovation
    mode 4 innovation  innovation
    innovation         positions (m of n) | m values | f32 s (conv autoencoder only)
    proposal           per tensor: positions (k_i of n_i)

Side information (server to client, `RoundContext.side`):

    u8 mode | u8 flags (bit 0: propose; bit 1: encoder weights follow) | u32 encoder tag
    | modes 2-4: per tensor positions of I_t (k_i of n_i) | bit 1: P float32 weights

Values (top-k, values, code, innovation) travel in `value_dtype`; positions are
the shorter of a bitmap and Rice-coded gaps (`flcomp.codecs.coding.positions`). Without
side information (a driver that plans nothing) LGC is top-k with error feedback.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import kept_count, read_values, top_k_positions, write_values
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.compressors.lgc.config import (
    DEFAULT_PLAN,
    INNOVATION,
    LATENT,
    PLAIN,
    TOPK,
    VALUES,
    LGCConfig,
    Message,
    Plan,
    encoder_tag,
)
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter, unpack

_PROPOSE = 0x01
_WEIGHTS = 0x02
STAGE_OF_MODE = {PLAIN: 1, TOPK: 1, VALUES: 2, LATENT: 3, INNOVATION: 3}
"""The stage a plan's mode belongs to (the `stage` stat)."""


class LGC(Compressor):
    """Learned gradient compression: see the module docstring.

    Stats (what each step did, `Step.stats`):

    - ``stage``: the stage its plan belongs to, 1 (plain or top-k: the warm-up, and
      the own-top-k fallback of a round before any index set exists), 2 (values) or 3
      (latent or innovation, a leader's fallback to its values included).
    - ``entries_sent``: update entries whose values the payload carries exactly (the
      whole update, the top-k, the n values on I_t, or the m innovation entries).
    - ``code_values``: values of the leader's latent code in the payload (0 unless it
      sent one).
    - ``encoder_bytes``: bytes of encoder weights its side information brought (0
      unless this step is the one that delivered the frozen encoder to it).
    - ``proposed``: 1 when the payload proposes the next round's index set, else 0.
    """

    name = "lgc"
    codec_id = 17
    Config = LGCConfig
    own_error_feedback = True  # per stage (see the module docstring)
    stats = ("stage", "entries_sent", "code_values", "encoder_bytes", "proposed")

    def __init__(self, spec: ModelSpec, config: LGCConfig) -> None:
        super().__init__(spec, config)
        self.k = [kept_count(config.ratio, t.size) for t in spec.tensors]
        """Index-set positions per tensor."""
        self.offsets = np.cumsum([0, *self.k])
        self.n = int(self.offsets[-1])
        """Values on the index set (the autoencoder's input length)."""
        self.m = kept_count(config.innovation_fraction, self.n)
        """Innovation entries per client."""
        self.code_size = config.code_size(self.n)
        self.encoder_size = config.encoder_size
        self.conv = config.autoencoder == "conv"

    def initial_shared(self) -> State:
        return {"encoder_tag": np.zeros((), np.uint32)}

    def initial_local(self) -> State:
        ef = {f"ef/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}
        encoder = {"encoder": np.zeros(self.encoder_size, np.float32), "encoder_tag": np.zeros((), np.uint32)}
        return ef | encoder

    # --- side information ------------------------------------------------------------

    def side_information(self, plan: Plan) -> bytes:
        """The bytes that tell a client its `plan`."""
        out = PayloadWriter()
        flags = (_PROPOSE if plan.propose else 0) | (_WEIGHTS if plan.weights is not None else 0)
        out.struct("BBI", plan.mode, flags, plan.tag)
        if plan.mode >= VALUES:
            for positions, t in zip(plan.index, self.spec.tensors):
                encode_positions(positions, t.size, out)
        if plan.weights is not None:
            out.array(np.asarray(plan.weights, np.float32))
        return b"".join(out.chunks)

    def read_plan(self, side: bytes | memoryview) -> Plan:
        """The plan in side information; PayloadError if malformed."""
        body = PayloadReader(memoryview(side).cast("B"))
        mode, flags, tag = body.struct("BBI")
        if mode > INNOVATION or flags & ~(_PROPOSE | _WEIGHTS):
            raise PayloadError(f"LGC side information: mode {mode}, flags 0x{flags:02x}")
        if (mode == LATENT and self.conv) != (tag != 0):
            raise PayloadError("LGC side information: an encoder tag belongs to a conv leader")
        if flags & _WEIGHTS and not (mode == LATENT and self.conv):
            raise PayloadError("LGC side information: encoder weights for a client that does not lead")
        index = None
        if mode >= VALUES:
            index = tuple(decode_positions(body, k, t.size) for k, t in zip(self.k, self.spec.tensors))
        weights = None
        if flags & _WEIGHTS:
            weights = body.array(np.float32, self.encoder_size, limit=self.encoder_size)
            if not np.isfinite(weights).all() or encoder_tag(weights) != tag:
                raise PayloadError("LGC side information: the encoder weights do not match their tag")
        body.finish()
        return Plan(mode, bool(flags & _PROPOSE), tag, index, weights)

    def receive(self, side: bytes, shared: State) -> State:
        if not side:
            return shared
        self.read_plan(side)  # validate now: a malformed plan fails before the step
        return shared | {"side": np.frombuffer(bytes(side), np.uint8)}

    def plan_of(self, shared: State) -> Plan:
        """The plan a step's shared state carries (`receive`), else DEFAULT_PLAN."""
        return self.read_plan(shared["side"]) if "side" in shared else DEFAULT_PLAN

    # --- index sets ---------------------------------------------------------------------

    def gather(self, index: Sequence[np.ndarray], x: Sequence[np.ndarray]) -> np.ndarray:
        """The n values of flat tensors `x` on the index set, concatenated (float32)."""
        parts = [xi[positions] for xi, positions in zip(x, index)]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)

    def scatter(self, index: Sequence[np.ndarray], v: np.ndarray) -> list[np.ndarray]:
        """Flat float32 tensors, zero but `v` on the index set."""
        out = []
        for i, (positions, t) in enumerate(zip(index, self.spec.tensors)):
            dense = np.zeros(t.size, np.float32)
            dense[positions] = v[self.offsets[i] : self.offsets[i + 1]]
            out.append(dense)
        return out

    # --- encoding ---------------------------------------------------------------------

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        plan = self.plan_of(shared)
        weights, held = local["encoder"], int(local["encoder_tag"])
        if plan.weights is not None:
            weights, held = plan.weights.copy(), plan.tag
        mode = plan.mode
        if mode == LATENT and held != plan.tag:
            mode = VALUES  # it lacks the encoder (its state was lost): its values, exactly
        p = [xi + local[f"ef/{i}"] for i, xi in enumerate(x)]
        out.struct("BB", mode, _PROPOSE if plan.propose else 0)
        code_values = 0
        if mode == PLAIN:
            for pi in p:
                out.array(pi)
            decoded, errors = p, [np.zeros_like(pi) for pi in p]
            sent = self.spec.size
        elif mode == TOPK:
            decoded = [self._encode_topk(pi, k, out) for pi, k in zip(p, self.k)]
            errors = [pi - di for pi, di in zip(p, decoded)]
            sent = self.n
        else:
            v = self.gather(plan.index, p)
            if mode == VALUES:
                decoded = self.scatter(plan.index, write_values(v, self.config.value_dtype, out))
                errors = [pi - di for pi, di in zip(p, decoded)]
                sent = self.n
            else:
                sent = self.m
                if mode == LATENT:
                    code_values = write_values(self.code(v, weights), self.config.value_dtype, out).size
                decoded = self.scatter(plan.index, self._encode_innovation(v, out))
                if self.config.feedback == "innovation":
                    errors = [pi - di for pi, di in zip(p, decoded)]
                else:
                    errors = [pi.copy() for pi in p]
                    for ei, positions in zip(errors, plan.index):
                        ei[positions] = 0.0
        if plan.propose:
            for ei, xi, k, t in zip(errors, x, self.k, self.spec.tensors):
                with np.errstate(over="ignore"):
                    guess = np.abs(ei + xi)
                encode_positions(top_k_positions(guess, k) if k else np.zeros(0, np.int64), t.size, out)
        local = {f"ef/{i}": ei for i, ei in enumerate(errors)}
        local |= {"encoder": weights, "encoder_tag": np.array(held, np.uint32)}
        stats = {
            "stage": float(STAGE_OF_MODE[plan.mode]),
            "entries_sent": float(sent),
            "code_values": float(code_values),
            "encoder_bytes": float(0 if plan.weights is None else plan.weights.nbytes),
            "proposed": float(plan.propose),
        }
        return Step(decoded, self._next_shared(shared, plan), local, stats)

    def _encode_topk(self, p: np.ndarray, k: int, out: PayloadWriter) -> np.ndarray:
        positions = top_k_positions(np.abs(p), k) if k else np.zeros(0, np.int64)
        encode_positions(positions, len(p), out)
        dense = np.zeros(len(p), np.float32)
        dense[positions] = write_values(p[positions], self.config.value_dtype, out)
        return dense

    def _encode_innovation(self, v: np.ndarray, out: PayloadWriter) -> np.ndarray:
        """Write the innovation of values v; return it as the n values the decoder reads
        (zero outside the innovation)."""
        positions = top_k_positions(np.abs(v), self.m) if self.m else np.zeros(0, np.int64)
        encode_positions(positions, self.n, out)
        sent = np.zeros(self.n, np.float32)
        sent[positions] = write_values(v[positions], self.config.value_dtype, out)
        if self.conv:
            out.struct("f", self.scale(v))
        return sent

    def scale(self, v: np.ndarray) -> float:
        """s, the RMS of v as float32 (the conv autoencoder works on v / s);
        ValueError when it overflows float32."""
        s = np.float32(np.sqrt(np.mean(np.square(v, dtype=np.float64)))) if len(v) else np.float32(0)
        if not np.isfinite(s):
            raise ValueError("LGC cannot scale an update this large; scale it down")
        return float(s)

    def code(self, v: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The leader's latent code of values v (identity: v itself)."""
        if not self.conv:
            return v
        if not self.n:
            return np.zeros(0, np.float32)
        from flcomp.codecs.compressors.lgc import (
            autoencoder as lgc_autoencoder,  # torch, only where a code is computed
        )

        s = self.scale(v)
        return lgc_autoencoder.encode_with(self.config, weights, v / s if s > 0 else v)

    @staticmethod
    def _next_shared(shared: State, plan: Plan) -> State:
        """The shared state after the step: the encoder tag the server knows of."""
        tag = np.array(plan.tag, np.uint32) if plan.weights is not None else shared["encoder_tag"]
        return {"encoder_tag": tag}

    # --- decoding ---------------------------------------------------------------------

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        _, flat, new_shared = self.decode_message(body, shared)
        return flat, new_shared

    def decode_message(self, body: PayloadReader, shared: State) -> tuple[Message, list[np.ndarray], State]:
        """`decode`, with the parsed message beside its result (what the joint decode reads)."""
        plan = self.plan_of(shared)
        message = self.read(body, plan)
        return message, self.explicit(message, plan), self._next_shared(shared, plan)

    def read_payload(self, payload: bytes, plan: Plan) -> Message:
        """Parse a whole payload (header checked again) sent under `plan`."""
        _, body = unpack(payload, self.codec_id, len(self.spec))
        message = self.read(body, plan)
        body.finish()
        return message

    def read(self, body: PayloadReader, plan: Plan) -> Message:
        """Parse a body sent under `plan`; PayloadError on anything that does not fit it."""
        mode, flags = body.struct("BB")
        expected = {plan.mode, VALUES} if plan.mode == LATENT else {plan.mode}
        if mode not in expected or flags != (_PROPOSE if plan.propose else 0):
            raise PayloadError(f"LGC payload of mode {mode}, flags {flags}: the plan is {plan.mode}")
        message = Message(mode)
        if mode == PLAIN:
            message.values = [
                body.array(np.float32, t.size, limit=t.size).astype(np.float32) for t in self.spec.tensors
            ]
        elif mode == TOPK:
            message.values = [self._read_topk(body, k, t.size) for k, t in zip(self.k, self.spec.tensors)]
        elif mode == VALUES:
            message.values = read_values(body, self.config.value_dtype, self.n)
        else:
            if mode == LATENT:
                message.code = read_values(body, self.config.value_dtype, self.code_size)
                if not np.isfinite(message.code).all():
                    raise PayloadError("LGC latent code holds NaN or Inf")
            message.innovation = decode_positions(body, self.m, self.n)
            message.innovation_values = read_values(body, self.config.value_dtype, self.m)
            if self.conv:
                (message.scale,) = body.struct("f")
                if not 0 <= message.scale < np.inf:
                    raise PayloadError(f"LGC scale {message.scale}")
        if plan.propose:
            message.proposal = tuple(
                decode_positions(body, k, t.size) for k, t in zip(self.k, self.spec.tensors)
            )
        return message

    def _read_topk(self, body: PayloadReader, k: int, size: int) -> np.ndarray:
        positions = decode_positions(body, k, size)
        dense = np.zeros(size, np.float32)
        dense[positions] = read_values(body, self.config.value_dtype, k)
        return dense

    def explicit(self, message: Message, plan: Plan) -> list[np.ndarray]:
        """What a payload determines on its own (flat float32 tensors): the update
        (plain), the top-k, the values on I_t, or only the innovation (stage 3)."""
        if message.mode in (PLAIN, TOPK):
            return message.values
        if message.mode == VALUES:
            return self.scatter(plan.index, message.values)
        return self.scatter(plan.index, self.innovation_dense(message))

    def innovation_dense(self, message: Message) -> np.ndarray:
        """The innovation as n values, zero elsewhere."""
        dense = np.zeros(self.n, np.float32)
        dense[message.innovation] = message.innovation_values
        return dense
