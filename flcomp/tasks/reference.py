"""Known optima of the convex tasks, solved in float64.

Each solver minimises exactly objective.objective for a linear model (weight (c, d) and
bias (c,), both in the ½λ‖·‖² term) over all training samples: with A = [x, 1] and
θ = (weight, bias),

    linear:      f(θ) = (1/n) Σ ½(aᵢᵀθ − yᵢ)² + (λ/2)‖θ‖²            (closed form)
    logistic:    f(θ) = (1/n) Σ softplus(aᵢᵀθ) − yᵢ·aᵢᵀθ + (λ/2)‖θ‖²    (L-BFGS, then Newton)
    multinomial: f(θ) = (1/n) Σ −log softmax(Θaᵢ)_yᵢ + (λ/2)‖θ‖²        (L-BFGS, then Newton)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
from scipy.special import expit, log_softmax, softmax


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


def multinomial_logistic(
    x: np.ndarray, y: np.ndarray, weight_decay: float, newton_steps: int = 2
) -> Solution:
    """The minimiser of the "logreg" model's objective on multiclass data (softmax cross-entropy
    on A = [x, 1] plus (λ/2)‖θ‖², as flcomp.tasks.objective defines it): L-BFGS, then
    `newton_steps` Newton steps, to a gradient norm below 1e-10; L = λ_max(AᵀA/n)/2 + λ (the
    softmax Hessian in the logits is ⪯ I/2, Böhning 1992). Needs λ > 0."""
    if weight_decay <= 0:
        raise ValueError("the multinomial reference needs weight_decay > 0 (a unique optimum)")
    a = np.hstack([np.asarray(x, np.float64).reshape(len(x), -1), np.ones((len(x), 1))])
    n, p = a.shape
    onehot = np.eye(int(y.max()) + 1)[y]
    classes = onehot.shape[1]

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = theta.reshape(classes, p)
        z = a @ t.T
        value = -np.sum(onehot * log_softmax(z, axis=1)) / n + 0.5 * weight_decay * theta @ theta
        return value, ((a.T @ (softmax(z, axis=1) - onehot)).T / n + weight_decay * t).ravel()

    theta = scipy.optimize.minimize(
        value_and_grad,
        np.zeros(classes * p),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "maxcor": 30, "ftol": 0.0, "gtol": 1e-10},
    ).x
    for _ in range(newton_steps):
        s = softmax(a @ theta.reshape(classes, p).T, axis=1)
        # Hessian: Σ_i (diag(s_i) − s_i s_iᵀ) ⊗ a_i a_iᵀ / n + λI, in blocks of classes.
        b = (s[:, :, None] * a[:, None, :]).reshape(n, classes * p)
        hessian = scipy.linalg.block_diag(*np.einsum("ic,ip,iq->cpq", s, a, a)) - b.T @ b
        hessian = hessian / n + weight_decay * np.eye(classes * p)
        theta = theta - scipy.linalg.solve(hessian, value_and_grad(theta)[1], assume_a="pos")
    if not np.linalg.norm(value_and_grad(theta)[1]) < 1e-10:
        raise RuntimeError("the multinomial reference did not converge")
    theta = theta.reshape(classes, p)
    top = float(scipy.linalg.eigvalsh(a.T @ a / n, subset_by_index=[p - 1, p - 1])[0])
    return Solution([theta[:, :-1].copy(), theta[:, -1].copy()], top / 2 + weight_decay)


SOLVERS: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray, float], Solution]] = {
    ("synthetic-linear", "linear"): ridge,
    ("synthetic-logistic", "logreg"): logistic,
    ("digits", "logreg"): multinomial_logistic,
}
"""(dataset, model) → solver (x_train, y_train, weight_decay) → Solution; tasks without an
entry have no known optimum. The logistic solvers need λ > 0 (ValueError otherwise)."""
ONLY_WITH_WEIGHT_DECAY = {("digits", "logreg")}
"""Tasks with a known optimum only when λ > 0 (without it real data need not have a unique
minimiser, and their default λ is 0): below, they simply have no gap."""
