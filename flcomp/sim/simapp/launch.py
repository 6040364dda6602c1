"""Run flcomp's Flower app (pyproject.toml beside this file) with `flwr run` on Flower's Simulation
Runtime: a SuperLink of this run's own (`flower-superlink --simulation`, its own port and
FLWR_HOME) that starts the ServerApp and the Ray-backed ClientApps in a process of its own.

Flower 1.41 and 1.42 have this path (their `run_simulation` is deprecated in its favour). The
run config carries the results directory, so the components rebuild the run from config.json;
the ServerApp writes rounds.csv there, which `launch` follows for its progress callback.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from flcomp.sim.config import RunConfig
from flcomp.sim.simapp.components import CLIENT_MODS, FRESH, RESULTS_DIR, RESUME_ROUND, RUNNER_PID

APP_PROJECT = Path(__file__).with_name("pyproject.toml")
LOG_FILE = "flower.log"
"""The Simulation Runtime's log (ServerApp, ClientApps, Ray) in the results directory."""
_CONNECTION = "flcomp"
_STARTUP_S = 60.0
_STOP_S = 15.0
_POLL_S = 0.2
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback needs no proxy, whatever the environment says."""


def ray_resources(config: RunConfig, cpus: int) -> tuple[int, int | None]:
    """(Ray CPUs per client, Ray CPUs of the local cluster or None to join `config.ray_address`).

    Flower's federation config takes whole CPUs: a fractional `client_cpus` (0.5) scales both
    counts of a local cluster (1 of 2·`cpus`), which schedules the same; a cluster that is
    joined has the CPUs it has, so there `client_cpus` must be whole."""
    share = Fraction(config.client_cpus).limit_denominator(1000)
    if abs(float(share) - config.client_cpus) > 1e-9:
        raise ValueError(f"client_cpus must be a fraction p/q with q ≤ 1000, got {config.client_cpus}")
    if config.ray_address is not None:
        if share.denominator != 1:
            raise ValueError(
                f"a Ray cluster that is joined needs a whole client_cpus, got {config.client_cpus}"
            )
        return share.numerator, None
    return share.numerator, cpus * share.denominator


def launch(
    config: RunConfig,
    directory: Path,
    on_row: Callable[[dict], None],
    resume_round: int = FRESH,
    client_mods: Sequence[str] = (),
) -> None:
    """Run `config` into `directory` (config.json and rounds.csv's header written already) on the
    Simulation Runtime; `on_row` gets each rounds.csv row (numbers as floats, empty cells None)
    that the ServerApp appends after the `resume_round`'s. Returns when the run has ended, ended
    well or not (rounds.csv tells), with every process it started stopped, on an exception too.
    The runtime's log is appended to directory/flower.log."""
    per_client, cluster_cpus = ray_resources(config, os.cpu_count() or 1)
    federation = {
        "num-supernodes": config.task.num_clients,
        "client-resources-num-cpus": per_client,
        "client-resources-num-gpus": 0.0,
    }
    if cluster_cpus is not None:
        federation["init-args-num-cpus"] = cluster_cpus
    rows = _Follower(directory / "rounds.csv", resume_round + 1)
    flwr_run(
        APP_PROJECT,
        {
            RESULTS_DIR: str(directory),
            RESUME_ROUND: resume_round,
            CLIENT_MODS: ",".join(client_mods),
            RUNNER_PID: os.getpid(),
        },
        federation,
        directory / LOG_FILE,
        ray_address=config.ray_address,
        poll=lambda: rows.emit(on_row),
    )


def flwr_run(
    project: Path,
    run_config: dict[str, str | int | float | bool],
    federation: dict[str, str | int | float | bool],
    log_path: Path,
    ray_address: str | None = None,
    poll: Callable[[], None] = lambda: None,
    files: Sequence[Path] = (),
) -> None:
    """`flwr run` the Flower app that `project` (a pyproject.toml with `[tool.flwr.app]`) and
    `files` (copied beside it, e.g. the modules its components name) make, on a SuperLink of
    its own in simulation mode, with `run_config` overriding the app's config and `federation`
    as `--federation-config` (num-supernodes, client-resources-num-cpus, ...). Ray joins
    `ray_address`, or starts a local cluster. Calls `poll` every 0.2 s while the run goes on and
    once after it; returns when the run has ended, every process it started stopped (on an
    exception too). The SuperLink's and the run's logs are appended to `log_path`."""
    home = Path(tempfile.mkdtemp(prefix="flcomp-flwr-"))
    superlink = None
    try:
        app = home / "app"
        app.mkdir()
        for path in (project, *files):  # the bundle: these files only
            shutil.copy(path, app / path.name)
        overrides = home / "run-config.toml"
        toml = "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in run_config.items())
        overrides.write_text(toml, encoding="utf-8")
        env = os.environ | {
            # Flower's commands start one another by name: this environment's first.
            "PATH": os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]),
            "FLWR_HOME": str(home),
            # Ray's own default would join any cluster that `ray start` left on this machine.
            "RAY_ADDRESS": ray_address or "local",
        }
        with open(log_path, "ab") as log:
            superlink, port = _start_superlink(env, log)
            (home / "config.toml").write_text(
                f'[superlink.{_CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
            )
            command = ["flwr", "run", str(app), _CONNECTION, "--run-config", str(overrides), "--stream"]
            sizes = " ".join(f"{k}={json.dumps(v)}" for k, v in federation.items())
            command += ["--federation-config", sizes]
            submit = subprocess.Popen(command, env=env, stdout=log, stderr=log)
            try:
                while submit.poll() is None:
                    poll()
                    time.sleep(_POLL_S)
                poll()
            finally:
                _stop(submit)
    finally:
        if superlink is not None:
            _stop(superlink)
        # The SuperLink's SuperExec and the Simulation Runtime's process (with a local Ray cluster)
        # run in sessions of their own and may outlive it: they carry this FLWR_HOME.
        _stop_all(f"FLWR_HOME={home}\0".encode())
        shutil.rmtree(home, ignore_errors=True)


def _start_superlink(env: dict, log) -> tuple[subprocess.Popen, int]:
    """A `flower-superlink --simulation` (its state in memory) on a free loopback port, answering
    its health check."""
    for _ in range(3):  # another process may take the free port before the SuperLink binds it
        port = _free_port()
        process = subprocess.Popen(
            [
                "flower-superlink",
                "--insecure",
                "--simulation",
                "--isolation=subprocess",
                "--host=127.0.0.1",
                f"--port={port}",
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + _STARTUP_S
        while process.poll() is None and time.monotonic() < deadline:
            if _healthy(port):
                return process, port
            time.sleep(_POLL_S)
        _stop(process)
    raise RuntimeError(f"flower-superlink did not start (see {Path(log.name)})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with _DIRECT.open(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (the SuperLink then stops what it started), SIGKILL if that is not enough."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop_all(marker: bytes) -> None:
    """Stop this user's processes whose environment holds `marker` (Linux: read from /proc;
    elsewhere none are found): SIGTERM, then SIGKILL for those still there after _STOP_S."""
    start, signalled = time.monotonic(), set()
    while pids := _processes_with(marker):
        waited = time.monotonic() - start
        if waited > 2 * _STOP_S:
            raise RuntimeError(f"processes {pids} of the simulation did not stop")
        for pid in pids:
            if waited > _STOP_S or pid not in signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if waited > _STOP_S else signal.SIGTERM)
                signalled.add(pid)
        time.sleep(_POLL_S)


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone, or another user's
            continue
    return found


class _Follower:
    """Reads the complete rows that another process appends to a rounds.csv."""

    def __init__(self, path: Path, first_round: int) -> None:
        self.path, self.first_round = path, first_round
        self._offset = 0
        self._header: list[str] | None = None

    def emit(self, on_row: Callable[[dict], None]) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for cells in csv.reader(complete.decode().splitlines()):
            if self._header is None:
                self._header = cells
                continue
            row = {k: (float(v) if v != "" else None) for k, v in zip(self._header, cells)}
            if row.get("round") is not None and row["round"] >= self.first_round:
                on_row(row)
