"""TPC (temporal predictive coding) against GD, LAG and top-k, in distributed GD and federated.

Distributed-GD mode: K = 10 clients, one full-batch gradient step a round
(Δ = lr·∇f_k, the server averages: plain GD on f = mean f_k), step lr = 1/L:

- synthetic-logistic: logistic regression, d = 1000, 5000 samples, λ = 1e-3 (known optimum);
- digits-logreg: multinomial logistic regression on scikit-learn's digits (650 parameters),
  λ = 0.1 so that GD reaches a 1e-4 gap in a few hundred rounds; its optimum is solved here
  (L-BFGS, `flcomp.tasks.reference.multinomial_logistic`) for the objective gap.

and TPC's federated extension (digits-cnn-federated: the small CNN, 5 local epochs of
mini-batch SGD, 30 rounds), where accuracy takes the gap's place.

For every problem and codec it reports the rounds and uplink bits to the target (relative
objective gap 1e-4; accuracy 0.9 for the federated run), the final gap and accuracy, and
for TPC the share of client-rounds whose payload carried the residual (the encoders'
`residual_sent`, column stat_residual_sent of rounds.csv). On synthetic-logistic it checks
TPC's floors for every seed (≤ 1.2× GD's rounds, ≤ 30% of its bits, fewer bits than LAG). It
prints a markdown section, writes it to docs/RESULTS.md (section "tpc") and one plot per
problem (gap or accuracy vs cumulative uplink bits and vs rounds) to docs/.

With --sweep it runs τ's sweep instead, the evidence behind `TPCConfig.tau`: GD and TPC at
each τ of TAU_SWEEP on synthetic-logistic and digits-logreg, every seed, into section
"tpc-tau" (hours on 2 cores at the problems' own rounds).

    python examples/tpc_experiment.py [--seeds 0 1] [--rounds N] [--problems ...] [--codecs ...]
    python examples/tpc_experiment.py --sweep [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import dataclasses

from flcomp.cli import slug
from flcomp.codecs import Codec
from flcomp.sim import experiment
from flcomp.sim.experiment import Rows
from flcomp.sim.problems import Problem, uplink_mbit
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
    "lag": "LAG, the registered default (LAG-WK's ξ = 1, D = 10, for a server that averages)",
    "topk:ratio=0.1": "top-k, 10% of the entries, with error feedback",
    "tpc": "TPC with its defaults (s = 3, relative τ = 0.01, whole vector, fp32 residual)",
    "tpc:tau=0.3": "TPC with the former default τ = 0.3",
    "tpc:inner=fp16": "TPC with its residual in fp16",
}
"""The codecs compared, with what each row is."""
TAU_SWEEP = (0.3, 0.1, 0.03, 0.01, 0.001)
"""τ's sweep (`--sweep`): the values `TPCConfig.tau` cites."""
SWEEP_PROBLEMS = ("synthetic-logistic", "digits-logreg")
"""The problems of τ's sweep."""


def residual_share(rows: Rows) -> str:
    """The share of client-rounds whose TPC payload carried the residual, from the encoders'
    `residual_sent` (a markdown cell; blank for a codec that does not report it)."""
    sent = experiment.stat_sum(rows, "residual_sent")
    payloads = sum(r["clients_accepted"] for r in experiment.trained(rows))
    return "" if sent is None or not payloads else f"{sent / payloads:.1%}"


def table_rows(name: str, problem: Problem, runs: dict[str, Rows]) -> list[str]:
    """One markdown row per codec; ratios against the fp32 run (GD) when it is there."""
    base = problem.reached(runs["fp32"]) if "fp32" in runs else None
    lines = []
    for codec, rows in runs.items():
        cells = experiment.target_cells(problem.reached(rows), base)
        last = rows[-1]
        gap = "" if last["gap"] is None else f"{last['gap']:.1e}"
        lines.append(
            f"| {name} | `{codec}` | {' | '.join(cells)} | {uplink_mbit(last):.3f} "
            f"| {gap} | {last['accuracy']:.4f} | {residual_share(rows)} |"
        )
    return lines


def floor_lines(seed: int, problem: Problem, runs: dict[str, Rows]) -> list[str]:
    """The floors for TPC (defaults) on one seed: ≤ 1.2× GD's rounds and ≤ 30% of GD's
    uplink bits to the target, and fewer bits than each LAG run at the same gap."""
    if not {"fp32", "tpc"} <= runs.keys():
        return []
    hits = {codec: problem.reached(rows) for codec, rows in runs.items()}
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


TABLE_HEADER = [
    f"| problem | codec | {experiment.TARGET_COLUMNS} | uplink Mbit total | final gap | final accuracy "
    "| residual sent |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]
SETUP = (
    "inline engine, K = 10 clients, every client in every round). The GD problems take the step 1/L, "
    "where `fp32` is plain GD. Targets: relative objective gap ≤ 1e-4, or accuracy ≥ 0.9 for the "
    "federated run; rounds and uplink Mbit (all clients, headers included) are counted at the first "
    "round that meets it, ratios against `fp32`. Residual sent: share of client-rounds whose TPC "
    "payload carried the residual, as the encoders reported it (`residual_sent`)."
)


def comparison(args: argparse.Namespace, problems: dict[str, Problem], argv: list[str] | None) -> str:
    """The main experiment: every codec on every problem; the floors on every seed."""
    rows, floors, plots = [], [], []
    for i, seed in enumerate(args.seeds):
        for name, problem in problems.items():
            if i > 0 and name != FLOOR_PROBLEM:
                continue
            runs = experiment.problem_runs(problem, args.codecs, seed, args.out / f"seed{seed}" / name, slug)
            outcome = experiment.run_all(runs, args.quiet)
            if name == FLOOR_PROBLEM:
                floors += floor_lines(seed, problem, outcome)
            if i == 0:
                rows += table_rows(name, problem, outcome)
                plots.append(experiment.plot(args.docs, f"tpc_{name}.png", [r.directory for r in runs]))
    lines = [
        "## TPC: temporal predictive coding",
        "",
        f"Generated by `{experiment.command('tpc_experiment.py', argv)}` (seed {args.seeds[0]} in the "
        f"table; {SETUP}",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        *[f"- `{c}`: {CODECS[c]}" for c in args.codecs if c in CODECS],
        "",
        *TABLE_HEADER,
        *rows,
    ]
    if floors:
        lines += ["", f"The floors on {FLOOR_PROBLEM}, TPC with its defaults (`tpc`):", "", *floors]
    lines += ["", *plots]
    return experiment.publish(args.docs, "tpc", "\n".join(lines))


def sweep(args: argparse.Namespace, problems: dict[str, Problem], argv: list[str] | None) -> str:
    """τ's sweep (the evidence of `TPCConfig.tau`): GD and TPC at each τ of TAU_SWEEP, every seed."""
    rows = []
    codecs = ["fp32", *(f"tpc:tau={tau}" for tau in TAU_SWEEP)]
    for seed in args.seeds:
        for name, problem in problems.items():
            runs = experiment.problem_runs(
                problem, codecs, seed, args.out / "tau" / f"seed{seed}" / name, slug
            )
            rows += table_rows(f"{name}, seed {seed}", problem, experiment.run_all(runs, args.quiet))
    lines = [
        "## TPC: the trigger threshold τ",
        "",
        f"Generated by `{experiment.command('tpc_experiment.py', argv)}` "
        f"(τ = {', '.join(map(str, TAU_SWEEP))}, TPC's other parameters at their defaults; {SETUP}",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        "",
        *TABLE_HEADER,
        *rows,
    ]
    return experiment.publish(args.docs, "tpc-tau", "\n".join(lines))


def main(argv: list[str] | None = None) -> str:
    """Run the experiment (or, with --sweep, τ's sweep); print and write its section; return it."""
    parser = experiment.parser(__doc__, out="results/tpc", seeds=[0, 1])
    parser.add_argument(
        "--problems", nargs="+", choices=list(PROBLEMS), help="default: all (--sweep: its own)"
    )
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), help="the comparison's codecs")
    parser.add_argument("--sweep", action="store_true", help="run τ's sweep (section tpc-tau) instead")
    args = parser.parse_args(argv)
    names = args.problems or (SWEEP_PROBLEMS if args.sweep else list(PROBLEMS))
    problems = {
        name: dataclasses.replace(PROBLEMS[name], rounds=args.rounds or PROBLEMS[name].rounds)
        for name in names
    }
    return (sweep if args.sweep else comparison)(args, problems, argv)


if __name__ == "__main__":
    main()
