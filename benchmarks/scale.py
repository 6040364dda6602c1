"""Cross-device scale: the wrapper's round against plain Flower FedAvg at 1,000 and 10,000 clients.

Each cell (engine, clients, fraction per round, codec) is one simulation in its own
process (so its peak RSS is its own): plain FedAvg and `Compressed(FedAvg, codec)`
alternate rounds (ABBA order) on the same nodes, so machine drift hits both alike;
the ratio is the median over rounds of a wrapped round's seconds over its neighbouring
plain round's. The ClientApp carries `compression_mod`, which passes plain FedAvg's
instructions through untouched, and the simulation's client-state store
(`flcomp.sim.client_store`), which keeps codec state out of Flower's per-message
Context. The "training" is one cheap NumPy step on an MLP-shaped model of `--entries`
float32 weights, so the time is Flower's and the codec path's. On Ray the clients run in
`--actors` single-CPU actors (default 1, as Flower's default client resources give on a 2-core
machine; benchmarks/sim_overhead.py says what 2 actors on 2 cores contend for).

Columns: wall seconds per round (plain, wrapped, their ratio), the process's peak RSS
(the server's process; on Ray the clients run in actor processes beside it), and codec
state per client: on the server, the decoder states it holds over the clients it holds
them for; on the client, the mean over a round's clients of what their state store
holds. The wrapper runs with `max_client_states` (--bound, default twice the cohort):
the server holds at most that many clients' states, least recently seen evicted.

Floors (the project's issue): on Ray at 10,000 clients and 1% a round, every codec's
round ≤ 1.3× plain's; top-k at 1,000 clients, every client each round, ≤ 1.15× plain's,
and that simulation's plain rounds within 10% of the fp32 one's; with the bound set,
peak RSS at 10,000 clients ≤ 1.5× that at 1,000 for the same cohort size (1% of 10,000
against 10% of 1,000) and codec.

    python benchmarks/scale.py [--engines ray inline] [--rounds 6] [--entries 20000] [--actors 1]
                               [--only 10000:0.01 ...]
    python benchmarks/scale.py --cell ENGINE CLIENTS FRACTION CODEC   (one cell; prints JSON)
"""

# ruff: noqa: E402  (Flower reads these variables when it is imported)
from __future__ import annotations

import os

for _key, _value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_LOG_LEVEL": "ERROR",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}.items():
    os.environ.setdefault(_key, _value)

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Strategy

from flcomp.sim.client_store import ClientStore
from flcomp.sim.inline import InlineGrid
from flcomp.sim.simapp.launch import flwr_run
from flcomp.strategies import Compressed

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark, also in a Ray bundle
import sim_overhead as overhead
from sim_overhead import initial_model, one_round

CODECS = ("fp32", "topk", "signxor", "tpc")
FRACTIONS = (0.01, 0.1)
"""Clients per round, as fractions, for every client count of the table."""
EVERY_CLIENT = (1000, 1.0, ("fp32", "topk"))
"""The cell of the second floor: every client each round, top-k against fp32."""


@dataclass
class Cell:
    """One simulation's measurements."""

    engine: str
    clients: int
    fraction: float
    codec: str
    plain_seconds: list[float]
    wrapped_seconds: list[float]
    peak_rss_bytes: int
    server_state_bytes_per_client: float
    client_state_bytes_per_client: float

    @property
    def ratio(self) -> float:
        return statistics.median(w / p for w, p in zip(self.wrapped_seconds, self.plain_seconds))


_TRAIN = overhead.client_app(with_mod=True)
"""sim_overhead's ClientApp: `compression_mod` around its cheap training step."""


@cache
def client_app(store: ClientStore) -> ClientApp:
    """sim_overhead's ClientApp (the mod, the training) inside the client-state store."""
    app = ClientApp(mods=[store])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return _TRAIN(msg, context)

    return app


def fedavg(clients: int, fraction: float) -> FedAvg:
    nodes = max(1, round(clients * fraction))
    return FedAvg(
        fraction_train=fraction, fraction_evaluate=0.0, min_train_nodes=nodes, min_available_nodes=clients
    )


def alternate(grid: Grid, plain: Strategy, wrapped: Compressed, rounds: int, entries: int) -> dict:
    """1 + `rounds` rounds of each, ABBA; the timed rounds' seconds and the wrapper's state metrics."""
    strategies, arrays = [plain, wrapped], [initial_model(entries), initial_model(entries)]
    seconds: list[list[float]] = [[], []]
    server, client = [], []
    for r in range(1 + rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            s, arrays[i], metrics = one_round(strategies[i], grid, arrays[i])
            if r > 0:
                seconds[i].append(s)
            if i == 1:
                held = max(1, int(metrics["flcomp.clients-held"]))
                server.append(metrics["flcomp.server-state-bytes"] / held)
                client.append(metrics["flcomp.client-state-bytes"])
    return {
        "plain_seconds": seconds[0],
        "wrapped_seconds": seconds[1],
        "server_state_bytes_per_client": max(server),
        "client_state_bytes_per_client": max(client),
    }


def strategies(clients: int, fraction: float, codec: str, bound: int) -> tuple[Strategy, Compressed]:
    """Plain FedAvg and the wrapper with `codec`, holding at most `bound` (0: two cohorts) clients' states."""
    cohort = max(1, round(clients * fraction))
    wrapped = Compressed(fedavg(clients, fraction), codec=codec, max_client_states=bound or 2 * cohort)
    return fedavg(clients, fraction), wrapped


def peak_rss() -> int:
    """This process's peak resident set, bytes (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


PROJECT = """
[project]
name = "flcomp-scale"
version = "1.0.0"
description = "benchmarks/scale.py on Flower's Simulation Runtime"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "flcomp"

[tool.flwr.app.components]
serverapp = "scale:server"
clientapp = "scale:client"

[tool.flwr.app.config]
clients = 0
fraction = 1.0
codec = ""
rounds = 0
entries = 0
bound = 0
store = ""
out = ""
"""
"""The Flower app of a Ray cell: this file's `server` and `client` (the bundle holds a copy of
this file beside it); `out` is where the server writes its measurements (JSON)."""

server = ServerApp()


@server.main()
def _serve(grid: Grid, context: Context) -> None:
    c = context.run_config
    plain, wrapped = strategies(int(c["clients"]), float(c["fraction"]), str(c["codec"]), int(c["bound"]))
    grid.pull_interval = 0.01  # the default 0.1 s would round rounds up to a tenth
    out = alternate(grid, plain, wrapped, int(c["rounds"]), int(c["entries"]))
    Path(str(c["out"])).write_text(json.dumps(out | {"peak_rss_bytes": peak_rss()}))


client = ClientApp()


@client.train()
def _train(msg: Message, context: Context) -> Message:
    return client_app(ClientStore(Path(str(context.run_config["store"]))))(msg, context)


def cell(
    engine: str, clients: int, fraction: float, codec: str, rounds: int, entries: int, bound: int, actors: int
) -> Cell:
    """Measure one cell: inline in this process, on Ray in the Simulation Runtime's (whose peak
    RSS is then the server's and the engine's, the clients' actors beside it)."""
    with tempfile.TemporaryDirectory(prefix="flcomp-scale-") as tmp:
        tmp = Path(tmp)
        if engine == "inline":
            grid = InlineGrid(client_app(ClientStore(tmp / "store")), clients)
            out = alternate(grid, *strategies(clients, fraction, codec, bound), rounds, entries)
            out["peak_rss_bytes"] = peak_rss()
        else:
            (tmp / "pyproject.toml").write_text(PROJECT)
            config = {"clients": clients, "fraction": fraction, "codec": codec, "rounds": rounds}
            config |= {
                "entries": entries,
                "bound": bound,
                "store": str(tmp / "store"),
                "out": str(tmp / "out.json"),
            }
            flwr_run(
                tmp / "pyproject.toml",
                config,
                overhead.federation(clients, actors),
                tmp / "flower.log",
                files=[Path(__file__), Path(overhead.__file__)],
            )
            if not (tmp / "out.json").exists():
                log = (tmp / "flower.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"the ray simulation of {codec} at {clients} clients did not finish:\n{log}"
                )
            out = json.loads((tmp / "out.json").read_text())
    return Cell(engine, clients, fraction, codec, **out)


def measure_in_subprocess(args: argparse.Namespace, *spec) -> Cell:
    command = [sys.executable, __file__, "--cell", *map(str, spec), "--rounds", str(args.rounds)]
    command += ["--entries", str(args.entries), "--bound", str(args.bound), "--actors", str(args.actors)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cell {spec} failed:\n{done.stderr[-3000:]}")
    return Cell(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", choices=["ray", "inline"], default=["ray", "inline"])
    ap.add_argument("--clients", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--codecs", nargs="+", default=list(CODECS))
    ap.add_argument(
        "--only", nargs="+", default=None, metavar="CLIENTS:FRACTION", help="measure these cells only"
    )
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds per strategy (after one warm-up)")
    ap.add_argument("--entries", type=int, default=20_000, help="float32 weights in the model")
    ap.add_argument("--bound", type=int, default=0, help="max_client_states (0: twice the cohort)")
    ap.add_argument("--actors", type=int, default=1, help="single-CPU Ray actors running the clients")
    ap.add_argument(
        "--cell", nargs=4, metavar=("ENGINE", "CLIENTS", "FRACTION", "CODEC"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.cell:
        engine, clients, fraction, codec = args.cell
        spec = (engine, int(clients), float(fraction), codec)
        result = cell(*spec, args.rounds, args.entries, args.bound, args.actors)
        print(json.dumps(asdict(result)))
        return

    cells = [(n, f, c) for n in args.clients for f in FRACTIONS for c in args.codecs]
    clients, fraction, codecs = EVERY_CLIENT
    if clients in args.clients:
        cells += [(clients, fraction, c) for c in codecs if c in args.codecs]
    if args.only:
        chosen = {(int(n), float(f)) for n, f in (o.split(":") for o in args.only)}
        cells = [cell for cell in cells if cell[:2] in chosen]
    results = [measure_in_subprocess(args, e, *spec) for e in args.engines for spec in cells]
    print_table(results, args)
    print_floors(results)


def print_table(results: list[Cell], args: argparse.Namespace) -> None:
    weights = sum(a.numpy().size for a in initial_model(args.entries).values())
    print(
        f"\nMedian wall seconds per round, {args.rounds} rounds each, model of {weights:,} float32 weights,"
        f" Ray's clients in {args.actors} actor(s):\n"
    )
    head = ["engine", "clients", "per round", "codec", "plain s", "wrapped s", "wrapped/plain"]
    head += ["peak RSS MB", "server state B/client", "client state B/client"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|")
    for c in results:
        median = statistics.median
        cells = [c.engine, f"{c.clients:,}", f"{c.fraction:.0%}", c.codec]
        cells += [f"{median(c.plain_seconds):.3f}", f"{median(c.wrapped_seconds):.3f}", f"{c.ratio:.3f}"]
        cells += [f"{c.peak_rss_bytes / 2**20:.0f}", f"{c.server_state_bytes_per_client:,.0f}"]
        cells.append(f"{c.client_state_bytes_per_client:,.0f}")
        print("| " + " | ".join(cells) + " |")


def print_floors(results: list[Cell]) -> None:
    """Each floor the measured cells allow to check: met or NOT met, with the numbers."""
    by = {(c.engine, c.clients, c.fraction, c.codec): c for c in results}
    print()
    for codec in CODECS:
        c = by.get(("ray", 10000, 0.01, codec))
        if c is not None:
            verdict(f"ray, 10,000 clients at 1%, {codec}: wrapped/plain ≤ 1.3", c.ratio, c.ratio <= 1.3)
    topk, fp32 = by.get(("ray", 1000, 1.0, "topk")), by.get(("ray", 1000, 1.0, "fp32"))
    if topk is not None:
        verdict("ray, 1,000 clients every round, topk: wrapped/plain ≤ 1.15", topk.ratio, topk.ratio <= 1.15)
    if topk is not None and fp32 is not None:
        drift = statistics.median(topk.plain_seconds) / statistics.median(fp32.plain_seconds)
        floor = "ray, 1,000 clients: plain rounds of the topk run within 10% of the fp32 run's"
        verdict(floor, drift, abs(drift - 1) <= 0.1)
    for engine in ("ray", "inline"):
        for codec in CODECS:
            big, small = by.get((engine, 10000, 0.01, codec)), by.get((engine, 1000, 0.1, codec))
            if big is not None and small is not None:
                r = big.peak_rss_bytes / small.peak_rss_bytes
                verdict(f"{engine}, {codec}: peak RSS 10,000 clients at 1% ≤ 1.5 × 1,000 at 10%", r, r <= 1.5)


def verdict(floor: str, value: float, met: bool) -> None:
    print(f"Floor: {floor}: {'met' if met else 'NOT met'} ({value:.3f})")


if __name__ == "__main__":
    main()
