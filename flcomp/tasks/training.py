"""Local training: which samples each step uses (by mode), and the SGD loop over them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from flcomp.tasks.objective import Problem, objective


def epoch_batches(n: int, batch_size: int, local_epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """ "federated" mode: `local_epochs` passes over the n local samples, each in a fresh
    random order cut into batches of `batch_size` (the last one shorter); batch_size 0:
    one full batch per epoch, in the stored order."""
    if batch_size == 0:
        return [np.arange(n)] * local_epochs
    batches = []
    for _ in range(local_epochs):
        order = rng.permutation(n)
        batches += [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return batches


def one_batch(n: int, batch_size: int, local_epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """ "gd" mode: a single step, on all n local samples in the stored order (batch_size 0)
    or on min(batch_size, n) of them drawn without replacement; local_epochs is ignored."""
    if batch_size == 0:
        return [np.arange(n)]
    return [rng.choice(n, size=min(batch_size, n), replace=False)]


MODES: dict[str, Callable[[int, int, int, np.random.Generator], list[np.ndarray]]] = {
    "federated": epoch_batches,
    "gd": one_batch,
}
"""Mode → (n, batch_size, local_epochs, rng) → the index batches of the local steps."""


def sgd(
    model: nn.Module,
    problem: Problem,
    x: Tensor,
    y: Tensor,
    batches: list[np.ndarray],
    lr: float,
    weight_decay: float,
) -> float:
    """One step w ← w − lr·∇f_B(w) per batch B (indices into x, y), f_B the objective on B
    (objective.objective). Returns the mean of f_B(w) before each step."""
    total = 0.0
    for batch in batches:
        index = torch.from_numpy(batch)
        model.zero_grad(set_to_none=True)
        value = objective(model, problem, x.index_select(0, index), y.index_select(0, index), weight_decay)
        value.backward()
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(lr * p.grad)
        total += value.item()
    return total / len(batches)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (bit-reproducible sums whatever the machine), then
    restore the previous thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
