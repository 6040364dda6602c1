"""Error feedback: the one wrapper that makes any lossy compressor keep what it dropped.

Seide et al. 2014 (1-bit SGD), Stich et al. 2018, Karimireddy et al. 2019 (EF-SGD):

    p = g + e            add what earlier rounds did not transmit
    send C(p)            the inner compressor, unchanged
    e ← p − C(p)         remember what this round did not transmit

The memory e is encoder-local state; the payload is the inner codec's, so the
decoder is the inner codec's too. Invariant: Σ sent + e = Σ g over committed steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.wire import PayloadReader, PayloadWriter

if TYPE_CHECKING:
    from flcomp.codecs.endpoints import Decoder, DecoderPool


class ErrorFeedback(Compressor):
    """`inner` with an error-feedback memory (one float32 array per tensor)."""

    def __init__(self, inner: Compressor) -> None:
        super().__init__(inner.spec, inner.config)
        self.inner = inner
        self.name = inner.name
        self.codec_id = inner.codec_id
        self.Config = inner.Config

    def initial_shared(self) -> State:
        return self.inner.initial_shared()

    def initial_local(self) -> State:
        errors = {f"ef/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}
        return errors | {f"inner/{k}": v for k, v in self.inner.initial_local().items()}

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        p = [xi + local[f"ef/{i}"] for i, xi in enumerate(x)]
        inner_local = {k[6:]: v for k, v in local.items() if k.startswith("inner/")}
        step = self.inner.encode(p, shared, inner_local, out, rng, ctx)
        errors = {f"ef/{i}": pi - di for i, (pi, di) in enumerate(zip(p, step.decoded))}
        step.local = errors | {f"inner/{k}": v for k, v in step.local.items()}
        return step

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        return self.inner.decode(body, shared)

    def receive(self, side: bytes, shared: State) -> State:
        return self.inner.receive(side, shared)

    def decoder_pool(self, make_decoder: Callable[[], Decoder], seed: int = 0) -> DecoderPool:
        return self.inner.decoder_pool(make_decoder, seed)
