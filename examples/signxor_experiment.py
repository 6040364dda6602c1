"""SignXOR vs scaled sign in distributed SGD: uplink bits to the same accuracy, on several problems.

K = 8 clients each compute one mini-batch gradient per round (TaskConfig(mode="gd"): Δ = lr·∇f_B);
FedAvg averages, so the server step is SGD's. The problems (`PROBLEMS`, --problems):

- fashion-mnist-cnn: a small CNN (5,162 weights) on Fashion-MNIST, IID (scikit-learn's 8×8
  digits when Debian's `dataset-fashion-mnist` files are absent), 500 rounds;
- digits-mlp-iid and digits-mlp-dirichlet: the MLP (4,810 weights) on the 8×8 digits, IID and
  Dirichlet(0.5) splits, 300 rounds;
- synthetic-logistic: logistic regression (1,001 weights) on synthetic data, 300 rounds.

Every problem runs scaled sign (EF-signSGD) and SignXOR with its default config, one-way (the
model broadcast as it is) and two-way (the server compresses its broadcast with the same codec
and its own error memory, `Compressed(downlink=)`): the floor's four runs; and SignXOR at λ = 2
(its rate-distortion rule on) one-way and on both links. With --extras the
first problem also runs fp32 (plain distributed SGD) and, two-way, SignXOR at λ = 2 and λ = 0.5
on the uplink only, with the paper's iid flip coder, and with momentum before the sign
(`momentum=β`, lr scaled by 1 − β).

Every bit is a real payload's (header included); flip rates are what the SignXOR encoders
report (`flips` over `signs`, columns stat_* and downlink_stat_* of rounds.csv), counted from
what they coded, not estimated. Accuracy is the test accuracy of the clients' model (the
replica), averaged over the last `--window` rounds: single rounds swing by points at these step
sizes. A run's target is scaled sign's final accuracy (the same direction) minus 0.5 points; a
run reaches it at the first round whose trailing mean does. Floor: SignXOR reaches it with at
most half of scaled sign's uplink bits there, on every problem, both directions.

It prints the tables, writes them to docs/RESULTS.md (section "signxor") and plots, per problem,
docs/signxor/<problem>_accuracy.png (accuracy vs cumulative uplink bits, vs rounds) and
docs/signxor/<problem>_flips.png (the measured flip rate per round).

    python examples/signxor_experiment.py [--problems fashion-mnist-cnn ...] [--extras] [--seed 0]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from flcomp.codecs import ModelSpec
from flcomp.sim import RunConfig, experiment, plot_runs
from flcomp.sim.apps import load_task
from flcomp.sim.experiment import Rows
from flcomp.tasks import TaskConfig
from flcomp.tasks.datasets import fashion_or_digits

BATCH = 64
CLIENTS = 8
MOMENTUM = 0.9
TARGET_DROP = 0.005
"""The floor: reach scaled sign's final accuracy minus 0.5 points with at most half its uplink bits."""
FLOOR = 0.5
"""SignXOR's uplink bits to the target may be at most this fraction of scaled sign's."""


@dataclass(frozen=True)
class Problem:
    """A task and its step size, shared by every run on it."""

    key: str
    task: TaskConfig
    rounds: int
    fp32_lr: float
    """Plain SGD's step size (the fp32 arm of --extras): the sign codecs' step can be too long
    for uncompressed SGD."""


def _task(dataset: str, model: str, lr: float, **split) -> TaskConfig:
    return TaskConfig(
        dataset=dataset, model=model, num_clients=CLIENTS, mode="gd", batch_size=BATCH, lr=lr, **split
    )


PROBLEMS = {
    p.key: p
    for p in [
        # lr 2: the best of 0.2, 0.5, 1, 2, 4 for scaled sign over 400–600 rounds in a sweep. Plain SGD:
        # final accuracy 0.55 at lr 1 and 0.60 at 0.5 (500 rounds); at 2 it collapsed to chance.
        Problem("fashion-mnist-cnn", _task(fashion_or_digits(), "cnn", 2.0), 500, 0.5),
        Problem("digits-mlp-iid", _task("digits", "mlp", 0.5), 300, 0.5),
        Problem(
            "digits-mlp-dirichlet", _task("digits", "mlp", 0.5, partition="dirichlet", alpha=0.5), 300, 0.5
        ),
        Problem("synthetic-logistic", _task("synthetic-logistic", "logreg", 0.5), 300, 0.5),
    ]
}
"""--problems' choices; the first is the one --extras runs its extra arms on."""


@dataclass(frozen=True)
class Arm:
    """One run on a problem."""

    key: str
    """Its results directory's name."""
    label: str
    codec: str
    downlink: str | None
    momentum: float = 0.0
    """β of the uplink codec; the run's learning rate is lr·(1 − β), the same step length."""
    fp32: bool = False
    """Whether it runs at the problem's fp32_lr."""

    def step_size(self, problem: Problem) -> float:
        """The clients' learning rate on `problem`."""
        return (problem.fp32_lr if self.fp32 else problem.task.lr) * (1 - self.momentum)

    @property
    def reference(self) -> str:
        """The key of the scaled-sign run of the same direction."""
        return "scaled_sign_two_way" if self.downlink else "scaled_sign"


FLOOR_ARMS = [
    Arm("scaled_sign", "scaled sign, one-way", "scaled_sign", None),
    Arm("signxor", "SignXOR, one-way", "signxor", None),
    Arm("scaled_sign_two_way", "scaled sign, two-way", "scaled_sign", "scaled_sign"),
    Arm("signxor_two_way", "SignXOR, two-way", "signxor", "signxor"),
    Arm("signxor_lam2", "SignXOR λ=2, one-way", "signxor:lam=2", None),
    Arm("signxor_lam2_both_two_way", "SignXOR λ=2 both links, two-way", "signxor:lam=2", "signxor:lam=2"),
]
"""Every problem's runs: SignXOR's default config against scaled sign, each direction (the floor),
and λ = 2, the rate-distortion rule on, one-way and on both links (the floor's table shows it too)."""
EXTRA_ARMS = [
    Arm("fp32", "fp32", "fp32", None, fp32=True),
    Arm("signxor_lam2_up_two_way", "SignXOR λ=2 uplink, λ=0 downlink, two-way", "signxor:lam=2", "signxor"),
    Arm("signxor_lam0.5_two_way", "SignXOR λ=0.5 uplink, two-way", "signxor:lam=0.5", "signxor"),
    Arm("signxor_iid_two_way", "SignXOR, iid coding, two-way", "signxor:coding=iid", "signxor:coding=iid"),
    Arm(
        "signxor_momentum_two_way",
        f"SignXOR, momentum {MOMENTUM}, two-way",
        f"signxor:momentum={MOMENTUM}",
        "signxor",
        MOMENTUM,
    ),
]
"""--extras, on the first problem: the knobs. λ and momentum apply to the uplink (the clients'
rate-distortion step and optimiser), the coding to both links."""


def flip_rates(rows: Rows) -> dict[str, np.ndarray]:
    """Per training round: "round", and the measured flip rates "uplink_rate" (flips over sign
    entries, summed over the clients) and "downlink_rate" (the broadcast's), from the SignXOR
    encoders' `flips` and `signs` in rounds.csv; NaN where nothing was flip-coded (other codecs,
    and round 1's downlink, whose key frames carry the replica, not flips)."""
    rows = experiment.trained(rows)
    rates = {"round": np.array([r["round"] for r in rows], np.float64)}
    for side, prefix in (("uplink", "stat_"), ("downlink", "downlink_stat_")):
        flips = np.array([r.get(f"{prefix}flips") or 0.0 for r in rows], np.float64)
        signs = np.array([r.get(f"{prefix}signs") or 0.0 for r in rows], np.float64)
        rates[f"{side}_rate"] = np.divide(flips, signs, out=np.full(len(rows), np.nan), where=signs > 0)
    return rates


def mean_rate(rates: np.ndarray) -> float:
    """The mean of the measured rates (NaN when none was measured)."""
    measured = rates[np.isfinite(rates)]
    return float(measured.mean()) if measured.size else float("nan")


@dataclass
class Outcome:
    """One run's numbers, from its results directory."""

    arm: Arm
    lr: float
    accuracy: np.ndarray
    """Trailing-mean test accuracy per training round."""
    uplink_bits: np.ndarray
    """Cumulative, per training round (all clients)."""
    total_bits: np.ndarray
    entries: int
    uplink_flip_rate: float
    downlink_flip_rate: float

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    def bits_per_entry(self, bits: np.ndarray) -> float:
        """Per client, per round, per weight."""
        return float(bits[-1]) / (CLIENTS * self.entries * len(bits))

    def to_target(self, target: float) -> dict | None:
        """The first round whose trailing-mean accuracy reaches `target`, with cumulative bits."""
        reached = self.accuracy >= target
        if not reached.any():
            return None
        i = int(np.argmax(reached))
        return {"round": i + 1, "uplink_bits": self.uplink_bits[i], "total_bits": self.total_bits[i]}


def outcome(arm: Arm, lr: float, rounds: Rows, window: int, entries: int) -> Outcome:
    rows = experiment.trained(rounds)
    up = np.cumsum([8 * r["uplink_bytes"] for r in rows], dtype=np.float64)
    down = np.cumsum([8 * (r["downlink_bytes"] or 0) for r in rows], dtype=np.float64)
    flips = flip_rates(rounds)
    later = flips["round"] >= 2  # round 1 sends every sign against the initial all-+1 ones
    return Outcome(
        arm,
        lr,
        experiment.trailing_mean(np.array([r["accuracy"] for r in rows]), window),
        up,
        up + down,
        entries,
        mean_rate(flips["uplink_rate"][later]),
        mean_rate(flips["downlink_rate"][later]),
    )


def target_of(outcomes: dict[str, Outcome], arm: Arm) -> float:
    """Scaled sign's final accuracy in `arm`'s direction minus 0.5 points."""
    return outcomes[arm.reference].final_accuracy - TARGET_DROP


def uplink_ratio(outcomes: dict[str, Outcome], arm: Arm) -> float | None:
    """`arm`'s uplink bits to its target over scaled sign's (None: either did not reach it)."""
    target = target_of(outcomes, arm)
    hit, base = outcomes[arm.key].to_target(target), outcomes[arm.reference].to_target(target)
    return None if hit is None or base is None else hit["uplink_bits"] / base["uplink_bits"]


FLOOR_ROWS = [
    ("one-way", "signxor"),
    ("two-way", "signxor_two_way"),
    ("one-way, λ=2", "signxor_lam2"),
    ("two-way, λ=2 both links", "signxor_lam2_both_two_way"),
]
"""The floor table's rows per problem: (direction, arm key); the first two are the floor's."""


def floor_table(results: dict[str, dict[str, Outcome]]) -> list[str]:
    """One row per problem and `FLOOR_ROWS` entry: SignXOR against scaled sign."""
    lines = [
        "| problem | direction | scaled sign final accuracy | SignXOR final accuracy "
        "| scaled sign uplink bits to target | SignXOR uplink bits to target | SignXOR / scaled sign "
        "| ≤ 50% |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for problem, outcomes in results.items():
        for direction, key in FLOOR_ROWS:
            o = outcomes[key]
            base = outcomes[o.arm.reference]
            target = target_of(outcomes, o.arm)
            hit, base_hit = o.to_target(target), base.to_target(target)
            ratio = uplink_ratio(outcomes, o.arm)
            lines.append(
                f"| {problem} | {direction} | {base.final_accuracy:.4f} | {o.final_accuracy:.4f} "
                f"| {base_hit['uplink_bits']:.3g} | "
                + (f"{hit['uplink_bits']:.3g} | {ratio:.1%}" if hit else "not reached | —")
                + f" | {'met' if ratio is not None and ratio <= FLOOR else 'NOT met'} |"
            )
    return lines


def problem_table(outcomes: dict[str, Outcome]) -> list[str]:
    """Every run on one problem."""
    lines = [
        "| run | uplink codec | downlink codec | lr | final accuracy | uplink bits/entry "
        "| downlink bits/entry | rounds to target | uplink bits to target | total bits to target "
        "| uplink vs scaled sign | flip rate up | flip rate down |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes.values():
        hit = o.to_target(target_of(outcomes, o.arm))
        ratio = uplink_ratio(outcomes, o.arm)
        cells = (
            [f"{hit['round']}", f"{hit['uplink_bits']:.3g}", f"{hit['total_bits']:.3g}"]
            + [f"{ratio:.1%}" if ratio is not None else "—"]
            if hit
            else ["not reached", "—", "—", "—"]
        )
        rates = [f"{r:.3f}" if np.isfinite(r) else "—" for r in (o.uplink_flip_rate, o.downlink_flip_rate)]
        lines.append(
            f"| {o.arm.label} | `{o.arm.codec}` | `{o.arm.downlink or 'none (fp32 model)'}` "
            f"| {o.lr:g} | {o.final_accuracy:.4f} | {o.bits_per_entry(o.uplink_bits):.3f} "
            f"| {o.bits_per_entry(o.total_bits - o.uplink_bits):.3f} "
            f"| {' | '.join(cells)} | {' | '.join(rates)} |"
        )
    return lines


def report(results: dict[str, dict[str, Outcome]], args: argparse.Namespace, argv: list[str] | None) -> str:
    """The Markdown section: setup, the floor's table, each problem's runs."""
    met = all(
        (r := uplink_ratio(outcomes, outcomes[key].arm)) is not None and r <= FLOOR
        for outcomes in results.values()
        for _, key in FLOOR_ROWS[:2]
    )
    lines = [
        "## SignXOR vs scaled sign (distributed SGD), one-way and two-way",
        "",
        f"{CLIENTS} clients, one mini-batch gradient (batch {BATCH}) per round, FedAvg, seed {args.seed}; "
        "lr: the clients' step size (× (1 − β) with momentum β). Accuracy: test accuracy averaged over "
        f"the last {args.window} rounds. Bits: payload bytes, headers included (the downlink's include "
        "round 1's key frames); bits/entry: per client, per round, per weight. Target: scaled sign's "
        "final accuracy in the same direction − 0.5 points. Flip rates: flips in the payloads / "
        "entries, mean over rounds ≥ 2.",
        "",
        f"Generated by `{experiment.command('signxor_experiment.py', argv)}`.",
        "",
        f"Floor (SignXOR's default reaches the target with ≤ {FLOOR:.0%} of scaled sign's uplink bits, "
        f"every problem, both directions): {'met' if met else 'NOT met'}.",
        "",
        *floor_table(results),
    ]
    for key, outcomes in results.items():
        problem = PROBLEMS[key]
        first = next(iter(outcomes.values()))
        lines += [
            "",
            f"### {key}: {problem.task.model} ({first.entries:,} weights) on {problem.task.dataset}, "
            f"{problem.task.partition}"
            + (f"({problem.task.alpha:g})" if problem.task.partition == "dirichlet" else "")
            + f", {len(first.accuracy)} rounds",
            "",
            *problem_table(outcomes),
            "",
            f"![{key}: accuracy vs cumulative uplink bits](signxor/{key}_accuracy.png)",
            "",
            f"![{key}: flip rate per round](signxor/{key}_flips.png)",
        ]
    return "\n".join(lines)


def plot_flips(runs: dict[str, Rows], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rows in runs.items():
        flips = flip_rates(rows)
        if not np.isfinite(flips["uplink_rate"]).any():
            continue
        (line,) = ax.plot(
            flips["round"], flips["uplink_rate"], lw=1, label=f"{label}: uplink (mean of clients)"
        )
        if np.isfinite(flips["downlink_rate"]).any():
            ax.plot(
                flips["round"],
                flips["downlink_rate"],
                lw=1,
                ls="--",
                color=line.get_color(),
                label=f"{label}: downlink",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("flip rate (flips sent / entries)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def run_problem(problem: Problem, arms: list[Arm], args: argparse.Namespace) -> dict[str, Outcome]:
    """Run (or, with --resume, read) `arms` on `problem`; plot them; key → its outcome."""
    task = replace(problem.task, seed=args.seed)
    entries = ModelSpec.of(load_task(task).initial_arrays()).size
    rounds = args.rounds or problem.rounds
    runs = [
        experiment.Run(
            arm.key,
            RunConfig(
                task=replace(task, lr=arm.step_size(problem)),
                codec=arm.codec,
                downlink=arm.downlink,
                rounds=rounds,
                seed=args.seed,
                engine="inline",
            ),
            args.out / problem.key / arm.key,
        )
        for arm in arms
    ]
    rows = experiment.run_all(runs, args.quiet, resume=args.resume)
    plot_runs([r.directory for r in runs], args.docs / "signxor" / f"{problem.key}_accuracy.png")
    plot_flips({arm.label: rows[arm.key] for arm in arms}, args.docs / "signxor" / f"{problem.key}_flips.png")
    return {
        arm.key: outcome(arm, arm.step_size(problem), rows[arm.key], args.window, entries) for arm in arms
    }


def main(argv: list[str] | None = None) -> str:
    parser = experiment.parser(__doc__, out="results/signxor")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--extras", action="store_true", help="the extra arms on the first problem given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=20, help="rounds averaged for accuracy (default 20)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of the same config")
    args = parser.parse_args(argv)

    results = {
        key: run_problem(PROBLEMS[key], FLOOR_ARMS + (EXTRA_ARMS if args.extras and n == 0 else []), args)
        for n, key in enumerate(args.problems)
    }
    return experiment.publish(args.docs, "signxor", report(results, args, argv))


if __name__ == "__main__":
    main()
