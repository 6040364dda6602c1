"""Simulation overhead of the wrapper: per-round wall seconds, plain Flower vs flcomp.

Plain FedAvg, `Compressed(FedAvg, codec="fp32")` (the identity codec) and
`Compressed(FedAvg, codec="topk")` (1%, error feedback) on Flower's Simulation Runtime
(`flwr run` on a SuperLink of its own, `flcomp.sim.simapp.launch.flwr_run`; this file is the
app: `server` and `client`) with `--actors` single-CPU Ray actors (default 1: what Flower's
default client resources, 2 CPUs a client, give on a 2-core machine; with 2 on 2 cores the
actors and the Simulation Runtime's process contend for the cores, and the wrapper's client work
then slows the engine's driver too), every client training every round. The "training"
is one cheap NumPy step on an MLP-shaped model of about `--entries` float32 weights,
so the time is Flower's and the codec path's.

On a 2-core machine round times drift by up to ±20% from one simulation to the next,
more than the overhead to measure, so each codec is compared with plain FedAvg inside
one simulation that alternates their rounds (ABBA order); its ClientApp has
`compression_mod`, which passes plain FedAvg's instructions through untouched. The
ratio is the median over rounds of a wrapped round's seconds over its neighbouring
plain round's. A last simulation runs plain FedAvg on the ClientApp without the mod,
for reference. Flower ships each node's Context (its `state` included) with every
message, so in the top-k simulation the plain rounds also carry the clients' top-k
state (an error-feedback residual as large as the model): topk/plain leaves that
transport out, the top-k run's plain column shows what it costs plain rounds.

A round is timed by the strategy's `evaluate_fn` (called before and after it): send,
client work, replies, aggregation; Ray's start-up and each strategy's first round are
left out. Flower's engine picks up new instructions every 0.1 s, which every variant
pays alike; its in-memory grid also polls for replies every 0.1 s, which would round
rounds up to a tenth of a second, so the benchmark polls every `--pull-interval` s.
Uplink bytes per round are the payloads' summed lengths (`flcomp.uplink-bytes`) or,
for plain FedAvg, the replies' serialized model arrays.

Floor (the project's issue): fp32/plain <= 1.15 at 100 clients.

    python benchmarks/sim_overhead.py [--clients 10 100 1000] [--rounds 10] [--entries 50000]
"""

# ruff: noqa: E402  (Flower reads these variables when it is imported)
from __future__ import annotations

import os

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_LOG_LEVEL": "WARNING",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}.items():
    os.environ.setdefault(_key, _value)

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from flcomp.clients import compression_mod
from flcomp.protocol import records
from flcomp.sim.simapp.launch import flwr_run
from flcomp.strategies import Compressed

CODECS = ("fp32", "topk")
FLOOR_CLIENTS, FLOOR_CODEC, FLOOR_RATIO = 100, "fp32", 1.15


@dataclass
class Series:
    """One strategy's timed rounds in one simulation."""

    seconds: list[float]
    uplink_bytes: int
    """All clients' uploads in one round (the last round's)."""


@dataclass
class Pair:
    """Plain FedAvg and the wrapper with one codec, alternating rounds in one simulation."""

    plain: Series
    wrapped: Series

    def ratio(self) -> float:
        """The median over rounds of a wrapped round's seconds over its neighbouring plain round's."""
        return statistics.median(w / p for w, p in zip(self.wrapped.seconds, self.plain.seconds))


@dataclass
class Row:
    """Everything measured for one client count."""

    pairs: dict[str, Pair]
    """By codec."""
    no_mod: Series
    """Plain FedAvg on a ClientApp without `compression_mod`."""


def initial_model(entries: int) -> ArrayRecord:
    """Two dense layers (100 hidden units, 10 outputs) of about `entries` float32 weights."""
    hidden, outputs = 100, 10
    inputs = max(1, (entries - hidden * outputs) // hidden)
    shapes = {"w1": (inputs, hidden), "b1": (hidden,), "w2": (hidden, outputs), "b2": (outputs,)}
    rng = np.random.default_rng(0)
    return ArrayRecord(
        {k: Array((0.1 * rng.standard_normal(s)).astype(np.float32)) for k, s in shapes.items()}
    )


def client_app(with_mod: bool) -> ClientApp:
    """A ClientApp whose training moves each weight 10% of the way to a per-client constant."""
    app = ClientApp(mods=[compression_mod] if with_mod else [])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        target = np.float32(int(context.node_config["partition-id"]) % 10) / 10
        local = {k: 0.9 * a.numpy() + 0.1 * target for k, a in msg.content["arrays"].items()}
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(a) for k, a in local.items()}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def fedavg(clients: int) -> FedAvg:
    """FedAvg that trains on all `clients` every round and never evaluates on clients."""
    return FedAvg(
        fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients
    )


def one_round(strategy: Strategy, grid: Grid, arrays: ArrayRecord) -> tuple[float, ArrayRecord, MetricRecord]:
    """Run one round; return its wall seconds, the new global arrays and the train metrics."""
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> None:
        stamps.append(time.perf_counter())

    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1, evaluate_fn=stamp)
    return stamps[1] - stamps[0], result.arrays, result.train_metrics_clientapp[1]


def alternate(
    grid: Grid, strategies: list[Strategy], clients: int, rounds: int, entries: int
) -> list[Series]:
    """Run 1 + `rounds` rounds of each strategy on `grid`, alternating (ABBA); one Series each."""
    arrays = [initial_model(entries) for _ in strategies]
    seconds: list[list[float]] = [[] for _ in strategies]
    uplink = [0] * len(strategies)
    for r in range(1 + rounds):
        order = range(len(strategies)) if r % 2 == 0 else reversed(range(len(strategies)))
        for i in order:
            s, arrays[i], metrics = one_round(strategies[i], grid, arrays[i])
            if r > 0:
                seconds[i].append(s)
            uplink[i] = uplink_bytes(strategies[i], clients, arrays[i], metrics)
    return [Series(s, b) for s, b in zip(seconds, uplink)]


PROJECT = """
[project]
name = "flcomp-sim-overhead"
version = "1.0.0"
description = "benchmarks/sim_overhead.py on Flower's Simulation Runtime"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "flcomp"

[tool.flwr.app.components]
serverapp = "sim_overhead:server"
clientapp = "sim_overhead:client"

[tool.flwr.app.config]
codec = ""
with-mod = true
clients = 0
rounds = 0
entries = 0
pull-interval = 0.01
out = ""
"""
"""The Flower app that `simulate` runs: this file's `server` and `client` (the bundle holds a
copy of this file beside it). codec "": plain FedAvg alone; out: where the Series go (JSON)."""

server = ServerApp()


@server.main()
def _serve(grid: Grid, context: Context) -> None:
    c = context.run_config
    clients = int(c["clients"])
    strategies: list[Strategy] = [fedavg(clients)]
    if c["codec"]:
        strategies.append(Compressed(fedavg(clients), codec=str(c["codec"])))
    grid.pull_interval = float(c["pull-interval"])
    out = alternate(grid, strategies, clients, int(c["rounds"]), int(c["entries"]))
    Path(str(c["out"])).write_text(json.dumps([asdict(series) for series in out]))


_CLIENTS = {True: client_app(True), False: client_app(False)}
client = ClientApp()


@client.train()
def _train(msg: Message, context: Context) -> Message:
    return _CLIENTS[bool(context.run_config["with-mod"])](msg, context)


def uplink_bytes(strategy: Strategy, clients: int, arrays: ArrayRecord, metrics: MetricRecord) -> int:
    """Bytes all clients uploaded in the round; RuntimeError if the wrapper dropped any."""
    if not isinstance(strategy, Compressed):
        return clients * sum(len(a.data) for a in arrays.values())
    if metrics["flcomp.clients-accepted"] != clients:
        raise RuntimeError(f"{strategy.codec.describe()}: clients were dropped, see the log")
    return int(metrics[records.UPLINK_BYTES])


def federation(clients: int, actors: int) -> dict[str, int]:
    """Flower's federation config: `clients` SuperNodes run by `actors` single-CPU Ray actors."""
    return {"num-supernodes": clients, "client-resources-num-cpus": 1, "init-args-num-cpus": actors}


def simulate(
    codec: str | None, with_mod: bool, clients: int, rounds: int, entries: int, pull: float, actors: int
) -> list[Series]:
    """One simulation: plain FedAvg alternating with `Compressed(FedAvg, codec)`, or alone."""
    with tempfile.TemporaryDirectory(prefix="flcomp-overhead-") as tmp:
        project, out = Path(tmp) / "pyproject.toml", Path(tmp) / "series.json"
        project.write_text(PROJECT)
        flwr_run(
            project,
            {
                "codec": codec or "",
                "with-mod": with_mod,
                "clients": clients,
                "rounds": rounds,
                "entries": entries,
                "pull-interval": pull,
                "out": str(out),
            },
            federation(clients, actors),
            Path(tmp) / "flower.log",
            files=[Path(__file__)],
        )
        if not out.exists():
            log = (Path(tmp) / "flower.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"the simulation with {clients} clients ({codec or 'plain'}) did not finish:\n{log}"
            )
        return [Series(**series) for series in json.loads(out.read_text())]


def measure(clients: int, rounds: int, entries: int, pull: float, actors: int) -> Row:
    """The simulations of one client count: one per codec, then plain FedAvg without the mod."""
    pairs = {c: Pair(*simulate(c, True, clients, rounds, entries, pull, actors)) for c in CODECS}
    (no_mod,) = simulate(None, False, clients, rounds, entries, pull, actors)
    return Row(pairs, no_mod)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument(
        "--rounds", type=int, default=None, help="timed rounds (default: 10, or 3 from 1000 clients)"
    )
    ap.add_argument("--entries", type=int, default=50_000, help="float32 weights in the model")
    ap.add_argument("--pull-interval", type=float, default=0.01, help="seconds between the grid's polls")
    ap.add_argument("--actors", type=int, default=1, help="single-CPU Ray actors running the clients")
    args = ap.parse_args()

    rows = {}
    for n in args.clients:
        rounds = args.rounds or (10 if n < 1000 else 3)
        rows[n] = measure(n, rounds, args.entries, args.pull_interval, args.actors)
    weights = sum(a.numpy().size for a in initial_model(args.entries).values())
    print_results(rows, weights, args.actors)


def print_results(rows: dict[int, Row], weights: int, actors: int) -> None:
    """Seconds per round with the paired ratios, uplink bytes, then the floor's verdict."""
    print(f"\nMedian wall seconds per round, model of {weights:,} float32 weights, {actors} Ray actor(s):\n")
    columns = ["clients"]
    for c in CODECS:
        columns += [f"plain ({c} run) s/round", f"{c} s/round", f"{c}/plain"]
    print_table(
        [*columns, "plain, no mod s/round"],
        [[f"{n:,}", *time_cells(r)] for n, r in rows.items()],
    )
    print("\nUplink bytes per round (all clients):\n")
    print_table(
        ["clients", "plain", *CODECS, *(f"{c}/plain" for c in CODECS)],
        [[f"{n:,}", *byte_cells(r)] for n, r in rows.items()],
    )
    if FLOOR_CLIENTS in rows:
        ratio = rows[FLOOR_CLIENTS].pairs[FLOOR_CODEC].ratio()
        verdict = "met" if ratio <= FLOOR_RATIO else "NOT met"
        floor = f"{FLOOR_CODEC}/plain <= {FLOOR_RATIO} at {FLOOR_CLIENTS} clients"
        print(f"\nFloor: {floor}: {verdict} ({ratio:.3f}).")


def time_cells(row: Row) -> list[str]:
    median = statistics.median
    cells = []
    for p in row.pairs.values():
        cells += [f"{median(p.plain.seconds):.3f}", f"{median(p.wrapped.seconds):.3f}", f"{p.ratio():.3f}"]
    return [*cells, f"{median(row.no_mod.seconds):.3f}"]


def byte_cells(row: Row) -> list[str]:
    plain = row.no_mod.uplink_bytes
    wrapped = [p.wrapped.uplink_bytes for p in row.pairs.values()]
    return [f"{plain:,}", *(f"{b:,}" for b in wrapped), *(f"{b / plain:.4f}" for b in wrapped)]


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in rows:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        print("| " + " | ".join(padded) + " |")


if __name__ == "__main__":
    main()
