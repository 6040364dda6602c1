"""Top-k sparsification (Aji & Heafield 2017; Stich et al. 2018 with memory).

Per tensor of n entries, keep the k = ceil(ratio·n) entries of largest magnitude:

    C(x)_i = x_i if |x_i| is among the k largest, else 0

Positions are coded as the shorter of a bitmap and Rice-coded gaps
(`flcomp.codecs.coding.positions`), values as float32 or float16. Biased, so error
feedback is on by default. Under a round's bit budget (`RoundContext.budget_bits`) every
tensor keeps the same smaller fraction of its entries (at most its k), so that the payload
fits; error feedback keeps what the budget drops.

    per tensor: u32 k (≤ ceil(ratio·n)) | positions | k values
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import (
    ValueDtype,
    budgeted_counts,
    kept_count,
    read_values,
    scatter,
    top_k_positions,
    write_values,
)
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_TENSOR_BITS = 72
"""A tensor's bits besides its entries: u32 k, the positions' mode byte, their byte padding."""


@dataclass(frozen=True)
class TopKConfig:
    ratio: float = 0.01
    """Fraction of each tensor's entries sent, in (0, 1]. Lower it for bigger models
    (DGC uses 0.001); raise it when convergence suffers without error feedback."""
    value_dtype: ValueDtype = "float32"
    """Wire type of the kept values; "float16" halves their bits."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")


@register
class TopK(Compressor):
    """The k largest-magnitude entries of each tensor (fewer, alike in every tensor, when the
    round's budget `RoundContext.budget_bits` asks for fewer bits).

    Stats: ``entries_sent``, the entries whose values the payload carries (k of each tensor).
    """

    name = "topk"
    codec_id = 5
    Config = TopKConfig
    error_feedback = True
    stats = ("entries_sent",)

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        sizes = [t.size for t in self.spec.tensors]
        configured = [kept_count(self.config.ratio, n) for n in sizes]
        value_bits = 8 * np.dtype(self.config.value_dtype).itemsize
        counts = budgeted_counts(sizes, configured, ctx.budget_bits, value_bits, _TENSOR_BITS)
        decoded = []
        for xi, n, k in zip(x, sizes, counts):
            positions = top_k_positions(np.abs(xi), k) if k else np.zeros(0, np.int64)
            out.struct("I", k)
            encode_positions(positions, n, out)
            decoded.append(scatter(n, positions, write_values(xi[positions], self.config.value_dtype, out)))
        return Step(decoded, stats={"entries_sent": float(sum(counts))})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        decoded = []
        for t in self.spec.tensors:
            (k,) = body.struct("I")
            if k > kept_count(self.config.ratio, t.size):
                raise PayloadError(
                    f"{k} kept entries, the config keeps {kept_count(self.config.ratio, t.size)}"
                )
            positions = decode_positions(body, k, t.size)
            decoded.append(scatter(t.size, positions, read_values(body, self.config.value_dtype, k)))
        return decoded, shared
