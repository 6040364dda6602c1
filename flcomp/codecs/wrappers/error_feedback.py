"""Error feedback: the one wrapper that makes any lossy compressor keep what it dropped.

Seide et al. 2014 (1-bit SGD), Stich et al. 2018, Karimireddy et al. 2019 (EF-SGD):

    p = g + e            add what earlier rounds did not transmit
    send C(p)            the inner compressor, unchanged
    e ← p − C(p)         remember what this round did not transmit

The memory e is encoder-local state; the payload is the inner codec's, so the
decoder is the inner codec's too. Invariant: Σ sent + e = Σ g over committed steps.
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.compressor import RoundContext, State, Step
from flcomp.codecs.wire import PayloadWriter
from flcomp.codecs.wrappers.base import Wrapper


class ErrorFeedback(Wrapper):
    """`inner` with an error-feedback memory (one float32 array per tensor)."""

    def own_local(self) -> State:
        return {f"ef/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}

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
        step = self.inner.encode(p, shared, self.inner_local(local), out, rng, ctx)
        decoded = step.reconstruction()
        return self.with_inner({f"ef/{i}": pi - di for i, (pi, di) in enumerate(zip(p, decoded))}, step)
