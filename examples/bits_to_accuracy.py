"""Bits to accuracy: every codec of the project on one federated task, counting every bit both ways.

Fashion-MNIST, the CNN, 100 clients split by label with Dirichlet(0.5), 10 clients a round (the
same seeded cohorts for every codec), FedAvg, 2 local epochs, inline engine. Every registered
codec (all of them run in federated mode) with its default config on the uplink (the model is
sent as it is), and the codecs of `TWO_WAY` run once more with the same codec on the downlink
(the server's broadcast, `flcomp.strategies.downlink`). Bits are the payloads' real bytes as
rounds.csv records them: uplink (every accepted client's payload) plus downlink (the model,
payloads or key frame, and side information).

Two downlink deliveries (`Compressed`'s `downlink_delivery`), each against fp32 under the same:
- unicast (Flower's): every instructed client's message is its own transmission. With 10 of
  100 clients a round a client is rarely in two consecutive cohorts: a two-way client catches
  up on the payloads it missed, and gets a key frame (the whole replica) when it is new or
  they outweigh one, so the 100 first contacts alone cost 100 models.
- broadcast: one transmission a round reaches all 100 clients (a cell's base station), so the
  starting model and each round's payload count once; runs "<codec> broadcast". The model
  trains exactly as under unicast (the same replicas, bit for bit): only what is counted differs.

Accuracy is the test accuracy averaged over the last `--window` rounds. The target is fp32's
final accuracy minus 0.5 points; a run reaches it at the first round whose trailing mean does,
and the table gives the cumulative total and uplink bits there, and how many times fewer than
fp32's under the same delivery. Floor: at least one codec reaches the target with ≥ 100× fewer
total bits than fp32.

Runs are cached: each in <out>/<run>, and a run whose directory holds a finished run of the
same config is read, not rerun (--fresh reruns them), so an interrupted experiment goes on
where it stopped. They run in the order the floor needs them: fp32, fp32 broadcast, the
two-way broadcasts, then the one-way runs and the two-way unicasts. It prints the table,
writes it to docs/RESULTS.md (section "bits_to_accuracy") and plots
docs/bits_to_accuracy/accuracy_vs_bits.png.

    python examples/bits_to_accuracy.py [--rounds 300] [--codecs fp32 topk ...] [--two-way stc ...]
        [--broadcast stc ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flcomp.cli import slug
from flcomp.codecs import available
from flcomp.sim import RunConfig, experiment
from flcomp.sim.experiment import Rows
from flcomp.tasks import TaskConfig

REFERENCE = "fp32"
"""The uncompressed run: it sets the target and the bits every ratio is taken against."""
TARGET_DROP = 0.005
"""The target is the reference's final accuracy minus this (0.5 points)."""
FLOOR_RATIO = 100.0
"""The floor: some run reaches the target with this many times fewer total bits than fp32."""
TWO_WAY = ["fp16", "qsgd", "topk", "stc", "scaled_sign", "signxor", "pipeline"]
"""Codecs also run with themselves on the downlink (the server's error memory where the codec
has error feedback), under each delivery. LGC plans rounds across clients and has no
single-decoder downlink."""


@dataclass(frozen=True)
class Arm:
    """One run of the experiment."""

    key: str
    """Its name in the table and its results directory's (slugged)."""
    codec: str
    downlink: str | None
    """The broadcast's codec; None: the model is sent as it is."""
    delivery: str = "unicast"
    """`Compressed`'s downlink_delivery: what the downlink's bytes count."""

    @property
    def reference(self) -> str:
        """The key of fp32's run under this arm's delivery."""
        return REFERENCE if self.delivery == "unicast" else f"{REFERENCE} broadcast"


def arms(codecs: list[str], two_way: list[str], broadcast: list[str]) -> list[Arm]:
    """fp32 under both deliveries, the two-way broadcasts, then each codec one way and the two-way
    unicasts (in the order given): the runs the floor needs come first."""
    one = [c for c in codecs if c != REFERENCE]
    return (
        [Arm(REFERENCE, REFERENCE, None), Arm(f"{REFERENCE} broadcast", REFERENCE, None, "broadcast")]
        + [Arm(f"{c} two-way broadcast", c, c, "broadcast") for c in broadcast]
        + [Arm(c, c, None) for c in one]
        + [Arm(f"{c} two-way", c, c) for c in two_way]
    )


@dataclass(frozen=True)
class Curve:
    """A run's trained rounds: trailing-mean accuracy and cumulative bits, per round."""

    rounds: np.ndarray
    accuracy: np.ndarray
    uplink_bits: np.ndarray
    total_bits: np.ndarray

    @classmethod
    def of(cls, rows: Rows, window: int) -> Curve:
        rows = experiment.trained(rows)
        up = np.cumsum([8 * r["uplink_bytes"] for r in rows], dtype=np.float64)
        down = np.cumsum([8 * (r["downlink_bytes"] or 0) for r in rows], dtype=np.float64)
        accuracy = experiment.trailing_mean(np.array([r["accuracy"] for r in rows]), window)
        return cls(np.array([r["round"] for r in rows]), accuracy, up, up + down)

    @property
    def final_accuracy(self) -> float:
        return float(self.accuracy[-1])

    def to_target(self, target: float) -> dict | None:
        """Round, uplink and total bits at the first round whose trailing mean reaches `target`."""
        reached = self.accuracy >= target
        if not reached.any():
            return None
        i = int(np.argmax(reached))
        return {
            "round": int(self.rounds[i]),
            "uplink_bits": self.uplink_bits[i],
            "total_bits": self.total_bits[i],
        }


def target_of(reference: Curve) -> float:
    """fp32's final (trailing-mean) accuracy minus 0.5 points."""
    return reference.final_accuracy - TARGET_DROP


def fewer(base: dict | None, hit: dict | None, bits: str) -> float | None:
    """How many times fewer `bits` ("uplink_bits", "total_bits") `hit` took than `base`."""
    return None if base is None or hit is None else base[bits] / hit[bits]


def floor(arms_: list[Arm], curves: dict[str, Curve], target: float) -> tuple[str | None, float | None]:
    """The run (not a reference) with the most times fewer total bits to the target than fp32
    under its delivery, and that ratio."""
    ratios = {
        a.key: fewer(curves[a.reference].to_target(target), curves[a.key].to_target(target), "total_bits")
        for a in arms_
        if a.key != a.reference
    }
    ratios = {k: r for k, r in ratios.items() if r is not None}
    best = max(ratios, key=ratios.get, default=None)
    return best, ratios.get(best)


def ratio_cell(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.3g}×"


def table(arms_: list[Arm], curves: dict[str, Curve], target: float) -> list[str]:
    lines = [
        "| run | uplink codec | downlink codec | delivery | final accuracy | rounds to target "
        "| uplink Mbit to target | total Mbit to target | fewer total bits than fp32 "
        "| fewer uplink bits than fp32 | downlink share of total |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm in arms_:
        c, base = curves[arm.key], curves[arm.reference].to_target(target)
        hit = c.to_target(target)
        cells = (
            [f"{hit['round']}", f"{hit['uplink_bits'] / 1e6:.3f}", f"{hit['total_bits'] / 1e6:.3f}"]
            + [ratio_cell(fewer(base, hit, "total_bits")), ratio_cell(fewer(base, hit, "uplink_bits"))]
            if hit
            else ["not reached", "—", "—", "—", "—"]
        )
        share = 1 - c.uplink_bits[-1] / c.total_bits[-1]
        lines.append(
            f"| {arm.key} | `{arm.codec}` | `{arm.downlink or 'none (fp32 model)'}` | {arm.delivery} "
            f"| {c.final_accuracy:.4f} "
            f"| {' | '.join(cells)} | {share:.1%} |"
        )
    return lines


def plot(arms_: list[Arm], curves: dict[str, Curve], target: float, output: Path) -> None:
    """Trailing-mean accuracy against cumulative total bits and against uplink bits (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    colours = plt.get_cmap("tab20").colors + plt.get_cmap("tab20b").colors
    # A two-way run takes its codec's one-way colour: dashed under unicast, dotted under broadcast.
    index = {
        arm.codec: i for i, arm in enumerate(arms_) if arm.downlink is None and arm.delivery == "unicast"
    }
    for ax, bits, label in [
        (axes[0], "total_bits", "cumulative total bits, uplink + downlink (all clients)"),
        (axes[1], "uplink_bits", "cumulative uplink bits (all clients)"),
    ]:
        for i, arm in enumerate(arms_):
            c = curves[arm.key]
            style = ":" if arm.delivery == "broadcast" else "--" if arm.downlink else "-"
            colour = colours[index.get(arm.codec, i) % len(colours)]
            ax.plot(getattr(c, bits), c.accuracy, style, lw=1.2, color=colour, label=arm.key)
        ax.axhline(target, color="k", lw=0.8, ls="-.", label="target")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (trailing mean)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03 * (1 + len(labels) // 6), 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


PLOT = Path("bits_to_accuracy") / "accuracy_vs_bits.png"
"""The plot, relative to --docs."""


def report(
    arms_: list[Arm], curves: dict[str, Curve], args: argparse.Namespace, argv: list[str] | None
) -> str:
    target = target_of(curves[REFERENCE])
    best, ratio = floor(arms_, curves, target)
    met = ratio is not None and ratio >= FLOOR_RATIO
    lines = [
        "## Bits to accuracy: every codec, both directions counted",
        "",
        f"{args.dataset}, CNN, {args.clients} clients split Dirichlet({args.alpha}), {args.fraction:g} of "
        f"them a round (seeded cohorts, the same for every run), FedAvg, {args.rounds} rounds, seed "
        f"{args.seed}, inline engine. Every codec with its default config; '<codec> two-way': the same "
        "codec on the downlink. Bits: payload bytes as rounds.csv records them (headers, key frames "
        f"and side information included), all clients. Accuracy: test accuracy averaged over the last "
        f"{args.window} rounds. Target: fp32's final accuracy − 0.5 points = {target:.4f}. Delivery "
        "unicast: each client's message counted (Flower's); broadcast: one transmission a round "
        "reaches every client, counted once (each ratio is against fp32 under the same delivery).",
        "",
        f"Generated by `{experiment.command('bits_to_accuracy.py', argv)}`.",
        "",
        *table(arms_, curves, target),
        "",
        f"Floor (a codec reaches the target with ≥ {FLOOR_RATIO:g}× fewer total bits than fp32 under "
        "the same delivery): "
        + ("met" if met else "NOT met")
        + (f"; best: {best}, {ratio:.3g}× fewer." if best else "; no codec reached the target."),
    ]
    lines += ["", f"![accuracy vs cumulative bits]({PLOT.as_posix()})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = experiment.parser(__doc__, out="results/bits_to_accuracy", rounds=300)
    names = available()
    parser.add_argument(
        "--codecs", nargs="+", choices=names, default=names, help="one-way runs (fp32 always)"
    )
    parser.add_argument(
        "--two-way", nargs="*", choices=names, default=TWO_WAY, help=f"two-way, unicast (default: {TWO_WAY})"
    )
    parser.add_argument(
        "--broadcast",
        nargs="*",
        choices=names,
        default=TWO_WAY,
        help="two-way, broadcast (default: the same)",
    )
    parser.add_argument("--dataset", choices=["fashion-mnist", "digits"], default="fashion-mnist")
    parser.add_argument("--data-dir", help="Fashion-MNIST's IDX files (see TaskConfig.data_dir)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--fraction", type=float, default=0.1, help="clients instructed each round")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=10, help="rounds averaged for accuracy (default 10)")
    parser.add_argument("--fresh", action="store_true", help="rerun runs whose finished results exist")
    args = parser.parse_args(argv)

    task = TaskConfig(
        dataset=args.dataset,
        model="cnn",
        num_clients=args.clients,
        partition="dirichlet",
        alpha=args.alpha,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    arms_ = arms(args.codecs, args.two_way, args.broadcast)
    runs = [
        experiment.Run(
            arm.key,
            RunConfig(
                task=task,
                codec=arm.codec,
                downlink=arm.downlink,
                downlink_delivery=arm.delivery,
                rounds=args.rounds,
                fraction=args.fraction,
                seed=args.seed,
                engine="inline",
            ),
            args.out / slug(arm.key),
        )
        for arm in arms_
    ]
    rows = experiment.run_all(runs, args.quiet, resume=not args.fresh)
    curves = {arm.key: Curve.of(rows[arm.key], args.window) for arm in arms_}
    markdown = report(arms_, curves, args, argv)
    plot(arms_, curves, target_of(curves[REFERENCE]), args.docs / PLOT)
    return experiment.publish(args.docs, "bits_to_accuracy", markdown)


if __name__ == "__main__":
    main()
