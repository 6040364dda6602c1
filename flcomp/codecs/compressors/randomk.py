"""Random-k sparsification (Stich et al. 2018; Wangni et al. 2018).

Per tensor, keep k = ceil(ratio·n) entries drawn uniformly without replacement.
The positions are not sent: the payload carries the 32-bit seed that draws them,
and the decoder draws them again.

    unbiased=True:  C(x)_i = (n/k)·x_i on the kept entries, so E[C(x)] = x;
    unbiased=False: C(x)_i = x_i, a contraction, for use with error feedback.

    u32 seed | k values
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.seeded import random_positions
from flcomp.codecs.coding.sparse import ValueDtype, kept_count, read_values, scatter, write_values
from flcomp.codecs.compressor import Stats, TensorCompressor
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter


@dataclass(frozen=True)
class RandomKConfig:
    ratio: float = 0.01
    """Fraction of each tensor's entries sent, in (0, 1]."""
    unbiased: bool = False
    """Scale kept values by n/k (unbiased, high variance). Leave False with error
    feedback (the default), which needs a contraction; set True without it."""
    value_dtype: ValueDtype = "float32"
    """Wire type of the kept values; "float16" halves their bits."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")


@register
class RandomK(TensorCompressor):
    """k uniformly random entries of each tensor, positions sent as a seed.

    Stats: ``entries_sent``, the entries whose values the payload carries (k of each tensor).
    """

    name = "randomk"
    codec_id = 7
    Config = RandomKConfig
    error_feedback = True
    stats = ("entries_sent",)

    def step_stats(self) -> Stats:
        # k is what encode_tensor writes for each tensor.
        return {"entries_sent": float(sum(kept_count(self.config.ratio, t.size) for t in self.spec.tensors))}

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> np.ndarray:
        seed = int(rng.integers(2**32))
        k = kept_count(self.config.ratio, t.size)
        positions = random_positions(seed, t.size, k)
        out.struct("I", seed)
        values = write_values(x[positions], self.config.value_dtype, out)
        return self._dense(t.size, positions, values)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        (seed,) = body.struct("I")
        k = kept_count(self.config.ratio, t.size)
        values = read_values(body, self.config.value_dtype, k)
        return self._dense(t.size, random_positions(seed, t.size, k), values)

    def _dense(self, n: int, positions: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.config.unbiased and len(positions):
            values = values * np.float32(n / len(positions))
        return scatter(n, positions, values)
