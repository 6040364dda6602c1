"""Task: a dataset split among clients, a model, local training and central evaluation."""

from __future__ import annotations

import copy
from functools import cache, cached_property

import numpy as np
import torch

from flcomp.tasks.config import TaskConfig
from flcomp.tasks.datasets import DATASETS, Data
from flcomp.tasks.models import MODELS
from flcomp.tasks.objective import PROBLEMS, mean_metrics, penalty
from flcomp.tasks.partition import partition_indices
from flcomp.tasks.reference import ONLY_WITH_WEIGHT_DECAY, SOLVERS, Solution
from flcomp.tasks.training import MODES, sgd, single_thread


@cache
def client_partitions(
    dataset: str, seed: int, data_dir: str | None, num_clients: int, partition: str, alpha: float
) -> tuple[np.ndarray, ...]:
    """Each client's indices into the dataset's training split (cached per process)."""
    entry = DATASETS[dataset]
    labels = entry.load(seed, data_dir).y_train
    by_label = labels if PROBLEMS[entry.problem].labelled else None
    return tuple(partition_indices(by_label, len(labels), num_clients, partition, alpha, seed))


@cache
def reference_solution(dataset: str, model: str, seed: int, weight_decay: float) -> Solution | None:
    """The known minimiser of the full training objective (None when the task has none)."""
    solver = SOLVERS.get((dataset, model))
    if solver is None or ((dataset, model) in ONLY_WITH_WEIGHT_DECAY and weight_decay <= 0):
        return None
    data = DATASETS[dataset].load(seed, None)
    return solver(data.x_train, data.y_train, weight_decay)


def load_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    """Copy `arrays` (in state_dict order) into `model`, cast to its dtype; ValueError on a
    count or shape mismatch."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ValueError(f"expected {len(state)} arrays, got {len(arrays)}")
    with torch.no_grad():
        for (key, tensor), array in zip(state.items(), arrays):
            if tuple(np.shape(array)) != tuple(tensor.shape):
                raise ValueError(f"{key}: expected shape {tuple(tensor.shape)}, got {np.shape(array)}")
            # torch.tensor copies, so read-only arrays (views of Flower Arrays) are fine
            tensor.copy_(torch.tensor(np.asarray(array)))


class Task:
    """A federated task: `config`'s data split among `config.num_clients` clients, its model,
    local training and central evaluation. Arrays travel as float32 NumPy arrays in the
    order of `keys` (the model's state_dict order)."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        entry = DATASETS[config.dataset]
        self.problem = PROBLEMS[entry.problem]
        self.weight_decay = config.effective_weight_decay
        self.data: Data = entry.load(config.seed, config.data_dir)
        self.partitions = client_partitions(
            config.dataset, config.seed, config.data_dir, config.num_clients, config.partition, config.alpha
        )
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.model = MODELS[config.model].build(self.data.input_shape, self.data.num_outputs)
        self.keys: list[str] = list(self.model.state_dict())
        self._initial = self._get_arrays()
        self._x = torch.from_numpy(self.data.x_train)
        self._y = self._targets(self.data.y_train, torch.float32)
        self._x_test = torch.from_numpy(self.data.x_test)
        self._y_test = self._targets(self.data.y_test, torch.float32)

    def _targets(self, y: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(y).to(self.problem.target_dtype or dtype)

    def _get_arrays(self) -> list[np.ndarray]:
        return [t.detach().numpy().copy() for t in self.model.state_dict().values()]

    def initial_arrays(self) -> list[np.ndarray]:
        """The model's initial parameters (float32, seeded by config.seed; fresh copies each call)."""
        return [a.copy() for a in self._initial]

    def train(
        self, partition_id: int, arrays: list[np.ndarray], server_round: int
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        """Train from `arrays` on client `partition_id`'s samples per config.mode.

        Returns (new arrays, the partition's size, {"train_loss": mean objective before each
        step}). Batch order comes from np.random.default_rng((seed, partition_id,
        server_round)) and torch runs single-threaded: equal inputs give bit-identical outputs.
        """
        if not 0 <= partition_id < self.config.num_clients:
            raise ValueError(f"partition_id {partition_id} outside 0..{self.config.num_clients - 1}")
        cfg = self.config
        index = torch.from_numpy(self.partitions[partition_id])
        rng = np.random.default_rng((cfg.seed, partition_id, server_round))
        batches = MODES[cfg.mode](len(index), cfg.batch_size, cfg.local_epochs, rng)
        with single_thread():
            x, y = self._x.index_select(0, index), self._y.index_select(0, index)
            load_arrays(self.model, arrays)
            loss = sgd(self.model, self.problem, x, y, batches, cfg.lr, self.weight_decay)
        return self._get_arrays(), len(index), {"train_loss": loss}

    def evaluate(self, arrays: list[np.ndarray]) -> dict[str, float]:
        """Central evaluation of `arrays` on the test split: "loss" (mean loss, no penalty) and,
        for classification, "accuracy" in [0, 1]. With a known optimum also "objective" = f(w),
        the full training objective in float64, and "gap" = (f(w) − f*) / (f(w0) − f*) with
        w0 = initial_arrays()."""
        load_arrays(self.model, arrays)
        metrics = mean_metrics(self.model, self.problem, self._x_test, self._y_test)
        if self.optimum is not None:
            value = self.objective(arrays)
            metrics |= {
                "objective": value,
                "gap": (value - self.optimum) / (self._initial_objective - self.optimum),
            }
        return metrics

    def objective(self, arrays: list[np.ndarray]) -> float:
        """f(w): mean training loss over all clients' samples + (λ/2)‖w‖², computed in float64."""
        model = self._model64
        load_arrays(model, arrays)
        with torch.no_grad():
            loss = mean_metrics(model, self.problem, self._x_train64, self._y_train64)["loss"]
            return loss + self.weight_decay * penalty(model).item()

    @cached_property
    def _model64(self) -> torch.nn.Module:
        return copy.deepcopy(self.model).double()

    @cached_property
    def _x_train64(self) -> torch.Tensor:
        return torch.from_numpy(self.data.x_train.astype(np.float64))

    @cached_property
    def _y_train64(self) -> torch.Tensor:
        return self._targets(self.data.y_train, torch.float64)

    @cached_property
    def _solution(self) -> Solution | None:
        return reference_solution(self.config.dataset, self.config.model, self.config.seed, self.weight_decay)

    @cached_property
    def _initial_objective(self) -> float:
        return self.objective(self._initial)

    @cached_property
    def optimum(self) -> float | None:
        """f*, the minimum of the full training objective, for the synthetic datasets (else None);
        computed on first use (solving takes about a second)."""
        return None if self._solution is None else self.objective(self._solution.arrays)

    def optimal_arrays(self) -> list[np.ndarray]:
        """The minimiser w* (float64 arrays in `keys` order); ValueError without a known optimum."""
        return [a.copy() for a in self._require_solution().arrays]

    def smoothness(self) -> float:
        """L, the smoothness constant of the full training objective (GD with lr = 1/L converges);
        ValueError without a known optimum."""
        return self._require_solution().smoothness

    def _require_solution(self) -> Solution:
        if self._solution is None:
            raise ValueError(f"dataset {self.config.dataset!r} has no known optimum")
        return self._solution
