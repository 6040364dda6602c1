"""SignXOR: scaled sign that sends only which signs changed (Adikari & Draper, JSAIT 2021).

Scaled sign (EF-signSGD) spends one bit per entry on signs that are far from
independent from round to round. SignXOR sends instead the flip vector
b̂ = ŝ XOR ŝ_prev against the signs both sides already hold, range-coded with an
i.i.d. Bernoulli model whose rate q is in the payload, so a round costs about
d·h(q) bits instead of d.

Per tensor of d entries, with p the input (g + e: error feedback, and momentum
before it, are the generic wrappers; see `SignXOR`):

    s = sign(p)                          sign(0) = +1, as in scaled sign
    b = s XOR ŝ_prev                     the signs that changed
    b̂ = b ∧ (|p| ≥ α·min(1, λ·w))        rate-distortion step: hold back weak flips (once primed)
    ŝ = ŝ_prev XOR b̂                     both sides apply it
    α = max(0, ⟨p, ŝ⟩) / d               float32; ‖p‖₁/d, scaled sign's scale, when b̂ = b
    decoded = α·ŝ

where w (per entry) is the bits the flip coder saves by not sending the flip: with
``coding="context"`` w = log2((1 − q)/q) at the entry's modelled flip probability q, with
``coding="iid"`` at the tensor's rate q of wanted flips (the rate it would code), and 0 where
a flip is the likelier outcome. Four decisions beyond
docs/METHODS.md §4, all inert at λ = 0 (where the reconstruction is scaled sign's, bit for bit):

- The threshold weighs what a flip costs. Holding a flip back adds 4·α·|p_i| to the
  squared error error feedback carries and saves w bits; under error feedback the
  weak entries' signs alternate (a sigma-delta limit cycle) and the context coder
  expects those flips (q > ½, w = 0), so they are never held: holding them would
  break the cycle and raise the bits (a threshold on |p_i| alone, λ·mean|p|, the
  team's first rule, did for λ ≲ 0.75).
  Flips the coder does not expect (an entry that has been holding its sign) are held
  while |p_i| is small.
- The threshold never exceeds α: a held entry's memory stays within about 2α,
  so λ saturates (λ = ∞ holds every unexpected flip weaker than α)
  instead of freezing entries while their memory grows.
- α is the least-squares scale of the signs sent. With flips held back, ‖p‖₁/d
  overstates the update along ŝ and error feedback stops contracting its memory.
- λ applies once the signs are primed (after the first payload, and after each key
  frame): against the initial all-+1 signs a held-back flip is just a wrong sign.

Shared state: per tensor i, ``signs/{i}``, ŝ_prev packed 8 entries a byte
(np.packbits order, uint8[ceil(d/8)]), bit 1 = negative, padding bits 0; and
``primed`` (uint8[1]), 0 until the first payload; with ``coding="context"`` also the
flip history of `flcomp.codecs.coding.flip_contexts` (``rates``, ``recent``,
``counts``: 2 bytes an entry of the whole update). The initial state (and the state
after a key frame) is all zeros: every sign +1, not primed, no history. A key frame
therefore sends the negative entries of sign(p) as "flips".

Body: f32 α of every tensor, then the flips, coded as ``coding`` says (`FLIP_CODERS`):
- ``context`` (default): the flips of all tensors as one vector of the update's entries,
  each entry's flip modelled on its own history (`flip_contexts`: its recent flip rate and
  its last two flips, at rates both sides estimate from the rounds before, so no model is
  sent). Under error feedback alternating and holding entries are near-deterministic
  apart, and one rate mixes them. 2 bytes of state an entry on both sides.
- ``iid`` (the paper's): one Bernoulli(q) model per tensor, as
  `flcomp.codecs.coding.entropy.encode_bit_vectors` writes it: the flip count m (q = m/d)
  and, when 0 < m < d, the d bits packed (q within 7/16..9/16) or a place in one
  range-coded stream; the decoder checks that the flips it decodes number exactly m. No
  state beyond the signs: choose it when 2 bytes an entry per client is too much for
  the server (many clients' states held at once).
The decoder checks α ≥ 0 and finite and refuses a malformed stream. `flip_counts`
decodes the flips of a payload from a state (the measured flip rates).

Momentum before the sign (the journal version: it low-pass filters the updates) is
the generic codec option ``momentum=β`` (`flcomp.codecs.wrappers.momentum`), e.g.
``signxor:lam=1,momentum=0.9``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flcomp.codecs.coding import flip_contexts
from flcomp.codecs.coding.entropy import decode_bit_vectors, encode_bit_vectors
from flcomp.codecs.coding.signs import scaled_signs
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wire import PayloadReader, PayloadWriter, unpack


class IIDFlips:
    """One Bernoulli rate per tensor, its flip count in the payload (the paper's model)."""

    @staticmethod
    def initial(spec: ModelSpec) -> State:
        return {}

    @staticmethod
    def write(flips: list[np.ndarray], spec: ModelSpec, shared: State, out: PayloadWriter) -> State:
        """Write the flips (packed per tensor); returns the coder's state after them."""
        encode_bit_vectors([(b, t.size) for b, t in zip(flips, spec.tensors)], out)
        return {}

    @staticmethod
    def read(body: PayloadReader, spec: ModelSpec, shared: State) -> tuple[list[np.ndarray], State]:
        return decode_bit_vectors(body, [t.size for t in spec.tensors]), {}

    @staticmethod
    def hold_weights(wanted: list[np.ndarray], spec: ModelSpec, shared: State) -> list[float]:
        """Per tensor, the bits not sending a flip saves at the rate q its `wanted` flips (packed)
        would be coded at, log2((1 − q)/q), or 0 where flips are the majority."""
        rates = [_count(b) / t.size if t.size else 0.0 for b, t in zip(wanted, spec.tensors)]
        return [_bits_saved(np.clip(q, 1e-12, 1 - 1e-12)) for q in rates]


class ContextFlips:
    """Every entry's flip modelled on its own history (`flip_contexts`), over the whole update.
    The history starts with the first flips: a first payload's are sign(p)'s negative entries."""

    @staticmethod
    def initial(spec: ModelSpec) -> State:
        return flip_contexts.initial_state(spec.size)

    @staticmethod
    def write(flips: list[np.ndarray], spec: ModelSpec, shared: State, out: PayloadWriter) -> State:
        history = flip_contexts.encode(_unpacked(flips, spec), _history(shared), out)
        return history if shared["primed"][0] else flip_contexts.initial_state(spec.size)

    @staticmethod
    def read(body: PayloadReader, spec: ModelSpec, shared: State) -> tuple[list[np.ndarray], State]:
        bits, history = flip_contexts.decode(body, _history(shared), spec.size)
        ends = np.cumsum([t.size for t in spec.tensors], dtype=np.int64)
        flips = [np.packbits(bits[end - t.size : end]) for t, end in zip(spec.tensors, ends)]
        return flips, history if shared["primed"][0] else flip_contexts.initial_state(spec.size)

    @staticmethod
    def hold_weights(wanted: list[np.ndarray], spec: ModelSpec, shared: State) -> list[np.ndarray]:
        """Per tensor, the bits each entry saves by not flipping, log2((1 − q)/q) at its class's
        modelled flip rate q, or 0 where a flip is the likelier outcome (float64[size])."""
        history = _history(shared)
        saved = _bits_saved(flip_contexts.rates_of_ones(history))[flip_contexts.contexts(history)]
        ends = np.cumsum([t.size for t in spec.tensors], dtype=np.int64)
        return [saved[end - t.size : end] for t, end in zip(spec.tensors, ends)]


FLIP_CODERS = {"context": ContextFlips, "iid": IIDFlips}
"""``SignXORConfig.coding`` → how the flips are coded and what state that needs."""


@dataclass(frozen=True)
class SignXORConfig:
    lam: float = 0.0
    """λ, the rate-distortion weight: a flip is held back where |p_i| < α·min(1, λ·w_i), w_i the
    bits not sending it saves (module docstring). 0 (default) sends every flip, so the
    reconstruction is scaled sign's, bit for bit, at fewer bits. λ = 2 holds at the full
    threshold α where holding saves ≥ ½ bit (a modelled flip probability ≤ 0.41), and larger
    values change little: on the uplink it cuts the bits further at about the same accuracy
    (docs/RESULTS.md); keep it off the downlink, where held flips wind up the server's error
    memory (two-way on the CNN of examples/signxor_experiment.py collapsed; λ = 0 did not).
    Raising λ holds back more of the weak flips the coder does not expect, never the
    alternations it does, and saturates (a threshold of α where w_i ≥ 1/λ). The flips
    held back stay in the error-feedback memory and are sent once they grow strong enough."""
    coding: str = "context"
    """How the flips are entropy-coded: "context" (default; each entry's flip modelled on
    its own history, 2 bytes of state an entry) or "iid" (one rate per tensor, the
    paper's; no state beyond the signs). Only the bits differ, never the reconstruction."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"SignXOR needs a finite lam ≥ 0, got {self.lam}")
        if self.coding not in FLIP_CODERS:
            raise ValueError(f"SignXOR's coding is one of {sorted(FLIP_CODERS)}, got {self.coding!r}")


@register
class SignXOR(Compressor):
    """α·ŝ per tensor, ŝ sent as entropy-coded flips against the last transmitted signs.

    Error feedback is the generic wrapper (``error_feedback = True``): it hands this
    compressor p = g + e and keeps e ← p − α·ŝ, which is exactly the paper's worker
    memory, since the decoded output is α·ŝ. Disable it with ``error_feedback=False``.

    Stats: ``signs``, the sign entries the payload codes (every entry of every tensor), and
    ``flips``, how many of them change against the last sent signs (the flips b̂ coded; on a
    key frame, the negative signs).
    """

    name = "signxor"
    codec_id = 19
    Config = SignXORConfig
    error_feedback = True
    stats = ("signs", "flips")

    def initial_shared(self) -> State:
        # Packed "is negative" bits, all 0: every sign starts at +1; not primed yet.
        signs = {f"signs/{i}": np.zeros(-(-t.size // 8), np.uint8) for i, t in enumerate(self.spec.tensors)}
        return signs | {"primed": np.zeros(1, np.uint8)} | self._coder.initial(self.spec)

    @property
    def _coder(self) -> type[IIDFlips] | type[ContextFlips]:
        return FLIP_CODERS[self.config.coding]

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        magnitudes = [np.abs(p) for p in x]
        alphas = np.array([_mean(a) for a in magnitudes], np.float32)
        # b = s XOR ŝ_prev, sign(0) = +1
        flips = [np.packbits(p < 0) ^ shared[f"signs/{i}"] for i, p in enumerate(x)]
        if self.config.lam > 0 and shared["primed"][0]:
            weights = self._coder.hold_weights(flips, self.spec, shared)
            for i, (a, saved) in enumerate(zip(magnitudes, weights)):
                wanted = flips[i]
                threshold = alphas[i] * np.minimum(1.0, self.config.lam * saved).astype(np.float32)
                flips[i] = wanted & np.packbits(a >= threshold)
                alphas[i] = _projection(a, wanted ^ flips[i], alphas[i])
        out.array(alphas)
        history = self._coder.write(flips, self.spec, shared, out)
        stats = {"signs": float(sum(p.size for p in x)), "flips": float(sum(_count(b) for b in flips))}
        return Step(*self._apply(alphas, flips, shared, history), local, stats)

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        alphas = _read_scales(body, len(self.spec))
        flips, history = self._coder.read(body, self.spec, shared)
        return self._apply(alphas, flips, shared, history)

    def _apply(
        self, alphas: np.ndarray, flips: list[np.ndarray], shared: State, history: State
    ) -> tuple[list[np.ndarray], State]:
        """ŝ = ŝ_prev XOR b̂ and the decoded α·ŝ, from packed flips, with the flip coder's state
        after them (both sides run this)."""
        signs = {f"signs/{i}": shared[f"signs/{i}"] ^ b for i, b in enumerate(flips)}
        signs["primed"] = np.ones(1, np.uint8)
        signs |= history
        decoded = [
            scaled_signs(alpha, signs[f"signs/{i}"], t.size)
            for i, (alpha, t) in enumerate(zip(alphas, self.spec.tensors))
        ]
        return decoded, signs


def flip_counts(
    payload: bytes, spec: ModelSpec, config: SignXORConfig | None = None, shared: State | None = None
) -> list[int]:
    """The flips b̂ each tensor of a SignXOR payload sends (its flip rate is count / size).

    Decodes the payload as a decoder of `config` (default: the default config) holding
    `shared` would (default: the initial state; the context coder's split depends on it),
    and leaves `shared` as it is; raises PayloadError if it is malformed or not SignXOR's.
    """
    compressor = SignXOR(spec, config or SignXORConfig())
    _, body = unpack(payload, SignXOR.codec_id, len(spec))
    _read_scales(body, len(spec))
    flips, _ = compressor._coder.read(body, spec, compressor.initial_shared() if shared is None else shared)
    body.finish()
    return [_count(b) for b in flips]


def _history(shared: State) -> flip_contexts.State:
    return {k: shared[k] for k in ("rates", "recent", "counts")}


def _unpacked(flips: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Packed per-tensor bit vectors as one bool vector of the update's entries."""
    if not flips:
        return np.zeros(0, np.bool_)
    bits = [np.unpackbits(b, count=t.size) for b, t in zip(flips, spec.tensors)]
    return np.concatenate(bits).view(np.bool_)


def _count(packed: np.ndarray) -> int:
    """The set bits of a packed bit vector (its padding bits are 0)."""
    return int(np.bitwise_count(packed).sum(dtype=np.int64))


def _read_scales(body: PayloadReader, count: int) -> np.ndarray:
    alphas = body.array(np.float32, count, limit=count)
    bad = ~(np.isfinite(alphas) & (alphas >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise PayloadError(f"tensor {i}: scale {alphas[i]} is not a finite non-negative number")
    return alphas


def _mean(magnitudes: np.ndarray) -> np.float32:
    """α = ‖p‖₁/d in float32 from |p|, computed as scaled sign computes it (so λ = 0 matches it
    bit for bit)."""
    if not magnitudes.size:
        return np.float32(0)
    total = magnitudes.sum()
    if not np.isfinite(total):  # a float32 sum of huge entries overflows; their mean does not
        total = magnitudes.sum(dtype=np.float64)
    return np.float32(total / magnitudes.size)


def _projection(magnitudes: np.ndarray, held: np.ndarray, mean_abs: np.float32) -> np.float32:
    """α = max(0, ⟨p, ŝ⟩)/d, the scale that minimises ‖p − α·ŝ‖ for signs ŝ that disagree with
    sign(p) where the packed mask `held` is set (flips held back): ‖p‖₁/d − 2·Σ_held |p_i|/d."""
    if not held.any():
        return mean_abs
    # A dot product with the 0/1 mask: seven times faster than gathering the entries.
    held_abs = float(np.dot(magnitudes, np.unpackbits(held, count=magnitudes.size).astype(np.float32)))
    if not np.isfinite(held_abs):
        held_abs = float(np.dot(magnitudes.astype(np.float64), np.unpackbits(held, count=magnitudes.size)))
    return np.float32(max(0.0, float(mean_abs) - 2 * held_abs / magnitudes.size))


def _bits_saved(q: np.ndarray | float) -> np.ndarray:
    """log2((1 − q)/q) where positive, else 0: what coding a 0 instead of a 1 saves at rate q ∈ (0, 1)."""
    return np.maximum(0.0, np.log2((1 - q) / q))
