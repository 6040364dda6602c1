"""TPC: temporal predictive coding (Edin, Chen, Kieffer, Johansson; Allerton 2024, arXiv 2410.02478).

Both ends keep a FIFO memory of the last s *reconstructed* updates ĝ (the server
never sees the true ones). Each round the client fits a linear predictor to it,

    G = [ĝ(t−1) … ĝ(t−m)]        d×m, m ≤ s the memory filled so far
    a = argmin_a ‖g − G a‖₂       least squares, minimum norm (see `fit`)
    p = G a,  r = g − p

and sends a (float32) and one trigger bit; the residual r, coded by an inner codec
(any registered one, fp32 by default), only when

    ‖r‖ > τ·‖g‖   (threshold="relative")   or   ‖r‖ > τ   (threshold="absolute").

Both ends then set ĝ = p + r̂ (or ĝ = p) and push ĝ into the memory. Warm-up:
before any memory exists (m = 0) the prediction is 0 and the residual is g itself;
while the memory fills (m < s) the fit uses the m slots it has, and m coefficients
are sent (both ends know m). With per_tensor=True every tensor gets its own
coefficients.

The prediction is computed from the float32 coefficients, term by term in float32
in the same order on both sides (no BLAS, whose summation order may vary), so the
decoder's ĝ is the encoder's bit for bit. With a lossless inner codec ĝ equals g
up to float32 rounding of p + (g − p): |ĝ − g| ≤ 2⁻²³·(|g| + |p|) entrywise, and
bit for bit while the memory is empty.

Shared state: "filled" (m, int64), "memory/<i>/<j>" (slot j of tensor i, n_i float32,
j = 0 the newest: a push moves the slots' arrays and copies only ĝ) and the inner codec's
shared state under "inner/"; local state: the inner codec's (e.g. its error-feedback
memory) under "inner/". A key frame empties the memory and resets the inner codec's
shared state.

    (groups × m) float32 coefficients | u8 trigger (0 or 1) | if 1: inner body for r

groups = 1 (0 for a model without tensors), or one per tensor with per_tensor.
Bits per round without the residual, once the memory is full: header + 32·s·groups
+ 8 (the trigger bit takes a byte of its own; the wire format is byte-aligned).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import Codec, register
from flcomp.codecs.spec import ModelSpec, TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

MAX_MEMORY = 64
"""The largest s: its coefficients fit the endpoints' per-payload slack (1 KiB a tensor)."""
_BLOCK = 1 << 16
"""Entries a block of the fit and the prediction works on, so that its passes run in cache."""
_FIT_BLOCK = 1 << 15
"""Entries a block of the fit converts to float64: (m + 1) × 256 KiB."""
_DOT_ROWS = 8
"""Up to this many rows (m + 1) the fit's Gram matrix is pairwise dots, above a matrix product."""
RCOND = 1e-12
"""Eigenvalues of GᵀG below this fraction of the largest are dropped: singular values of G
below 10⁻⁶ of the largest. GᵀG in float64 carries errors ~10⁻¹⁶ of its largest eigenvalue,
so what lies far below is rounding, not a direction of the memory."""


@dataclass(frozen=True)
class TPCConfig:
    memory: int = 3
    """s, how many past reconstructions the predictor combines (1 ≤ s ≤ 64). Raise it
    for updates with longer temporal structure (momentum, oscillation); each slot
    costs 32 bits a round (per tensor with per_tensor) and d floats of memory on
    each side."""
    tau: float = 0.01
    """τ, the trigger threshold: the residual is sent iff ‖r‖ > τ·‖g‖ (relative)
    or ‖r‖ > τ (absolute). Larger: fewer residuals, coarser updates; τ = 0 sends
    every nonzero residual.

    Why 0.01, not the former 0.3 (docs/METHODS.md §1): a client's update does not vanish at the
    optimum, only the mean over clients does (∇f_k(w*) ≠ 0), so a skipped residual
    leaves an error up to τ·‖g_k‖ that does not shrink, and training stalls at an
    objective gap that grows like τ². Lower τ where the gap must go lower (each
    residual costs a full inner payload); raise it only where a coarse solution is
    enough. With local SGD (federated mode) the residual goes almost every round
    whatever τ. Measured (τ = 0.3 to 0.001 in distributed GD, synthetic logistic
    regression and digits): docs/RESULTS.md, section "tpc-tau"
    (`python examples/tpc_experiment.py --sweep`)."""
    threshold: Literal["relative", "absolute"] = "relative"
    """"relative": τ is a fraction of ‖g‖ (needs τ < 1), scale-free, the default;
    "absolute": τ is a norm, in the update's units, for updates whose scale is known."""
    per_tensor: bool = False
    """Fit coefficients for each tensor on its own instead of the whole vector:
    better predictions when layers evolve differently, for 32·s bits a tensor."""
    inner: str = "fp32"
    """The codec of the residual, as `Codec.parse` text; its own parameters are
    separated by ";" (a "," ends TPC's parameter), e.g. "topk:ratio=0.1" or
    "qsgd:levels=4;bucket_size=256". Lossy inner codecs save bits on every sent
    residual; their own default error feedback (top-k's) then acts on the residual.
    Stored in its canonical form, every parameter spelled out."""

    def __post_init__(self) -> None:
        if not 1 <= self.memory <= MAX_MEMORY:
            raise ValueError(f"TPC needs 1 ≤ memory ≤ {MAX_MEMORY}, got {self.memory}")
        if not 0 <= self.tau < float("inf"):
            raise ValueError(f"TPC needs a finite tau ≥ 0, got {self.tau}")
        if self.threshold == "relative" and self.tau >= 1:
            # ‖r‖ ≤ ‖g‖ for a least-squares residual, and = ‖g‖ on an empty memory:
            # nothing would ever be sent and every update would decode to 0.
            raise ValueError("the relative threshold needs tau < 1 (e.g. 0.01)")
        inner = Codec.parse(self.inner.replace(";", ","))
        if inner.name == "tpc":
            raise ValueError("TPC's inner codec cannot be TPC")
        object.__setattr__(self, "inner", inner.describe().replace(",", ";"))

    @property
    def inner_codec(self) -> Codec:
        """The residual's codec."""
        return Codec.parse(self.inner.replace(";", ","))


@register
class TemporalPredictiveCoding(Compressor):
    """Least-squares prediction from past reconstructions; the residual only when it is large.

    Stats: ``residual_sent``, 1.0 if the payload carries the residual (the trigger byte is 1),
    else 0.0. The inner codec's own stats are not reported.
    """

    name = "tpc"
    codec_id = 16
    Config = TPCConfig
    stats = ("residual_sent",)
    # No error feedback of its own: the paper has none, the memory already holds what
    # the server reconstructed, and a lossy inner codec brings its own on the residual.
    # error_feedback=True feeds back g − ĝ, skipped residuals included.
    error_feedback = False

    def __init__(self, spec: ModelSpec, config: TPCConfig) -> None:
        super().__init__(spec, config)
        # The residual is flat float32, shaped as the update (PowerSGD needs the shapes).
        residual_spec = ModelSpec(tuple(TensorSpec(t.shape, np.float32) for t in spec.tensors))
        self.inner = config.inner_codec.compressor(residual_spec)
        n = len(spec)
        self.groups = [[i] for i in range(n)] if config.per_tensor else [list(range(n))] if n else []
        """Tensor indices sharing one coefficient vector."""
        self.group_of = [k for k, group in enumerate(self.groups) for _ in group]

    def initial_shared(self) -> State:
        s = self.config.memory
        memory = {
            _slot(i, j): np.zeros(t.size, np.float32)
            for i, t in enumerate(self.spec.tensors)
            for j in range(s)
        }
        return {"filled": np.array(0, np.int64)} | memory | _prefixed(self.inner.initial_shared())

    def initial_local(self) -> State:
        return _prefixed(self.inner.initial_local())

    def filled(self, shared: State) -> int:
        """m, how many memory slots hold reconstructions."""
        m = int(shared["filled"])
        if not 0 <= m <= self.config.memory:
            raise ValueError(f"TPC state claims {m} filled slots of {self.config.memory}")
        return m

    def fit(self, x: list[np.ndarray], shared: State) -> np.ndarray:
        """a = argmin ‖g − G a‖ for each group: float32, shape (groups, m).

        Solved from the normal equations GᵀG a = Gᵀg, accumulated in float64 block by block
        (one pass over the memory, m + 1 floats an entry), by eigendecomposition: the
        minimum-norm solution, directions of a rank-deficient memory (repeated or zero
        updates) dropped (`RCOND`). Only the encoder fits, so the BLAS summation order does
        not have to match anything; the coefficients sent are what both ends use.
        """
        m = self.filled(shared)
        a = np.zeros((len(self.groups), m), np.float32)
        if m == 0:
            return a
        rows = np.empty((m + 1, min(_FIT_BLOCK, max(x[i].size for i in range(len(x))))))
        for k, group in enumerate(self.groups):
            gram = np.zeros((m + 1, m + 1))  # [G g]ᵀ[G g]
            for i in group:
                slots = [shared[_slot(i, j)] for j in range(m)] + [x[i]]
                for start in range(0, x[i].size, _FIT_BLOCK):
                    stop = min(start + _FIT_BLOCK, x[i].size)
                    block = rows[:, : stop - start]
                    for row, slot in zip(block, slots):
                        np.copyto(row, slot[start:stop])
                    gram += _gram(block)
            if np.isfinite(gram).all():
                a[k] = _minimum_norm_solution(gram[:m, :m], gram[:m, m])
        return a

    def predict(self, a: np.ndarray, shared: State) -> list[np.ndarray]:
        """p = G a per tensor (flat float32), identical on both ends bit for bit."""
        m = self.filled(shared)
        p = []
        with np.errstate(over="ignore", invalid="ignore"):
            for i, t in enumerate(self.spec.tensors):
                coef = a[self.group_of[i]]
                pi = np.zeros(t.size, np.float32)
                term = np.empty(min(t.size, _BLOCK), np.float32)
                for start in range(0, t.size, _BLOCK):
                    block = pi[start : start + _BLOCK]
                    product = term[: block.size]
                    for j in range(m):  # a fixed order of float32 multiply-adds
                        np.multiply(shared[_slot(i, j)][start : start + _BLOCK], coef[j], out=product)
                        block += product
                p.append(pi)
        return p

    def triggered(self, r: list[np.ndarray], x: list[np.ndarray]) -> bool:
        """Whether the residual is sent: ‖r‖ > τ·‖g‖ (relative) or ‖r‖ > τ (absolute)."""
        scale = _norm(x) if self.config.threshold == "relative" else 1.0
        return _norm(r) > self.config.tau * scale

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        a = self.fit(x, shared)
        p = self.predict(a, shared)
        with np.errstate(over="ignore", invalid="ignore"):
            r = [xi - pi for xi, pi in zip(x, p)]
        if not (np.isfinite(a).all() and all(np.isfinite(ri).all() for ri in r)):
            # Coefficients or a prediction past float32's range (huge updates): predict nothing.
            a = np.zeros_like(a)
            p = self.predict(a, shared)
            r = [xi - pi for xi, pi in zip(x, p)]
        send = self.triggered(r, x)
        out.array(a.reshape(-1))
        out.struct("B", send)
        inner_shared, inner_local = _unprefixed(shared), _unprefixed(local)
        r_hat = None
        if send:
            step = self.inner.encode(r, inner_shared, inner_local, out, rng, ctx)
            r_hat, inner_shared, inner_local = step.reconstruction(), step.shared, step.local
        g_hat = self.reconstruct(p, r_hat, shared)
        stats = {"residual_sent": float(send)}
        return Step(g_hat, self.pushed(shared, g_hat, inner_shared), _prefixed(inner_local), stats)

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        m = self.filled(shared)
        count = len(self.groups) * m
        a = body.array(np.float32, count, limit=count).astype(np.float32).reshape(len(self.groups), m)
        if not np.isfinite(a).all():
            raise PayloadError("TPC coefficients hold NaN or Inf")
        (send,) = body.struct("B")
        if send not in (0, 1):
            raise PayloadError(f"TPC trigger {send} is neither 0 nor 1")
        inner_shared, r_hat = _unprefixed(shared), None
        if send:
            r_hat, inner_shared = self.inner.decode(body, inner_shared)
        # A forged prediction or residual that overflows yields NaN/Inf: the endpoint refuses it.
        g_hat = self.reconstruct(self.predict(a, shared), r_hat, shared)
        return g_hat, self.pushed(shared, g_hat, inner_shared)

    def reconstruct(
        self, p: list[np.ndarray], r_hat: list[np.ndarray] | None, shared: State
    ) -> list[np.ndarray]:
        """ĝ = p + r̂, or p when no residual was sent."""
        if r_hat is None:
            return p
        if self.filled(shared) == 0:  # no prediction: ĝ = r̂ exactly (0 + r̂ would turn −0 into +0)
            return list(r_hat)
        with np.errstate(over="ignore", invalid="ignore"):
            return [pi + ri for pi, ri in zip(p, r_hat)]

    def pushed(self, shared: State, g_hat: list[np.ndarray], inner_shared: State) -> State:
        """The shared state with ĝ pushed into the memory (the oldest slot drops out)."""
        memory = {}
        for i, gi in enumerate(g_hat):
            memory[_slot(i, 0)] = gi.copy()  # ĝ may alias the update or the decoder's output
            memory |= {_slot(i, j): shared[_slot(i, j - 1)] for j in range(1, self.config.memory)}
        filled = np.array(min(self.filled(shared) + 1, self.config.memory), np.int64)
        return {"filled": filled} | memory | _prefixed(inner_shared)


def _slot(tensor: int, age: int) -> str:
    """The shared-state key of tensor `tensor`'s reconstruction `age` + 1 rounds back."""
    return f"memory/{tensor}/{age}"


def _gram(rows: np.ndarray) -> np.ndarray:
    """rows·rowsᵀ (float64). For a few long rows, pairwise dots: OpenBLAS's matrix product of
    so thin a matrix runs at a quarter of their speed."""
    if len(rows) > _DOT_ROWS or rows.shape[1] < _DOT_ROWS * len(rows) ** 2:
        return rows @ rows.T
    gram = np.empty((len(rows), len(rows)))
    for i in range(len(rows)):
        for j in range(i, len(rows)):
            gram[i, j] = gram[j, i] = np.dot(rows[i], rows[j])
    return gram


def _minimum_norm_solution(gram: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The minimum-norm a with gram·a = b, over the eigenvalues of the symmetric `gram` above
    `RCOND` of the largest (all zero for a zero memory)."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    kept = eigenvalues > RCOND * eigenvalues[-1]
    if not eigenvalues[-1] > 0 or not kept.any():
        return np.zeros(b.size)
    v = vectors[:, kept]
    return v @ ((v.T @ b) / eigenvalues[kept])


def _norm(x: list[np.ndarray]) -> float:
    """‖x‖₂ over all tensors, accumulated in float64 (float32 squares overflow)."""
    return float(np.sqrt(sum(float(np.einsum("i,i->", xi, xi, dtype=np.float64)) for xi in x)))


def _prefixed(state: State) -> State:
    return {f"inner/{k}": v for k, v in state.items()}


def _unprefixed(state: State) -> State:
    return {k[6:]: v for k, v in state.items() if k.startswith("inner/")}
