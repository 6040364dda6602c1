"""A ladder of codecs: each round, the first rung whose payload fits the client's bit budget.

For links whose rate changes from round to round (`flcomp.strategies.budget`), where one
method is not right for every client: fp16 where the link carries it, QSGD where it
carries less, top-k where it carries little. Each round the encoder tries the rungs in
order and sends the first whose payload fits `RoundContext.budget_bits`; the last rung
gets what is left of the budget itself (top-k, STC and QSGD meet it by their own knob)
and is sent whatever it takes. Without a budget the first rung is sent.

Rungs are registered codecs in `Codec.parse` text, '/' between rungs and ';' for a rung's
commas (``ladder:rungs=fp16/qsgd:levels=4/topk:ratio=0.05;value_dtype=float16``), and
stateless (no shared or encoder state: each payload decodes on its own, so switching
rungs between rounds needs no state sync). Error feedback, on by default, is the generic
wrapper around the whole ladder: it keeps what the chosen rung drops, whichever it was;
a rung's own error-feedback default does not apply inside, and a rung may not ask for
momentum or ef_decay (the ladder's apply to the whole).

    body: u8 the rung's index | the rung's body

Stats: ``rung``, the index of the rung sent (0 the first; rounds.csv sums it over the
clients).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import Codec, register
from flcomp.codecs.spec import ModelSpec, TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_INDEX_BITS = 8
_PROBE = ModelSpec((TensorSpec((16, 8), "float32"), TensorSpec((8,), "float32")))


@dataclass(frozen=True)
class LadderConfig:
    rungs: str = "fp16/qsgd/topk"
    """Registered stateless codecs, '/'-separated, from the most precise (sent when the
    budget allows) to the cheapest (sent when nothing else fits). The default: half
    precision, then QSGD's 16 levels (a sixth of fp16's bits on typical updates), then top-k's 1%
    (each step ~8× fewer again, with error feedback keeping the rest)."""

    def __post_init__(self) -> None:
        codecs = self.codecs
        if not 1 <= len(codecs) <= 255:
            raise ValueError(f"a ladder has 1 to 255 rungs, got {len(codecs)}")
        for c in codecs:
            if c.name == Ladder.name:
                raise ValueError("a ladder's rung may not be a ladder")
            if c.momentum or c.ef_decay != 1:
                raise ValueError(f"rung {c.name!r}: momentum and ef_decay apply to the whole ladder")
            # Whether a codec keeps state does not depend on the model: a matrix and a vector tell.
            probe = c.compressor_class(_PROBE, c.config)
            if c.compressor_class.own_error_feedback or probe.initial_shared() or probe.initial_local():
                raise ValueError(f"rung {c.name!r} keeps state between rounds; a ladder's rungs may not")

    @property
    def codecs(self) -> list[Codec]:
        """The rungs, parsed (ValueError on an unknown codec or parameter)."""
        return [Codec.parse(text.strip().replace(";", ",")) for text in self.rungs.split("/")]


@register
class Ladder(Compressor):
    """The first of its rungs whose payload fits the round's budget (the last one otherwise)."""

    name = "ladder"
    codec_id = 29
    Config = LadderConfig
    error_feedback = True
    stats = ("rung",)

    def __init__(self, spec: ModelSpec, config: LadderConfig) -> None:
        super().__init__(spec, config)
        self.rungs = [c.compressor_class(spec, c.config) for c in config.codecs]

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        budget = ctx.budget_bits
        for index, rung in enumerate(self.rungs):
            last = index == len(self.rungs) - 1
            # Only the last rung meets the budget by its own knob; the others are tried as they are.
            own = max(0.0, budget - _INDEX_BITS) if last and budget is not None else None
            body = PayloadWriter()
            body.struct("B", index)
            step = rung.encode(x, {}, {}, body, rng, replace(ctx, budget_bits=own))
            if last or body.fits(budget):
                break
        out.extend(body)
        return Step(step.reconstruction(), stats={"rung": float(index)})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        (index,) = body.struct("B")
        if index >= len(self.rungs):
            raise PayloadError(f"rung {index} of a ladder of {len(self.rungs)}")
        decoded, _ = self.rungs[index].decode(body, {})
        return decoded, shared
