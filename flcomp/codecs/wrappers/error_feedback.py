"""Error feedback: the one wrapper that makes any lossy compressor keep what it dropped.

Seide et al. 2014 (1-bit SGD), Stich et al. 2018, Karimireddy et al. 2019 (EF-SGD):

    p = g + e            add what earlier rounds did not transmit
    send C(p)            the inner compressor, unchanged
    e ← β·(p − C(p))     remember what this round did not transmit (β = ef_decay, default 1)

The memory e is encoder-local state; the payload is the inner codec's, so the
decoder is the inner codec's too. At β = 1 (exact error feedback) the invariant
Σ sent + e = Σ g holds over committed steps: nothing is lost, only delayed.

``ef_decay=β`` < 1 (leaky error feedback) gives that invariant up: each round a fraction
1 − β of what is held back is dropped for good, so what is sent is biased towards zero,
but the memory stays bounded. For a δ-contractive C (‖p − C(p)‖² ≤ (1 − δ)‖p‖², as top-k
and scaled sign are, with δ = ‖p‖₁²/(d‖p‖₂²) for scaled sign),

    ‖e‖ ≤ q/(1 − q) · max ‖g‖,    q = β·√(1 − δ),

so at β = 1 the bound blows up as δ → 0, while any β < 1 keeps it below β/(1 − β)·max ‖g‖
whatever δ does. Use it where exact error feedback winds up: on the server's downlink
with sign codecs on both links (two-way error feedback, `--downlink
scaled_sign:ef_decay=0.9`). There the clients' signs disagree on noisy coordinates, the
average the server compresses has a small δ, and both memories grow on the stiffest
coordinates until the model diverges; a smaller step only delays it
(examples/two_way_stability.py: β = 0.9 converges, 0.99 still diverges). Keep β = 1
everywhere else: on a single link error feedback converges, and a decay only adds bias.
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.wire import PayloadWriter
from flcomp.codecs.wrappers.base import Wrapper


class ErrorFeedback(Wrapper):
    """`inner` with an error-feedback memory (one float32 array per tensor), scaled by `decay` (β)
    every step."""

    def __init__(self, inner: Compressor, decay: float = 1.0) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(f"ef_decay needs 0 ≤ β ≤ 1, got {decay}")
        super().__init__(inner)
        self.decay = np.float32(decay)

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
        held = [pi - di for pi, di in zip(p, step.reconstruction())]
        if self.decay != 1:  # β = 1 keeps exact error feedback's memory bit for bit
            held = [np.multiply(h, self.decay, out=h) for h in held]
        return self.with_inner({f"ef/{i}": h for i, h in enumerate(held)}, step)

    @staticmethod
    def memory(compressor: Compressor, local: State) -> list[np.ndarray] | None:
        """The error memory e (one flat array per tensor) in an encoder's `local` state, looked
        up through the wrappers around it; None when `compressor` has no error-feedback wrapper."""
        while isinstance(compressor, Wrapper):
            if isinstance(compressor, ErrorFeedback):
                return [local[f"ef/{i}"] for i in range(len(compressor.spec.tensors))]
            compressor, local = compressor.inner, compressor.inner_local(local)
        return None
