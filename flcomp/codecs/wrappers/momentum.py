"""Momentum before compression: the wrapper that low-pass filters what a codec sends.

The journal version of SignXOR (Adikari & Draper, JSAIT 2021) compresses the
momentum of the updates, not the updates: it smooths them, so their signs repeat
from round to round and the flip vector gets sparser. Any lossy codec takes it
(``momentum=β`` in its text, e.g. ``signxor:lam=1,momentum=0.9``):

    m ← β·m + g          the client's momentum (m = 0 at the start)
    send C(m)            the inner compressor, error feedback included: p = m + e

The memory m is encoder-local state (like error feedback's e), so it changes with
the step that is committed and is restored by a rollback; key frames keep it. The
payload is the inner codec's. What the server receives is C(m + e), not an
estimate of g: momentum is part of the optimiser (heavy-ball SGD, with steps
about 1/(1 − β) times longer in steady state), so scale the learning rate by
about (1 − β) to keep the step length of a run without it.

The knob: ``momentum=β``, default 0 (off). Turn it on (β = 0.9 is the usual value)
where momentum-SGD is the baseline being compressed, e.g. large models trained with
a learning-rate schedule as in the journal version. It is not a way to make sign
flips rarer under error feedback: there the flips come mostly from error feedback's
own alternations, and on the CNN of examples/signxor_experiment.py β = 0.9 left the
flip rate about where it was and trained worse at the same step length
(docs/RESULTS.md).
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.wire import PayloadWriter
from flcomp.codecs.wrappers.base import Wrapper


class Momentum(Wrapper):
    """`inner` fed with the momentum β·m + g of the updates (one float32 array per tensor)."""

    def __init__(self, inner: Compressor, beta: float) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"momentum needs 0 < β < 1, got {beta}")
        super().__init__(inner)
        self.beta = np.float32(beta)

    def own_local(self) -> State:
        return {f"momentum/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        m = [self.beta * local[f"momentum/{i}"] + xi for i, xi in enumerate(x)]
        step = self.inner.encode(m, shared, self.inner_local(local), out, rng, ctx)
        return self.with_inner({f"momentum/{i}": mi for i, mi in enumerate(m)}, step)
