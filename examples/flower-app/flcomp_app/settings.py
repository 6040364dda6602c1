"""The run config, with the defaults of pyproject.toml filled in."""

from __future__ import annotations

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
