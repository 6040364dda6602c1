"""GD-SEC in distributed-GD mode, against GD, LAG, top-k with error feedback and QSGD.

Distributed GD: K = 10 clients, one full-batch gradient step a round (Δ = lr·∇f_k; the server
averages, so this is GD on f = mean f_k), step lr = 1/L:

- synthetic-linear: least squares, d = 1000 + bias, 5000 samples (known optimum), gap 1e-6;
- synthetic-logistic: logistic regression, same sizes, λ = 1e-3 (known optimum), gap 1e-6;
- digits-logreg: multinomial logistic regression on scikit-learn's digits (650 parameters,
  λ = 0.1, as in the TPC experiment; optimum by `flcomp.tasks.reference`), gap 1e-4;

and GD-SEC's federated extension (digits-cnn-federated: the small CNN, 5 local epochs of
mini-batch SGD, as in the TPC experiment), where test accuracy ≥ 0.9 takes the gap's place.
So that the default is seen without re-tuning, the floor problems also run, with GD and GD-SEC's
defaults only, at other client counts and splits: both synthetic problems at K = 5, 20 and 50
(synthetic-linear-k5, ...) and digits-logreg over a Dirichlet(0.5) label split
(digits-logreg-dirichlet).

For every problem and codec it reports the rounds and uplink bits (all clients, headers
included) to the target, as multiples of GD's (`fp32`), and the fraction of model entries
the clients sent, as their encoders reported it (`entries_sent`, column stat_entries_sent of
rounds.csv; LAG's `sent`). Top-k runs at several ratios, and the one with the fewest bits to
the target is the floors' "best tuned ratio"; GD-SEC runs at several ξ and with the LAG-style
rule. GD-SEC's floors (≤ 1.2× GD's rounds, ≤ 20% of its bits, and where top-k ran fewer bits
than its best ratio) are checked on every problem of FLOOR_PROBLEMS for every seed (the tables
show the first).
It prints a markdown section, writes it to docs/RESULTS.md (section "gdsec") and one plot
per main problem (gap or accuracy vs cumulative uplink bits and vs rounds) to
docs/gdsec_<problem>.png.

With --sweep it runs instead the sweeps behind `GDSECConfig`'s docstrings: ξ (XI_VALUES) on
synthetic-linear, synthetic-logistic and digits-logreg, and on the synthetic ones β, fp16
values, the LAG-style and top-k rules (VARIANTS), against GD, every seed, into section
"gdsec-xi" (hours on 2 cores at the problems' own rounds).

    python examples/gdsec_experiment.py                 # everything (38 min on 2 shared cores)
    python examples/gdsec_experiment.py --seeds 0 --rounds 2 --problems synthetic-linear \
        --out /tmp/gdsec --docs /tmp/gdsec   # a smoke run
    python examples/gdsec_experiment.py --sweep         # the sweeps
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from flcomp.cli import slug
from flcomp.codecs import ModelSpec
from flcomp.sim import experiment
from flcomp.sim.apps import load_task
from flcomp.sim.experiment import Rows
from flcomp.sim.problems import Problem as TargetProblem
from flcomp.sim.problems import uplink_mbit
from flcomp.tasks import TaskConfig

GD = dict(mode="gd", batch_size=0, num_clients=10)
"""Distributed GD: one full-batch step per round on each of 10 clients (lr set to 1/L)."""
TOPK_RATIOS = (0.1, 0.3, 0.5, 0.9, 0.95)
"""Top-k's sweep: with error feedback it plateaus above 1e-6 unless nearly everything is sent."""
XI_SWEEP = {0.75: "gdsec:xi=0.75", 1.5: "gdsec", 1.75: "gdsec:xi=1.75"}
"""GD-SEC's ξ sweep: ξ → codec (1.5 is the default)."""
XI_VALUES = {
    "synthetic-linear": (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2),
    "synthetic-logistic": (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2),
    "digits-logreg": (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2),
}
"""`--sweep`'s ξ on each of its problems."""
LAG_RULE = "gdsec:rule=lag,xi=1"
"""GD-SEC's LAG-style rule, at the ξ that keeps the server's error within one step."""
VARIANTS = (
    LAG_RULE,
    "gdsec:rule=lag,xi=2",
    "gdsec:beta=0.8",
    "gdsec:beta=0.5",
    "gdsec:value_dtype=float16",
    "gdsec:rule=topk,ratio=0.1",
    "gdsec:rule=topk,ratio=0.2",
)
"""`--sweep`'s other runs on the synthetic problems (`GDSECConfig.beta`, `value_dtype`, `rule`)."""


@dataclass(frozen=True)
class Problem(TargetProblem):
    """A problem with the codecs that run on it."""

    codecs: tuple[str, ...] = ()


BASELINES = ("fp32", "lag", "qsgd")
GDSEC = ("gdsec", "gdsec:value_dtype=float16")
XI_OTHERS = tuple(c for c in XI_SWEEP.values() if c not in GDSEC)
SWEEPS = tuple(f"topk:ratio={r}" for r in TOPK_RATIOS) + XI_OTHERS + (LAG_RULE,)
PROBLEMS = {
    "synthetic-linear": Problem(
        "least squares, synthetic (d = 1000 + bias, λ = 0), GD, step 1/L",
        TaskConfig(dataset="synthetic-linear", model="linear", **GD),
        rounds=90,
        metric="gap",
        target=1e-6,
        codecs=BASELINES + GDSEC + SWEEPS,
    ),
    "synthetic-logistic": Problem(
        "logistic regression, synthetic (d = 1000 + bias, λ = 1e-3), GD, step 1/L",
        TaskConfig(dataset="synthetic-logistic", model="logreg", **GD),
        rounds=520,
        metric="gap",
        target=1e-6,
        codecs=BASELINES + GDSEC + SWEEPS,
    ),
    "digits-logreg": Problem(
        "multinomial logistic regression, digits (650 parameters, λ = 0.1), GD, step 1/L",
        TaskConfig(dataset="digits", model="logreg", weight_decay=0.1, **GD),
        rounds=450,
        metric="gap",
        target=1e-4,
        codecs=BASELINES
        + GDSEC
        + ("topk:ratio=0.1", "topk:ratio=0.5", "topk:ratio=0.9", *XI_OTHERS, LAG_RULE),
    ),
    "digits-cnn-federated": Problem(
        "federated extension: digits CNN, 5 local epochs of SGD (batch 16, lr 0.2)",
        TaskConfig(dataset="digits", model="cnn", mode="federated", local_epochs=5, batch_size=16, lr=0.2),
        rounds=30,
        metric="accuracy",
        target=0.9,
        codecs=("fp32", "lag", "topk:ratio=0.1", "gdsec", XI_OTHERS[0]),
        step_one_over_l=False,
    ),
}
MAIN_PROBLEMS = tuple(PROBLEMS)
"""The problems with every codec (and a plot); the others below run GD and GD-SEC only."""
CLIENT_COUNTS = (5, 20, 50)
"""The synthetic problems' other K (10 is the main one)."""


VARIANT_ROUNDS = {"synthetic-linear": 90, "synthetic-logistic": 260}
"""The K variants' rounds: past 1.2× GD's (≤ 175 rounds on synthetic-logistic at every seed), short
of the main problems' 520 because a round costs K clients' steps."""


def variant(base: str, what: str, rounds: int | None = None, **task) -> Problem:
    """PROBLEMS[base] with its task changed by `task` (`what` says how) and `rounds` (None: the
    same), GD and GD-SEC's defaults only."""
    main = PROBLEMS[base]
    return dataclasses.replace(
        main,
        label=f"{main.label}; {what}",
        task=dataclasses.replace(main.task, **task),
        rounds=rounds or main.rounds,
        codecs=("fp32", "gdsec"),
    )


PROBLEMS |= {
    f"{name}-k{k}": variant(name, f"K = {k}", VARIANT_ROUNDS[name], num_clients=k)
    for name in ("synthetic-linear", "synthetic-logistic")
    for k in CLIENT_COUNTS
}
PROBLEMS["digits-logreg-dirichlet"] = variant(
    "digits-logreg", "Dirichlet(0.5) label split", partition="dirichlet", alpha=0.5
)
FLOOR_PROBLEMS = tuple(p for p in PROBLEMS if p != "digits-cnn-federated")
"""Where GD-SEC's floors are checked, every seed."""
CODECS = {
    "fp32": "uncompressed (GD in the GD problems)",
    "lag": "LAG, the registered default (LAG-WK's ξ = 1, D = 10, for a server that averages)",
    "qsgd": "QSGD, the registered default (s = 16, buckets of 512, zstd, no error feedback)",
    "topk:ratio=r": "top-k with error feedback, a fraction r of each tensor's entries",
    "gdsec": "GD-SEC with its defaults (relative threshold ξ·rms(Δ), ξ = 1.5, β = 1, fp32 values)",
    "gdsec:value_dtype=float16": "GD-SEC with fp16 values",
    "gdsec:xi=x": "GD-SEC with ξ = x",
    LAG_RULE: "GD-SEC's LAG-style rule for a server that averages, thr = ξ·‖w(t) − w(t−1)‖/√d, ξ = 1",
}
"""What each row is (r and x stand for the sweeps' values)."""


def entries_sent(rows: Rows, size: int, rounds: int | None = None) -> float:
    """The model entries the clients' payloads carried over the first `rounds` training rounds
    (all if None), as the encoders reported them: `entries_sent` for the sparse codecs (GD-SEC,
    top-k), every entry or none for LAG (`sent`), every entry for the codecs that report
    neither (the dense ones)."""
    sent = experiment.stat_sum(rows, "entries_sent", rounds)
    if sent is not None:
        return sent
    updates = experiment.stat_sum(rows, "sent", rounds)
    if updates is None:
        updates = sum(r["clients_accepted"] for r in experiment.trained(rows, rounds))
    return size * updates


@dataclass(frozen=True)
class Outcome:
    """One run: its rounds.csv rows and its model's size."""

    rows: Rows
    size: int
    """d, the model's entry count."""

    def reached(self, problem: Problem) -> dict | None:
        """The first trained round that meets the problem's target, or None."""
        return problem.reached(self.rows)

    def fraction_sent(self, rounds: int | None = None) -> float:
        """Entries sent per client per round over the first `rounds` rounds (all if None), as a
        fraction of d."""
        payloads = sum(r["clients_accepted"] for r in experiment.trained(self.rows, rounds))
        return entries_sent(self.rows, self.size, rounds) / (self.size * payloads)


def run_problem(problem: Problem, seed: int, out: Path, quiet: bool) -> dict[str, Outcome]:
    """Run every codec of `problem` with task and run seed `seed`; codec → its outcome."""
    size = ModelSpec.of(load_task(problem.task_for(seed)).initial_arrays()).size
    runs = experiment.problem_runs(problem, problem.codecs, seed, out, slug)
    return {codec: Outcome(rows, size) for codec, rows in experiment.run_all(runs, quiet).items()}


def best_topk(problem: Problem, outcomes: dict[str, Outcome]) -> str | None:
    """The top-k run with the fewest bits to the target (None if none reached it)."""
    hits = {c: o.reached(problem) for c, o in outcomes.items() if c.startswith("topk:")}
    hits = {c: h for c, h in hits.items() if h is not None}
    return min(hits, key=lambda c: hits[c]["cumulative_uplink_bytes"]) if hits else None


def table_rows(name: str, problem: Problem, outcomes: dict[str, Outcome], codecs: list[str]) -> list[str]:
    """One markdown row per codec in `codecs`; ratios against the fp32 run."""
    base = outcomes["fp32"].reached(problem) if "fp32" in outcomes else None
    best = best_topk(problem, outcomes)
    lines = []
    for codec in codecs:
        outcome = outcomes[codec]
        hit = outcome.reached(problem)
        cells = experiment.target_cells(hit, base)
        sent = outcome.fraction_sent(int(hit["round"]) if hit else None)
        last = outcome.rows[-1]
        final = f"{last['gap']:.1e}" if problem.metric == "gap" else f"{last['accuracy']:.4f}"
        label = f"`{codec}`" + (" (best top-k)" if codec == best else "")
        lines.append(f"| {name} | {label} | {' | '.join(cells)} | {sent:.1%} | {final} |")
    return lines


def floor_lines(name: str, problem: Problem, outcomes: dict[str, Outcome]) -> list[str]:
    """The floors for GD-SEC with its defaults on one problem and seed: ≤ 1.2× GD's rounds
    and ≤ 20% of GD's uplink bits to the target, and, where top-k ran, fewer bits than top-k
    at its best ratio (among the top-k runs in `outcomes`)."""
    if not {"fp32", "gdsec"} <= outcomes.keys():
        return []
    gd, gdsec = outcomes["fp32"].reached(problem), outcomes["gdsec"].reached(problem)
    if gd is None or gdsec is None:
        return [f"- {name}: {'GD' if gd is None else 'GD-SEC'} did not reach the target: floors not met"]
    rounds = gdsec["round"] / gd["round"]
    bits = gdsec["cumulative_uplink_bytes"] / gd["cumulative_uplink_bytes"]
    parts = [
        f"{gdsec['round']:.0f} rounds = {rounds:.2f}× GD's {gd['round']:.0f} "
        f"(≤ 1.2×: {'met' if rounds <= 1.2 else 'NOT met'})",
        f"{uplink_mbit(gdsec):.3f} Mbit = {bits:.1%} of GD's (≤ 20%: {'met' if bits <= 0.2 else 'NOT met'})",
    ]
    best = best_topk(problem, outcomes)
    if best is not None:
        hit = outcomes[best].reached(problem)
        fewer = gdsec["cumulative_uplink_bytes"] < hit["cumulative_uplink_bytes"]
        parts.append(
            f"best top-k `{best}` {uplink_mbit(hit):.3f} Mbit (fewer: {'met' if fewer else 'NOT met'})"
        )
    elif any(c.startswith("topk:") for c in outcomes):
        parts.append(f"no top-k ratio of {TOPK_RATIOS} reached the target in {problem.rounds} rounds (met)")
    return [f"- {name}: " + "; ".join(parts)]


def floor_codecs(problem: Problem, outcomes: dict[str, Outcome]) -> tuple[str, ...]:
    """What the floors of another seed need: GD, GD-SEC and top-k at this seed's best ratio
    (its largest when none reached the target)."""
    topk = [c for c in problem.codecs if c.startswith("topk:")]
    best = best_topk(problem, outcomes) or (topk[-1] if topk else None)
    return tuple(c for c in problem.codecs if c in ("fp32", "gdsec") or c == best)


def plotted(problem: Problem, outcomes: dict[str, Outcome]) -> list[str]:
    """The runs drawn: the baselines, GD-SEC, and top-k at its best ratio (else its largest)."""
    topk = [c for c in problem.codecs if c.startswith("topk:")]
    best = best_topk(problem, outcomes) or (topk[-1] if topk else None)
    return [c for c in problem.codecs if c in BASELINES + GDSEC or c == best]


HEADER = [
    f"| problem | codec | {experiment.TARGET_COLUMNS} | entries sent | final gap or accuracy |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
]
SETUP = (
    "inline engine, K = 10 clients, every client in every round). The GD problems take the step 1/L, "
    "where `fp32` is plain GD. Targets: relative objective gap ≤ 1e-6 (synthetic), ≤ 1e-4 (digits), or "
    "test accuracy ≥ 0.9 for the federated run; rounds and uplink Mbit (all clients, headers included) "
    "are counted at the first round that meets it, ratios against `fp32`. Entries sent: model entries "
    "the payloads carried per client per round up to the target (else over the whole run), as a share "
    "of the model's, as the encoders reported them (`entries_sent`; LAG: `sent`)."
)


def comparison(args: argparse.Namespace, problems: dict[str, Problem], argv: list[str] | None) -> str:
    """The main experiment: every problem's codecs on the first seed; the floors on every seed."""
    rows, swept_rows, floors, plots = [], [], [], []
    first, *others = args.seeds
    for name, problem in problems.items():
        outcomes = run_problem(problem, first, args.out / f"seed{first}" / name, args.quiet)
        rows += table_rows(
            name, problem, outcomes, [c for c in problem.codecs if not c.startswith("gdsec:xi")]
        )
        swept = [c for c in XI_SWEEP.values() if c in outcomes]
        if len(swept) > 1:
            swept_rows += table_rows(name, problem, outcomes, swept)
        if name in FLOOR_PROBLEMS:
            floors += floor_lines(f"{name}, seed {first}", problem, outcomes)
            again = dataclasses.replace(problem, codecs=floor_codecs(problem, outcomes))
            for seed in others:
                more = run_problem(again, seed, args.out / f"seed{seed}" / name, args.quiet)
                floors += floor_lines(f"{name}, seed {seed}", again, more)
        if name in MAIN_PROBLEMS:
            directories = [args.out / f"seed{first}" / name / slug(c) for c in plotted(problem, outcomes)]
            plots.append(experiment.plot(args.docs, f"gdsec_{name}.png", directories))

    lines = [
        "## GD-SEC: sparsified gradient differences with error correction",
        "",
        f"Generated by `{experiment.command('gdsec_experiment.py', argv)}` (task and run seed {first} in "
        f"the tables; {SETUP}",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        *[f"- `{c}`: {what}" for c, what in CODECS.items()],
        "",
        *HEADER,
        *rows,
    ]
    if swept_rows:
        lines += [
            "",
            "GD-SEC's ξ sweep (threshold ξ·rms(Δ), ξ = 1.5 by default; ξ < 1 guarantees the "
            "contraction ‖e‖ ≤ ξ‖Δ‖, see `GDSECConfig.xi`):",
            "",
            *HEADER,
            *swept_rows,
        ]
    if floors:
        lines += [
            "",
            f"The floors, GD-SEC with its defaults (`gdsec`); seeds after the first run GD, "
            f"GD-SEC and top-k at seed {first}'s best ratio:",
            "",
            *floors,
        ]
    lines += ["", *plots]
    return experiment.publish(args.docs, "gdsec", "\n".join(lines))


def sweep(args: argparse.Namespace, problems: dict[str, Problem], argv: list[str] | None) -> str:
    """The sweeps behind `GDSECConfig`'s docstrings: ξ (XI_VALUES) and VARIANTS against GD, every seed."""
    rows = []
    for seed in args.seeds:
        for name, problem in problems.items():
            xis = [XI_SWEEP.get(x, f"gdsec:xi={x}") for x in XI_VALUES[name]]
            codecs = ("fp32", *xis, *(VARIANTS if name.startswith("synthetic") else ()))
            if args.codecs is not None:
                codecs = tuple(c for c in codecs if c in args.codecs)
            runs = dataclasses.replace(problem, codecs=codecs)
            outcomes = run_problem(runs, seed, args.out / "sweep" / f"seed{seed}" / name, args.quiet)
            rows += table_rows(f"{name}, seed {seed}", runs, outcomes, list(codecs))
    lines = [
        "## GD-SEC: ξ, β, value type and rule",
        "",
        f"Generated by `{experiment.command('gdsec_experiment.py', argv)}` (GD-SEC at each ξ, and on the "
        "synthetic problems the LAG-style rule at ξ = 1 and 2, β = 0.8 and 0.5, fp16 values and the "
        f"top-k rule at ratios 0.1 and 0.2, against GD; {SETUP}",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        "",
        *HEADER,
        *rows,
    ]
    return experiment.publish(args.docs, "gdsec-xi", "\n".join(lines))


def main(argv: list[str] | None = None) -> str:
    """Run the experiment (or, with --sweep, the sweeps); print and write its section; return it."""
    parser = experiment.parser(__doc__, out="results/gdsec", seeds=[0, 1, 2])
    parser.add_argument(
        "--problems", nargs="+", choices=list(PROBLEMS), help="default: all (--sweep: its own)"
    )
    parser.add_argument("--codecs", nargs="+", help="run only these of each problem's codecs (default: all)")
    parser.add_argument("--sweep", action="store_true", help="run the sweeps (section gdsec-xi) instead")
    args = parser.parse_args(argv)
    names = args.problems or list(XI_VALUES if args.sweep else PROBLEMS)
    problems = {}
    for name in names:
        p = PROBLEMS[name]
        codecs = tuple(c for c in p.codecs if args.codecs is None or c in args.codecs)
        problems[name] = dataclasses.replace(p, rounds=args.rounds or p.rounds, codecs=codecs)
    return (sweep if args.sweep else comparison)(args, problems, argv)


if __name__ == "__main__":
    main()
