"""The example app (examples/flower-app) in a real deployment on loopback, against its simulation.

A SuperLink and two SuperNodes run as separate processes on 127.0.0.1, `flwr run`
submits the app to them, and the final global model must equal (up to float
summation order) the one the same ServerApp and ClientApp produce under
`flwr.simulation.run_simulation`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower-app"
ROUNDS = 2
CODEC = "topk:ratio=0.1"
"""Lossy, with error feedback: each client's encoder state must survive between rounds."""
CONNECTION = "loopback"
"""The SuperLink connection's name in $FLWR_HOME/config.toml."""

STARTUP_TIMEOUT = 30
RUN_TIMEOUT = 240
SIMULATION_TIMEOUT = 180
STOP_TIMEOUT = 10

ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_LOG_LEVEL": "INFO",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
    "HF_HUB_OFFLINE": "1",
}

SIMULATE = """
from flwr.simulation import run_simulation
from flcomp_app.client_app import app as client_app
from flcomp_app.server_app import app as server_app

run_simulation(
    server_app=server_app,
    client_app=client_app,
    num_supernodes=2,
    backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}},
)
"""
"""Run in the app's directory, with it on PYTHONPATH (Ray's workers import flcomp_app too)."""


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def command(name: str) -> str:
    """A Flower CLI of this interpreter's environment."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


class Processes:
    """Processes started in their own sessions, each logging to DIRECTORY/NAME.log.

    On exit every process group is terminated, then killed: the SuperLink's ServerApp
    and the SuperNodes' ClientApp processes share their parents' groups.
    """

    def __init__(self, directory: Path, env: dict) -> None:
        self.directory, self.env = directory, env
        self.started: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        leaders = [proc.pid for _, proc in self.started]
        # The SuperLink runs its ServerApps under a flower-superexec in a session of its own.
        spawned = descendants(leaders)
        for pid in leaders:
            _signal(pid, signal.SIGTERM, group=True)
        for pid in spawned:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        spawned |= descendants([*leaders, *spawned])
        for pid in leaders:
            _signal(pid, signal.SIGKILL, group=True)
        for pid in spawned:
            _signal(pid, signal.SIGKILL)
        for _, proc in self.started:
            proc.wait(timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and (
            any(_signal(pid, 0, group=True) for pid in leaders) or any(_signal(pid, 0) for pid in spawned)
        ):
            time.sleep(0.1)

    def start(self, name: str, *args: str, cwd: Path) -> subprocess.Popen:
        with (self.directory / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=self.env,
                start_new_session=True,
            )
        self.started.append((name, proc))
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float) -> None:
        """Wait for `proc`; fail with every log unless it exits with 0 within `timeout` s."""
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.args[0]} did not finish within {timeout} s\n{self.logs()}")
        if code != 0:
            pytest.fail(f"{proc.args[0]} exited with {code}\n{self.logs()}")

    def wait_for_port(self, port: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[0]} exited with {proc.returncode}\n{self.logs()}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        pytest.fail(f"nothing listens on 127.0.0.1:{port} after {STARTUP_TIMEOUT} s\n{self.logs()}")

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {name}.log ---\n{(self.directory / f'{name}.log').read_text(errors='replace')[-tail:]}"
            for name, _ in self.started
        )


def _signal(pid: int, sig: int, group: bool = False) -> bool:
    """Send `sig` to a process (or the process group `pid`); whether it still exists."""
    try:
        (os.killpg if group else os.kill)(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def descendants(pids: list[int]) -> set[int]:
    """The processes that descend from `pids`, whatever their session (Linux's /proc)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    # /proc/PID/stat: "pid (command) state ppid ..."
                    ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def copy_app(destination: Path) -> Path:
    """The example app, with this test's rounds and codec as its run config's defaults.

    Defaults rather than `flwr run -c` overrides, so that the simulation, which gets
    no run config, runs the very same configuration.
    """
    app = shutil.copytree(EXAMPLE, destination, ignore=shutil.ignore_patterns("__pycache__", "*.npz"))
    pyproject = app / "pyproject.toml"
    text = pyproject.read_text()
    for key, value in {"num-server-rounds": ROUNDS, "codec": f'"{CODEC}"', "num-partitions": 2}.items():
        text, count = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
        assert count == 1, f"no {key} in the example's [tool.flwr.app.config]"
    pyproject.write_text(text)
    return app


def initial_arrays(app: Path) -> dict[str, np.ndarray]:
    """The model the app starts from."""
    from flcomp.tasks import Task, TaskConfig

    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    task = Task(TaskConfig(dataset=config["dataset"], model=config["model"], num_clients=2, lr=config["lr"]))
    return dict(zip(task.keys, task.initial_arrays()))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def deploy(app: Path, directory: Path, result: Path) -> None:
    """Run `app` on a SuperLink and two SuperNodes on loopback; it saves its final model to `result`."""
    home = directory / "flwr-home"
    home.mkdir()
    link_port, *node_ports = free_ports(3)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {**os.environ, **ENVIRONMENT, "FLWR_HOME": str(home)}
    env.pop("FLCOMP_RESULT_PATH", None)
    with Processes(directory, env) as processes:
        link = processes.start(
            "superlink",
            command("flower-superlink"),
            *("--insecure", "--host", "127.0.0.1", "--port", str(link_port)),
            cwd=directory,
        )
        processes.wait_for_port(link_port, link)
        for partition, port in enumerate(node_ports):
            processes.start(
                f"supernode-{partition}",
                command("flower-supernode"),
                *("--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port", str(port)),
                *("--node-config", f"partition-id={partition} num-partitions=2"),
                cwd=directory,
            )
        run = processes.start(
            "flwr-run",
            command("flwr"),
            *("run", str(app), CONNECTION, "--stream", "--run-config", f"result-path='{result}'"),
            cwd=directory,
        )
        processes.finish(run, RUN_TIMEOUT)
        assert result.exists(), f"the ServerApp saved no model\n{processes.logs()}"


def simulate(app: Path, directory: Path, result: Path) -> None:
    """Run the same ServerApp and ClientApp objects with `run_simulation`, 2 SuperNodes."""
    env = {
        **os.environ,
        **ENVIRONMENT,
        "FLCOMP_RESULT_PATH": str(result),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(app), os.environ.get("PYTHONPATH")])),
    }
    with Processes(directory, env) as processes:
        processes.finish(
            processes.start("simulation", sys.executable, "-c", SIMULATE, cwd=app), SIMULATION_TIMEOUT
        )
        assert result.exists(), f"the ServerApp saved no model\n{processes.logs()}"


@pytest.mark.slow
def test_deployment_matches_simulation(tmp_path):
    app = copy_app(tmp_path / "app")
    deployed, simulated = tmp_path / "deployed.npz", tmp_path / "simulated.npz"

    start = time.monotonic()
    deploy(app, tmp_path, deployed)
    middle = time.monotonic()
    simulate(app, tmp_path, simulated)
    print(f"\ndeployment {middle - start:.1f} s, simulation {time.monotonic() - middle:.1f} s")

    a, b = load_arrays(deployed), load_arrays(simulated)
    initial = initial_arrays(app)
    assert a.keys() == b.keys() == initial.keys()
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-5, err_msg=key)
    assert any(not np.allclose(a[k], initial[k]) for k in a), "the deployed model never changed"
