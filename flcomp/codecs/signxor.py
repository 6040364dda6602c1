"""SignXOR: scaled sign that sends only which signs changed (Adikari & Draper, JSAIT 2021).

Scaled sign (EF-signSGD) spends one bit per entry on signs that mostly repeat from
round to round. SignXOR sends instead the flip vector b̂ = ŝ XOR ŝ_prev against the
signs both sides already hold, range-coded with an i.i.d. Bernoulli model whose
rate q is in the payload, so a round costs about d·H(q) bits instead of d.

Per tensor of d entries, with p the input (g + e, error feedback is the generic
`ErrorFeedback` wrapper: see `SignXOR`):

    s = sign(p)                          sign(0) = +1, as in scaled sign
    b = s XOR ŝ_prev                     the signs that changed
    b̂ = b ∧ (|p| ≥ λ·mean|p|)            rate-distortion step: drop weak flips
    ŝ = ŝ_prev XOR b̂                     both sides apply it
    α = ‖p‖₁ / d                         scaled sign's scale (float32)
    decoded = α·ŝ

Shared state, per tensor i: ``signs/{i}``, ŝ_prev packed 8 entries a byte
(np.packbits order, uint8[ceil(d/8)]), bit 1 = negative, padding bits 0. The
initial state (and the state after a key frame) is all zeros: every sign +1. A key
frame therefore sends the negative entries of sign(p) as "flips".

Body, per tensor:

    f32 α | u32 flip count m | if 0 < m < d: u32 byte length, range-coded words

q = m/d is sent exactly as the count m (no probability precision to choose); with
m = 0 or m = d the flip vector is implied and nothing more is sent (see
`flcomp.codecs.entropy.encode_bits`). The decoder checks α ≥ 0 and finite, m ≤ d,
the words' length against d, and that the decoded flips number exactly m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.entropy import decode_bits, encode_bits
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.scaled_sign import _reconstruct
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class SignXORConfig:
    lam: float = 0.0
    """λ, the rate-distortion threshold, in units of the tensor's mean |p|: a sign
    flip is sent only where |p_i| ≥ λ·mean|p|. 0 (default) sends every flip, so the
    reconstruction is scaled sign's, bit for bit, at fewer bits. Raise it (0.5–2)
    to trade accuracy per round for a lower flip rate q, hence fewer bits; the
    flips it holds back stay in the error-feedback memory and are sent later."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"SignXOR needs a finite lam ≥ 0, got {self.lam}")


@register
class SignXOR(Compressor):
    """α·ŝ per tensor, ŝ sent as entropy-coded flips against the last transmitted signs.

    Error feedback is the generic wrapper (``error_feedback = True``): it hands this
    compressor p = g + e and keeps e ← p − α·ŝ, which is exactly the paper's worker
    memory, since the decoded output is α·ŝ. Disable it with ``error_feedback=False``.
    """

    name = "signxor"
    codec_id = 19
    Config = SignXORConfig
    error_feedback = True

    def initial_shared(self) -> State:
        # Packed "is negative" bits, all 0: every sign starts at +1.
        return {f"signs/{i}": np.zeros(-(-t.size // 8), np.uint8) for i, t in enumerate(self.spec.tensors)}

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        decoded, signs = [], {}
        for i, p in enumerate(x):
            n = p.size
            alpha = _mean_abs(p)
            was_negative = np.unpackbits(shared[f"signs/{i}"], count=n).view(np.bool_)
            flips = (p < 0) != was_negative  # b = s XOR ŝ_prev, sign(0) = +1
            if self.config.lam > 0:
                flips &= np.abs(p) >= _threshold(self.config.lam, alpha)
            out.struct("f", alpha)
            encode_bits(flips, out)
            negative = np.packbits(was_negative ^ flips)  # ŝ = ŝ_prev XOR b̂
            signs[f"signs/{i}"] = negative
            decoded.append(_reconstruct(alpha, negative, n))
        return Step(decoded, signs, local)

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        decoded, signs = [], {}
        for i, t in enumerate(self.spec.tensors):
            (alpha,) = body.struct("f")
            if not (np.isfinite(alpha) and alpha >= 0):
                raise PayloadError(f"tensor {i}: scale {alpha} is not a finite non-negative number")
            flips = decode_bits(body, t.size)  # validates the count and the words
            was_negative = np.unpackbits(shared[f"signs/{i}"], count=t.size).view(np.bool_)
            negative = np.packbits(was_negative ^ flips)
            signs[f"signs/{i}"] = negative
            decoded.append(_reconstruct(np.float32(alpha), negative, t.size))
        return decoded, signs


def _mean_abs(p: np.ndarray) -> np.float32:
    """α = ‖p‖₁/d in float32, computed as scaled sign computes it (so λ = 0 matches it bit for bit)."""
    if not p.size:
        return np.float32(0)
    total = np.abs(p).sum()
    if not np.isfinite(total):  # a float32 sum of huge entries overflows; their mean does not
        total = np.abs(p).sum(dtype=np.float64)
    return np.float32(total / p.size)


def _threshold(lam: float, alpha: np.float32) -> np.float32:
    """λ·α as float32; past float32's range no |p_i| reaches it, so +inf says the same."""
    t = lam * float(alpha)
    return np.float32(t) if t <= _FLOAT32_MAX else np.float32(np.inf)
