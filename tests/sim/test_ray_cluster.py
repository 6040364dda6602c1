"""The Ray engine and Ray clusters that `ray start` made: one node joined by `--ray-address`; one
that a run without it leaves alone; two nodes (two raylets on loopback) whose clients both train.

Each cluster's `ray start --block` runs in a process group of its own, which the test ends by
id: `ray stop` would stop every Ray cluster of this machine's user, other runs' included."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from flcomp.sim import RunConfig, run
from flcomp.sim.simapp.components import RESULTS_DIR
from flcomp.tasks import TaskConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not on PATH"),
]

TASK = TaskConfig(dataset="digits", model="logreg", num_clients=6, lr=0.1)
NODES_DIR = "ray-nodes"
"""Where `record_ray_node` writes, in the run's results directory."""


def record_ray_node(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A client mod (imported by name in the Ray workers) that writes the id of the Ray node
    each train instruction ran on into the results directory, one file per instruction."""
    import ray

    reply = call_next(msg, context)
    if msg.metadata.message_type == MessageType.TRAIN:
        nodes = Path(str(context.run_config[RESULTS_DIR])) / NODES_DIR
        nodes.mkdir(exist_ok=True)
        (nodes / f"{msg.metadata.message_id}.txt").write_text(ray.get_runtime_context().get_node_id())
    return reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Ray nodes on loopback, each a `ray start --block` in its own process group."""

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths under it must fit in 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.nodes: list[subprocess.Popen] = []
        self.logs: list = []

    def add(self, *args: str) -> None:
        """Start one node with 1 CPU and wait until the cluster has it."""
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        common += ["--object-store-memory=100000000", f"--dashboard-agent-listen-port={free_port()}"]
        log = open(self.temp / f"node-{len(self.nodes)}.log", "wb")
        self.logs.append(log)
        self.nodes.append(
            subprocess.Popen(["ray", "start", *common, *args], stdout=log, stderr=log, start_new_session=True)
        )
        deadline = time.monotonic() + 120
        while len(self.node_ids()) < len(self.nodes):
            assert time.monotonic() < deadline, (self.temp / f"node-{len(self.nodes) - 1}.log").read_text()
            assert self.nodes[-1].poll() is None, "ray start exited"
            time.sleep(1)

    def node_ids(self) -> set[str]:
        done = subprocess.run(
            ["ray", "status", f"--address={self.address}"], capture_output=True, text=True, timeout=60
        )
        active = done.stdout.split("Active:")[-1].split("Pending:")[0]
        return set(re.findall(r"node_([0-9a-f]+)", active))

    def stop(self) -> None:
        """SIGTERM each node's process group (`ray start --block` then stops its processes),
        SIGKILL what is left of it after a while."""
        for node in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(30)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and group_alive(node.pid):
                time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def test_joins_an_existing_ray_cluster(tmp_path, cluster):
    cluster.add("--head", f"--port={cluster.port}", "--include-dashboard=false", f"--temp-dir={cluster.temp}")
    config = RunConfig(task=TaskConfig(dataset="digits", model="logreg", num_clients=4), rounds=3)
    summary = run(replace(config, ray_address=cluster.address), tmp_path, progress=False)
    assert summary["rounds"] == 3


def importable_mod(monkeypatch) -> str:
    """`record_ray_node` by name: Ray's workers import it from this file, whose folder reaches
    them on PYTHONPATH through the Simulation Runtime's process (Flower hands its sys.path on)."""
    folders = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(folders))
    return f"{Path(__file__).stem}:record_ray_node"


def test_a_run_starts_its_own_cluster_where_ray_start_left_one(tmp_path, cluster, monkeypatch):
    # Without --temp-dir the head writes the address that a bare ray.init() joins under
    # RAY_TMPDIR (set here so that other Ray users of this machine do not see it).
    monkeypatch.setenv("RAY_TMPDIR", str(cluster.temp))
    mod = importable_mod(monkeypatch)
    cluster.add("--head", f"--port={cluster.port}", "--include-dashboard=false")
    assert (cluster.temp / "ray" / "ray_current_cluster").exists()
    config = RunConfig(task=TaskConfig(dataset="digits", model="logreg", num_clients=4), rounds=2)
    assert run(config, tmp_path, progress=False, client_mods=[mod])["rounds"] == 2
    ran_on = {p.read_text() for p in (tmp_path / NODES_DIR).iterdir()}
    assert ran_on and not ran_on & cluster.node_ids()


def test_clients_train_on_both_nodes_of_a_two_node_cluster(tmp_path, cluster, monkeypatch):
    mod = importable_mod(monkeypatch)
    cluster.add("--head", f"--port={cluster.port}", "--include-dashboard=false", f"--temp-dir={cluster.temp}")
    cluster.add(f"--address={cluster.address}")
    nodes = cluster.node_ids()
    assert len(nodes) == 2
    config = RunConfig(task=TASK, codec="topk:ratio=0.1", rounds=3, ray_address=cluster.address)
    summary = run(config, tmp_path, progress=False, client_mods=[mod])
    assert summary["rounds"] == 3
    ran_on = [p.read_text() for p in (tmp_path / NODES_DIR).iterdir()]
    assert len(ran_on) == 3 * TASK.num_clients
    assert set(ran_on) == nodes, "every client trained on one node"
