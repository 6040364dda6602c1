"""TPC (temporal predictive coding) against GD, LAG and top-k, in distributed GD and federated.

Distributed-GD mode (issue 5): K = 10 clients, one full-batch gradient step a round
(Δ = lr·∇f_k, the server averages: plain GD on f = mean f_k), step lr = 1/L:

- synthetic-logistic: logistic regression, d = 1000, 5000 samples, λ = 1e-3 (known optimum);
- digits-logreg: multinomial logistic regression on scikit-learn's digits (650 parameters),
  λ = 0.1 so that GD reaches a 1e-4 gap in a few hundred rounds; its optimum is solved here
  (L-BFGS, `flcomp.tasks.reference.multinomial_logistic`) for the objective gap.

and TPC's federated extension (digits-cnn-federated: the small CNN, 5 local epochs of
mini-batch SGD, 30 rounds), where accuracy takes the gap's place.

For every problem and codec it reports the rounds and uplink bits to the target (relative
objective gap 1e-4; accuracy 0.9 for the federated run), the final gap and accuracy, and
for TPC the share of client-rounds whose payload carried the residual (`residual_share`,
from the measured bytes). On synthetic-logistic it checks issue 5's floors for every
seed. It prints a markdown section, writes it to docs/RESULTS.md (section "tpc") and one
plot per problem (gap or accuracy vs cumulative uplink bits and vs rounds) to docs/.

    python examples/tpc_experiment.py [--seeds 0 1] [--rounds N] [--problems ...] [--codecs ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from flcomp.cli import slug
from flcomp.codecs import HEADER_BYTES, Codec, ModelSpec
from flcomp.sim import RunConfig, load_run, plot_runs, run
from flcomp.sim.apps import load_task
from flcomp.sim.problems import Problem, uplink_mbit
from flcomp.sim.results import write_section
from flcomp.tasks import TaskConfig

GD = dict(model="logreg", mode="gd", batch_size=0, num_clients=10)
"""Distributed GD: one full-batch step per round on each of 10 clients (lr set to 1/L)."""


PROBLEMS = {
    "synthetic-logistic": Problem(
        "logistic regression, synthetic (d = 1000, λ = 1e-3), GD",
        TaskConfig(dataset="synthetic-logistic", **GD),
        rounds=300,
        metric="gap",
        target=1e-4,
    ),
    "digits-logreg": Problem(
        "multinomial logistic regression, digits (650 parameters, λ = 0.1), GD",
        TaskConfig(dataset="digits", weight_decay=0.1, **GD),
        rounds=400,
        metric="gap",
        target=1e-4,
    ),
    "digits-cnn-federated": Problem(
        "federated extension: digits CNN, 5 local epochs of SGD (batch 16, lr 0.2)",
        TaskConfig(dataset="digits", model="cnn", mode="federated", local_epochs=5, batch_size=16, lr=0.2),
        rounds=30,
        metric="accuracy",
        target=0.9,
        step_one_over_l=False,
    ),
}
FLOOR_PROBLEM = "synthetic-logistic"
CODECS = {
    "fp32": "uncompressed GD",
    "lag": "LAG, the registered default (ξ = 1, D = 10)",
    "lag:xi=100": "LAG-WK's own ξ = 1 for a server that averages: LAG's rule takes the server's step "
    "α = 1 from the mod, while FedAvg's mean of K updates is LAG's sum with α = 1/K, so the default's "
    "threshold is K² = 100 times tighter than the paper's",
    "topk:ratio=0.1": "top-k, 10% of the entries, with error feedback",
    "tpc": "TPC with its defaults (s = 3, relative τ = 0.01, whole vector, fp32 residual)",
    "tpc:tau=0.3": "TPC with METHODS.md's former default τ = 0.3",
    "tpc:inner=fp16": "TPC with its residual in fp16",
}
"""The codecs compared, with what each row is."""
FIXED_SIZE_INNER = ("fp32", "fp16", "bf16")
"""Inner codecs whose residual body has one size, so residuals can be counted from bytes."""


def residual_share(rounds: list[dict], codec: Codec, spec: ModelSpec, clients: int) -> tuple[float, bool]:
    """(share, exact): the fraction of client-rounds whose TPC payload carried the residual.

    From the measured uplink bytes: without its residual a payload is the header, 4 bytes per
    coefficient (groups × m, m = min(round − 1, s) slots filled, every client in every round)
    and the trigger byte; whatever a round uploads beyond K such payloads are residual bodies.
    With a fixed-size inner codec (fp32, fp16, bf16) those bodies are counted exactly; with
    another, exact is False and the share is that of rounds in which some client sent one.
    """
    c = codec.config
    groups = len(spec) if c.per_tensor else 1
    inner = c.inner_codec
    body = len(inner.encoder(spec).encode([np.ones(t.shape, np.float32) for t in spec.tensors]))
    body -= HEADER_BYTES
    exact = inner.name in FIXED_SIZE_INNER
    sent = 0
    trained = [r for r in rounds if r["round"] > 0]
    for r in trained:
        if r["clients_accepted"] != clients or r["clients_dropped"]:
            raise ValueError(f"round {r['round']:.0f} did not accept all {clients} clients")
        filled = min(int(r["round"]) - 1, c.memory)
        extra = int(r["uplink_bytes"]) - clients * (HEADER_BYTES + 4 * groups * filled + 1)
        if extra < 0 or (exact and extra % body):
            raise ValueError(f"round {r['round']:.0f}: {extra} residual bytes do not fit TPC's format")
        sent += extra // body if exact else int(extra > 0)
    return sent / (len(trained) * (clients if exact else 1)), exact


def run_problem(problem: Problem, codecs: list[str], seed: int, out: Path, quiet: bool) -> dict[str, Path]:
    """Run every codec on `problem` with task and run seed `seed`; codec → results directory."""
    task = problem.task_for(seed)
    directories = {}
    for codec in codecs:
        directory = directories[codec] = out / slug(codec)
        config = RunConfig(task=task, codec=codec, rounds=problem.rounds, seed=seed, engine="inline")
        run(config, directory, progress=not quiet)
    return directories


def table_rows(name: str, problem: Problem, directories: dict[str, Path]) -> list[str]:
    """One markdown row per codec; ratios against the fp32 run (GD) when it is there."""
    base = problem.reached(load_run(directories["fp32"])[1]) if "fp32" in directories else None
    task = TaskConfig(**load_run(next(iter(directories.values())))[0]["task"])
    spec = ModelSpec.of(load_task(task).initial_arrays())
    lines = []
    for codec, directory in directories.items():
        _, rounds, summary = load_run(directory)
        hit = problem.reached(rounds)
        cells = ["not reached", "", "", ""]
        if hit is not None:
            cells = [f"{hit['round']:.0f}", "", f"{uplink_mbit(hit):.3f}", ""]
            if base is not None:
                cells[1] = f"{hit['round'] / base['round']:.2f}"
                cells[3] = f"{hit['cumulative_uplink_bytes'] / base['cumulative_uplink_bytes']:.1%}"
        share = ""
        parsed = Codec.parse(codec)
        if parsed.name == "tpc":
            value, exact = residual_share(rounds, parsed, spec, task.num_clients)
            share = f"{value:.1%}" + ("" if exact else " of rounds")
        gap = "" if summary["final_gap"] is None else f"{summary['final_gap']:.1e}"
        lines.append(
            f"| {name} | `{codec}` | {' | '.join(cells)} | {summary['uplink_bytes'] * 8 / 1e6:.3f} "
            f"| {gap} | {summary['final_accuracy']:.4f} | {share} |"
        )
    return lines


def floor_lines(seed: int, problem: Problem, directories: dict[str, Path]) -> list[str]:
    """Issue 5's floors for TPC (defaults) on one seed: ≤ 1.2× GD's rounds and ≤ 30% of GD's
    uplink bits to the target, and fewer bits than each LAG run at the same gap."""
    if not {"fp32", "tpc"} <= directories.keys():
        return []
    hits = {codec: problem.reached(load_run(d)[1]) for codec, d in directories.items()}
    gd, tpc = hits["fp32"], hits["tpc"]
    if gd is None or tpc is None:
        return [f"- seed {seed}: {'GD' if gd is None else 'TPC'} did not reach the target: floors not met"]
    rounds, bits = tpc["round"] / gd["round"], tpc["cumulative_uplink_bytes"] / gd["cumulative_uplink_bytes"]
    parts = [
        f"{tpc['round']:.0f} rounds = {rounds:.2f}× GD's {gd['round']:.0f} (≤ 1.2×: "
        f"{'met' if rounds <= 1.2 else 'NOT met'})",
        f"{uplink_mbit(tpc):.3f} Mbit = {bits:.1%} of GD's (≤ 30%: {'met' if bits <= 0.3 else 'NOT met'})",
    ]
    for codec, hit in hits.items():
        if Codec.parse(codec).name == "lag":
            fewer = hit is None or tpc["cumulative_uplink_bytes"] < hit["cumulative_uplink_bytes"]
            lag_bits = "never reached" if hit is None else f"{uplink_mbit(hit):.3f} Mbit"
            parts.append(f"`{codec}` {lag_bits} (fewer: {'met' if fewer else 'NOT met'})")
    return [f"- seed {seed}: " + "; ".join(parts)]


def main(argv: list[str] | None = None) -> str:
    """Run the experiment; print and write its section and plots; return the section."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the first seed makes the table")
    parser.add_argument("--rounds", type=int, help="rounds of every problem (default: each problem's own)")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--codecs", nargs="+", default=list(CODECS))
    parser.add_argument("--out", type=Path, default=Path("results/tpc"), help="runs' results directories")
    parser.add_argument("--results", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="directory of the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    problems = {
        name: dataclasses.replace(PROBLEMS[name], rounds=args.rounds or PROBLEMS[name].rounds)
        for name in args.problems
    }

    rows, floors, plots = [], [], []
    for i, seed in enumerate(args.seeds):
        for name, problem in problems.items():
            if i > 0 and name != FLOOR_PROBLEM:
                continue
            directories = run_problem(problem, args.codecs, seed, args.out / f"seed{seed}" / name, args.quiet)
            if name == FLOOR_PROBLEM:
                floors += floor_lines(seed, problem, directories)
            if i == 0:
                rows += table_rows(name, problem, directories)
                plots.append(plot_runs(list(directories.values()), args.plots / f"tpc_{name}.png"))

    command = " ".join(["python examples/tpc_experiment.py", *map(shlex.quote, argv)])
    lines = [
        "## TPC: temporal predictive coding (issue 5)",
        "",
        f"Generated by `{command}` (seed {args.seeds[0]} in the table; inline engine, K = 10 clients, "
        "every client in every round). The GD problems take the step 1/L, where `fp32` is plain GD. "
        "Targets: relative objective gap ≤ 1e-4, or accuracy ≥ 0.9 for the federated run; "
        "rounds and uplink Mbit (all clients, headers included) are counted at the first round "
        "that meets it, ratios against `fp32`. Residual sent: share of client-rounds whose "
        "TPC payload carried the residual, counted from the measured bytes.",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        *[f"- `{c}`: {CODECS[c]}" for c in args.codecs if c in CODECS],
        "",
        "| problem | codec | rounds to target | × fp32's rounds | uplink Mbit to target | of fp32's bits "
        "| uplink Mbit total | final gap | final accuracy | residual sent |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    if floors:
        lines += ["", f"Issue 5's floors on {FLOOR_PROBLEM}, TPC with its defaults (`tpc`):", "", *floors]
    lines += ["", *[f"![{p.stem}]({os.path.relpath(p, args.results.parent)})" for p in plots]]
    section = "\n".join(lines)
    write_section(args.results, "tpc", section)
    print(section)
    return section


if __name__ == "__main__":
    main()
