"""LGC against fp32 and top-k with error feedback: K = 8 clients, a CNN on Fashion-MNIST.

Distributed SGD as in the LGC paper (the "gd" mode: each round every client sends
the gradient step of one mini-batch, Δ = lr·∇f_B; the server averages and applies
momentum, Flower's FedAvgM), on IID and Dirichlet(0.5) partitions, with three
uplink codecs at the same top-k ratio ρ:

- fp32, the uncompressed reference;
- top-k with error feedback ("topk", ρ);
- LGC ("lgc", ρ): stage 1 plain, stage 2 values on the leader's index set while the
  server trains the autoencoder, stage 3 the leader's code and everyone's innovation.

Every run is Flower's ServerApp and ClientApp in one process (`flcomp.sim.inline`).
Bits are the payloads' real lengths. For LGC the encoder shipped to the leaders and
the plans (index sets, roles) are downlink side information, reported beside the
uplink; the encoder's share is what the clients' encoders report (the codec's
`encoder_bytes` stat, summed over a round's clients in the round's traffic), and the stage
of a round is LGC's schedule (`stage`). The autoencoder's reconstruction error is
measured in stage 2 by the server (each round's values before training on them,
decoded as stage 3 would: `LGCPool.history`) and in stage 3 against the clients'
true values, which a diagnostic client mod records in this process without sending
anything (`Audit`): that error joins each client's values, error memory included,
with the server's estimate, which no per-step number can carry.

It prints a report and writes it to docs/RESULTS.md (section "lgc"), with
docs/lgc_accuracy_vs_bits.png and docs/lgc_reconstruction_error.png (--docs: where
they go); per-round CSV files go under --out. The common flags (--out, --docs,
--quiet, --rounds) are `flcomp.sim.experiment.parser`'s; the runs are its own loop
(FedAvgM with a decaying step, and LGC's diagnostics, which `RunConfig` does not
express).

    python examples/lgc_experiment.py                    # the full experiment (~35 min on 2 cores)
    python examples/lgc_experiment.py --rounds 60 --stage1 5 --stage2 20   # a quick look
"""

from __future__ import annotations

import csv
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord  # noqa: E402
from flwr.serverapp.strategy import FedAvgM  # noqa: E402

from flcomp.clients import encoder_state
from flcomp.codecs import Codec  # noqa: E402
from flcomp.codecs.compressors.lgc.config import INNOVATION, LATENT  # noqa: E402
from flcomp.protocol import records  # noqa: E402
from flcomp.protocol.arrays import to_numpy  # noqa: E402
from flcomp.sim import experiment  # noqa: E402
from flcomp.sim.apps import client_app, load_task  # noqa: E402
from flcomp.sim.inline import InlineGrid  # noqa: E402
from flcomp.sim.runner import QUIET_ENVIRONMENT  # noqa: E402
from flcomp.strategies import Compressed  # noqa: E402
from flcomp.tasks import TaskConfig  # noqa: E402
from flcomp.tasks.datasets import FASHION_MNIST_DIR  # noqa: E402

CLIENTS = 8
PARTITIONS = {"iid": ("iid", 0.5), "dirichlet": ("dirichlet", 0.5)}


@dataclass
class Settings:
    """Everything a run of the experiment depends on (each a command-line option)."""

    dataset: str
    rounds: int = 1200
    ratio: float = 0.3
    """ρ of top-k and LGC (of each tensor's entries)."""
    innovation: float = 0.4
    """LGC's innovation_fraction."""
    stage1: int = 20
    stage2: int = 150
    ae_steps: int = 10
    batch_size: int = 32
    lr: float = 0.1
    """Client step size (Δ = lr·∇f_B)."""
    momentum: float = 0.9
    """FedAvgM's server momentum."""
    decay_at: float = 0.8
    """Fraction of the rounds after which the server's step shrinks by `decay` (less SGD
    noise in the final accuracies)."""
    decay: float = 0.1
    feedback: str = "innovation"
    """LGC's feedback: what a stage-3 client counts as delivered."""
    eval_every: int = 50
    seed: int = 0
    quiet: bool = False
    """No progress lines (one per evaluation)."""

    def codecs(self) -> dict[str, str]:
        lgc = (
            f"lgc:ratio={self.ratio},innovation_fraction={self.innovation},stage1_rounds={self.stage1},"
            f"stage2_rounds={self.stage2},ae_steps={self.ae_steps},feedback={self.feedback}"
        )
        return {"fp32": "fp32", "topk+EF": f"topk:ratio={self.ratio}", "LGC": lgc}

    def stage(self, server_round: int) -> int:
        """LGC's stage (1, 2, 3) of a round, from its schedule."""
        return 1 if server_round <= self.stage1 else 2 if server_round <= self.stage1 + self.stage2 else 3

    def task(self, partition: str) -> TaskConfig:
        kind, alpha = PARTITIONS[partition]
        return TaskConfig(
            dataset=self.dataset,
            model="cnn",
            num_clients=CLIENTS,
            partition=kind,
            alpha=alpha,
            mode="gd",
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.seed,
        )


@dataclass
class Run:
    """One codec on one partition: per-round traffic, evaluations and LGC's diagnostics."""

    codec: str
    uplink: dict[int, int] = field(default_factory=dict)
    """round → uplink bytes."""
    side: dict[int, int] = field(default_factory=dict)
    """round → downlink side-information bytes (LGC's plans and encoder copies)."""
    encoder: dict[int, int] = field(default_factory=dict)
    """round → bytes of encoder weights shipped (LGC)."""
    stage: dict[int, int] = field(default_factory=dict)
    accuracy: dict[int, float] = field(default_factory=dict)
    errors: dict[int, dict[str, float]] = field(default_factory=dict)
    """round → LGC's reconstruction errors ("autoencoder", "copy", "innovation")."""
    ae_seconds: list[float] = field(default_factory=list)


class Audit:
    """A diagnostic client mod (inside `compression_mod`): in LGC's stage 3 it records each
    client's true values on the round's index set, in this process, sending nothing."""

    def __init__(self) -> None:
        self.truth: dict[tuple[int, str], np.ndarray] = {}

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        config = msg.content["config"]
        if records.SIDE not in config or reply.has_error():
            return reply
        codec = Codec.parse(str(config[records.CODEC]))
        spec = records.spec_of(msg.content["arrays"])
        lgc = codec.compressor(spec)
        plan = lgc.read_plan(bytes(config[records.SIDE]))
        if plan.mode in (LATENT, INNOVATION):
            encoder = encoder_state.load_encoder(context.state, codec, spec, seed=0)
            encoder.sync(int(config[records.FINGERPRINT]))  # as compression_mod did
            w, local = msg.content["arrays"], reply.content["arrays"]
            keys = records.float_keys(w)
            p = [
                (to_numpy(w[k]) - to_numpy(local[k])).reshape(-1) + encoder.local[f"ef/{i}"]
                for i, k in enumerate(keys)
            ]
            self.truth[(int(config["server-round"]), str(context.node_id))] = lgc.gather(plan.index, p)
        return reply


def stage3_errors(truth: dict[str, np.ndarray], estimates: dict[str, np.ndarray], leader: str, m: int):
    """Relative errors of the joint estimates and of the two reference estimates."""
    v = {c: truth[c] for c in estimates if c in truth}
    total = sum(float(np.sum(np.square(x, dtype=np.float64))) for x in v.values())
    if not v or total == 0 or leader not in truth:
        return {}
    errors = {"autoencoder": 0.0, "copy": 0.0, "innovation": 0.0}
    for c, x in v.items():
        top = np.argsort(-np.abs(x), kind="stable")[:m]
        innovation = np.zeros_like(x)
        innovation[top] = x[top]
        copy = truth[leader].copy()
        copy[top] = x[top]
        for name, estimate in (("autoencoder", estimates[c]), ("copy", copy), ("innovation", innovation)):
            errors[name] += float(np.sum(np.square(estimate - x, dtype=np.float64))) / total
    return errors


def run(settings: Settings, partition: str, name: str, codec: str, out: Path) -> Run:
    """Train with `codec` on `partition`; write the per-round CSV; return the run."""
    random.seed(settings.seed)
    task = load_task(settings.task(partition))
    audit = Audit()
    grid = InlineGrid(client_app(settings.task(partition), mods=[audit]), CLIENTS)
    inner = FedAvgM(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=CLIENTS,
        min_available_nodes=CLIENTS,
        server_momentum=settings.momentum,
    )
    strategy = Compressed(inner, codec=codec, seed=settings.seed)
    result = Run(name)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        traffic = strategy.traffic.get(server_round)
        if traffic is not None:
            result.uplink[server_round], result.side[server_round] = traffic.uplink_bytes, traffic.side_bytes
        pool = strategy.pool
        if name == "LGC" and server_round > 0:
            stats, stage = pool.history[-1], settings.stage(server_round)
            result.stage[server_round] = stage
            result.encoder[server_round] = int(traffic.stats["encoder_bytes"])
            if stats.heldout_error is not None:
                result.errors[server_round] = {
                    "autoencoder": stats.heldout_error,
                    "copy": stats.copy_error,
                    "innovation": stats.innovation_error,
                }
                result.ae_seconds.append(stats.ae_seconds)
            if stage == 3:
                truth = {c: audit.truth.pop((t, c)) for t, c in list(audit.truth) if t == server_round}
                errors = stage3_errors(truth, pool.estimates, stats.leader, pool.lgc.m)
                if errors:
                    result.errors[server_round] = errors
        if server_round >= settings.decay_at * settings.rounds:
            inner.server_learning_rate = settings.decay
        if server_round and (server_round % settings.eval_every == 0 or server_round == settings.rounds):
            metrics = task.evaluate([to_numpy(arrays[k]) for k in task.keys])
            result.accuracy[server_round] = metrics["accuracy"]
            if not settings.quiet:
                print(
                    f"  {partition:9} {name:8} round {server_round:5d}  accuracy {metrics['accuracy']:.4f}",
                    flush=True,
                )
        return None

    initial = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=settings.rounds, evaluate_fn=evaluate)
    write_csv(result, out / partition / f"{name.replace('+', '_')}.csv", settings.rounds)
    return result


def write_csv(r: Run, path: Path, rounds: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "round",
                "stage",
                "uplink_bytes",
                "side_bytes",
                "encoder_bytes",
                "accuracy",
                "ae_error",
                "copy_error",
                "innovation_error",
            ]
        )
        for t in range(1, rounds + 1):
            e = r.errors.get(t, {})
            w.writerow(
                [
                    t,
                    r.stage.get(t, ""),
                    r.uplink.get(t, 0),
                    r.side.get(t, 0),
                    r.encoder.get(t, 0),
                    r.accuracy.get(t, ""),
                ]
                + [e.get(k, "") for k in ("autoencoder", "copy", "innovation")]
            )


# --- report ---------------------------------------------------------------------------


def stage_rounds(r: Run, stage: int) -> list[int]:
    return [t for t, s in r.stage.items() if s == stage]


def report(settings: Settings, runs: dict[str, dict[str, Run]], command: str) -> tuple[str, dict[str, bool]]:
    """The markdown section (`command`: the command line that reproduces it) and the floors
    (IID): LGC within 1 point of fp32, stage-3 uplink bits per round at most half of top-k
    with error feedback."""
    s = settings
    lines = [
        "## LGC: learned gradient compression (examples/lgc_experiment.py)",
        "",
        f"{CLIENTS} clients, the CNN (`flcomp.tasks.models.cnn`, 5,130 weights) on {s.dataset}, "
        "distributed SGD "
        f"(one mini-batch of {s.batch_size} per client and round, lr {s.lr}, server momentum {s.momentum} "
        f"via FedAvgM, its step ×{s.decay} after round {int(s.decay_at * s.rounds)}), {s.rounds} rounds, "
        f"seed {s.seed}. Top-k ratio ρ = {s.ratio} for top-k with error "
        f"feedback and LGC; LGC: stage 1 plain for {s.stage1} rounds, stage 2 for {s.stage2} rounds "
        f"({s.ae_steps} Adam steps per round), then stage 3 with innovation fraction {s.innovation} "
        f"(m = ⌈{s.innovation}·n⌉ of the n index-set values). Accuracy on the full test set after the last "
        f"round; bits are real payload lengths. Generated by `{command}`.",
        "",
    ]
    floors = {}
    for partition, by_codec in runs.items():
        fp32, topk, lgc = by_codec["fp32"], by_codec["topk+EF"], by_codec["LGC"]
        total_fp32 = sum(fp32.uplink.values())
        lines += [
            f"### {partition} ({'Dirichlet(0.5) by label' if partition == 'dirichlet' else 'IID'})",
            "",
            "| codec | final accuracy | uplink Mbit | ratio vs fp32 | + downlink side info Mbit "
            "| ratio incl. side info |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in by_codec.items():
            up, side = 8 * sum(r.uplink.values()), 8 * sum(r.side.values())
            lines.append(
                f"| {name} | {r.accuracy[s.rounds]:.4f} | {up / 1e6:.3f} | {8 * total_fp32 / up:.1f}x "
                f"| {side / 1e6:.3f} | {8 * total_fp32 / (up + side):.1f}x |"
            )
        per_round_topk = 8 * np.mean(list(topk.uplink.values()))
        lines += ["", "LGC per stage (uplink bits per round, all clients; side information is downlink):", ""]
        lines += [
            "| stage | rounds | uplink bits/round | vs top-k+EF | side info bits/round | of which encoder |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        per_stage = {}
        for stage in (1, 2, 3):
            ts = stage_rounds(lgc, stage)
            if not ts:
                continue
            up = 8 * np.mean([lgc.uplink[t] for t in ts])
            per_stage[stage] = up
            side = 8 * np.mean([lgc.side[t] for t in ts])
            enc = 8 * sum(lgc.encoder[t] for t in ts)
            lines.append(
                f"| {stage} | {len(ts)} | {up:,.0f} | {up / per_round_topk:.2f} | {side:,.0f} "
                f"| {enc:,} bits in total |"
            )
        lines.append(f"| top-k+EF | {s.rounds} | {per_round_topk:,.0f} | 1.00 | 0 | |")
        gap = 100 * (fp32.accuracy[s.rounds] - lgc.accuracy[s.rounds])
        ratio3 = per_stage.get(3, np.inf) / per_round_topk
        ok_acc, ok_bits = gap <= 1.0, ratio3 <= 0.5
        lines += [
            "",
            f"- LGC's final accuracy is {gap:+.2f} points below fp32's "
            f"({'within' if ok_acc else 'NOT within'} 1.0 point); its stage-3 uplink is {ratio3:.3f} "
            f"of top-k+EF's bits per round ({'at most' if ok_bits else 'MORE than'} half).",
        ]
        if partition == "iid":
            floors = {
                "accuracy within 1.0 point of fp32 (IID)": ok_acc,
                "stage-3 bits ≤ half of top-k+EF (IID)": ok_bits,
            }
        lines += error_table(lgc)
        e = stage3_errors_mean(lgc)
        if e:
            lines.append(
                f"- Stage 3, mean over its rounds: the joint estimates' error is {e['autoencoder']:.4f}, "
                f"the innovations' alone {e['innovation']:.4f} "
                f"(the learned decoder's change: {learned_gain(e)}), "
                f"the leader's copied values' {e['copy']:.4f}."
            )
        if lgc.ae_seconds:
            lines.append(
                f"- Autoencoder training on the server's CPU: {np.mean(lgc.ae_seconds):.2f} s "
                f"per stage-2 round (max {np.max(lgc.ae_seconds):.2f} s, {s.ae_steps} Adam steps)."
            )
        lines.append("")
    if {"iid", "dirichlet"} <= runs.keys():
        lines += comparison(runs, s.rounds)
    lines += [
        "![accuracy vs cumulative uplink bits](lgc_accuracy_vs_bits.png)",
        "",
        "![reconstruction error per round](lgc_reconstruction_error.png)",
    ]
    return "\n".join(lines), floors


def stage3_errors_mean(r: Run) -> dict[str, float]:
    """LGC's reconstruction errors averaged over the stage-3 rounds (empty without any)."""
    ts = [t for t in stage_rounds(r, 3) if t in r.errors]
    return (
        {k: float(np.mean([r.errors[t][k] for t in ts])) for k in ("autoencoder", "copy", "innovation")}
        if ts
        else {}
    )


def learned_gain(e: dict[str, float]) -> str:
    """What the learned decoder adds over the innovations alone, in words."""
    change = relative_change(e)
    return "less than 1%" if abs(change) < 1 else f"{change:+.1f}%"


def relative_change(e: dict[str, float]) -> float:
    """The joint estimates' error relative to the innovations' alone, in percent."""
    return 100 * (e["autoencoder"] / e["innovation"] - 1)


def comparison(runs: dict[str, dict[str, Run]], rounds: int) -> list[str]:
    """IID against Dirichlet(0.5), in words chosen by the numbers above."""
    gaps = {p: 100 * (r["fp32"].accuracy[rounds] - r["LGC"].accuracy[rounds]) for p, r in runs.items()}
    iid, dirichlet = stage3_errors_mean(runs["iid"]["LGC"]), stage3_errors_mean(runs["dirichlet"]["LGC"])
    if not iid or not dirichlet:
        return []
    copy_helps, copy_worse = iid["copy"] < iid["innovation"], dirichlet["copy"] > iid["copy"]
    text = [
        f"LGC ends {gaps['iid']:.2f} points below fp32 on IID data and {gaps['dirichlet']:.2f} under "
        "Dirichlet(0.5).",
        f"The leader's values predict the other clients' {'worse' if copy_worse else 'no worse'} "
        f"under Dirichlet(0.5) (stage-3 error of the copied values {dirichlet['copy']:.3f}, "
        f"IID {iid['copy']:.3f}).",
        f"On IID data the copied values are {'better' if copy_helps else 'worse'} than the innovations alone "
        f"({iid['copy']:.3f} against {iid['innovation']:.3f}): "
        + (
            "what clients share dominates."
            if copy_helps
            else "each client's mini-batch noise dominates what they share."
        ),
        f"Against the innovations alone, the learned decoder changes the error by {learned_gain(iid)} (IID) "
        f"and {learned_gain(dirichlet)} (Dirichlet(0.5)).",
    ]
    if max(abs(relative_change(iid)), abs(relative_change(dirichlet))) < 5:
        text.append(
            "Here LGC's accuracy rests on its innovations and error feedback, "
            "not on what the autoencoder learned."
        )
    return ["### IID against Dirichlet(0.5)", "", " ".join(text), ""]


def error_table(r: Run, blocks: int = 6) -> list[str]:
    """The reconstruction errors averaged over blocks of rounds in stages 2 and 3."""
    lines = [
        "",
        "Relative reconstruction error Σ‖v̂ − v‖²/Σ‖v‖² of the clients' values on the index set (stage 2: "
        "the server, on each round's values before training on them; stage 3: against the true values). "
        "\"copy\" is the leader's values with each client's innovation (what `autoencoder=identity` "
        'would decode), "innovation" the innovations alone. Mean over the rounds of each block:',
        "",
        "| stage | rounds | autoencoder | copy | innovation |",
        "|---|---|---:|---:|---:|",
    ]
    for stage in (2, 3):
        ts = [t for t in stage_rounds(r, stage) if t in r.errors]
        for chunk in np.array_split(np.array(ts), min(blocks, len(ts))) if ts else []:
            e = {k: np.mean([r.errors[t][k] for t in chunk]) for k in ("autoencoder", "copy", "innovation")}
            lines.append(
                f"| {stage} | {chunk[0]}–{chunk[-1]} | {e['autoencoder']:.3f} | {e['copy']:.3f} "
                f"| {e['innovation']:.3f} |"
            )
    return lines + [""]


def plot(runs: dict[str, dict[str, Run]], settings: Settings, docs: Path) -> None:
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, (partition, by_codec) in zip(axes[0], runs.items()):
        for name, r in by_codec.items():
            ts = sorted(r.accuracy)
            cumulative = np.cumsum([8 * r.uplink.get(t, 0) for t in range(1, settings.rounds + 1)])
            ax.plot([cumulative[t - 1] for t in ts], [r.accuracy[t] for t in ts], marker=".", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink bits (all clients)")
        ax.set_ylabel("test accuracy")
        ax.set_title(partition)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "lgc_accuracy_vs_bits.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, (partition, by_codec) in zip(axes[0], runs.items()):
        r = by_codec["LGC"]
        ts = sorted(r.errors)
        for key in ("copy", "innovation"):
            ax.plot(ts, [r.errors[t][key] for t in ts], linewidth=0.8, label=key)
        autoencoder = [r.errors[t]["autoencoder"] for t in ts]
        ax.plot(
            ts,
            autoencoder,
            color="black",
            linestyle="--",
            linewidth=0.6,
            label="autoencoder (joint estimate)",
        )
        start3 = settings.stage1 + settings.stage2 + 0.5
        ax.axvline(start3, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel("round (dashed: stage 3 starts)")
        ax.set_ylabel("relative reconstruction error")
        ax.set_yscale("log")
        ax.set_title(f"LGC, {partition}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "lgc_reconstruction_error.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, bool]:
    """Run the experiment (`argv`: command-line options); return the floors and whether each is met."""
    default = Settings(dataset="")
    parser = experiment.parser(__doc__, out="results/lgc", rounds=default.rounds)
    for f in ("stage1", "stage2", "ae_steps", "batch_size", "eval_every", "seed"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(default, f))
    for f in ("ratio", "innovation", "lr", "momentum", "decay_at", "decay"):
        parser.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(default, f))
    parser.add_argument("--dataset", default=None, help="default: fashion-mnist when installed, else digits")
    parser.add_argument("--feedback", default=default.feedback, choices=["index_set", "innovation"])
    names = list(default.codecs())
    parser.add_argument("--codecs", nargs="+", default=names, choices=names, help="a subset: no report")
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    args = parser.parse_args(argv)
    dataset = args.dataset or ("fashion-mnist" if FASHION_MNIST_DIR.is_dir() else "digits")
    settings = Settings(
        dataset, **{f: getattr(args, f) for f in Settings.__dataclass_fields__ if f != "dataset"}
    )
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    logging.getLogger("flwr").setLevel(logging.ERROR)

    codecs = {name: codec for name, codec in settings.codecs().items() if name in args.codecs}
    runs = {
        p: {name: run(settings, p, name, codec, args.out) for name, codec in codecs.items()}
        for p in args.partitions
    }
    if len(codecs) < len(names):
        return {}
    markdown, floors = report(settings, runs, experiment.command("lgc_experiment.py", argv))
    args.docs.mkdir(parents=True, exist_ok=True)
    plot(runs, settings, args.docs)
    experiment.publish(args.docs, "lgc", markdown)
    for floor, met in floors.items():
        print(f"floor {floor}: {'met' if met else 'NOT met'}")
    return floors


if __name__ == "__main__":
    main()
