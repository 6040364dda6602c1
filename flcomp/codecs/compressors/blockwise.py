"""Block-wise absmax quantization to a fixed code: bitsandbytes' 8-bit dynamic and 4-bit NormalFloat.

These are the codes NVIDIA FLARE's quantization filters send model updates with
(bitsandbytes' `quantize_blockwise` and `quantize_4bit(quant_type="nf4")`). Per block v
of B consecutive entries of a tensor (the last block of a tensor may be shorter):

    N = max_i |v_i|                      the block's absmax, float32 on the wire
    q_i = argmin_j |v_i / N − c_j|       the nearest of the code's values c_0 < … < c_{K−1}
    Q(v)_i = N · c_{q_i}

Rounding to the nearest value is deterministic (a tie goes to the smaller value), so Q is
biased; an all-zero block has N = 0 and sends the code of 0. |c_j| ≤ 1 makes
|Q(v)_i| ≤ N: the reconstruction of a finite update is finite. The codes:

    blockwise8  the signed dynamic data type of Dettmers, Lewis, Shleifer, Zettlemoyer,
                "8-bit Optimizers via Block-wise Quantization", ICLR 2022 (bitsandbytes'
                create_dynamic_map(signed=True)): after the sign bit, E leading zeros give
                the exponent 10^−E (E = 0 … 6), a one marks its end, and the 6 − E bits left
                are a linear fraction: 10^−E · (the 2^(6−E) midpoints of 2^(6−E) equal steps
                of [0.1, 1]); the two patterns left over are 0 and 1. 256 values: error
                ≤ 0.0070·N, finer the smaller the entry.
                8 + 32/B bits per entry (B = 4096: 8.008).
    nf4         4-bit NormalFloat of Dettmers, Pagnoni, Holtzman, Zettlemoyer, "QLoRA:
                Efficient Finetuning of Quantized LLMs", NeurIPS 2023: 16 values at equal-
                probability quantiles of N(0, 1), scaled into [−1, 1], with an exact 0
                (bitsandbytes' table). 4 + 32/B bits per entry (B = 64: 4.5). QLoRA's double
                quantization of the scales is not applied: FLARE sends them as float32.

Nearest-value lookup reads a 2^16-entry table with the upper 16 bits of each float32
v_i / N (sign, exponent and 7 mantissa bits), which gives the one candidate below each
entry's bucket, then one comparison with the midpoint above it: exact, because no bucket
of either code holds two midpoints (checked when the table is built).

    per tensor: ⌈n/B⌉ float32 absmax scales | n bytes of codes (blockwise8), or
                ⌈n/2⌉ bytes of two 4-bit codes, the first in the high nibble as
                bitsandbytes packs them, an odd n leaving a zero low nibble (nf4)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flcomp.codecs.compressor import TensorCompressor
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import TensorSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_FLOAT32_MAX = np.finfo(np.float32).max
_SMALLEST = np.float32(np.finfo(np.float32).smallest_subnormal)
_CHUNK = 1 << 16
"""Entries quantized or reconstructed at a time: their temporaries (the table indices are
8 bytes an entry) stay in L2, twice as fast as whole-array passes on a large tensor."""


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps) in float32, bit for bit as PyTorch 2 computes it on
    CPU: start + step·i up to the middle, end − step·(steps − 1 − i) after, each with one
    rounding (a fused multiply-add), which float64 reproduces exactly at these sizes."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    value = np.where(
        i < steps // 2, np.float64(start32) + step * i, np.float64(end32) - step * (steps - 1 - i)
    )
    return value.astype(np.float32)


def dynamic_map() -> np.ndarray:
    """The 256 values of bitsandbytes' create_dynamic_map(signed=True), sorted, float32."""
    values = [np.float32([0.0, 1.0])]
    for i in range(7):  # 2^i fraction values at the exponent 10^(i − 6), i = 6 − E
        bounds = _linspace32(0.1, 1.0, 2**i + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scaled = np.float32(10.0 ** (i - 6)) * means
        values += [scaled, -scaled]
    return np.sort(np.concatenate(values))


NF4_VALUES = np.float32(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ]
)
"""The 16 values of NormalFloat4, as bitsandbytes' get_4bit_type("nf4") lists them (QLoRA,
Appendix E)."""


class Code:
    """A sorted table of at most 256 float32 values in [−1, 1] and its nearest-value lookup."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        mid = (values[:-1].astype(np.float64) + values[1:]) / 2
        # For a float32 y, y > mid exactly iff y > cut, cut the largest float32 ≤ mid.
        cut = mid.astype(np.float32)
        high = cut > mid
        cut[high] = np.nextafter(cut[high], np.float32(-np.inf))
        top = np.arange(1 << 16, dtype=np.uint32)
        negative = top >= 0x8000
        low_end = np.where(negative, top << 16 | 0xFFFF, top << 16).view(np.float32)
        high_end = np.where(negative, top << 16, top << 16 | 0xFFFF).view(np.float32)
        first = np.searchsorted(cut, low_end)
        finite = np.isfinite(low_end) & np.isfinite(high_end)
        if (np.searchsorted(cut, high_end) - first)[finite].max() > 1:
            raise ValueError("two midpoints of the code share a 16-bit bucket: the lookup would not be exact")
        self._first = first.astype(np.uint8)
        """The code of the smallest float32 of each bucket of the upper 16 bits."""
        self._cut = np.append(cut, np.float32(np.inf))[first]
        """The midpoint above that code (+Inf above the last)."""

    def nearest(self, y: np.ndarray, out: np.ndarray, work: _Work) -> None:
        """out = the code (uint8) of each y_i in [−1, 1]: the 16-bit table, then one comparison."""
        m = y.size
        top, cut, above = work.top[:m], work.cut[:m], work.above[:m]
        np.right_shift(y.view(np.uint32), 16, out=top)
        self._first.take(top, out=out)
        self._cut.take(top, out=cut)
        np.greater(y, cut, out=above)
        out += above


class _Work:
    """The temporaries of one chunk, allocated once a tensor."""

    def __init__(self, n: int) -> None:
        self.y = np.empty(n, np.float32)
        self.top = np.empty(n, np.intp)
        self.cut = np.empty(n, np.float32)
        self.above = np.empty(n, bool)
        self.codes = np.empty(n, np.uint8)


def _chunk(block: int) -> int:
    """Entries a chunk holds: whole blocks, an even number of entries (whole bytes of nf4)."""
    return max(1, _CHUNK // (2 * block)) * 2 * block


def _per_block(op: np.ufunc, x: np.ndarray, factors: np.ndarray, block: int, out: np.ndarray) -> None:
    """out = op(x, factor of each entry's block): x starts a block, factors[k] is its k-th block's."""
    full = x.size // block * block
    if full:
        op(x[:full].reshape(-1, block), factors[: full // block, None], out=out[:full].reshape(-1, block))
    if full < x.size:
        op(x[full:], factors[full // block], out=out[full:])


def _block_max(y: np.ndarray, block: int, out: np.ndarray) -> None:
    """out = the largest entry of every block of non-negative y (y starts a block; y is overwritten).

    Pairwise maxima of the two halves of every block, halving the width: a handful of
    passes in cache, where a max along the rows of a short block costs a call per row.
    """
    full = y.size // block * block
    if full:
        rows = y[:full].reshape(-1, block)
        width = block
        while width > 1:
            half = width // 2
            np.maximum(rows[:, :half], rows[:, width - half : width], out=rows[:, :half])
            width -= half
        out[: full // block] = rows[:, 0]
    if full < y.size:
        out[full // block] = y[full:].max()


class _Blockwise(TensorCompressor):
    """The block machinery both codes share: absmax scales, nearest codes, reconstruction."""

    code: ClassVar[Code]
    finite_reconstruction = True

    def encode_tensor(
        self, x: np.ndarray, t: TensorSpec, out: PayloadWriter, rng: np.random.Generator
    ) -> Callable[[], np.ndarray]:
        """One pass over x, chunk by chunk: absmax of its blocks, x / N, codes, packed codes."""
        block, n = self.config.block_size, x.size
        scales = np.empty(-(-n // block), np.float32)
        packed = np.empty(self._packed_size(n), np.uint8)
        step = _chunk(block)
        work = _Work(min(step, n))
        for start in range(0, n, step):
            m = min(step, n - start)
            chunk, y, codes = x[start : start + m], work.y[:m], work.codes[:m]
            peaks = scales[start // block : -(-(start + m) // block)]
            _block_max(np.abs(chunk, out=y), block, peaks)
            if not peaks.max() <= _FLOAT32_MAX:  # NaN propagates into the maxima
                raise ValueError("a block holds NaN or Inf: absmax quantization cannot scale it")
            # Every N > 0 is at least the smallest subnormal: only an all-zero block (N = 0)
            # is divided by something else, and its entries stay 0 and get the code of 0.
            _per_block(np.divide, chunk, np.maximum(peaks, _SMALLEST), block, y)
            self.code.nearest(y, codes, work)
            self._pack(codes, start, packed)
        out.array(scales)
        out.array(packed)
        return lambda: self._reconstruct(scales, packed, n)

    def decode_tensor(self, body: PayloadReader, t: TensorSpec) -> np.ndarray:
        blocks = -(-t.size // self.config.block_size)
        scales = body.array(np.float32, blocks, limit=blocks)
        if scales.size and not (scales.min() >= 0 and scales.max() <= _FLOAT32_MAX):
            raise PayloadError(f"{self.name} scales must be finite and non-negative")
        nbytes = self._packed_size(t.size)
        packed = body.array(np.uint8, nbytes, limit=nbytes)
        self._check(packed, t.size)
        return self._reconstruct(scales, packed, t.size)

    def _reconstruct(self, scales: np.ndarray, packed: np.ndarray, n: int) -> np.ndarray:
        """N · c_q for every entry, chunk by chunk: the same float32 products on both sides."""
        block = self.config.block_size
        out = np.empty(n, np.float32)
        step = _chunk(block)
        for start in range(0, n, step):
            values = out[start : start + step]
            self._expand(packed, start, values)
            _per_block(np.multiply, values, scales[start // block :], block, values)
        return out

    @abstractmethod
    def _packed_size(self, n: int) -> int:
        """Bytes of codes of n entries."""

    @abstractmethod
    def _pack(self, codes: np.ndarray, start: int, packed: np.ndarray) -> None:
        """Write the codes of entries start, …, start + len(codes) − 1 (start is even) into
        the wire's bytes."""

    @abstractmethod
    def _check(self, packed: np.ndarray, n: int) -> None:
        """PayloadError if the bytes of n codes hold anything but codes."""

    @abstractmethod
    def _expand(self, packed: np.ndarray, start: int, out: np.ndarray) -> None:
        """out = c_q of the entries start, …, start + len(out) − 1 (start is even)."""


@dataclass(frozen=True)
class Blockwise8Config:
    block_size: int = 4096
    """B, entries sharing one absmax scale (≥ 1). 4096 is bitsandbytes' quantize_blockwise
    default, which FLARE's blockwise8 filter uses: 8.008 bits per entry. Smaller blocks
    follow local magnitudes more closely (the paper's optimizers use 2048) for 32/B bits each."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")


@register
class Blockwise8(_Blockwise):
    """8-bit dynamic block-wise quantization (bitsandbytes' quantize_blockwise), one byte an entry.

    No error feedback by default, as fp16 and bf16 have none: like theirs, its error is a
    deterministic rounding far below the noise of SGD (NMSE 1.7e-4 on Gaussian updates), so
    a full-precision memory would buy next to nothing; FLARE sends it without one too.
    Turn it on with error_feedback=True.
    """

    name = "blockwise8"
    codec_id = 25
    Config = Blockwise8Config
    code = Code(dynamic_map())

    def _packed_size(self, n: int) -> int:
        return n

    def _pack(self, codes: np.ndarray, start: int, packed: np.ndarray) -> None:
        packed[start : start + codes.size] = codes

    def _check(self, packed: np.ndarray, n: int) -> None:
        """Every byte is one of the 256 codes."""

    def _expand(self, packed: np.ndarray, start: int, out: np.ndarray) -> None:
        self.code.values.take(packed[start : start + out.size], out=out)


@dataclass(frozen=True)
class NF4Config:
    block_size: int = 64
    """B, entries sharing one float32 absmax scale (≥ 1). 64 is bitsandbytes' quantize_4bit
    default, which QLoRA and FLARE's normfloat4 filter use: 4.5 bits per entry. Larger
    blocks save 32/B bits each but scale more entries by a distant maximum."""

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")


@register
class NF4(_Blockwise):
    """4-bit NormalFloat block-wise quantization (bitsandbytes' quantize_4bit, nf4), two codes a byte.

    Error feedback is on by default, as for the other coarse biased codecs (topk,
    scaled_sign): with 16 levels the error is no longer small against the update (NMSE 0.85%
    on Gaussian updates) and the rounding is systematic (entries below ~4% of their block's
    absmax always become 0), so what it drops must be fed back. FLARE sends it without;
    error_feedback=False does the same.
    """

    name = "nf4"
    codec_id = 26
    Config = NF4Config
    error_feedback = True
    code = Code(NF4_VALUES)
    _PAIRS = np.stack(np.meshgrid(NF4_VALUES, NF4_VALUES, indexing="ij"), axis=-1).reshape(256, 2).copy()
    """The two values of every byte, high nibble first."""
    _PAIR_WORDS = _PAIRS.view(np.uint64).reshape(256)
    """The same as one 8-byte word a byte: one gather expands two codes."""

    def _packed_size(self, n: int) -> int:
        return -(-n // 2)

    def _pack(self, codes: np.ndarray, start: int, packed: np.ndarray) -> None:
        pairs = packed[start // 2 : start // 2 + -(-codes.size // 2)]
        np.left_shift(codes[0::2], 4, out=pairs)
        pairs[: codes.size // 2] |= codes[1::2]

    def _check(self, packed: np.ndarray, n: int) -> None:
        if n % 2 and packed[-1] & 0x0F:
            raise PayloadError("nf4: the low nibble after an odd number of codes must be 0")

    def _expand(self, packed: np.ndarray, start: int, out: np.ndarray) -> None:
        pairs = packed[start // 2 : (start + out.size + 1) // 2]
        even = out.size // 2 * 2
        self._PAIR_WORDS.take(pairs[: even // 2], out=out[:even].view(np.uint64))
        if even < out.size:
            out[-1] = self._PAIRS[pairs[-1], 0]
