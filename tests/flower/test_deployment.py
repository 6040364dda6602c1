"""The example app (examples/flower-app) in real deployments on loopback.

A SuperLink and two SuperNodes run as separate processes on 127.0.0.1 and `flwr run`
submits the app to them. Insecure, the final global model must equal (up to float
summation order) the one the same ServerApp and ClientApp produce under
`flwr.simulation.run_simulation`. Over TLS with SuperNode authentication (the CA,
certificate and node keys from the example's certificates.py), a SuperNode killed
mid-round and restarted must rejoin: the run goes on without it, then trains it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
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
HEARTBEAT_LAPSE_TIMEOUT = 90
"""From the kill to the next round: Flower 1.42 fails a dead node's message 60 s after its
last heartbeat (sent every 17.5-22.5 s), then the ServerApp's next pull (every 3 s) sees it."""

KILL_ROUNDS = 5
KILLED_IN_ROUND = 2
"""SuperNode 0 is SIGKILLed while it trains this round, and restarted once the round is over."""
SECURE = "secure"

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

    def wait_for_log(
        self, name: str, text: str, watch: subprocess.Popen, count: int = 1, timeout: float = STARTUP_TIMEOUT
    ) -> None:
        """Wait until NAME.log holds `text` `count` times; fail with every log if `watch`
        exits first or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.directory / f"{name}.log").read_text(errors="replace").count(text) >= count:
                return
            if watch.poll() is not None:
                pytest.fail(f"{watch.args[0]} exited with {watch.returncode}\n{self.logs()}")
            time.sleep(0.2)
        pytest.fail(f"{name}.log holds {text!r} fewer than {count} times after {timeout} s\n{self.logs()}")

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL `proc`, its process group and every process it started, as a power cut would."""
        spawned = descendants([proc.pid])
        _signal(proc.pid, signal.SIGKILL, group=True)
        for pid in spawned:
            _signal(pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)

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
    defaults = {"num-server-rounds": ROUNDS, "codec": f'"{CODEC}"', "num-partitions": 2, "min-nodes": 2}
    for key, value in defaults.items():
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


def flwr_environment(directory: Path, name: str, port: int, security: str) -> dict:
    """The environment of Flower's processes: a fresh $FLWR_HOME under `directory` whose
    config.toml names the SuperLink on 127.0.0.1:`port` `name`, with `security` (TOML)."""
    home = directory / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\n{security}\n'
    )
    env = {**os.environ, **ENVIRONMENT, "FLWR_HOME": str(home)}
    env.pop("FLCOMP_RESULT_PATH", None)
    return env


def deploy(app: Path, directory: Path, result: Path, run_config: str = "") -> None:
    """Run `app` on a SuperLink and two SuperNodes on loopback; it saves its final model to `result`.
    `run_config`: more `--run-config` overrides ("key=value ...")."""
    link_port, *node_ports = free_ports(3)
    env = flwr_environment(directory, CONNECTION, link_port, "insecure = true")
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
            *("run", str(app), CONNECTION, "--stream"),
            *("--run-config", f"result-path='{result}' {run_config}"),
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


def test_participation_rejects_what_is_not_a_positive_count_or_duration(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from flcomp_app.settings import Participation, participation

    assert participation({"min-nodes": 3, "round-timeout": "30"}) == Participation(3, 30.0)
    for nodes, timeout in [(0, 30), (-1, 30), (1, 0), (1, -5), (1, float("nan")), (1, float("inf"))]:
        with pytest.raises(ValueError):
            participation({"min-nodes": nodes, "round-timeout": timeout})


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


@pytest.mark.slow
def test_a_deployed_client_reports_its_upload_and_the_budget_uses_what_was_measured(tmp_path):
    """Over loopback the server measures each real client's upload (its reported send time, the
    ServerApp's pulls) and budgets its next round from it: r · (D − the rest of its last round)."""
    app = copy_app(tmp_path / "app")
    deadline = 600.0
    result = tmp_path / "deployed.npz"
    deploy(app, tmp_path, result, f"budget='deadline:deadline_s={deadline}'")
    rows = json.loads(Path(f"{result}.clients.json").read_text())
    by_round = {r: [row for row in rows if row["round"] == r] for r in range(1, ROUNDS + 1)}
    assert all(len(by_round[r]) == 2 for r in by_round), rows
    for r, clients in by_round.items():
        for row in clients:
            assert row["outcome"] == "accepted", row
            upload, whole = row["measured_upload_s"], row["measured_round_s"]
            assert 0 < upload <= whole < RUN_TIMEOUT
            assert row["measured_uplink_bps"] == pytest.approx(8 * row["uplink_bytes"] / upload)
            print(
                f"round {r} client {row['client']}: {row['uplink_bytes']} B up in {upload:.3f} s "
                f"of a {whole:.2f} s round, budget {row['budget_bits']}"
            )
            if r == 1:
                assert row["budget_bits"] == "", "no budget before the server has measured the client"
            else:
                last = next(p for p in by_round[r - 1] if p["client"] == row["client"])
                other = last["measured_round_s"] - last["measured_upload_s"]
                expected = last["measured_uplink_bps"] * (deadline - other)
                assert row["budget_bits"] == pytest.approx(expected) and 8 * row["uplink_bytes"] <= expected


def assert_serves_tls(port: int, ca: Path) -> None:
    """The SuperLink's port completes a TLS handshake whose certificate chains to `ca` and names 127.0.0.1."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=STARTUP_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def register(public_key: Path, env: dict, cwd: Path) -> int:
    """Register a SuperNode's public key with the SuperLink (`flwr supernode register`); its node id."""
    done = subprocess.run(
        [command("flwr"), "supernode", "register", str(public_key), SECURE, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=STARTUP_TIMEOUT,
    )
    assert done.returncode == 0, f"flwr supernode register failed\n{done.stdout}\n{done.stderr}"
    return int(json.loads(done.stdout)["node-id"])


@pytest.mark.slow
def test_tls_deployment_with_node_authentication_survives_a_killed_supernode(tmp_path):
    app, result, certs = copy_app(tmp_path / "app"), tmp_path / "final.npz", tmp_path / "certs"
    # The example's own script: a CA, the SuperLink's certificate, three SuperNode key pairs.
    script = [sys.executable, str(EXAMPLE / "certificates.py"), str(certs)]
    subprocess.run([*script, "--host", "127.0.0.1", "--supernodes", "3"], check=True, timeout=STARTUP_TIMEOUT)
    ca, certificate, key = certs / "ca.crt", certs / "server.pem", certs / "server.key"
    link_port, *node_ports = free_ports(4)
    env = flwr_environment(tmp_path, SECURE, link_port, f'root-certificates = "{ca}"')
    with Processes(tmp_path, env) as processes:
        link = processes.start(
            "superlink",
            command("flower-superlink"),
            *("--ssl-ca-certfile", str(ca), "--ssl-certfile", str(certificate), "--ssl-keyfile", str(key)),
            *("--enable-supernode-auth", "--host", "127.0.0.1", "--port", str(link_port)),
            cwd=tmp_path,
        )
        processes.wait_for_port(link_port, link)
        assert_serves_tls(link_port, ca)
        keys = [certs / f"supernode-{i}" for i in range(3)]
        node_ids = [register(certs / f"supernode-{i}.pub", env, tmp_path) for i in range(2)]

        def supernode(name: str, partition: int, private_key: Path, port: int) -> subprocess.Popen:
            return processes.start(
                name,
                command("flower-supernode"),
                *("--root-certificates", str(ca), "--superlink", f"127.0.0.1:{link_port}"),
                *("--auth-supernode-private-key", str(private_key), "--port", str(port)),
                *("--node-config", f"partition-id={partition} num-partitions=2"),
                cwd=tmp_path,
            )

        # A SuperNode whose key nobody registered must be turned away.
        intruder = supernode("intruder", 1, keys[2], node_ports[2])
        nodes = [supernode(f"supernode-{i}", i, keys[i], node_ports[i]) for i in range(2)]
        for node_id, node in zip(node_ids, nodes):
            processes.wait_for_log("superlink", f"Activated node_id={node_id}", watch=node)
        processes.wait_for_log("intruder", "Failed to activate SuperNode", link)
        assert intruder.wait(timeout=STOP_TIMEOUT) != 0, processes.logs()

        # min-nodes=1: the rounds after the kill go on with the one node left.
        run_config = f"num-server-rounds={KILL_ROUNDS} min-nodes=1 result-path='{result}'"
        run = processes.start(
            "flwr-run",
            command("flwr"),
            *("run", str(app), SECURE, "--stream", "--run-config", run_config),
            cwd=tmp_path,
        )
        # Killed while its ClientApp trains: its reply never comes.
        received = "Receiving: train message"
        processes.wait_for_log("supernode-0", received, run, count=KILLED_IN_ROUND, timeout=RUN_TIMEOUT)
        processes.kill(nodes[0])
        pushed = f"Push replies from node_id={node_ids[0]}"
        pushed_before = (tmp_path / "superlink.log").read_text().count(pushed)
        processes.wait_for_log(
            "flwr-run", f"[ROUND {KILLED_IN_ROUND + 1}/{KILL_ROUNDS}]", run, timeout=HEARTBEAT_LAPSE_TIMEOUT
        )
        # Same key (so the same node id), same partition, a fresh process: empty Context.state.
        restarted = supernode("supernode-0-restarted", 0, keys[0], node_ports[0])
        processes.wait_for_log("superlink", f"Activated node_id={node_ids[0]}", restarted, count=2)
        processes.finish(run, RUN_TIMEOUT)
        assert result.exists(), f"the ServerApp saved no model\n{processes.logs()}"
        output = (tmp_path / "flwr-run.log").read_text(errors="replace")
        assert (tmp_path / "superlink.log").read_text().count(pushed) > pushed_before, processes.logs()
        assert restarted.poll() is None, processes.logs()

    clients = {int(r): int(n) for r, n in re.findall(r"round (\d+): (\d+) clients", output)}
    assert sorted(clients) == list(range(1, KILL_ROUNDS + 1)), output[-4000:]
    assert all(clients[r] == 2 for r in range(1, KILLED_IN_ROUND)), clients
    assert clients[KILLED_IN_ROUND] == 1, clients
    assert f"round {KILLED_IN_ROUND}: client {node_ids[0]} dropped" in output, output[-4000:]
    # Both again: the restarted node's first payload was decoded (its encoder restarted
    # from nothing, so it sent a key frame).
    assert clients[KILL_ROUNDS] == 2, clients
    final, initial = load_arrays(result), initial_arrays(app)
    assert final.keys() == initial.keys()
    assert all(np.isfinite(a).all() for a in final.values())
    assert any(not np.allclose(final[k], initial[k]) for k in final), "the model never changed"
