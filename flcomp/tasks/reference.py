"""Known optima of the synthetic problems, solved in float64.

Each solver minimises exactly objective.objective for the linear model (weight (1, d) and
bias (1,), both in the ½λ‖·‖² term) over all training samples: with A = [x, 1] and
θ = (weight, bias),

    linear:   f(θ) = (1/n) Σ ½(aᵢᵀθ − yᵢ)² + (λ/2)‖θ‖²            (closed form)
    logistic: f(θ) = (1/n) Σ softplus(aᵢᵀθ) − yᵢ·aᵢᵀθ + (λ/2)‖θ‖²    (L-BFGS, then Newton steps)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import expit


@dataclass(frozen=True)
class Solution:
    """A minimiser and the objective's smoothness."""

    arrays: list[np.ndarray]
    """The minimiser as the linear model's parameters [weight (1, d), bias (1,)], float64."""
    smoothness: float
    """L, an upper bound on the Hessian's largest eigenvalue over all θ (exact for linear):
    GD with step 1/L decreases f monotonically."""


def _design(x: np.ndarray) -> np.ndarray:
    """A = [x, 1] in float64, shape (n, d + 1)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return np.hstack([x, np.ones((len(x), 1))])


def _as_arrays(theta: np.ndarray) -> list[np.ndarray]:
    return [theta[:-1].reshape(1, -1), theta[-1:].copy()]


def _top_eigenvalue(gram: np.ndarray) -> float:
    return float(scipy.linalg.eigvalsh(gram, subset_by_index=[len(gram) - 1, len(gram) - 1])[0])


def ridge(x: np.ndarray, y: np.ndarray, weight_decay: float) -> Solution:
    """Least squares with ½λ‖θ‖²: θ = (AᵀA/n + λI)⁻¹ Aᵀy/n; L = λ_max(AᵀA/n) + λ."""
    a = _design(x)
    gram = a.T @ a / len(a)
    theta = scipy.linalg.solve(
        gram + weight_decay * np.eye(len(gram)), a.T @ np.asarray(y, np.float64) / len(a), assume_a="pos"
    )
    return Solution(_as_arrays(theta), _top_eigenvalue(gram) + weight_decay)


def logistic(x: np.ndarray, y: np.ndarray, weight_decay: float, newton_steps: int = 2) -> Solution:
    """Regularised logistic regression (needs λ > 0): L-BFGS to a gradient norm ~1e-10, then
    `newton_steps` Newton steps; L = λ_max(AᵀA/n)/4 + λ."""
    if weight_decay <= 0:
        raise ValueError("the logistic reference needs weight_decay > 0 (a unique optimum)")
    a, y = _design(x), np.asarray(y, dtype=np.float64)
    n = len(a)

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = a @ theta
        value = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * weight_decay * theta @ theta
        return value, a.T @ (expit(z) - y) / n + weight_decay * theta

    result = scipy.optimize.minimize(
        value_and_grad,
        np.zeros(a.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-10},
    )
    theta = result.x
    for _ in range(newton_steps):
        s = expit(a @ theta)
        hessian = (a.T * (s * (1 - s))) @ a / n + weight_decay * np.eye(a.shape[1])
        theta = theta - scipy.linalg.solve(hessian, value_and_grad(theta)[1], assume_a="pos")
    return Solution(_as_arrays(theta), _top_eigenvalue(a.T @ a / n) / 4 + weight_decay)


SOLVERS: dict[str, Callable[[np.ndarray, np.ndarray, float], Solution]] = {
    "synthetic-linear": ridge,
    "synthetic-logistic": logistic,
}
"""Dataset name → solver (x_train, y_train, weight_decay) → Solution; datasets without an
entry have no known optimum."""
