"""Channel-aware bit budgets against the best fixed codec: virtual time and energy to a target.

Over a wireless cell the clients that hold a round back are the ones with bad links and slow
devices, yet a fixed codec compresses every client the same way. With `RunConfig(budget=
"deadline")` each sampled client gets a budget r_k·(D − t_k) from its planned uplink rate and
the deadline (`flcomp.strategies.budget`), which top-k and the ladder meet by their knob.

Setup: the CNN (`flcomp.tasks.models.cnn`, 5,130 weights) on Fashion-MNIST (scikit-learn's 8×8
digits when Debian's `dataset-fashion-mnist` files are absent), 50 clients, IID, one local epoch
of SGD (batch 32, lr 0.3), FedAvg over K = 10 clients a round (fraction 0.2), inline engine.
The server broadcasts the fp32 model once a round (`downlink_delivery="broadcast"`), the same
for every arm. Two cells, urban-sub6 and iot-lowpower, each with a deadline and heterogeneous
devices (log-normal speeds, σ = 0.5), both derived from the cell by one rule (`cell`):

- the median device computes its epoch in a tenth of the median client's fp32 upload airtime
  (planned rate at the median fade, the band shared by K): communication, not compute, is
  what the cell makes scarce;
- the deadline D is the round of the 90th-percentile device with the median link: both
  latencies, the fp32 broadcast at the rate of a cohort's worst listener (whole band, each
  listener at its 1% fade; median over cohorts), that device's compute, and an uplink
  window of 4 bits per weight at the median uplink rate (twice what QSGD's 16 levels take).
  Slower devices and worse links have less, faster ones more.

Arms per cell: fixed codecs (QSGD, top-k 5% and 1%, error feedback on) and budgeted ones
(`budget="deadline"`: top-k with a cap of 25%, and `ladder:rungs=qsgd/topk`, QSGD where it
fits, else top-k sized to the budget); fp16 too where a client's share at the spectral-efficiency
cap carries it within the deadline (urban-sub6), and fp32 not at all (fp16 sends the same model
in half its airtime). A run reaches the target at the first round whose test accuracy, averaged
over the last --window rounds, is at least --target; the table gives the cumulative rounds,
virtual seconds, client energy and uplink bytes there. The best fixed codec is the fixed arm
that reaches the target soonest in virtual time on that cell.

Floors: each budgeted arm reaches the target ≥ 1.3× sooner in virtual time than the best fixed
codec on both cells, with no more client energy; and, on iot-lowpower with fp16 both ways,
broadcast delivery's downlink airtime per round (summed over clients, `downlink_airtime_s`) is
at least K/2 = 5 times lower than unicast's at K = 10 up-to-date clients (10 clients, all
sampled every round, no deadline; rounds ≥ 2, after the replicas start).

It writes its section of docs/RESULTS.md ("channel_aware") and docs/channel_aware/<cell>.png.

    python examples/channel_aware.py [--rounds 60] [--target 0.6] [--seed 0] [--resume]
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from flcomp.channel import Channel
from flcomp.cli import slug
from flcomp.codecs import ModelSpec
from flcomp.sim import RunConfig, experiment
from flcomp.sim.apps import load_task
from flcomp.sim.experiment import Rows
from flcomp.tasks import TaskConfig
from flcomp.tasks.datasets import fashion_or_digits

FRACTION = 0.2
"""Of the clients instructed each round: K = 10 of 50."""
HETEROGENEITY = 0.5
"""σ of ln(device slowness)."""
COMPUTE_FRACTION = 0.1
"""The median device's epoch, as a fraction of the median client's fp32 upload airtime."""
DEADLINE_DEVICE = 1.2816
"""z of the device the deadline is sized for: its 90th percentile (Φ(1.2816) = 0.9)."""
BROADCAST_OUTAGE = 0.01
"""The fade each listener's broadcast rate is planned at: the broadcast goes at the worst of K
listeners' fades, below each one's 10% fade in 1 − 0.9^K ≈ 65% of rounds at K = 10, below
each one's 1% fade in ≈ 10%."""
WINDOW_BITS_PER_WEIGHT = 4.0
"""The uplink window the deadline leaves the median client, in bits per weight: twice what
QSGD's 16 levels take, a margin for fades and the broadcast's worst listener."""
CELLS = ("urban-sub6", "iot-lowpower")
FIXED = ("fp16", "qsgd", "topk:ratio=0.05", "topk:ratio=0.01")
"""The fixed arms, fp16 only where it can fit (`Cell.arms`)."""
BUDGETED = ("topk:ratio=0.25", "ladder:rungs=qsgd/topk")
SPEEDUP = 1.3
"""Floor: the budgeted run reaches the target this many times sooner than the best fixed codec."""
BROADCAST_CELL = "iot-lowpower"
BROADCAST_DOWNLINK = "fp16"
BROADCAST_UPLINK = "fp16"
BROADCAST_CLIENTS = 10
BROADCAST_ROUNDS = 4


@dataclass(frozen=True)
class Cell:
    """A cell's channel as `cell` derives it, with the numbers it came from."""

    name: str
    channel: str
    deadline_s: float
    median_compute_s: float
    uplink_bps: float
    """The median client's planned uplink rate (median fade, band shared by K)."""
    broadcast_bps: float
    """The broadcast's planned rate: a cohort's worst listener's whole-band rate at the fade
    `BROADCAST_OUTAGE`, median over the cohorts."""
    weights: int
    peak_uplink_bps: float
    """A client's share of the band at the spectral-efficiency cap: no link is faster."""

    @property
    def fp16_fits(self) -> bool:
        """Whether an fp16 upload at the peak rate takes less than the deadline."""
        return 16 * self.weights / self.peak_uplink_bps < self.deadline_s

    def arms(self) -> list[Arm]:
        """The arms run on this cell: all, less fp16 where no client can send it in time."""
        return [a for a in ARMS if a.codec != "fp16" or self.fp16_fits]


def cell(name: str, task: TaskConfig, cohort: int, seed: int) -> Cell:
    """The cell `name` with the devices and deadline of the module docstring's rule, for `task`
    (its weights and its clients' median partition) and cohorts of `cohort` clients."""
    loaded = load_task(task)
    bits = 32 * ModelSpec.of(loaded.initial_arrays()).size
    samples = statistics.median(len(p) for p in loaded.partitions)
    link = Channel.parse(name).simulator(seed).link
    ids = list(range(1, task.num_clients + 1))  # stable ids: partition id + 1
    up, down = [], []
    for start in range(0, len(ids), cohort):
        group = ids[start : start + cohort]
        up += [q.rate_bps for q in link.planned_qualities(1, group, "uplink", 0.5).values()]
        whole = link.planned_qualities(1, group, "downlink", BROADCAST_OUTAGE, shared=False)
        down.append(min(q.rate_bps for q in whole.values()))
    uplink_bps, broadcast_bps = statistics.median(up), statistics.median(down)
    config = Channel.parse(name).config
    latency = config.latency_s
    compute = COMPUTE_FRACTION * bits / uplink_bps
    deadline = (
        2 * latency
        + bits / broadcast_bps
        + compute * math.exp(DEADLINE_DEVICE * HETEROGENEITY)
        + WINDOW_BITS_PER_WEIGHT * bits / 32 / uplink_bps
    )
    channel = (
        f"{name}:deadline_s={deadline:.4g},seconds_per_sample={compute / samples:.4g},"
        f"heterogeneity={HETEROGENEITY}"
    )
    peak = config.max_bits_per_hz * config.bandwidth_hz / cohort
    return Cell(name, channel, deadline, compute, uplink_bps, broadcast_bps, bits // 32, peak)


@dataclass(frozen=True)
class Arm:
    key: str
    codec: str
    budgeted: bool

    @property
    def label(self) -> str:
        return f"{self.codec} (budget)" if self.budgeted else self.codec


ARMS = [Arm(slug(c), c, False) for c in FIXED] + [Arm(f"{slug(c)}_budget", c, True) for c in BUDGETED]


def to_target(rows: Rows, target: float, window: int) -> dict | None:
    """The rounds.csv row of the first training round whose trailing-mean accuracy reaches `target`."""
    trained = experiment.trained(rows)
    accuracy = experiment.trailing_mean(np.array([r["accuracy"] for r in trained]), window)
    reached = np.flatnonzero(accuracy >= target)
    return trained[int(reached[0])] if reached.size else None


def unbudgeted(directory: Path) -> tuple[int, int]:
    """Of a run's instructions (clients.csv rows), how many carried no budget, and how many there were."""
    with open(directory / "clients.csv", newline="") as f:
        budgets = [row["budget_bits"] for row in csv.DictReader(f)]
    return sum(not b for b in budgets), len(budgets)


def cell_table(
    c: Cell, runs: list[experiment.Run], rows: dict[str, Rows], target: float, window: int, cohort: int
) -> tuple[list[str], list[tuple[str, bool]]]:
    """The cell's markdown (its table, the comparison and the floor lines) for its `runs`, and each
    budgeted arm's floor verdict as (label, met)."""
    arms = c.arms()
    hits = {a.key: to_target(rows[a.key], target, window) for a in arms}
    lines = [
        f"### {c.name}: `{c.channel}`",
        "",
        f"Deadline {c.deadline_s:.4g} s; median device's epoch {c.median_compute_s:.3g} s; median planned "
        f"uplink {c.uplink_bps / 1e3:.4g} kbit/s (K = {cohort} sharing the band), broadcast "
        f"planned at {c.broadcast_bps / 1e3:.4g} kbit/s.",
        "",
        "| arm | rounds to target | virtual s to target | energy J to target | uplink MB to target "
        "| virtual s per round | dropped clients (all rounds) | over budget (all rounds) | final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in arms:
        hit, trained = hits[a.key], experiment.trained(rows[a.key])
        cells = (
            [f"{hit['round']:.0f}", f"{hit['cumulative_virtual_seconds']:.4g}"]
            + [f"{hit['cumulative_energy_j']:.4g}", f"{hit['cumulative_uplink_bytes'] / 1e6:.4g}"]
            if hit
            else ["not reached"] * 4
        )
        per_round = trained[-1]["cumulative_virtual_seconds"] / len(trained)
        dropped = sum(r["clients_dropped"] or 0 for r in trained)
        over = f"{sum(r['clients_over_budget'] or 0 for r in trained):.0f}" if a.budgeted else "—"
        lines.append(
            f"| {a.label} | {' | '.join(cells)} | {per_round:.4g} | {dropped:.0f} | {over} "
            f"| {trained[-1]['accuracy']:.4f} |"
        )
    lines.append("")
    fixed = [a for a in arms if not a.budgeted and hits[a.key] is not None]
    best = min(fixed, key=lambda a: hits[a.key]["cumulative_virtual_seconds"], default=None)
    verdicts = []
    if best is None:
        lines.append("- No fixed codec reached the target within the rounds run.")
    else:
        lines.append(f"- Best fixed codec: {best.label}.")
    for a in arms:
        if not a.budgeted:
            continue
        hit = hits[a.key]
        if best is None or hit is None:
            met = False
            why = "the budgeted run did not reach the target" if hit is None else "no fixed codec to compare"
        else:
            base = hits[best.key]
            speedup = base["cumulative_virtual_seconds"] / hit["cumulative_virtual_seconds"]
            energy = hit["cumulative_energy_j"] / base["cumulative_energy_j"]
            met = speedup >= SPEEDUP and energy <= 1
            why = (
                f"virtual time to target: {best.label}'s / {a.label}'s = {speedup:.3g}; "
                f"energy: {a.label}'s / {best.label}'s = {energy:.3g}"
            )
        verdicts.append((a.label, met))
        none, instructed = unbudgeted(next(r.directory for r in runs if r.key == a.key))
        lines.append(
            f"- {a.label}: {none} of {instructed} instructions carried no budget (clients the server had "
            "not heard from yet: it knows no link for them; they send at their codec's configured rate)."
        )
        lines.append(
            f"- Floor ({a.label} ≥ {SPEEDUP}× sooner than the best fixed codec, no more energy) on "
            f"{c.name}: {'met' if met else 'NOT met'} ({why})."
        )
    return lines, verdicts


def broadcast_runs(task: TaskConfig, args: argparse.Namespace) -> list[experiment.Run]:
    """The delivery comparison: fp16 both ways, unicast and broadcast, K = 10 clients all sampled."""
    small = replace(task, num_clients=BROADCAST_CLIENTS)
    devices = cell(BROADCAST_CELL, small, BROADCAST_CLIENTS, args.seed)
    channel = devices.channel.replace(f"deadline_s={devices.deadline_s:.4g},", "")
    return [
        experiment.Run(
            delivery,
            RunConfig(
                task=small,
                codec=BROADCAST_UPLINK,
                downlink=BROADCAST_DOWNLINK,
                downlink_delivery=delivery,
                channel=channel,
                rounds=min(args.rounds, BROADCAST_ROUNDS),
                seed=args.seed,
                engine="inline",
            ),
            args.out / "broadcast" / delivery,
        )
        for delivery in ("unicast", "broadcast")
    ]


def broadcast_table(runs: list[experiment.Run], rows: dict[str, Rows]) -> list[str]:
    """Downlink airtime per round under each delivery (rounds ≥ 2), and the floor's line."""
    channel = runs[0].config.channel
    lines = [
        f"### Downlink delivery: `{BROADCAST_DOWNLINK}` downlink on `{channel}`",
        "",
        f"{BROADCAST_CLIENTS} clients, all sampled every round, uplink `{runs[0].config.codec}`; airtime "
        "summed over the clients (a broadcast's once), mean over rounds 2 and later.",
        "",
        "| delivery | downlink airtime s per round | downlink bytes per round | virtual s per round |",
        "|---|---:|---:|---:|",
    ]
    airtime = {}
    for r in runs:
        later = [row for row in experiment.trained(rows[r.key]) if row["round"] >= 2]
        airtime[r.key] = statistics.mean(row["downlink_airtime_s"] for row in later) if later else math.nan
        sent = statistics.mean(row["downlink_bytes"] for row in later) if later else math.nan
        seconds = statistics.mean(row["virtual_seconds"] for row in later) if later else math.nan
        lines.append(f"| {r.key} | {airtime[r.key]:.4g} | {sent:.0f} | {seconds:.4g} |")
    ratio = airtime["unicast"] / airtime["broadcast"]
    met = math.isfinite(ratio) and ratio >= BROADCAST_CLIENTS / 2
    lines += [
        "",
        f"- Floor (broadcast's downlink airtime per round ≥ K/2 = {BROADCAST_CLIENTS / 2:g}× lower than "
        f"unicast's at K = {BROADCAST_CLIENTS}): {'met' if met else 'NOT met'} "
        f"(unicast / broadcast = {ratio:.3g}).",
    ]
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = experiment.parser(__doc__, out="results/channel_aware", rounds=60)
    parser.add_argument("--target", type=float, default=0.6, help="test accuracy to reach (default 0.6)")
    parser.add_argument("--window", type=int, default=5, help="rounds averaged for accuracy (default 5)")
    parser.add_argument("--clients", type=int, default=50, help="clients in the population (default 50)")
    parser.add_argument(
        "--dataset", choices=["fashion-mnist", "digits"], help="default: fashion-mnist where installed"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of the same config")
    args = parser.parse_args(argv)

    task = TaskConfig(
        dataset=args.dataset or fashion_or_digits(),
        model="cnn",
        num_clients=args.clients,
        local_epochs=1,
        batch_size=32,
        lr=0.3,
        seed=args.seed,
    )
    cohort = max(1, int(args.clients * FRACTION))
    sections, verdicts, no_fp16 = [], [], []
    for name in CELLS:
        c = cell(name, task, cohort, args.seed)
        if not c.fp16_fits:
            no_fp16.append(f"{name} (≥ {16 * c.weights / c.peak_uplink_bps:.3g} s at the peak rate)")
        runs = [
            experiment.Run(
                a.key,
                RunConfig(
                    task=task,
                    codec=a.codec,
                    downlink_delivery="broadcast",
                    channel=c.channel,
                    budget="deadline" if a.budgeted else None,
                    rounds=args.rounds,
                    fraction=FRACTION,
                    seed=args.seed,
                    engine="inline",
                ),
                args.out / name / a.key,
            )
            for a in c.arms()
        ]
        rows = experiment.run_all(runs, args.quiet, resume=args.resume)
        lines, cell_verdicts = cell_table(c, runs, rows, args.target, args.window, cohort)
        image = experiment.plot(args.docs, f"channel_aware/{name}.png", [r.directory for r in runs])
        sections += ["", *lines, "", image]
        verdicts += cell_verdicts
    runs = broadcast_runs(task, args)
    broadcast_lines = broadcast_table(runs, experiment.run_all(runs, args.quiet, args.resume))

    budget_lines = [
        f"- Floor (budgeted ≥ {SPEEDUP}× sooner than the best fixed codec with no more energy, both "
        f"cells), {label}: {'met' if all(met for arm, met in verdicts if arm == label) else 'NOT met'}."
        for label in dict(verdicts)
    ]
    section = [
        "## Channel-aware bit budgets against the best fixed codec (examples/channel_aware.py)",
        "",
        f"The CNN ({task.model}) on {task.dataset}, {task.num_clients} clients IID, one local epoch "
        f"(batch {task.batch_size}, lr {task.lr:g}), FedAvg over {cohort} clients a round, the fp32 model "
        f"broadcast once a round, {args.rounds} rounds, seed {args.seed}. Target: test accuracy averaged "
        f"over the last {args.window} rounds ≥ {args.target:g}; figures are cumulative at that round. "
        "Energy: the clients' transmit energy. Deadlines and devices per cell from the rule in the "
        'script\'s docstring; `(budget)`: `budget="deadline"`. fp32 is not run (fp16 sends the same '
        "model in half its airtime); fp16 is not run where even a share's peak rate (the spectral-"
        f"efficiency cap) cannot carry it within the deadline: {', '.join(no_fp16) or 'none'}.",
        "",
        f"Generated by `{experiment.command('channel_aware.py', argv)}`.",
        "",
        *budget_lines,
        broadcast_lines[-1],
        *sections,
        "",
        *broadcast_lines,
    ]
    return experiment.publish(args.docs, "channel_aware", "\n".join(section))


if __name__ == "__main__":
    main()
