"""Top-k sparsification (Aji & Heafield 2017; Stich et al. 2018 with memory).

Per tensor of n entries, keep the k = ceil(ratio·n) entries of largest magnitude:

    C(x)_i = x_i if |x_i| is among the k largest, else 0

Positions are coded as the shorter of a bitmap and Rice-coded gaps
(`flcomp.codecs.coding.positions`), values as float32 or float16. Biased, so error
feedback is on by default.

    u32 k | positions | k values
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import (
    ValueDtype,
    kept_count,
    read_values,
    scatter,
    top_k_positions,
    write_values,
)
from flcomp.codecs.compressor import Stats, TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


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
class TopK(TensorCompressor):
    """The k largest-magnitude entries of each tensor.

    Stats: ``entries_sent``, the entries whose values the payload carries (k of each tensor).
    """

    name = "topk"
    codec_id = 5
    Config = TopKConfig
    error_feedback = True
    stats = ("entries_sent",)

    def step_stats(self) -> Stats:
        # k is what encode_tensor writes for each tensor.
        return {"entries_sent": float(sum(kept_count(self.config.ratio, t.size) for t in self.spec.tensors))}

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        k = kept_count(self.config.ratio, t.size)
        positions = top_k_positions(np.abs(x), k) if k else np.zeros(0, np.int64)
        out.struct("I", k)
        encode_positions(positions, t.size, out)
        values = write_values(x[positions], self.config.value_dtype, out)
        return scatter(t.size, positions, values)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (k,) = body.struct("I")
        if k != kept_count(self.config.ratio, t.size):
            raise PayloadError(f"{k} kept entries, the config keeps {kept_count(self.config.ratio, t.size)}")
        positions = decode_positions(body, k, t.size)
        return scatter(t.size, positions, read_values(body, self.config.value_dtype, k))
