"""The `flcomp` command line.

    flcomp compare [CODEC ...] [task and run options]   several codecs, same seed/data/partition; one table
    flcomp run --codec CODEC [task and run options]     one simulated run
    flcomp plot RUN_DIR [RUN_DIR ...] -o plot.png       accuracy (or gap) vs uplink bits and vs rounds
    flcomp codecs [CODEC ...]                           every codec on an embedded update stream

Codecs are written as `flcomp.codecs.Codec.parse` reads them, e.g. "topk:ratio=0.001";
channels (--channel) as `flcomp.channel.Channel.parse` does, e.g. "urban-sub6:deadline_s=2".
Runs use Flower's simulation engine on Ray; each writes config.json, rounds.csv and
summary.json under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

DEFAULT_CODECS = ["fp32", "fp16", "qsgd", "topk", "scaled_sign", "powersgd"]


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options for the task (every TaskConfig field) and the run."""
    from flcomp.sim import STRATEGIES, RunConfig
    from flcomp.tasks import TaskConfig

    task = parser.add_argument_group("task")
    hints = typing.get_type_hints(TaskConfig)
    for f in dataclasses.fields(TaskConfig):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        task.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f"default {f.default}"
        )
    run = parser.add_argument_group("run")
    defaults = RunConfig()
    run.add_argument("--strategy", choices=sorted(STRATEGIES), default=defaults.strategy)
    run.add_argument("--downlink", default=None, help='downlink codec, e.g. "fp16" (default: none)')
    run.add_argument(
        "--channel",
        default=None,
        help="simulated wireless network, e.g. urban-sub6, iot-lowpower, "
        '"urban-sub6:sharing=proportional-fair,loss=packet", "fixed:uplink_bps=1e6", '
        '"trace:path=bw.csv" (default: none)',
    )
    run.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="round deadline in seconds (sets the channel's deadline_s)",
    )
    run.add_argument("--rounds", type=int, default=defaults.rounds, help=f"default {defaults.rounds}")
    run.add_argument("--fraction", type=float, default=defaults.fraction, help="clients per round (fraction)")
    run.add_argument("--run-seed", type=int, default=defaults.seed, help="seeds sampling and encoders")
    run.add_argument(
        "--engine",
        choices=["ray", "inline"],
        default=defaults.engine,
        help="ray: Flower's simulation engine; inline: one process, fast for many short rounds",
    )
    run.add_argument("--client-cpus", type=float, default=defaults.client_cpus, help="Ray CPUs per client")
    run.add_argument("--ray-address", default=None, help="join a running Ray cluster (e.g. 127.0.0.1:6379)")
    run.add_argument("--out", type=Path, default=None, help="results directory (default under results/)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def channel_text(args: argparse.Namespace) -> str | None:
    """The run's channel as text, with --deadline folded in (an ideal network if only it is given)."""
    from flcomp.channel import Channel

    if args.channel is None and args.deadline is None:
        return None
    channel = Channel.parse(args.channel or "ideal")
    if args.deadline is not None:
        channel = Channel(channel.name, dataclasses.replace(channel.config, deadline_s=args.deadline))
    return channel.describe()


def run_config(args: argparse.Namespace, codec: str):
    from flcomp.sim import RunConfig
    from flcomp.tasks import TaskConfig

    task = TaskConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TaskConfig)})
    return RunConfig(
        task=task,
        codec=codec,
        downlink=args.downlink,
        channel=channel_text(args),
        strategy=args.strategy,
        rounds=args.rounds,
        fraction=args.fraction,
        seed=args.run_seed,
        engine=args.engine,
        client_cpus=args.client_cpus,
        ray_address=args.ray_address,
    )


def slug(text: str) -> str:
    """A directory name for a codec string."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def cmd_run(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec
    from flcomp.sim import run

    codec = Codec.parse(args.codec).describe()
    out = args.out or Path("results") / "run" / slug(codec)
    summary = run(run_config(args, codec), out, progress=not args.quiet)
    print(f"{codec}: {summary}\nresults in {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec
    from flcomp.sim import plot_runs, run

    codecs = [Codec.parse(c).describe() for c in (args.codec or DEFAULT_CODECS)]
    out = args.out or Path("results") / "compare"
    summaries, directories = {}, []
    for i, codec in enumerate(codecs):
        directory = out / f"{i:02d}-{slug(codec)}"
        summaries[codec] = run(run_config(args, codec), directory, progress=not args.quiet)
        directories.append(directory)
    table = comparison_table(summaries)
    (out / "comparison.md").write_text(table + "\n")
    plot = plot_runs(directories, out / "comparison.png")
    print()
    print(table)
    print(f"\nresults in {out}; plot {plot}")


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown: codec, final accuracy (or gap), uplink MB, reduction vs fp32, rounds; with a
    channel also the virtual time, the clients' energy and the clients lost."""
    baseline = summaries.get("fp32", {}).get("uplink_bytes")
    use_gap = all(s.get("final_accuracy") is None for s in summaries.values())
    with_channel = all(s.get("virtual_seconds") is not None for s in summaries.values())
    score = "final gap" if use_gap else "final accuracy"
    extra = " virtual s | energy J | dropped |" if with_channel else ""
    lines = [
        f"| codec | {score} | uplink MB | reduction vs fp32 | rounds |{extra}",
        "|---|---:|---:|---:|---:|" + "---:|" * (3 if with_channel else 0),
    ]
    for codec, s in summaries.items():
        value = f"{s['final_gap']:.3e}" if use_gap else f"{s['final_accuracy']:.4f}"
        reduction = f"{baseline / s['uplink_bytes']:.1f}x" if baseline and s["uplink_bytes"] else "n/a"
        line = f"| {codec} | {value} | {s['uplink_bytes'] / 1e6:.3f} | {reduction} | {s['rounds']} |"
        if with_channel:
            line += f" {s['virtual_seconds']:.2f} | {s['energy_j']:.3g} | {s['clients_dropped']} |"
        lines.append(line)
    return "\n".join(lines)


def cmd_plot(args: argparse.Namespace) -> None:
    from flcomp.sim import plot_runs

    print(plot_runs(args.runs, args.output))


def cmd_codecs(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec, available, codec
    from flcomp.codecs.survey import measure, update_stream

    codecs = [Codec.parse(s) for s in args.codec] or [codec(n) for n in available()]
    stream = update_stream(args.entries, args.rounds)
    print(
        f"{args.rounds} updates of {args.entries:,} entries; bits from payload bytes, "
        "error = ‖decoded − update‖/‖update‖ in the last round, "
        "sum error = the same for the sum over all rounds.\n"
    )
    width = max(len(c.describe()) for c in codecs)
    print(f"{'codec':<{width}}  {'bits/entry':>10}  {'vs fp32':>8}  {'error':>7}  {'sum error':>9}")
    for c in codecs:
        m = measure(c, stream)
        print(
            f"{c.describe():<{width}}  {m['bits/entry']:>10.4f}  {32 / m['bits/entry']:>7.1f}x"
            f"  {m['error']:>7.4f}  {m['sum error']:>9.4f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flcomp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="several codecs on the same task and seed; one table")
    p.add_argument("codec", nargs="*", help=f"codec strings (default: {' '.join(DEFAULT_CODECS)})")
    add_run_options(p)
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("run", help="one simulated run")
    p.add_argument("--codec", default="fp32", help='codec string, e.g. "topk:ratio=0.01"')
    add_run_options(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("plot", help="plot results directories side by side")
    p.add_argument("runs", nargs="+", type=Path, help="results directories")
    p.add_argument("-o", "--output", type=Path, default=Path("plot.png"))
    p.set_defaults(handler=cmd_plot)

    p = sub.add_parser("codecs", help="every codec on an embedded update stream (no simulation)")
    p.add_argument(
        "codec", nargs="*", default=[], help='codec strings, e.g. "topk:ratio=0.001" (default: all)'
    )
    p.add_argument("--entries", type=int, default=1_000_000, help="entries per update (default 1,000,000)")
    p.add_argument("--rounds", type=int, default=10, help="updates in the stream (default 10)")
    p.set_defaults(handler=cmd_codecs)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
