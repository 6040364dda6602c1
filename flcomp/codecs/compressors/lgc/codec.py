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

The server plans every round (`flcomp.codecs.compressors.lgc.pool.LGCPool.plan_round`): it picks
the leader among the round's clients, deterministic from the run's seed and the
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
(`topk.kept_count`): n = Σ k_i values v = p[I_t], concatenated in tensor order. The
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

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import ValueDtype, kept_count, read_values, top_k_positions, write_values
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter, unpack

if TYPE_CHECKING:
    pass

PLAIN, TOPK, VALUES, LATENT, INNOVATION = range(5)
"""Payload modes (see the module docstring)."""
MODE_NAMES = ("plain", "topk", "values", "latent", "innovation")

_PROPOSE = 0x01
_WEIGHTS = 0x02


@dataclass(frozen=True)
class LGCConfig:
    ratio: float = 0.01
    """ρ, fraction of each tensor's entries in the index set I_t (and sent by the
    top-k warm-up), in (0, 1]. METHODS.md: about 1e-3 for large models, larger for
    small ones; it sets n, the autoencoder's input length."""
    innovation_fraction: float = 0.1
    """Fraction of the n index-set values each client sends exactly in stage 3
    (m = ⌈fraction·n⌉), in (0, 1]: the "much smaller ratio" of METHODS.md relative
    to ρ. Raise it when clients' updates differ (non-IID data) and the joint estimate
    suffers; stage-3 bits grow about linearly with it."""
    stage1_rounds: int = 5
    """T1, warm-up rounds (stage 1), ≥ 0."""
    stage2_rounds: int = 20
    """T2, rounds in which the server trains the autoencoder (stage 2), ≥ 0. More
    rounds: more training data and autoencoder steps, later savings. 0 goes to stage
    3 with an untrained autoencoder (an ablation)."""
    warmup: Literal["plain", "topk"] = "plain"
    """Stage 1: "plain" sends the update whole (float32, as the paper's warm-up);
    "topk" sends each client's own top-k with error feedback."""
    autoencoder: Literal["conv", "identity"] = "conv"
    """"conv": the learned 1-D conv autoencoder of METHODS.md §2 (torch, on the
    server's CPU; `flcomp.codecs.compressors.lgc.autoencoder`). "identity": no learning, the
    leader's values are its code and every client's estimate (the ablation that
    shows what learning adds; its code is n values instead of about n/4)."""
    encoder_channels: str = "64-128-256-64"
    """Channels of the encoder's strided conv layers, "-"-separated (input: 1)."""
    latent_channels: int = 4
    """Channels of the latent code (a kernel-1 conv after the stack): the code has
    latent_channels·⌈n/stride^layers⌉ values, about n/4 with the defaults."""
    decoder_channels: str = "32-64-128-32"
    """Channels of each decoder's transposed conv layers, "-"-separated; at least as
    many layers as the encoder, so that they reach back to n."""
    kernel_size: int = 3
    """Kernel of the strided (transposed) convs, odd (padding (k−1)/2)."""
    stride: int = 2
    """Stride of the strided (transposed) convs: each encoder layer divides the
    length by it (rounding up). Larger: a shorter code, coarser reconstruction."""
    output_kernel_size: int = 1
    """Kernel of each decoder's final conv, odd, which mixes the decoded channels with
    the innovation (and its mask) into the estimate."""
    negative_slope: float = 0.01
    """Slope of the LeakyReLU after every strided (transposed) conv, ≥ 0."""
    lambda_reconstruction: float = 0.5
    """λ1, weight of Σ_k MSE(x_k, x̂_k) in the autoencoder's loss, > 0."""
    lambda_similarity: float = 0.5
    """λ2, weight of Σ_{i≠j} MSE(z_i, z_j) (latent codes of one round's clients),
    ≥ 0: it makes one client's code stand in for the others'."""
    ae_lr: float = 1e-3
    """Adam's step size for the autoencoder (β = 0.9, 0.999, ε = 1e-8)."""
    ae_steps: int = 20
    """Adam steps per stage-2 round, ≥ 0: the server's training time per round is
    about proportional (see `LGCPool.history`)."""
    ae_batch: int = 4
    """Rounds (each: all of that round's clients) per Adam step, ≥ 1."""
    ae_window: int = 10
    """The newest rounds of stage-2 values kept to train on, ≥ 1."""
    per_client_decoders: bool = True
    """One decoder per client seen in stage 2 (METHODS.md), and the shared decoder for
    the others; False: the shared decoder for everyone (fewer weights, for many
    clients or short stage 2)."""
    value_dtype: ValueDtype = "float32"
    """Wire type of every value sent (top-k, values, code, innovation); "float16"
    halves their bits. Plain warm-up updates stay float32."""
    feedback: Literal["innovation", "index_set"] = "innovation"
    """What a stage-3 client counts as delivered for its error feedback [decision].
    "innovation" (METHODS.md: error feedback keeps what was not sent): only what it
    sent exactly; the rest of its values on I_t stays in e and is sent again later,
    so whatever the decoder filled in for it counts twice. "index_set" (the paper's
    reimplementation): its values on I_t, which the joint decode means to
    reconstruct; the reconstruction error is then lost. On Fashion-MNIST
    (examples/lgc_experiment.py, 600 rounds) "innovation" ended 0.5 to 3.8 points
    more accurate; "index_set" suits an autoencoder whose estimates are accurate."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1 or not 0 < self.innovation_fraction <= 1:
            raise ValueError("LGC needs ratio and innovation_fraction in (0, 1]")
        if min(self.stage1_rounds, self.stage2_rounds, self.ae_steps) < 0:
            raise ValueError("LGC needs stage1_rounds, stage2_rounds and ae_steps ≥ 0")
        if min(self.ae_batch, self.ae_window, self.latent_channels, self.stride) < 1:
            raise ValueError("LGC needs ae_batch, ae_window, latent_channels and stride ≥ 1")
        for name in ("kernel_size", "output_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"LGC needs an odd {name} ≥ 1, got {k}")
        encoder, decoder = _channels(self.encoder_channels), _channels(self.decoder_channels)
        if len(decoder) < len(encoder):
            raise ValueError("LGC's decoder needs at least as many layers as its encoder")
        if not (self.lambda_reconstruction > 0 and self.lambda_similarity >= 0 and self.ae_lr > 0):
            raise ValueError("LGC needs lambda_reconstruction > 0, lambda_similarity ≥ 0 and ae_lr > 0")
        if not self.negative_slope >= 0:
            raise ValueError("LGC needs negative_slope ≥ 0")

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        return _channels(self.encoder_channels)

    @property
    def decoder_layers(self) -> tuple[int, ...]:
        return _channels(self.decoder_channels)

    def encoder_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of the encoder's parameters, in the order of its flat weights."""
        if self.autoencoder == "identity":
            return []
        layout = []
        channels = (1, *self.encoder_layers)
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layout += [(f"conv{i}.weight", (c_out, c_in, self.kernel_size)), (f"conv{i}.bias", (c_out,))]
        return layout + [
            ("latent.weight", (self.latent_channels, channels[-1], 1)),
            ("latent.bias", (self.latent_channels,)),
        ]

    def decoder_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of one decoder's parameters (conv-transpose weights are in × out × k)."""
        layout = []
        channels = (self.latent_channels, *self.decoder_layers)
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layout += [(f"deconv{i}.weight", (c_in, c_out, self.kernel_size)), (f"deconv{i}.bias", (c_out,))]
        return layout + [
            ("out.weight", (1, channels[-1] + 2, self.output_kernel_size)),
            ("out.bias", (1,)),
        ]

    @property
    def encoder_size(self) -> int:
        """P, the number of encoder weights (0 for the identity autoencoder)."""
        return sum(math.prod(shape) for _, shape in self.encoder_layout())

    def code_length(self, n: int) -> int:
        """The latent code's length per channel for n values."""
        for _ in self.encoder_layers:
            n = -(-n // self.stride)
        return n

    def code_size(self, n: int) -> int:
        """Values in the leader's code for n index-set values."""
        if self.autoencoder == "identity":
            return n
        return self.latent_channels * self.code_length(n)


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(c) for c in text.split("-"))
    except ValueError:
        raise ValueError(f"LGC channels must be '-'-separated integers, got {text!r}") from None
    if not channels or min(channels) < 1:
        raise ValueError(f"LGC channels must be positive, got {text!r}")
    return channels


def encoder_tag(weights: np.ndarray) -> int:
    """A nonzero 32-bit tag of encoder weights (0 means "no encoder")."""
    digest = hashlib.blake2b(np.ascontiguousarray(weights, np.float32).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") or 1


@dataclass(frozen=True, eq=False)
class Plan:
    """One client's part of a round's plan: what its side information says."""

    mode: int = TOPK
    """The payload mode the server expects (a leader without the encoder falls back
    from LATENT to VALUES)."""
    propose: bool = False
    """Whether the client proposes the next round's index set."""
    tag: int = 0
    """The tag of the encoder a LATENT client encodes with (0 otherwise, and always
    with the identity autoencoder)."""
    index: tuple[np.ndarray, ...] | None = None
    """I_t per tensor (sorted int64 positions), for modes VALUES, LATENT, INNOVATION."""
    weights: np.ndarray | None = None
    """The encoder's flat weights when they come with this plan."""


@dataclass(eq=False)
class Message:
    """A payload's body, parsed."""

    mode: int
    values: list[np.ndarray] | np.ndarray | None = None
    """PLAIN: the tensors; TOPK: dense tensors; VALUES: the n values (float32)."""
    code: np.ndarray | None = None
    """LATENT: the leader's code (float32)."""
    innovation: np.ndarray | None = None
    """LATENT, INNOVATION: positions of the innovation within [0, n)."""
    innovation_values: np.ndarray | None = None
    scale: float = 1.0
    """RMS of the client's values on I_t (conv autoencoder)."""
    proposal: tuple[np.ndarray, ...] | None = None


DEFAULT_PLAN = Plan()
"""The plan of a step without side information: own top-k, no proposal."""


class LGC(Compressor):
    """Learned gradient compression: see the module docstring."""

    name = "lgc"
    codec_id = 17
    Config = LGCConfig
    own_error_feedback = True  # per stage (see the module docstring)

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
        if mode == PLAIN:
            for pi in p:
                out.array(pi)
            decoded, errors = p, [np.zeros_like(pi) for pi in p]
        elif mode == TOPK:
            decoded = [self._encode_topk(pi, k, out) for pi, k in zip(p, self.k)]
            errors = [pi - di for pi, di in zip(p, decoded)]
        else:
            v = self.gather(plan.index, p)
            if mode == VALUES:
                decoded = self.scatter(plan.index, write_values(v, self.config.value_dtype, out))
                errors = [pi - di for pi, di in zip(p, decoded)]
            else:
                if mode == LATENT:
                    write_values(self.code(v, weights), self.config.value_dtype, out)
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
        return Step(decoded, self._next_shared(shared, plan), local)

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
        plan = self.plan_of(shared)
        message = self.read(body, plan)
        return self.explicit(message, plan), self._next_shared(shared, plan)

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
