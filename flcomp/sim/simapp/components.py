"""The components of flcomp's Flower app (pyproject.toml beside this file): a run's ServerApp and
ClientApp, rebuilt in the Simulation Runtime's processes from the run config that `flwr run`
hands them (the results directory, the checkpoint to resume from, extra client mods)."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from flcomp.codecs import Codec
from flcomp.sim.apps import client_app, serve
from flcomp.sim.checkpoint import ClientSnapshots, load_checkpoint
from flcomp.sim.config import RunConfig
from flcomp.sim.results import RunRecorder
from flcomp.strategies import RoundTraffic

RESULTS_DIR = "results-dir"
RESUME_ROUND = "resume-round"
CLIENT_MODS = "client-mods"
RUNNER_PID = "runner-pid"
FRESH = -1
"""RESUME_ROUND's value for a run that starts at round 0."""


@contextmanager
def run_lock(directory: Path, timeout: float = 60.0) -> Iterator[None]:
    """Hold the lock of the run in `directory` (an flock on its config.json; none while there is
    no config.json), waiting up to `timeout` s for the process that holds it: the ServerApp holds
    it while it runs, and a killed runner's ServerApp outlives it until it is to record its next
    round (`_RunnerBound`). RuntimeError if it is still held then."""
    path = Path(directory) / "config.json"
    if not path.exists():
        yield
        return
    with open(path, "rb") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another process is running the run in {directory}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_config(directory: Path) -> RunConfig:
    """The RunConfig that directory/config.json holds."""
    return RunConfig.from_dict(json.loads((Path(directory) / "config.json").read_text()))


def recorder(config: RunConfig, directory: Path) -> RunRecorder:
    """The RunRecorder of `config`'s results in `directory` (its codecs' stat columns after the rest)."""
    downlink = Codec.parse(config.downlink) if config.downlink is not None else None
    return RunRecorder(Path(directory), RoundTraffic.stat_columns(Codec.parse(config.codec), downlink))


def import_mods(paths: Sequence[str]) -> list[Mod]:
    """The mods that `paths` ("package.module:attribute") name, imported."""
    mods = []
    for path in paths:
        module, _, attribute = path.partition(":")
        if not module or not attribute:
            raise ValueError(f"a client mod is named 'module:attribute', got {path!r}")
        mods.append(getattr(importlib.import_module(module), attribute))
    return mods


server = ServerApp()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed runner that its parent has not reaped yet is a zombie
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class _RunnerBound(RunRecorder):
    """A RunRecorder that refuses to record once the runner process `runner` is gone: a killed
    runner's ServerApp (which its SuperLink's death leaves running) then fails before it
    writes another row or checkpoint, and releases the run's lock."""

    runner: int = 0

    def add_round(self, row: dict, clients: Iterable[dict] = ()) -> dict:
        if not _alive(self.runner):
            raise RuntimeError(f"the runner (process {self.runner}) is gone: the run stops")
        return super().add_round(row, clients)


@server.main()
def _serve(grid: Grid, context: Context) -> None:
    """Run `serve` for the results directory in the run config (resuming from its checkpoint
    when the run config names one), then write summary.json there. If the runner process that
    the run config names (not 0) is gone when a round is to be recorded, stop there."""
    directory = Path(str(context.run_config[RESULTS_DIR]))
    with run_lock(directory):
        config = load_config(directory)
        resume_round = int(context.run_config[RESUME_ROUND])
        resume = load_checkpoint(directory) if resume_round != FRESH else None
        if resume is not None and resume.round != resume_round:
            raise RuntimeError(
                f"{directory}: the newest checkpoint is of round {resume.round}, not {resume_round}"
            )
        rec = recorder(config, directory)
        if int(context.run_config[RUNNER_PID]):
            rec = _RunnerBound(rec.directory, rec.stat_columns, runner=int(context.run_config[RUNNER_PID]))
        if resume is not None:
            rec.resume(resume.rows)
        serve(grid, config, rec, lambda row: None, resume)
        rec.finish()


@cache
def _client(directory: str, mods: str) -> ClientApp:
    """The run's `client_app` (one per process: each Ray actor builds it once)."""
    config = load_config(Path(directory))
    every = config.checkpoint_every
    return client_app(
        config.task,
        mods=import_mods([m for m in mods.split(",") if m]),
        snapshots=ClientSnapshots(Path(directory), every) if every else None,
        results_dir=Path(directory),
    )


client = ClientApp()


@client.train()
def _train(msg: Message, context: Context) -> Message:
    return _client(str(context.run_config[RESULTS_DIR]), str(context.run_config[CLIENT_MODS]))(msg, context)


@client.query()
def _query(msg: Message, context: Context) -> Message:
    return _client(str(context.run_config[RESULTS_DIR]), str(context.run_config[CLIENT_MODS]))(msg, context)
