"""GD-SEC: sparsified gradient differences with error correction.

Chen, Blum, Takáč, Sadler, "Distributed Learning With Sparsified Gradient
Differences", IEEE JSTSP 2022 (arXiv 2202.02491). A client does not send its update
g, but the difference between g and a reference h built from what it sent before,
and only the components of that difference that are large enough; what is dropped
is sent later. Per tensor (flat float32, n entries):

    client                                   server
    Δ  = g − h + (1 − β)·e                   ĝ = h + Δ̂
    Δ̂_i = Δ_i if |Δ_i| > thr else 0          h ← h + β·Δ̂
    e  ← Δ − Δ̂
    h  ← h + β·Δ̂

and the server aggregates ĝ. Both sides compute ĝ and h with the same float32
operations in the same order, so they agree bit for bit.

Error correction. e is what the last round dropped. Because h moved by β·Δ̂ rather
than β·Δ, the next difference g − h already holds β·e (it exceeds the difference
after a round that dropped nothing by exactly that), so the client adds only the
rest, (1 − β)·e, and every dropped component is sent once (docs/METHODS.md §3). The
paper's form Δ = g − h + e sends it 1 + β times: at β = 1 twice, so the reconstruction
never settles even for a constant update (g ≡ 1, thr = 2.5: ĝ = 0, 0, 3, 3, −1, −1,
3, 3, ... sending every other round), and in full-batch GD the threshold, which
follows the model's change, grows with that oscillation: on flcomp's synthetic
problems (full-batch GD, K = 10; measured once on that variant, which flcomp no longer
has) it sent 36–47% of the components at ξ = 10, did not converge from ξ = 30 (linear)
and diverged from ξ = 45 (logistic). The ends of β are known
methods: β = 0 (h stays 0) is sparsification with error feedback, Σ ĝ = Σ g − e, so
what is dropped is owed, never lost; β = 1 (default) is EF21 (Richtárik, Sokolov,
Fatkhullin 2021) with a LAG-style trigger (CLAG, Richtárik et al. 2022), where h is
the error memory: h + e = g after every round. In general ĝ = g + (1 − β)·e_old − e,
and |e_i| ≤ thr under the threshold rules. GD-SEC is therefore *not* wrapped in the
generic `ErrorFeedback` (`error_feedback = False`).

Threshold, one scalar for the whole model (`GDSECConfig.rule`):

- "lag" (default), the LAG-style rule of docs/METHODS.md §3:
  thr = (ξ/K) · ‖w(t) − w(t−1)‖₂ / (α·√d), with K = `RoundContext.num_clients`,
  ‖w(t) − w(t−1)‖² = `RoundContext.model_change_sq[0]` (the newest model change, from
  the broadcast models: no extra bits), α = `RoundContext.lr` and d the model's entry
  count. ‖w(t) − w(t−1)‖/α is the size of the last aggregated update, so thr is in
  the update's units whether a driver sends gradients with a server step α or
  pseudo-gradients with α = 1 (Flower's mod: the model delta, α = 1, where this is
  docs/METHODS.md §3's (ξ/K)·‖w(t) − w(t−1)‖₂/√d exactly; in flcomp's "gd" mode the delta is
  lr·∇f_k and the server step is FedAvg's mean, so both sides are lr times the
  gradient's). A round without a model change (the first one) has no threshold: it
  keeps the `ratio` largest components of each tensor instead, as rule "topk" does
  (sending all of them as sparse entries would cost more than float32). With α = 0
  the threshold is 0.
- "absolute": thr = `threshold`, in the update's units. threshold = 0 sends every
  nonzero component: ĝ = h + fl(g − h), which is g whenever the float32 difference
  g − h is exact (always in the first round or after a key frame, where h = 0).
- "topk": no threshold; the ⌈ratio·n⌉ largest |Δ_i| of each tensor.

State. Shared: h, one float32 array per tensor ("h/<i>"), zeros at the start and
after a key frame. Local (client only): e ("e/<i>"); a key frame keeps it, which is
consistent: ĝ = g + (1 − β)·e_old − e holds with any h the two sides agree on.

    per tensor: u32 m (components sent) | m positions | m values (float32 or float16)

Positions are the shorter of a bitmap and Rice-coded gaps (`flcomp.codecs.coding.positions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.coding.positions import decode_positions, encode_positions
from flcomp.codecs.coding.sparse import ValueDtype, kept_count, read_values, top_k_positions, write_values
from flcomp.codecs.compressor import Compressor, RoundContext, State, Step
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.registry import register
from flcomp.codecs.wire import PayloadReader, PayloadWriter

_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class GDSECConfig:
    rule: Literal["lag", "absolute", "topk"] = "lag"
    """How the components to send are chosen. "lag": |Δ_i| above the LAG-style
    threshold (ξ/K)·‖w(t) − w(t−1)‖/(α√d) from `RoundContext`; use it when the driver
    supplies the model changes (flcomp's GD and Flower paths do). "absolute": above
    `threshold`, for drivers without history or to reproduce GD (threshold = 0).
    "topk": the `ratio` largest per tensor, a fixed bit budget per round; in
    full-batch GD it sends more bits in more rounds than the default threshold rule.
    Measured (ratios 0.1 and 0.2): docs/RESULTS.md, section "gdsec-xi"
    (`python examples/gdsec_experiment.py --sweep`)."""
    xi: float = 30.0
    """ξ of rule "lag", ≥ 0. Larger: fewer components sent and, past a
    problem-dependent point, more rounds; 0 is GD. 30 is the largest ξ that kept GD's
    rounds on flcomp's synthetic problems (full-batch GD, K = 10, to a 1e-6 gap), and it
    sends the ~5% of components on logistic regression that docs/METHODS.md §3 aims at.
    Its limit: each client may hold back (ξ/K)·‖w(t) − w(t−1)‖ in norm, 3× the
    aggregate step at ξ = 30, K = 10; heterogeneous clients' errors largely average
    out, but where clients' gradients change alike (iid clients, as on digits) they add
    up: there, take ξ ≤ K (no client's error above the aggregate step). Measured
    (ξ = 5 to 80, synthetic least squares and logistic regression, digits):
    docs/RESULTS.md, section "gdsec-xi"
    (`python examples/gdsec_experiment.py --sweep`)."""
    threshold: float = 0.0
    """thr of rule "absolute", ≥ 0, in the update's units. 0 sends every nonzero
    component (GD-SEC is then GD, up to float32 rounding of g − h)."""
    ratio: float = 0.05
    """Fraction of each tensor's components sent by rule "topk", and by rule "lag" in
    a round with no model change yet (the first), in (0, 1]."""
    beta: float = 1.0
    """β in h ← h + β·Δ̂, in [0, 1]. 1 (default): h is the last reconstruction ĝ, so Δ
    is the change since the last round (plus what was dropped), small when updates
    vary slowly (full-batch GD). Smaller β makes h a running average of what was sent
    and re-sends (1 − β) of each round's Δ̂, which costs bits in full-batch GD. β = 0
    sends sparsified g + e (no difference at all), which keeps sending most components
    in heterogeneous runs, where each client's gradient stays nonzero at the optimum.
    Measured (β = 0.8, 0.5 at ξ = 30): docs/RESULTS.md, section "gdsec-xi"
    (`python examples/gdsec_experiment.py --sweep`)."""
    value_dtype: ValueDtype = "float32"
    """Wire type of the sent values; "float16" halves their bits, and the rounding
    error is sent later like the dropped components. Measured (at ξ = 30):
    docs/RESULTS.md, section "gdsec-xi"
    (`python examples/gdsec_experiment.py --sweep`)."""

    def __post_init__(self) -> None:
        if not (0 <= self.xi < math.inf and 0 <= self.threshold < math.inf):
            raise ValueError("GD-SEC needs finite xi ≥ 0 and threshold ≥ 0")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {self.ratio}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")


@register
class GDSEC(Compressor):
    """Sparsified differences against a shared reference h, with error correction.

    Stats: ``entries_sent``, the components whose values the payload carries (the sum of the
    tensors' counts m).
    """

    name = "gdsec"
    codec_id = 18
    Config = GDSECConfig
    stats = ("entries_sent",)
    error_feedback = False  # e is part of the method (inside Δ), see the module docstring

    def initial_shared(self) -> State:
        return {f"h/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}

    def initial_local(self) -> State:
        return {f"e/{i}": np.zeros(t.size, np.float32) for i, t in enumerate(self.spec.tensors)}

    def threshold(self, ctx: RoundContext) -> float | None:
        """thr for this round (in the update's units), or None where the `ratio` largest are sent."""
        c = self.config
        if c.rule == "absolute":
            return c.threshold
        if c.rule == "topk" or not ctx.model_change_sq:
            return None
        if ctx.lr == 0 or self.spec.size == 0:  # nothing to scale by: send every nonzero component
            return 0.0
        return (
            c.xi / ctx.num_clients * math.sqrt(ctx.model_change_sq[0]) / (ctx.lr * math.sqrt(self.spec.size))
        )

    def encode(
        self,
        x: list[np.ndarray],
        shared: State,
        local: State,
        out: PayloadWriter,
        rng: np.random.Generator,
        ctx: RoundContext,
    ) -> Step:
        thr = self.threshold(ctx)
        bound = None if thr is None else _float32_floor(thr)
        decoded, new_shared, new_local = [], {}, {}
        sent = 0
        for i, (g, t) in enumerate(zip(x, self.spec.tensors)):
            h = shared[f"h/{i}"]
            delta = g - h
            if self.config.beta < 1:  # the reference re-sends β·e by itself; e adds the rest
                delta += np.float32(1 - self.config.beta) * local[f"e/{i}"]
            if not np.isfinite(delta).all():  # g − h overflowed: e would hold inf forever
                raise ValueError("GD-SEC cannot represent this update: g − h + e overflows float32")
            if bound is None:
                k = kept_count(self.config.ratio, t.size)
                positions = top_k_positions(np.abs(delta), k) if k else np.zeros(0, np.int64)
            else:
                # |Δ_i| > thr, compared exactly: bound is the largest float32 ≤ thr.
                positions = np.flatnonzero(np.abs(delta) > bound)
            out.struct("I", len(positions))
            sent += len(positions)
            encode_positions(positions, t.size, out)
            values = write_values(delta[positions], self.config.value_dtype, out)
            g_hat, new_shared[f"h/{i}"] = self._reconstruct(h, positions, values)
            decoded.append(g_hat)
            delta[positions] -= values  # e ← Δ − Δ̂ (delta is this step's own array)
            new_local[f"e/{i}"] = delta
        return Step(decoded, new_shared, new_local, {"entries_sent": float(sent)})

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        decoded, new_shared = [], {}
        for i, t in enumerate(self.spec.tensors):
            (m,) = body.struct("I")
            if m > t.size:
                raise PayloadError(f"tensor {i}: {m} components sent, it has {t.size}")
            k = kept_count(self.config.ratio, t.size)
            if self.config.rule == "topk" and m != k:
                raise PayloadError(f"tensor {i}: {m} components sent, the config sends {k}")
            positions = decode_positions(body, m, t.size)
            values = read_values(body, self.config.value_dtype, m)
            if not np.isfinite(values).all():
                raise PayloadError(f"tensor {i}: NaN or Inf among the sent values")
            g_hat, new_shared[f"h/{i}"] = self._reconstruct(shared[f"h/{i}"], positions, values)
            decoded.append(g_hat)
        return decoded, new_shared

    def _reconstruct(self, h: np.ndarray, positions: np.ndarray, values: np.ndarray):
        """(ĝ = h + Δ̂, h + β·Δ̂), as fresh arrays; the one code path both sides run.

        Δ̂ is zero off `positions`, so only those entries are touched. With β ≤ 1 and ĝ
        finite (the endpoints check it), h + β·Δ̂ is finite too.
        """
        g_hat = h.copy()
        g_hat[positions] += values
        h_new = h.copy()
        h_new[positions] += np.float32(self.config.beta) * values
        return g_hat, h_new


def _float32_floor(thr: float) -> np.float32:
    """The largest float32 ≤ thr (thr ≥ 0): for float32 v, v > thr iff v > this."""
    if thr >= _F32_MAX:
        return np.float32(_F32_MAX)
    bound = np.float32(thr)
    if float(bound) > thr:
        bound = np.nextafter(bound, np.float32(0))
    return bound
