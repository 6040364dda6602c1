"""Losses by problem kind, and the training objective they define.

For a client k holding samples S_k, the objective that training minimises is

    f_k(w) = (1/|S_k|) Σ_{i∈S_k} ℓ(w; x_i, y_i) + (λ/2) ‖w‖²,

with ‖w‖² summed over ALL parameters (weights and biases), λ = the task's weight decay; a
mini-batch replaces S_k by the batch. The global objective f is the same with S = every
client's training data, so f = Σ_k (|S_k|/|S|) f_k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _multiclass_accuracy(outputs: Tensor, y: Tensor) -> Tensor:
    return (outputs.argmax(dim=1) == y).to(outputs.dtype).mean()


def _binary_accuracy(outputs: Tensor, y: Tensor) -> Tensor:
    return ((outputs[:, 0] > 0) == (y > 0.5)).to(outputs.dtype).mean()


@dataclass(frozen=True)
class Problem:
    """A kind of supervised problem."""

    loss: Callable[[Tensor, Tensor], Tensor]
    """(model outputs (n, num_outputs), targets (n,)) → mean loss over the n samples."""
    accuracy: Callable[[Tensor, Tensor], Tensor] | None
    """(outputs, targets) → fraction classified right; None for regression."""
    target_dtype: torch.dtype | None
    """Targets are cast to this dtype; None: to the model's floating dtype."""
    labelled: bool
    """Whether targets are class ids (that label-based partitions can split by)."""


PROBLEMS: dict[str, Problem] = {
    "multiclass": Problem(F.cross_entropy, _multiclass_accuracy, torch.int64, labelled=True),
    "binary": Problem(
        lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y), _binary_accuracy, None, labelled=True
    ),
    "regression": Problem(lambda out, y: 0.5 * (out[:, 0] - y).square().mean(), None, None, labelled=False),
}
"""Problem kind → Problem. multiclass: softmax cross-entropy on integer labels; binary:
logistic loss log(1 + e^{-z}) on one logit z for labels {0, 1}, i.e. softplus(z) − y·z;
regression: half the squared error, ½(xᵀw − y)²."""


def penalty(model: nn.Module) -> Tensor:
    """½ ‖w‖², summed over all parameters."""
    return 0.5 * sum(p.square().sum() for p in model.parameters())


def objective(model: nn.Module, problem: Problem, x: Tensor, y: Tensor, weight_decay: float) -> Tensor:
    """Mean loss of `model` on (x, y) + weight_decay · ½‖w‖² (differentiable)."""
    return problem.loss(model(x), y) + weight_decay * penalty(model)


@torch.no_grad()
def mean_metrics(
    model: nn.Module, problem: Problem, x: Tensor, y: Tensor, chunk: int = 2048
) -> dict[str, float]:
    """{"loss": mean loss over all of (x, y)} and, for classification, "accuracy";
    evaluated `chunk` samples at a time (no penalty term)."""
    totals = {"loss": 0.0} | ({"accuracy": 0.0} if problem.accuracy is not None else {})
    for start in range(0, len(x), chunk):
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        outputs = model(xb)
        totals["loss"] += problem.loss(outputs, yb).item() * len(xb)
        if problem.accuracy is not None:
            totals["accuracy"] += problem.accuracy(outputs, yb).item() * len(xb)
    return {k: v / len(x) for k, v in totals.items()}
