"""Run simulations with Flower's Simulation Runtime on Ray (or inline, in one process)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flcomp.protocol.snapshot import SnapshotError
from flcomp.sim.apps import client_app, serve
from flcomp.sim.checkpoint import Checkpoint, ClientSnapshots, load_checkpoint, prepare_resume, start_fresh
from flcomp.sim.client_store import STORE_DIR, ClientStore
from flcomp.sim.config import RunConfig
from flcomp.sim.inline import InlineGrid
from flcomp.sim.simapp.components import FRESH, import_mods, recorder, run_lock
from flcomp.sim.simapp.launch import LOG_FILE, launch

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
_LOG_TAIL = 30
"""Lines of flower.log that the error of a Ray run that stopped early quotes."""


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
    with run_lock(directory):
        pass  # a killed run's ServerApp may still be writing its last round
    try:
        config = RunConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SnapshotError(f"{path}: missing (is {directory} a run's results directory?)") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SnapshotError(f"{path}: not a run's config ({e})") from None
    return config, load_checkpoint(directory)


def run(
    config: RunConfig,
    directory: Path,
    progress: bool = True,
    resume: Checkpoint | None = None,
    client_mods: Sequence[str] = (),
) -> dict:
    """Simulate one run, write its results directory and return its summary.

    `resume`: a checkpoint of this run in `directory` (`resumable`): the run goes on from it,
    rounds.csv cut back to its rounds, and ends as the uninterrupted run would have.
    `client_mods`: extra ClientApp mods inside `compression_mod`, named "module:attribute"
    (on Ray they are imported where the clients run). On Ray the ServerApp and the ClientApps run
    in processes that Flower's Simulation Runtime starts (`flcomp.sim.simapp`), whose log goes
    to directory/flower.log. Raises RuntimeError if the simulation ended before its last round.
    """
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("flwr").setLevel(os.environ["FLWR_LOG_LEVEL"])
    directory = Path(directory).resolve()  # clients on Ray write their snapshots from other processes
    with run_lock(directory):
        pass  # a killed run's ServerApp may still be writing its last round
    rec = recorder(config, directory)
    if resume is None:
        rec.start(config.as_dict())
        start_fresh(directory)
    else:
        rec.resume(resume.rows)
        prepare_resume(directory, resume.round)
    progress_bar = ProgressBar(config.codec, config.rounds, progress)
    stopped = RuntimeError(f"the simulation of {config.codec} stopped before round {config.rounds}")
    if resume is not None and resume.round >= config.rounds:
        log.info("the checkpoint is of the last round: only the summary is left to write")
    elif config.engine == "inline":
        every = config.checkpoint_every
        snapshots = ClientSnapshots(directory, every) if every else None
        app = client_app(
            config.task, mods=import_mods(client_mods), snapshots=snapshots, results_dir=directory
        )
        serve(InlineGrid(app, config.task.num_clients), config, rec, progress_bar, resume)
    else:
        summary = directory / "summary.json"
        summary.unlink(missing_ok=True)  # the ServerApp writes it once its last round is recorded
        launch(config, directory, progress_bar, resume.round if resume else FRESH, client_mods)
        if not summary.exists():
            tail = (directory / LOG_FILE).read_text(errors="replace").splitlines()[-_LOG_TAIL:]
            raise RuntimeError(f"{stopped}; {directory / LOG_FILE} ends:\n" + "\n".join(tail))
        ClientStore(directory / STORE_DIR).clear()
        return json.loads(summary.read_text())
    if not rec.rows or rec.rows[-1]["round"] != config.rounds:
        raise stopped
    ClientStore(directory / STORE_DIR).clear()  # a finished run's clients are not asked again
    return rec.finish()
