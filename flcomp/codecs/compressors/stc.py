"""STC: sparse ternary compression (Sattler, Wiedemann, Müller, Samek; IEEE TNNLS 2019).

Over the flattened update x of n entries (Algorithm 1 of the paper), with sparsity p:

    k = max(⌈p·n⌉, 1),   K = the positions of the k largest |x_i|
    μ = (1/k) Σ_{i∈K} |x_i|
    C(x)_i = μ·sign(x_i) if i ∈ K, else 0

so the update is a ternary vector {−μ, 0, +μ}: the positions of K, one sign bit each and
one float32 μ. The paper codes the gaps between positions with a Golomb code of
parameter 2^b*, b* = 1 + ⌊log2(log(φ − 1) / log(1 − p))⌋ (φ the golden ratio), at

    b̄_pos = b* + 1 / (1 − (1 − p)^(2^b*))   bits a position

(10.12 bits at p = 1/400, b* = 8; the entropy bound is 10.08). The gaps here are
Rice-coded by `flcomp.codecs.coding.positions`, whose Rice parameter is the measured best
next to log2 of the mean gap, which for geometric gaps is the paper's b*; so a kept
entry costs ~b̄_pos + 1 bits. Entries equal to 0 are never kept: an update with fewer
than k nonzero entries sends only those, and μ is their mean.

Biased, so error feedback is on by default: the paper's residual R ← R + ΔW − STC(R + ΔW)
is `flcomp.codecs.wrappers.error_feedback`. As a downlink codec the same wrapper is the
server's residual, as in the paper's Algorithm 2 (both directions compressed with STC).

Per tensor by default, as the project's other sparsifiers and scalers (`topk`,
`scaled_sign`) work: each tensor has its own k and μ. The paper's one μ over the whole
update (per_tensor=False) averages magnitudes across layers whose updates differ in scale,
so the entries of the smaller ones are sent as ±(a larger layer's μ): measured on
distributed GD on a quadratic with a steadily moving second tensor (a counter; see
tests/codecs/test_stc.py), p = 0.1, whole-update STC stalls at 48% of the initial error
while per-tensor STC (and top-k) converge; with a single tensor the two are the same.

Under a round's bit budget (`RoundContext.budget_bits`) every group keeps the same smaller
fraction of its entries (at most its k), so that the payload fits.

    per group (a tensor; the whole update with per_tensor=False):
               u32 m (kept nonzero entries, ≤ k) | f32 μ | positions | ⌈m/8⌉ bytes of sign bits
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.signs import scaled_signs
from flcomp.codecs.coding.sparse import budgeted_counts, kept_count, top_k_positions
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_GROUP_BITS = 112
"""A group's bits besides its entries: u32 m, f32 μ, the positions' mode byte, byte padding."""


@dataclass(frozen=True)
class STCConfig:
    ratio: float = 1 / 400
    """p, the fraction of entries kept, in (0, 1]. The paper's experiments use p = 1/400
    both ways; raise it (1/100, 1/25) where error feedback alone recovers too slowly,
    e.g. with few rounds or very non-IID clients."""
    per_tensor: bool = True
    """Select k and average μ in each tensor on its own (32 bits of μ and 32 of m a tensor).
    False is the paper's Algorithm 1 on the flattened update, one top-k and one μ: use it
    to reproduce the paper, or for one-tensor models, where both are the same."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")


@register
class STC(Compressor):
    """The k largest-magnitude entries, each sent as ±μ: positions, signs and one mean.

    Stats: ``entries_sent``, the entries the payload carries (the groups' counts m, summed).
    """

    name = "stc"
    codec_id = 20
    Config = STCConfig
    error_feedback = True
    finite_reconstruction = True  # μ is a mean of finite magnitudes
    stats = ("entries_sent",)

    def __init__(self, spec: ModelSpec, config: STCConfig) -> None:
        super().__init__(spec, config)
        ends = np.cumsum([0] + [t.size for t in spec.tensors]).tolist()
        self._tensors = list(zip(ends[:-1], ends[1:]))
        """(start, stop) of each tensor in the flattened update."""
        self._groups = self._tensors if config.per_tensor else [(0, ends[-1])]
        """(start, stop) of each group, which has its own k, positions and μ."""

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        # One tensor is used as it is; np.concatenate refuses a model without tensors.
        flat = x[0] if len(x) == 1 else np.concatenate([np.zeros(0, np.float32), *x])
        magnitude = np.abs(flat)
        dense = np.zeros(flat.size, np.float32)
        sent = 0
        sizes = [stop - start for start, stop in self._groups]
        configured = [kept_count(self.config.ratio, n) for n in sizes]
        counts = budgeted_counts(sizes, configured, ctx.budget_bits, 1, _GROUP_BITS)
        for (start, stop), k in zip(self._groups, counts):
            kept = start + top_k_positions(magnitude[start:stop], k) if k else np.zeros(0, np.int64)
            kept = kept[magnitude[kept] > 0]
            # A float64 mean: a float32 sum of huge magnitudes overflows, their mean does not.
            mu = np.float32(magnitude[kept].mean(dtype=np.float64)) if len(kept) else np.float32(0)
            negative = np.packbits(flat[kept] < 0)
            out.struct("If", len(kept), mu)
            encode_positions(kept - start, stop - start, out)
            out.array(negative)
            dense[kept] = scaled_signs(mu, negative, len(kept))
            sent += len(kept)
        return Step(self._split(dense), stats={"entries_sent": float(sent)})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        dense = np.zeros(self.spec.size, np.float32)
        for start, stop in self._groups:
            k = kept_count(self.config.ratio, stop - start)
            m, mu = body.struct("If")
            if m > k:
                raise PayloadError(f"{m} kept entries, the config keeps at most {k}")
            if not 0 <= mu <= _FLOAT32_MAX:
                raise PayloadError(f"STC scale {mu} is not a finite non-negative number")
            kept = start + decode_positions(body, m, stop - start)
            nbytes = -(-m // 8)
            dense[kept] = scaled_signs(np.float32(mu), body.array(np.uint8, nbytes, limit=nbytes), m)
        return self._split(dense), shared

    def _split(self, dense: np.ndarray) -> list[np.ndarray]:
        return [dense[start:stop] for start, stop in self._tensors]
