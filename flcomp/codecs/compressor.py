"""The math of a codec: what every compression method implements.

A `Compressor` holds no state of its own. Its state is passed in and returned
explicitly, split in two:

- *shared* state, which the encoder and the decoder must hold identically (a
  predictor's memory, the previous signs, the last transmitted update, ...);
- *local* state, which only the encoder keeps (error-feedback memory, a warm start).

Both are flat `dict[str, np.ndarray]`, so they fit in Flower records as they are.
A codec whose server plans each round also receives *side information* with the
step (`RoundContext.side`, folded in by `receive` on both ends).
The endpoints in `flcomp.codecs.endpoints` add the header, the fingerprint and the
commit/rollback protocol around it; a compressor only writes and reads its body.

Tensors reach a compressor flat (1-D float32, one per tensor of the `ModelSpec`),
and it returns them flat: `decoded` must be exactly what `decode` will return for
the same body and shared state, bit for bit, so both sides stay in sync.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from flcomp.codecs.errors import PayloadError
from flcomp.codecs.spec import ModelSpec, TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

State = dict[str, np.ndarray]


@dataclass(frozen=True)
class NoConfig:
    """The config of a codec without parameters."""


@dataclass(frozen=True)
class RoundContext:
    """What an encoder may know besides the update, from broadcasts both sides saw.

    Event-triggered codecs (LAG, GD-SEC) set their thresholds from it; codecs whose
    server plans the round (LGC) get their part of the plan in `side`; the others
    ignore it.
    """

    num_clients: int = 1
    """K, the number of clients that take part in the round."""
    lr: float = 1.0
    """The server's step size α."""
    model_change_sq: tuple[float, ...] = ()
    """‖w(t+1−d) − w(t−d)‖² for d = 1, 2, ..., newest first."""
    side: bytes = b""
    """Side information from the server's side of the codec for this step (what
    `DecoderPool.plan_round` planned for this client, carried by the instruction),
    b"" for none. The encoder folds it into the step with `Compressor.receive`."""
    budget_bits: float | None = None
    """The most bits this client's payload (header included) should take this step
    (`flcomp.strategies.budget`); None: no budget. Codecs with a rate knob (top-k, STC: the
    entries kept; QSGD: its levels; the ladder: its rung) meet it by that knob, never
    exceeding their config's rate; the others ignore it."""

    def __post_init__(self) -> None:
        if self.num_clients < 1 or not self.lr >= 0 or any(not c >= 0 for c in self.model_change_sq):
            raise ValueError("RoundContext needs num_clients ≥ 1, lr ≥ 0 and non-negative model changes")
        if self.budget_bits is not None and not self.budget_bits >= 0:
            raise ValueError(f"a budget is a number of bits ≥ 0, got {self.budget_bits}")


class StepRng:
    """The step's generator, `np.random.default_rng(key)`, built on first use.

    Seeding one costs ~9 µs, a third of a small update's whole encode, and most codecs
    draw nothing; any attribute of np.random.Generator is forwarded to it.
    """

    __slots__ = ("_key", "_generator")

    def __init__(self, key: tuple[int, ...]) -> None:
        self._key = key
        self._generator: np.random.Generator | None = None

    def __getattr__(self, name: str) -> Any:
        if self._generator is None:
            # default_rng's own stream, without its checks of what it was given (a third of its cost).
            self._generator = np.random.Generator(np.random.PCG64(self._key))
        return getattr(self._generator, name)


Stats = dict[str, float]
"""What one encoding step did, by name (`Compressor.stats` lists a codec's names)."""


@dataclass
class Step:
    """The outcome of encoding one update: what the decoder will see, the new state, and
    what the step did (`stats`, the codec's documented names only)."""

    decoded: list[np.ndarray] | Callable[[], list[np.ndarray]]
    """What the decoder will return, or a function that computes it: a compressor whose
    reconstruction is finite by construction (`finite_reconstruction`) may defer the
    work, which only error feedback and the like need. Read it with `reconstruction()`."""
    shared: State = field(default_factory=dict)
    local: State = field(default_factory=dict)
    stats: Stats = field(default_factory=dict)

    def reconstruction(self) -> list[np.ndarray]:
        """`decoded`, computed now (once) if the compressor deferred it."""
        if callable(self.decoded):
            self.decoded = self.decoded()
        return self.decoded


class Compressor(ABC):
    """Encoding and decoding math of one codec, for one model spec."""

    name: ClassVar[str]
    """Registry name, e.g. "topk"."""
    codec_id: ClassVar[int]
    """The id in the payload header; unique, stable across versions."""
    Config: ClassVar[type]
    """Dataclass of the codec's parameters, each with its documented default."""
    lossless: ClassVar[bool] = False
    """True when decode(encode(x)) == x bit for bit (float32 updates)."""
    error_feedback: ClassVar[bool] = False
    """Whether `flcomp.codecs.codec()` wraps it in error feedback unless told otherwise."""
    finite_reconstruction: ClassVar[bool] = False
    """True when the reconstruction of every finite update is finite (saturating casts):
    the encoder then skips its overflow check, and `Step.decoded` may be deferred."""
    own_error_feedback: ClassVar[bool] = False
    """True when the codec keeps its own error memory (LGC): the generic wrapper is refused."""
    stats: ClassVar[tuple[str, ...]] = ()
    """The names of what each step reports in `Step.stats` (e.g. "residual_sent"): numbers,
    snake_case, documented in docs/METHODS.md ("What codecs report"). Each step reports
    every one of them; they reach the client's reply metrics ("flcomp.stat.<name>"), the
    server's round metrics (summed over the round's accepted clients) and rounds.csv."""

    def __init__(self, spec: ModelSpec, config: Any) -> None:
        self.spec = spec
        self.config = config

    def initial_shared(self) -> State:
        """Shared state at the start and after every key frame."""
        return {}

    def initial_local(self) -> State:
        """Encoder-only state at the start."""
        return {}

    def receive(self, side: bytes, shared: State) -> State:
        """The shared state a step starts from, given the server's side information.

        Codecs whose server plans each round (LGC: roles, an index set, model weights)
        send it along with the instruction; both endpoints call this with the same
        bytes before encoding or decoding the step, so it becomes part of the step:
        kept by `commit()`, dropped by `rollback()`, and mixed into the fingerprint.
        Must validate `side` (PayloadError on anything malformed) and must not
        modify `shared` in place. Codecs without side information refuse any.
        """
        if side:
            raise PayloadError(f"codec {self.name!r} takes no side information")
        return shared

    @abstractmethod
    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        """Write the body for flat float32 tensors `x`; return the decoded update and new state.

        Must not modify `x`, `shared` or `local` in place: the endpoint keeps them
        until the step is committed or rolled back. `x` may alias the caller's
        arrays, so state that keeps it keeps a copy.
        """

    @abstractmethod
    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        """Read a body; return the flat float32 update and the new shared state.

        Must validate every count against the spec before using it (raising
        PayloadError) and must not modify `shared` in place. The update is the
        caller's to modify: it must share no memory with the new state.
        """


class TensorCompressor(Compressor):
    """A stateless compressor that treats each tensor on its own.

    Subclasses write `encode_tensor` and `decode_tensor`; the loop over tensors is here.
    """

    @abstractmethod
    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray | Callable[[], np.ndarray]:
        """Write one flat tensor; return its reconstruction, or (`finite_reconstruction`
        codecs) a function that computes it."""

    @abstractmethod
    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        """Read one flat tensor of `t.size` entries."""

    def step_stats(self) -> Stats:
        """What every step reports (`Compressor.stats`): a stateless compressor's stats
        follow from its config and spec alone. None by default."""
        return {}

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        decoded = [self.encode_tensor(xi, t, out, rng) for xi, t in zip(x, self.spec.tensors)]
        if any(callable(d) for d in decoded):
            return Step(lambda: [d() if callable(d) else d for d in decoded], stats=self.step_stats())
        return Step(decoded, stats=self.step_stats())

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        return [self.decode_tensor(body, t) for t in self.spec.tensors], shared
