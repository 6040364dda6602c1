"""Health of error feedback, per round: how much the links' codecs hold back, and whether the
server's error memory winds up.

Error feedback on both links (two-way, `flcomp.strategies.downlink`) diverges with sign
codecs where one-way converges: the clients' signs disagree on noisy coordinates, the
average the server compresses is spread thin, its codec holds most of it back, and the
server's memory grows on the stiffest coordinates round after round (docs/METHODS.md;
`ef_decay` in `flcomp.codecs.wrappers.error_feedback` is the remedy). What each round
reports (`flcomp.strategies.traffic`, rounds.csv):

- the contraction δ(v) = ‖v‖₁² / (d‖v‖₂²) ∈ [1/d, 1] of a vector v of d entries: scaled
  sign's contraction factor on v (‖v − C(v)‖² = (1 − δ)‖v‖²), 1 when every entry has the
  same size, 1/d for a single entry. For the downlink, of the vector the server's codec
  compressed (the change plus its memory): a small δ there is the winding-up above. For
  the uplink, of each client's decoded update Δ̂ (the server never sees the clients' own
  vectors), median over the accepted clients: a spread of what the clients send, 1 by
  construction for a scaled sign reconstruction with one tensor, about k/d or less for
  top-k;
- the server memory's norm ‖e‖₂ and its ratio to the step, ‖e‖₂ / ‖decoded change‖₂. The
  ratio stays of order one even as a run diverges (memory and step grow together), so
  `MemoryWatch`, the one warning per run, watches the norm.

Each costs a read or two of the vectors it measures (|v| summed, v·v), about 0.7 ms per
million float32 entries: once per accepted client, and once on the server's vector a round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def contraction(vectors: Sequence[np.ndarray]) -> float | None:
    """δ = ‖v‖₁² / (d‖v‖₂²) of the vector v made of `vectors` (finite arrays, any shapes, d
    entries in all); None for a zero vector, where it is undefined."""
    l2 = norm(vectors)
    if not l2 > 0:
        return None
    d = sum(v.size for v in vectors)
    with np.errstate(over="ignore"):
        l1 = sum(float(np.abs(v).sum()) for v in vectors)  # pairwise sums: float32 is precise enough
    if not math.isfinite(l1):  # ... but for entries near its largest value
        l1 = sum(float(np.abs(v).sum(dtype=np.float64)) for v in vectors)
    return min(1.0, (l1 / l2) ** 2 / d)  # rounding can put a constant-magnitude vector just above 1


def norm(vectors: Sequence[np.ndarray]) -> float:
    """‖v‖₂ of the vector v made of `vectors` (finite arrays, any dtype), as a Python float."""
    with np.errstate(over="ignore", under="ignore"):
        squares = sum(float(np.vdot(v, v)) for v in vectors)
    if math.isfinite(squares) and squares > 0:
        return math.sqrt(squares)
    # Zero, or the squares under- or overflowed the arrays' dtype: the same sum, scaled to 1.
    scale = max((float(np.abs(v).max()) for v in vectors if v.size), default=0.0)
    if not scale > 0:
        return 0.0
    return scale * math.sqrt(sum(float(np.vdot(v / scale, v / scale)) for v in vectors))


class MemoryWatch:
    """Whether the server's error memory keeps growing, for one warning per run.

    The rule, on ‖e‖₂ after each round's payload (not on its ratio to the step: when two-way
    error feedback winds up, the memory and the step grow together): the rounds are cut into
    windows of `window` rounds, and it fires when the median ‖e‖ of the window just closed is
    at least `growth` times the smallest median of an earlier window, and above the first
    window's (its size when the run started: a memory that shrank towards zero on a converging
    run and comes back part of the way is not growth). A single large round cannot fire it
    (medians), nor can a memory that settles at any level. On the noisy quadratic of
    examples/two_way_stability.py (6,400 rounds, lr 0.05 and 0.01), the converging runs stay
    within 2 times their smallest window; every diverging one fires, while the model is still
    closer to the optimum than where it started. With windows of 20 rounds it fires 40 rounds into a run
    at the earliest.
    """

    def __init__(self, window: int = 20, growth: float = 10.0) -> None:
        self.window = window
        self.growth = growth
        self.fired = False
        self.warning = ""
        """What to log, once it fired."""
        self._current: list[float] = []
        self._first: float | None = None
        self._smallest = math.inf

    def observe(self, memory_norm: float | None) -> bool:
        """Count one round's ‖e‖₂ (None: no memory that round, not counted); True in the round the
        rule first holds, False before and after."""
        if memory_norm is None or self.fired:
            return False
        self._current.append(memory_norm)
        if len(self._current) < self.window:
            return False
        median, self._current = float(np.median(self._current)), []
        if self._first is None:
            self._first = self._smallest = median
        elif median >= self.growth * self._smallest and median > self._first:
            self.fired = True
            self.warning = (
                f"the server's error memory keeps growing (median ‖e‖ over {self.window} rounds "
                f"{median:.3g}, {median / self._smallest:.0f}× its smallest): two-way error feedback is "
                "winding up; try ef_decay=0.9 on the downlink codec (docs/METHODS.md)"
            )
        else:
            self._smallest = min(self._smallest, median)
        return self.fired
