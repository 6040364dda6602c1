"""Run simulations with Flower's simulation engine on Ray (or inline, in one process)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from flwr.simulation import run_simulation

from flcomp.codecs import Codec
from flcomp.protocol.snapshot import SnapshotError
from flcomp.sim.apps import client_app, serve, server_app
from flcomp.sim.checkpoint import Checkpoint, ClientSnapshots, load_checkpoint, prepare_resume, start_fresh
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

log = logging.getLogger(__name__)


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


def resumable(directory: Path) -> tuple[RunConfig, Checkpoint]:
    """The config and the newest checkpoint of the run in `directory`; SnapshotError (a
    ValueError) saying what is missing or corrupted."""
    path = Path(directory) / "config.json"
    try:
        config = RunConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing (is {directory} a run's results directory?)") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SnapshotError(f"{path}: not a run's config ({e})") from None
    return config, load_checkpoint(directory)


def run(config: RunConfig, directory: Path, progress: bool = True, resume: Checkpoint | None = None) -> dict:
    """Simulate one run, write its results directory and return its summary.

    `resume`: a checkpoint of this run in `directory` (`resumable`): the run goes on from it,
    rounds.csv cut back to its rounds, and ends as the uninterrupted run would have.
    Raises RuntimeError if the simulation ended before its last round (the log says why).
    """
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"])
    directory = Path(directory).resolve()  # clients on Ray write their snapshots from other processes
    downlink = Codec.parse(config.downlink) if config.downlink is not None else None
    recorder = RunRecorder(directory, RoundTraffic.stat_columns(Codec.parse(config.codec), downlink))
    if resume is None:
        recorder.start(config.as_dict())
        start_fresh(directory)
    else:
        recorder.resume(resume.rows)
        prepare_resume(directory, resume.round)
    every = config.checkpoint_every
    snapshots = ClientSnapshots(directory, every) if every else None
    progress_bar = ProgressBar(config.codec, config.rounds, progress)
    if resume is not None and resume.round >= config.rounds:
        log.info("the checkpoint is of the last round: only the summary is left to write")
    elif config.engine == "inline":
        grid = InlineGrid(client_app(config.task, snapshots=snapshots), config.task.num_clients)
        serve(grid, config, recorder, progress_bar, resume)
    else:
        init_args = (
            {"address": config.ray_address} if config.ray_address else {"num_cpus": os.cpu_count() or 1}
        )
        run_simulation(
            server_app=server_app(config, recorder, progress_bar, resume),
            client_app=client_app(config.task, snapshots=snapshots),
            num_supernodes=config.task.num_clients,
            backend_config={
                "client_resources": {"num_cpus": config.client_cpus, "num_gpus": 0.0},
                "init_args": init_args,
            },
        )
    if not recorder.rows or recorder.rows[-1]["round"] != config.rounds:
        raise RuntimeError(f"the simulation of {config.codec} stopped before round {config.rounds}")
    return recorder.finish()
