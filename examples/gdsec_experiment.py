"""GD-SEC (issue 6) in distributed-GD mode, against GD, LAG, top-k with error feedback and QSGD.

Distributed GD: K = 10 clients, one full-batch gradient step a round (Δ = lr·∇f_k; the server
averages, so this is GD on f = mean f_k), step lr = 1/L:

- synthetic-linear: least squares, d = 1000 + bias, 5000 samples (known optimum), gap 1e-6;
- synthetic-logistic: logistic regression, same sizes, λ = 1e-3 (known optimum), gap 1e-6;
- digits-logreg: multinomial logistic regression on scikit-learn's digits (650 parameters,
  λ = 0.1, as in the TPC experiment; optimum by `flcomp.tasks.reference`), gap 1e-4;

and GD-SEC's federated extension (digits-cnn-federated: the small CNN, 5 local epochs of
mini-batch SGD, as in the TPC experiment), where test accuracy ≥ 0.9 takes the gap's place.

For every problem and codec it reports the rounds and uplink bits (all clients, headers
included) to the target, as multiples of GD's (`fp32`), and the fraction of model entries
the clients sent, counted from the payloads themselves (`count_components`). Top-k runs at
several ratios, and the one with the fewest bits to the target is the floors' "best tuned
ratio"; GD-SEC runs at several ξ. Issue 6's floors are checked on both synthetic problems
for every seed (the tables show the first).
It prints a markdown section, writes it to docs/RESULTS.md (section "gdsec") and one plot
per problem (gap or accuracy vs cumulative uplink bits and vs rounds) to docs/gdsec_<problem>.png.

    python examples/gdsec_experiment.py                 # everything (~30 min on 2 cores)
    python examples/gdsec_experiment.py --seeds 0 --rounds 2 --problems synthetic-linear \
        --out /tmp/gdsec --results /tmp/gdsec/RESULTS.md --plots /tmp/gdsec   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Message

from flcomp.cli import slug
from flcomp.codecs import Codec, ModelSpec
from flcomp.codecs.coding.positions import decode_positions
from flcomp.codecs.coding.sparse import read_values
from flcomp.codecs.wire import unpack
from flcomp.protocol import records
from flcomp.sim import RunConfig, load_run, plot_runs, run
from flcomp.sim.apps import load_task
from flcomp.sim.inline import InlineGrid
from flcomp.sim.problems import Problem as TargetProblem
from flcomp.sim.problems import uplink_mbit
from flcomp.sim.results import write_section
from flcomp.tasks import TaskConfig

GD = dict(mode="gd", batch_size=0, num_clients=10)
"""Distributed GD: one full-batch step per round on each of 10 clients (lr set to 1/L)."""
TOPK_RATIOS = (0.1, 0.3, 0.5, 0.9, 0.95)
"""Top-k's sweep: with error feedback it plateaus above 1e-6 unless nearly everything is sent."""
XI_SWEEP = {10: "gdsec:xi=10", 20: "gdsec:xi=20", 30: "gdsec", 40: "gdsec:xi=40", 60: "gdsec:xi=60"}
"""GD-SEC's ξ sweep: ξ → codec (30 is the default)."""


@dataclass(frozen=True)
class Problem(TargetProblem):
    """A problem with the codecs that run on it."""

    codecs: tuple[str, ...] = ()


BASELINES = ("fp32", "lag", "lag:xi=100", "qsgd")
GDSEC = ("gdsec", "gdsec:value_dtype=float16")
XI_SMALL = ("gdsec:xi=10", "gdsec:xi=20")
"""The part of ξ's sweep run on the real-data problems (ξ ≤ K matters where clients are alike)."""
SWEEPS = tuple(f"topk:ratio={r}" for r in TOPK_RATIOS) + tuple(c for c in XI_SWEEP.values() if c not in GDSEC)
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
        codecs=BASELINES + GDSEC + ("topk:ratio=0.1", "topk:ratio=0.5", "topk:ratio=0.9", *XI_SMALL),
    ),
    "digits-cnn-federated": Problem(
        "federated extension: digits CNN, 5 local epochs of SGD (batch 16, lr 0.2)",
        TaskConfig(dataset="digits", model="cnn", mode="federated", local_epochs=5, batch_size=16, lr=0.2),
        rounds=30,
        metric="accuracy",
        target=0.9,
        codecs=("fp32", "lag", "topk:ratio=0.1", "gdsec", XI_SMALL[0]),
        step_one_over_l=False,
    ),
}
FLOOR_PROBLEMS = ("synthetic-linear", "synthetic-logistic")
CODECS = {
    "fp32": "uncompressed (GD in the GD problems)",
    "lag": "LAG, the registered default (ξ = 1, D = 10)",
    "lag:xi=100": "LAG with ξ = K² = 100, LAG-WK's ξ = 1 for a server that averages (see the TPC section)",
    "qsgd": "QSGD, the registered default (s = 16, buckets of 512, zstd, no error feedback)",
    "topk:ratio=r": "top-k with error feedback, a fraction r of each tensor's entries",
    "gdsec": "GD-SEC with its defaults (LAG-style threshold, ξ = 30, β = 1, fp32 values)",
    "gdsec:value_dtype=float16": "GD-SEC with fp16 values",
    "gdsec:xi=x": "GD-SEC with ξ = x",
}
"""What each row is (r and x stand for the sweeps' values)."""


def count_components(codec: Codec, spec: ModelSpec, payload: bytes) -> int:
    """How many model entries a payload carries, read from its body: the count of each
    tensor for the sparse codecs (GD-SEC, top-k: u32 m | positions | m values), every entry
    or none for LAG (u8 sent | every tensor), every entry for the dense ones."""
    if codec.name not in ("gdsec", "topk", "lag"):
        return spec.size
    _, body = unpack(payload, codec.compressor_class.codec_id, len(spec))
    if codec.name == "lag":
        return spec.size * body.struct("B")[0]
    total = 0
    for t in spec.tensors:
        (m,) = body.struct("I")
        decode_positions(body, m, t.size)
        read_values(body, codec.config.value_dtype, m)
        total += m
    body.finish()
    return total


def _payload(reply: Message) -> bytes | None:
    if reply.has_error():
        return None
    for record in reply.content.array_records.values():
        if records.PAYLOAD in record:
            return record[records.PAYLOAD].data
    return None


@contextmanager
def counting_components(codec: Codec, spec: ModelSpec) -> Iterator[list[tuple[int, int]]]:
    """Within the block, every training round of an inline run appends (entries sent, payloads)
    to the yielded list, summed over its clients and counted from the payloads that cross the
    grid. It observes InlineGrid.send_and_receive and changes nothing."""
    rounds: list[tuple[int, int]] = []
    original = InlineGrid.send_and_receive

    def send_and_receive(grid, messages, *, timeout=None):
        replies = original(grid, messages, timeout=timeout)
        payloads = [p for p in map(_payload, replies) if p is not None]
        if payloads:
            rounds.append((sum(count_components(codec, spec, p) for p in payloads), len(payloads)))
        return replies

    InlineGrid.send_and_receive = send_and_receive
    try:
        yield rounds
    finally:
        InlineGrid.send_and_receive = original


@dataclass(frozen=True)
class Outcome:
    """One run: its rounds.csv rows and the entries its payloads carried per round."""

    rows: list[dict]
    sent: list[tuple[int, int]]
    """(entries sent, payloads) per training round, from `counting_components`."""
    size: int
    """d, the model's entry count."""

    def reached(self, problem: Problem) -> dict | None:
        """The first trained round that meets the problem's target, or None."""
        return problem.reached(self.rows)

    def fraction_sent(self, rounds: int) -> float:
        """Entries sent per client per round over the first `rounds` rounds, as a fraction of d."""
        sent = self.sent[:rounds]
        return sum(s for s, _ in sent) / (self.size * sum(n for _, n in sent))


def run_problem(problem: Problem, seed: int, out: Path, quiet: bool) -> dict[str, Outcome]:
    """Run every codec of `problem` with task and run seed `seed`; codec → its outcome."""
    task = problem.task_for(seed)
    spec = ModelSpec.of(load_task(task).initial_arrays())
    outcomes = {}
    for codec in problem.codecs:
        directory = out / slug(codec)
        with counting_components(Codec.parse(codec), spec) as sent:
            run(
                RunConfig(task=task, codec=codec, rounds=problem.rounds, seed=seed, engine="inline"),
                directory,
                not quiet,
            )
        outcomes[codec] = Outcome(load_run(directory)[1], sent, spec.size)
    return outcomes


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
        cells = ["not reached", "", "", ""]
        if hit is not None:
            cells = [f"{hit['round']:.0f}", "", f"{uplink_mbit(hit):.3f}", ""]
            if base is not None:
                cells[1] = f"{hit['round'] / base['round']:.2f}"
                cells[3] = f"{hit['cumulative_uplink_bytes'] / base['cumulative_uplink_bytes']:.1%}"
        sent = outcome.fraction_sent(int(hit["round"]) if hit else len(outcome.sent))
        last = outcome.rows[-1]
        final = f"{last['gap']:.1e}" if problem.metric == "gap" else f"{last['accuracy']:.4f}"
        label = f"`{codec}`" + (" (best top-k)" if codec == best else "")
        lines.append(f"| {name} | {label} | {' | '.join(cells)} | {sent:.1%} | {final} |")
    return lines


def floor_lines(name: str, problem: Problem, outcomes: dict[str, Outcome]) -> list[str]:
    """Issue 6's floors for GD-SEC with its defaults on one problem and seed: ≤ 1.2× GD's rounds
    and ≤ 20% of GD's uplink bits to the target, and fewer bits than top-k at its best ratio
    (among the top-k runs in `outcomes`)."""
    if not {"fp32", "gdsec"} <= outcomes.keys():
        return []
    gd, gdsec = outcomes["fp32"].reached(problem), outcomes["gdsec"].reached(problem)
    if gd is None or gdsec is None:
        return [f"- {name}: {'GD' if gd is None else 'GD-SEC'} did not reach the target: floors not met"]
    rounds = gdsec["round"] / gd["round"]
    bits = gdsec["cumulative_uplink_bytes"] / gd["cumulative_uplink_bytes"]
    best = best_topk(problem, outcomes)
    if best is None:
        topk = f"no top-k ratio of {TOPK_RATIOS} reached the target in {problem.rounds} rounds (met)"
    else:
        hit = outcomes[best].reached(problem)
        fewer = gdsec["cumulative_uplink_bytes"] < hit["cumulative_uplink_bytes"]
        topk = f"best top-k `{best}` {uplink_mbit(hit):.3f} Mbit (fewer: {'met' if fewer else 'NOT met'})"
    return [
        f"- {name}: {gdsec['round']:.0f} rounds = {rounds:.2f}× GD's {gd['round']:.0f} "
        f"(≤ 1.2×: {'met' if rounds <= 1.2 else 'NOT met'}); {uplink_mbit(gdsec):.3f} Mbit = {bits:.1%} "
        "of GD's "
        f"(≤ 20%: {'met' if bits <= 0.2 else 'NOT met'}); {topk}"
    ]


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


def main(argv: list[str] | None = None) -> str:
    """Run the experiment; print and write its section and plots; return the section."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="the first makes the tables; all check the floors",
    )
    parser.add_argument("--rounds", type=int, help="rounds of every run (default: each problem's own)")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--codecs", nargs="+", help="run only these of each problem's codecs (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/gdsec"), help="runs' results directories")
    parser.add_argument("--results", type=Path, default=Path("docs/RESULTS.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="directory of the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    problems = {}
    for name in args.problems:
        p = PROBLEMS[name]
        codecs = tuple(c for c in p.codecs if args.codecs is None or c in args.codecs)
        problems[name] = dataclasses.replace(p, rounds=args.rounds or p.rounds, codecs=codecs)

    rows, sweep, floors, plots = [], [], [], []
    first, *others = args.seeds
    for name, problem in problems.items():
        outcomes = run_problem(problem, first, args.out / f"seed{first}" / name, args.quiet)
        rows += table_rows(
            name, problem, outcomes, [c for c in problem.codecs if not c.startswith("gdsec:xi")]
        )
        swept = [c for c in XI_SWEEP.values() if c in outcomes]
        if len(swept) > 1:
            sweep += table_rows(name, problem, outcomes, swept)
        if name in FLOOR_PROBLEMS:
            floors += floor_lines(f"{name}, seed {first}", problem, outcomes)
            again = dataclasses.replace(problem, codecs=floor_codecs(problem, outcomes))
            for seed in others:
                more = run_problem(again, seed, args.out / f"seed{seed}" / name, args.quiet)
                floors += floor_lines(f"{name}, seed {seed}", again, more)
        directories = [args.out / f"seed{first}" / name / slug(c) for c in plotted(problem, outcomes)]
        plots.append(plot_runs(directories, args.plots / f"gdsec_{name}.png"))

    command = " ".join(["python examples/gdsec_experiment.py", *map(shlex.quote, argv)])
    header = (
        "| problem | codec | rounds to target | × fp32's rounds | uplink Mbit to target | of fp32's bits "
        "| entries sent | final gap or accuracy |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [
        "## GD-SEC: sparsified gradient differences with error correction (issue 6)",
        "",
        f"Generated by `{command}` (task and run seed {first} in the tables; inline engine, K = 10 "
        "clients, every client in every round). The GD problems take the step 1/L, where `fp32` is "
        "plain GD. Targets: relative objective gap ≤ 1e-6 (synthetic), ≤ 1e-4 (digits), or test "
        "accuracy ≥ 0.9 for the federated run; rounds and uplink Mbit (all clients, headers "
        "included) are counted at the first round that meets it, ratios against `fp32`. Entries "
        "sent: model entries the payloads carried per client per round up to the target (else over "
        "the whole run), as a share of the model's, read from the payloads' bodies.",
        "",
        *[f"- {name}: {p.label}; {p.rounds} rounds" for name, p in problems.items()],
        *[f"- `{c}`: {what}" for c, what in CODECS.items()],
        "",
        header,
        *rows,
    ]
    if sweep:
        lines += [
            "",
            "GD-SEC's ξ sweep (threshold (ξ/K)·‖w(t) − w(t−1)‖/√d, ξ = 30 by default; where the "
            "clients' gradients change alike, as on digits, what they drop adds up and ξ ≤ K keeps GD's "
            "rounds, see `GDSECConfig.xi`):",
            "",
        ]
        lines += [header, *sweep]
    if floors:
        lines += [
            "",
            f"Issue 6's floors, GD-SEC with its defaults (`gdsec`); seeds after the first run GD, "
            f"GD-SEC and top-k at seed {first}'s best ratio:",
            "",
            *floors,
        ]
    lines += ["", *[f"![{p.stem}]({os.path.relpath(p, args.results.parent)})" for p in plots]]
    section = "\n".join(lines)
    write_section(args.results, "gdsec", section)
    print(section)
    return section


if __name__ == "__main__":
    main()
