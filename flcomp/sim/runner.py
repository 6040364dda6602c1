"""Run simulations with Flower's simulation engine on Ray (or inline, in one process)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from flwr.simulation import run_simulation

from flcomp.codecs import Codec
from flcomp.sim.apps import client_app, serve, server_app
from flcomp.sim.config import RunConfig
from flcomp.sim.inline import InlineGrid
from flcomp.sim.results import RunRecorder
from flcomp.strategies import RoundTraffic

QUIET_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_LOG_LEVEL": "WARNING",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
    "HF_HUB_OFFLINE": "1",
}
"""Defaults for Flower and Ray (a variable already set wins): no telemetry, warnings only."""


class ProgressBar:
    """One line per run on stderr, redrawn every round."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, total, enabled

    def __call__(self, row: dict) -> None:
        if not self.enabled:
            return
        done = int(row["round"])
        bar = "#" * (20 * done // self.total)
        score = (
            f"acc {row['accuracy']:.3f}"
            if row.get("accuracy") is not None
            else f"gap {row.get('gap', 0):.2e}"
        )
        sys.stderr.write(f"\r{self.label:<40.40} [{bar:<20}] {done}/{self.total} {score}")
        if done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run(config: RunConfig, directory: Path, progress: bool = True) -> dict:
    """Simulate one run, write its results directory and return its summary.

    Raises RuntimeError if the simulation ended before its last round (the log says why).
    """
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"])
    downlink = Codec.parse(config.downlink) if config.downlink is not None else None
    recorder = RunRecorder(Path(directory), RoundTraffic.stat_columns(Codec.parse(config.codec), downlink))
    recorder.start(config.as_dict())
    progress_bar = ProgressBar(config.codec, config.rounds, progress)
    if config.engine == "inline":
        serve(InlineGrid(client_app(config.task), config.task.num_clients), config, recorder, progress_bar)
    else:
        init_args = (
            {"address": config.ray_address} if config.ray_address else {"num_cpus": os.cpu_count() or 1}
        )
        run_simulation(
            server_app=server_app(config, recorder, progress_bar),
            client_app=client_app(config.task),
            num_supernodes=config.task.num_clients,
            backend_config={
                "client_resources": {"num_cpus": config.client_cpus, "num_gpus": 0.0},
                "init_args": init_args,
            },
        )
    if not recorder.rows or recorder.rows[-1]["round"] != config.rounds:
        raise RuntimeError(f"the simulation of {config.codec} stopped before round {config.rounds}")
    return recorder.finish()
