"""The run config, with the defaults of pyproject.toml filled in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from flwr.app import Context

from flcomp.tasks import TaskConfig

_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def run_config(context: Context) -> dict:
    """`context.run_config` over the defaults in [tool.flwr.app.config].

    `flwr run` fills `context.run_config` from pyproject.toml (and `-c` overrides);
    the Python API `flwr.simulation.run_simulation` leaves it empty.
    """
    defaults = {}
    if _PYPROJECT.is_file():
        with _PYPROJECT.open("rb") as f:
            defaults = tomllib.load(f)["tool"]["flwr"]["app"].get("config", {})
    return {**defaults, **context.run_config}


def task_config(config: dict, num_partitions: int) -> TaskConfig:
    """The flcomp task (data, model, local training) this run trains."""
    return TaskConfig(
        dataset=str(config["dataset"]),
        model=str(config["model"]),
        num_clients=num_partitions,
        lr=float(config["lr"]),
    )


@dataclass(frozen=True)
class Participation:
    """Which nodes a round trains, and how long it waits for them."""

    min_nodes: int
    """A round starts once this many SuperNodes are connected, then trains all of them."""
    round_timeout: float
    """Seconds a round waits for its replies; it goes on with those that came."""


def participation(config: dict) -> Participation:
    """`min-nodes` and `round-timeout` of the run config; ValueError if either is not positive."""
    min_nodes = int(config["min-nodes"])
    timeout = float(config["round-timeout"])
    if min_nodes < 1:
        raise ValueError(f"min-nodes must be at least 1, not {min_nodes}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"round-timeout must be a positive number of seconds, not {timeout}")
    return Participation(min_nodes, timeout)
