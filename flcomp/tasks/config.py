"""TaskConfig: what data, model, split and local training a task uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flcomp.tasks.datasets import DATASETS
from flcomp.tasks.models import MODELS
from flcomp.tasks.objective import PROBLEMS
from flcomp.tasks.partition import PARTITIONERS
from flcomp.tasks.training import MODES


@dataclass(frozen=True)
class TaskConfig:
    """A federated learning task. Names are keys of the registries DATASETS, MODELS,
    PARTITIONERS and MODES; every random choice derives from `seed`."""

    dataset: str = "digits"
    """"digits" (embedded), "fashion-mnist" (IDX files), "synthetic-logistic", "synthetic-linear"."""
    model: str = "mlp"
    """"logreg", "mlp", "cnn" for classification; "linear" for synthetic-linear."""
    num_clients: int = 10
    partition: str = "iid"
    """"iid", or "dirichlet" (by label; not for regression data)."""
    alpha: float = 0.5
    """Dirichlet concentration (smaller: more skewed label mixes)."""
    mode: str = "federated"
    """"federated": local_epochs of mini-batch SGD; "gd": one gradient step per round on the
    full local data (batch_size 0) or on one mini-batch, so that Δ = lr·∇f_k."""
    local_epochs: int = 2
    batch_size: int = 32
    """Samples per step; 0 = the client's whole partition."""
    lr: float = 0.1
    """Client step size."""
    weight_decay: float | None = None
    """λ of the (λ/2)‖w‖² term over all parameters; None: the dataset's default
    (1e-3 for synthetic-logistic, which needs λ > 0 to be strongly convex; else 0)."""
    seed: int = 0
    """Seeds the data split, synthetic data, partitions, model initialisation and batch order."""
    data_dir: str | None = None
    """Where to look for Fashion-MNIST's IDX files before /usr/share/datasets/fashion-mnist."""

    def __post_init__(self) -> None:
        for field, registry in [
            ("dataset", DATASETS),
            ("model", MODELS),
            ("partition", PARTITIONERS),
            ("mode", MODES),
        ]:
            if getattr(self, field) not in registry:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; one of {sorted(registry)}")
        problem = DATASETS[self.dataset].problem
        if problem not in MODELS[self.model].problems:
            raise ValueError(
                f"model {self.model!r} does not fit dataset {self.dataset!r} (a {problem} problem)"
            )
        if PARTITIONERS[self.partition].by_label and not PROBLEMS[problem].labelled:
            raise ValueError(f"partition {self.partition!r} splits by label; {self.dataset!r} has none")
        for name, least in [("num_clients", 1), ("local_epochs", 1), ("batch_size", 0), ("seed", 0)]:
            if not getattr(self, name) >= least:
                raise ValueError(f"a task needs {name} ≥ {least}, got {getattr(self, name)}")
        for name in ("lr", "alpha"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"a task needs a finite {name} > 0, got {getattr(self, name)}")
        if self.weight_decay is not None and not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"a task needs a finite weight_decay ≥ 0 (or None), got {self.weight_decay}")

    @property
    def effective_weight_decay(self) -> float:
        """λ: weight_decay, or the dataset's default when it is None."""
        return DATASETS[self.dataset].weight_decay if self.weight_decay is None else self.weight_decay
