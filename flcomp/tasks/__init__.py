"""Federated tasks: embedded or synthetic data, flwr-datasets partitions, torch models,
local training (federated SGD or distributed GD) and central evaluation.

    from flcomp.tasks import Task, TaskConfig
    task = Task(TaskConfig(dataset="digits", model="mlp", num_clients=10))
    arrays, n, metrics = task.train(0, task.initial_arrays(), server_round=1)
"""

from flcomp.tasks.config import TaskConfig
from flcomp.tasks.datasets import DATASETS, Data
from flcomp.tasks.models import MODELS
from flcomp.tasks.partition import PARTITIONERS
from flcomp.tasks.task import Task
from flcomp.tasks.training import MODES

__all__ = ["DATASETS", "MODELS", "MODES", "PARTITIONERS", "Data", "Task", "TaskConfig"]
