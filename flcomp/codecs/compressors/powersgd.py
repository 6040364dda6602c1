"""PowerSGD: rank-r approximation by one power iteration (Vogels, Karimireddy, Jaggi; NeurIPS 2019).

Each tensor is viewed as a matrix M (first dimension × the rest). With Q (m×r)
from the previous round (warm start) or fresh Gaussian:

    P = orthonormalize(M Q)      n×r
    Q = Mᵀ P                     m×r
    C(M) = P Qᵀ

P and Q are sent as float32. As in PyTorch's PowerSGD hook, tensors that low rank
would not shrink by `min_compression_rate` (vectors, small matrices) are sent
whole in float32, and error feedback is on by default. The decoder is stateless;
Q for the warm start is encoder-local state.

    per tensor: P then Q (float32), or the tensor (float32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


@dataclass(frozen=True)
class PowerSGDConfig:
    rank: int = 1
    """r, the approximation rank (PyTorch's default 1). Raise it (2–4) when accuracy
    lags; bits grow linearly with it."""
    warm_start: bool = True
    """Start the power iteration from last round's Q: better approximations for free."""
    min_compression_rate: float = 2.0
    """Compress a tensor only if n·m / ((n + m)·r) reaches this; else send it whole."""

    def __post_init__(self) -> None:
        if not (self.rank >= 1 and 0 < self.min_compression_rate < math.inf):
            raise ValueError(
                "PowerSGD needs rank ≥ 1 and a finite min_compression_rate > 0, "
                f"got rank={self.rank}, min_compression_rate={self.min_compression_rate}"
            )


def matrix_shape(t: TensorSpec) -> tuple[int, int]:
    """The (n, m) matrix view of a tensor."""
    n = t.shape[0] if t.shape else 1
    return n, t.size // n if n else 0


@register
class PowerSGD(Compressor):
    """Low-rank update via one step of subspace iteration, with warm start."""

    name = "powersgd"
    codec_id = 9
    Config = PowerSGDConfig
    error_feedback = True

    def low_rank(self, t: TensorSpec) -> bool:
        """Whether tensor `t` is sent as P, Q rather than whole."""
        n, m = matrix_shape(t)
        r = self.config.rank
        return len(t.shape) >= 2 and r < min(n, m) and n * m >= self.config.min_compression_rate * (n + m) * r

    def initial_local(self) -> State:
        rng = np.random.default_rng(0)
        return {
            f"q/{i}": rng.standard_normal((matrix_shape(t)[1], self.config.rank)).astype(np.float32)
            for i, t in enumerate(self.spec.tensors)
            if self.low_rank(t)
        }

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        decoded, new_local = [], {}
        for i, (xi, t) in enumerate(zip(x, self.spec.tensors)):
            if not self.low_rank(t):
                out.array(xi)
                decoded.append(xi)
                continue
            m = xi.reshape(matrix_shape(t))
            q = local[f"q/{i}"] if self.config.warm_start else _gaussian(rng, m.shape[1], self.config.rank)
            p = _orthonormal(m @ q)
            q = (m.T @ p).astype(np.float32)
            out.array(p)
            out.array(q)
            decoded.append(_product(p, q))
            # Only Q's column space matters to the next power step; keeping it
            # orthonormal, not as large as M, keeps M·Q from overflowing.
            new_local[f"q/{i}"] = _orthonormal(q)
        return Step(decoded, shared, new_local)

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        decoded = []
        r = self.config.rank
        for t in self.spec.tensors:
            if not self.low_rank(t):
                decoded.append(body.array(np.float32, t.size, limit=t.size).copy())
                continue
            n, m = matrix_shape(t)
            p = body.array(np.float32, n * r, limit=n * r).reshape(n, r)
            q = body.array(np.float32, m * r, limit=m * r).reshape(m, r)
            decoded.append(_product(p, q))
        return decoded, shared


_EINSUM_ENTRIES = 1 << 20


def _orthonormal(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis (float32) of the columns of `a` (n×r), as QR's Q.

    One column is normalised directly, without LAPACK's QR call; a zero column becomes e₁,
    as Householder QR makes it.
    """
    if a.shape[1] > 1:
        return np.linalg.qr(a)[0].astype(np.float32)
    norm = np.linalg.norm(a)
    if not norm > 0:
        unit = np.zeros_like(a, dtype=np.float32)
        unit[0] = 1
        return unit
    return (a / norm).astype(np.float32, copy=False)


def _product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """P·Qᵀ, flat. Rank 1 is an outer product, one multiply an entry, which NumPy does
    3–5× faster than matmul does it: einsum's loop below ~1M entries, a broadcast above
    (both give the same bits, so the two ends may differ in which one they take)."""
    if p.shape[1] > 1:
        return (p @ q.T).reshape(-1)
    if p.size * q.size <= _EINSUM_ENTRIES:
        return np.einsum("i,j->ij", p[:, 0], q[:, 0]).reshape(-1)
    return (p * q.T).reshape(-1)


def _gaussian(rng: np.random.Generator, m: int, r: int) -> np.ndarray:
    return rng.standard_normal((m, r), dtype=np.float32)
