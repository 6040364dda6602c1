"""Pipelines: a codec built from a sparsifier, a value quantizer and lossless coding.

Per tensor x of n entries, a sparsifier picks the support S, a quantizer Q codes the
kept values, and the decoder puts them back:

    C(x)_i = Q(x_S)_i for i ∈ S, else 0        (× n/|S| with `unbiased`, random-k only)

Sparsifiers (what the payload carries to find S again):
    none       S = every entry                                        nothing
    topk       the k = ceil(ratio·n) largest |x_i| (Aji & Heafield 2017)   positions
    randomk    k uniform entries (Stich et al. 2018; Wangni et al. 2018)   u32 seed
    threshold  |x_i| ≥ threshold (Strom 2015)                          u32 |S| | positions
Positions are the shorter of a bitmap and Rice-coded gaps (`coding.positions`).

Quantizers of the kept values v (m of them), with their bound on |Q(v)_i − v_i|:
    fp32       v itself                                               exact
    fp16       IEEE half, saturating at ±65504                        2⁻¹¹·|v_i| (normal range)
    bf16       bfloat16, round to nearest even                        2⁻⁸·|v_i|
    sign       μ·sign(v_i), μ = mean |v| (EF-signSGD, Karimireddy et al. 2019);
    ternary    the same stage: on a top-k support, Q(v) ∈ {−μ, 0, μ} is STC's
               ternary code (Sattler et al. 2019)                     biased, not bounded
    qsgd       ‖b‖₂·sign(v_i)·ξ_i/s, ξ_i = ⌊s·|v_i|/‖b‖₂ + u_i⌋ per block b of B values
               (Alistarh et al. 2017): unbiased given S               ‖b‖₂/s
    blockwise  absmax(b)·round(127·v_i/absmax(b))/127 per block of B   absmax(b)/254
Signs and levels go out as the shorter of a fixed-width packing and a range code
(`coding.shorter`). Every stage is biased but qsgd (and fp32), so error feedback is on
by default around the whole pipeline (`error_feedback=false` to turn it off, e.g. for
none or unbiased random-k with qsgd); momentum, as for every codec, with `momentum=`.

The default, top-k 1% with ternary values (STC without its Golomb coding, which the
position coder replaces), costs ~9 bits a kept entry (8.1 of position, 1 of sign), some
0.09 bits an entry: 350× below fp32, and STC's paper shows it trains as well as
top-k with error feedback, which sends 4.4× the bits (32-bit values).

    per tensor: the sparsifier's part | the quantizer's part, each as above
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding.bfloat16 import all_finite_bfloat16, to_bfloat16, widen_bfloat16
from flcomp.codecs.coding.buckets import (
    bucket_norms,
    dequantize,
    level_scale,
    read_scales,
    scale_buckets,
    stochastic_levels,
)
from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.seeded import random_positions
from flcomp.codecs.coding.shorter import decode_levels, decode_signs, encode_levels, encode_signs
from flcomp.codecs.coding.signs import scaled_signs
from flcomp.codecs.coding.sparse import kept_count, read_values, scatter, top_k_positions, write_values
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

Support = np.ndarray | slice
"""The kept entries of a tensor: sorted positions, or slice(None) for all of them."""

_BLOCKWISE_LEVELS = 127
"""blockwise's levels above zero: 8-bit symmetric, [−127, 127]."""
_FLOAT32_MAX = np.finfo(np.float32).max


@dataclass(frozen=True)
class PipelineConfig:
    sparsifier: str = "topk"
    """Which entries are kept: "none", "topk" (default), "randomk" or "threshold". Top-k
    keeps the most energy for its bits; random-k sends no positions; threshold keeps a
    varying number of entries."""
    ratio: float = 0.01
    """Fraction of each tensor's entries that topk and randomk keep, in (0, 1]. Lower it
    for bigger models; raise it when training stalls."""
    threshold: float = 0.001
    """|x_i| that the threshold sparsifier keeps at least, an absolute value ≥ 0: set it
    from the scale of the updates (error feedback included)."""
    unbiased: bool = False
    """Scale random-k's kept values by n/k, so that with an unbiased quantizer (qsgd,
    fp32) E[C(x)] = x. For use without error feedback; randomk only."""
    quantizer: str = "ternary"
    """How the kept values are coded: "fp32", "fp16", "bf16", "sign" (= "ternary"),
    "qsgd" or "blockwise". ternary, the default, costs 1 bit a kept value; qsgd and
    blockwise a few bits, with smaller errors."""
    levels: int = 16
    """s, qsgd's levels above zero (1 ≤ s ≤ 127): more levels, less variance, more bits."""
    block_size: int = 256
    """B, kept values sharing one float32 scale (qsgd's norm, blockwise's absmax). Smaller
    blocks: smaller errors, 32 more bits a block."""

    def __post_init__(self) -> None:
        for stage, registry in (("sparsifier", SPARSIFIERS), ("quantizer", QUANTIZERS)):
            if getattr(self, stage) not in registry:
                raise ValueError(
                    f"unknown {stage} {getattr(self, stage)!r}; available: {', '.join(sorted(registry))}"
                )
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")
        if not 0 <= self.threshold < np.inf:
            raise ValueError(f"threshold must be a finite number ≥ 0, got {self.threshold}")
        if self.unbiased and self.sparsifier != "randomk":
            raise ValueError("unbiased scales random-k's values by n/k: it needs sparsifier=randomk")
        if not 1 <= self.levels <= 127:
            raise ValueError(f"levels must lie in [1, 127], got {self.levels}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")


# --- sparsifiers ----------------------------------------------------------------------


class Sparsifier(ABC):
    """Picks a tensor's support and writes what the decoder needs to find it again."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config

    @abstractmethod
    def select(self, x: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> Support:
        """The support of flat tensor x, written to `out`."""

    @abstractmethod
    def read(self, body: PayloadReader, n: int) -> Support:
        """The support of a tensor of n entries, read back (checked against n)."""


class Dense(Sparsifier):
    def select(self, x: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> Support:
        return slice(None)

    def read(self, body: PayloadReader, n: int) -> Support:
        return slice(None)


class TopK(Sparsifier):
    def select(self, x: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> Support:
        k = kept_count(self.config.ratio, x.size)
        positions = top_k_positions(np.abs(x), k) if k else np.zeros(0, np.int64)
        encode_positions(positions, x.size, out)
        return positions

    def read(self, body: PayloadReader, n: int) -> Support:
        return decode_positions(body, kept_count(self.config.ratio, n), n)


class RandomK(Sparsifier):
    def select(self, x: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> Support:
        seed = int(rng.integers(2**32))
        out.struct("I", seed)
        return random_positions(seed, x.size, kept_count(self.config.ratio, x.size))

    def read(self, body: PayloadReader, n: int) -> Support:
        (seed,) = body.struct("I")
        return random_positions(seed, n, kept_count(self.config.ratio, n))


class Threshold(Sparsifier):
    def select(self, x: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> Support:
        positions = np.flatnonzero(np.abs(x) >= np.float32(self.config.threshold))
        out.struct("I", len(positions))
        encode_positions(positions, x.size, out)
        return positions

    def read(self, body: PayloadReader, n: int) -> Support:
        (m,) = body.struct("I")
        if m > n:
            raise PayloadError(f"{m} kept entries in a tensor of {n}")
        return decode_positions(body, m, n)


# --- quantizers -----------------------------------------------------------------------


class Quantizer(ABC):
    """Codes the kept values of a tensor; encode returns exactly what decode will."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config

    @abstractmethod
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        """Write float32 values v (not modified); return their reconstruction."""

    @abstractmethod
    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        """Read m values, as a new float32 array."""


class Float32(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        return write_values(v, "float32", out)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        return read_values(body, "float32", m)


class Float16(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        return write_values(v, "float16", out)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        return read_values(body, "float16", m)


class BFloat16(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        top = to_bfloat16(v)
        out.array(top)
        return widen_bfloat16(top)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        top = body.array(np.uint16, m, limit=m)
        if not all_finite_bfloat16(top):
            raise PayloadError("bfloat16 Inf or NaN in the payload")
        return widen_bfloat16(top)


class Sign(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        total = np.abs(v).sum()
        if not np.isfinite(total):  # a float32 sum of huge entries overflows; their mean does not
            total = np.abs(v).sum(dtype=np.float64)
        mu = np.float32(total / v.size) if v.size else np.float32(0)
        out.struct("f", mu)
        return scaled_signs(mu, encode_signs(v < 0, out), v.size)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        (mu,) = body.struct("f")
        if not 0 <= mu <= _FLOAT32_MAX:
            raise PayloadError(f"scale {mu} is not a finite number ≥ 0")
        return scaled_signs(np.float32(mu), decode_signs(body, m), m)


class QSGD(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        s, b = self.config.levels, self.config.block_size
        norms = bucket_norms(v, b)
        levels = stochastic_levels(v, norms, s, b, rng)
        out.array(norms)
        encode_levels(levels, out)
        return dequantize(levels, norms / np.float32(s), b)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        norms = read_scales(body, m, self.config.block_size)
        levels = decode_levels(body, m, self.config.levels)
        return dequantize(levels, norms / np.float32(self.config.levels), self.config.block_size)


class Blockwise(Quantizer):
    def encode(self, v: np.ndarray, out: PayloadWriter, rng: np.random.Generator) -> np.ndarray:
        b = self.config.block_size
        absmax = _block_absmax(v, b)
        y = v.copy()
        scale_buckets(y, level_scale(_BLOCKWISE_LEVELS, absmax), b)
        levels = np.clip(np.rint(y, out=y), -_BLOCKWISE_LEVELS, _BLOCKWISE_LEVELS, out=y).astype(np.int8)
        out.array(absmax)
        encode_levels(levels, out)
        return dequantize(levels, absmax / np.float32(_BLOCKWISE_LEVELS), b)

    def decode(self, body: PayloadReader, m: int) -> np.ndarray:
        absmax = read_scales(body, m, self.config.block_size)
        levels = decode_levels(body, m, _BLOCKWISE_LEVELS)
        return dequantize(levels, absmax / np.float32(_BLOCKWISE_LEVELS), self.config.block_size)


SPARSIFIERS: dict[str, type[Sparsifier]] = {
    "none": Dense,
    "topk": TopK,
    "randomk": RandomK,
    "threshold": Threshold,
}
QUANTIZERS: dict[str, type[Quantizer]] = {
    "fp32": Float32,
    "fp16": Float16,
    "bf16": BFloat16,
    "sign": Sign,
    "ternary": Sign,
    "qsgd": QSGD,
    "blockwise": Blockwise,
}


# --- blocks of kept values ------------------------------------------------------------


def _block_absmax(v: np.ndarray, b: int) -> np.ndarray:
    """max |v| of each block of b consecutive entries, the last one ragged."""
    full = v.size // b * b
    a = np.abs(v)
    parts = [a[:full].reshape(-1, b).max(axis=1)] if full else []
    if full < v.size:
        parts.append(a[full:].max(keepdims=True))
    return np.concatenate(parts) if parts else np.zeros(0, v.dtype)


# --- the codec ------------------------------------------------------------------------


@register
class Pipeline(Compressor):
    """A sparsifier, then a quantizer of the kept values, chosen by name.

    Stats: ``entries_sent``, the kept entries whose values the payload codes.
    """

    name = "pipeline"
    codec_id = 28
    Config = PipelineConfig
    error_feedback = True
    stats = ("entries_sent",)

    def __init__(self, spec: ModelSpec, config: PipelineConfig) -> None:
        super().__init__(spec, config)
        self.sparsifier = SPARSIFIERS[config.sparsifier](config)
        self.quantizer = QUANTIZERS[config.quantizer](config)

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        decoded, sent = [], 0
        for xi in x:
            support = self.sparsifier.select(xi, out, rng)
            values = self.quantizer.encode(xi[support], out, rng)
            decoded.append(self._expand(xi.size, support, values))
            sent += values.size
        return Step(decoded, stats={"entries_sent": float(sent)})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        decoded = []
        for t in self.spec.tensors:
            support = self.sparsifier.read(body, t.size)
            m = t.size if isinstance(support, slice) else len(support)
            decoded.append(self._expand(t.size, support, self.quantizer.decode(body, m)))
        return decoded, shared

    def _expand(self, n: int, support: Support, values: np.ndarray) -> np.ndarray:
        """The dense tensor: the values at the support (× n/k when unbiased), 0 elsewhere."""
        if self.config.unbiased and values.size:
            values = values * np.float32(n / values.size)
        return values if isinstance(support, slice) else scatter(n, support, values)
