"""LAG: lazily aggregated gradients (Chen, Giannakis, Sun, Yin; NeurIPS 2018).

A client uploads its update only when it differs enough from the one it last
uploaded; otherwise it sends a one-byte "skip" and the server reuses the last one.
The paper's server sums, θ ← θ − α_p Σ_k ∇̂_k, and LAG-WK's trigger skips round t iff

    ‖∇_k − ∇̂_k‖² ≤ (1 / (α_p² K²)) · Σ_{d=1..D} (ξ/D) · ‖θ(t+1−d) − θ(t−d)‖²

with ∇̂_k the last upload, K the clients and the model changes from `RoundContext`.

A server that averages. flcomp's servers (FedAvg and every strategy behind
`flcomp.strategies`) take w ← w − α · (1/K) Σ_k x̂_k, where x is the update this codec
compresses (Flower's model change Δ_k, the client's lr already in it; α =
`RoundContext.lr`, 1 there). That is the paper's step with ∇_k = x_k and α_p = α/K, so
its trigger reads, in the update's units,

    ‖x − x̂‖² ≤ (1 / α²) · Σ_{d=1..D} (ξ/D) · ‖w(t+1−d) − w(t−d)‖²:

K cancels. (Taking α_p = α, as an earlier version did, made the threshold K² too strict.)
With no history the right side is 0 and every update is sent; FedAvg's weighted mean
with unequal weights is taken as the plain mean here.
rule="relative" needs no history: skip iff ‖x − x̂‖² ≤ ξ·‖x‖².

Shared state: x̂, one float32 array per tensor (zeros after a key frame).

    u8 sent (0 or 1) | if sent: every tensor as float32
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.wire import PayloadReader, PayloadWriter


@dataclass(frozen=True)
class LAGConfig:
    xi: float = 1.0
    """ξ, the trigger's weight. 1 (default) is the paper's ξ for any number of clients
    (the threshold accounts for the server's mean, see the module docstring). Larger:
    more skipped rounds, staler updates. The relative rule needs ξ < 1 (try 0.1)."""
    memory: int = 10
    """D, how many past model changes LAG-WK's threshold sums (the paper's D = 10)."""
    rule: Literal["lag-wk", "relative"] = "lag-wk"
    """"lag-wk": the paper's worker-side trigger, from RoundContext's model changes;
    "relative": ‖g − ĝ‖² ≤ ξ·‖g‖², for drivers that supply no history."""

    def __post_init__(self) -> None:
        if not (0 <= self.xi < math.inf and self.memory >= 1):
            raise ValueError(f"LAG needs a finite xi ≥ 0 and memory ≥ 1, got {self.xi}, {self.memory}")
        if self.rule == "relative" and self.xi >= 1:
            raise ValueError("the relative rule needs xi < 1 (e.g. 0.1): with xi ≥ 1 it skips every round")


@register
class LAG(Compressor):
    """Event-triggered upload: the whole update in float32, or a skip.

    Stats: ``sent``, 1.0 if the update was sent, 0.0 if the round was skipped.
    """

    name = "lag"
    codec_id = 8
    Config = LAGConfig
    stats = ("sent",)

    def initial_shared(self) -> State:
        return {f"last/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}

    def threshold(self, g_sq: float, ctx: RoundContext) -> float:
        """The right side of the trigger: skip iff ‖g − ĝ‖² ≤ threshold."""
        c = self.config
        if c.rule == "relative":
            return c.xi * g_sq
        if ctx.lr == 0:  # the model does not move: LAG-WK's bound says nothing, so send
            return 0.0
        # The paper's 1/(α_p K)² with α_p = α/K, the step a server that averages gives each client.
        changes = ctx.model_change_sq[: c.memory]
        return (c.xi / c.memory) * float(sum(changes)) / ctx.lr**2

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        last = [shared[f"last/{i}"] for i in range(len(x))]
        diff_sq = sum(_squared_norm(xi - li) for xi, li in zip(x, last))
        g_sq = sum(_squared_norm(xi) for xi in x)
        if diff_sq <= self.threshold(g_sq, ctx):
            out.struct("B", 0)
            return Step([li.copy() for li in last], shared, stats={"sent": 0.0})
        out.struct("B", 1)
        for xi in x:
            out.array(xi)
        # x may alias the caller's arrays: the state keeps its own copy.
        return Step(x, {f"last/{i}": xi.copy() for i, xi in enumerate(x)}, stats={"sent": 1.0})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        (sent,) = body.struct("B")
        if sent not in (0, 1):
            raise PayloadError(f"LAG flag {sent} is neither 0 nor 1")
        if not sent:
            return [shared[f"last/{i}"].copy() for i in range(len(self.spec))], shared
        x = [body.array(np.float32, t.size, limit=t.size).copy() for t in self.spec.tensors]
        return x, {f"last/{i}": xi.copy() for i, xi in enumerate(x)}


def _squared_norm(x: np.ndarray) -> float:
    """‖x‖² accumulated in float64, so that huge float32 entries do not overflow."""
    return float(np.einsum("i,i->", x, x, dtype=np.float64))
