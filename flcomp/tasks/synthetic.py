"""Synthetic convex problems with a known optimum (d ≥ 1000 features).

Both draw features x ~ N(0, I_d) and a ground truth w* ~ N(0, I_d / d), so that the
noiseless signal xᵀw* has unit variance; training and test samples come from the same
process. Everything is drawn from `np.random.default_rng((seed, stream))`; arrays are
generated in float64 and stored in float32 (the reference optimum is computed on the
stored float32 values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and noise of a synthetic problem."""

    n_train: int = 5000
    n_test: int = 1000
    dim: int = 1000
    noise: float = 0.5
    """Linear: std of the additive Gaussian label noise. Logistic: unused (the labels
    are Bernoulli draws, noisy by construction)."""
    signal: float = 2.0
    """Logistic only: the logit is `signal · xᵀw*` (larger: cleaner, more separable labels)."""


LINEAR = SyntheticSpec()
LOGISTIC = SyntheticSpec()


def _features(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """(x of shape (n_train + n_test, dim), w* of shape (dim,)), float64."""
    w = rng.standard_normal(spec.dim) / np.sqrt(spec.dim)
    x = rng.standard_normal((spec.n_train + spec.n_test, spec.dim))
    return x, w


def linear_regression(seed: int, spec: SyntheticSpec = LINEAR) -> tuple[np.ndarray, np.ndarray]:
    """y = xᵀw* + ε, ε ~ N(0, noise²). Returns (x float32 (n, dim), y float32 (n,)),
    n = n_train + n_test, training samples first."""
    rng = np.random.default_rng((seed, 1))
    x, w = _features(rng, spec)
    y = x @ w + spec.noise * rng.standard_normal(len(x))
    return x.astype(np.float32), y.astype(np.float32)


def logistic_regression(seed: int, spec: SyntheticSpec = LOGISTIC) -> tuple[np.ndarray, np.ndarray]:
    """y ~ Bernoulli(σ(signal · xᵀw*)), y ∈ {0, 1}. Returns (x float32 (n, dim),
    y int64 (n,)), n = n_train + n_test, training samples first."""
    rng = np.random.default_rng((seed, 2))
    x, w = _features(rng, spec)
    p = 1.0 / (1.0 + np.exp(-spec.signal * (x @ w)))
    y = (rng.random(len(x)) < p).astype(np.int64)
    return x.astype(np.float32), y
