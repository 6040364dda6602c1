"""The `flcomp` command line.

    flcomp compare [CODEC ...] [task and run options]   several codecs, same seed/data/partition; one table
    flcomp run --codec CODEC [task and run options]     one simulated run
    flcomp plot RUN_DIR [RUN_DIR ...] -o plot.png       accuracy (or gap) vs uplink bits and vs rounds
    flcomp codecs [CODEC ...]                           every codec on an embedded update stream

Codecs are written as `flcomp.codecs.Codec.parse` reads them, e.g. "topk:ratio=0.001";
channels (--channel) as `flcomp.channel.Channel.parse` does, e.g. "urban-sub6:deadline_s=2".
Runs use Flower's simulation engine on Ray; each writes config.json, rounds.csv and
summary.json under --out. A bad command line is refused before anything runs: one line
on stderr ("flcomp run: error: ...") and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path

DEFAULT_CODECS = [
    "fp32",
    "fp16",
    "qsgd",
    "topk",
    "scaled_sign",
    "powersgd",
    "drive",
    "pipeline:quantizer=qsgd,levels=4",
]

T = typing.TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse's parser, with every error on one line ("flcomp run: error: ...", no usage
    dump) and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class UsageError(Exception):
    """A bad command line found after parsing; `main` reports it as argparse does."""


def checked(what: str, build: Callable[[], T]) -> T:
    """build(), its ValueError or OSError (a bad value, a missing file) turned into a
    UsageError that names `what`."""
    try:
        return build()
    except (ValueError, OSError) as e:
        raise UsageError(f"{what}: {e}") from e


def number(kind: type = float, low: float = -math.inf, high: float = math.inf, *, above: bool = False):
    """An argparse type: a finite `kind` (nan and inf refused) with low ≤ x ≤ high (low < x
    when `above`)."""
    bounds = [f"{'>' if above else '≥'} {low:g}"] * (low > -math.inf) + [f"≤ {high:g}"] * (high < math.inf)

    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as {kind.__name__}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not ((value > low if above else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text!r}")
        return value

    read.__name__ = kind.__name__
    return read


def optional(read: Callable[[str], T]) -> Callable[[str], T | None]:
    """An argparse type: "none" is None, anything else what `read` makes of it."""
    return lambda text: None if text.lower() == "none" else read(text)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options for the task (every TaskConfig field) and the run."""
    from flcomp.sim import STRATEGIES, RunConfig
    from flcomp.tasks import TaskConfig

    task = parser.add_argument_group("task")
    hints = typing.get_type_hints(TaskConfig)
    for f in dataclasses.fields(TaskConfig):
        options = typing.get_args(hints[f.name])
        kind = next((a for a in options if a is not type(None)), hints[f.name])
        read = number(kind) if kind in (int, float) else kind
        task.add_argument(
            "--" + f.name.replace("_", "-"),
            type=optional(read) if type(None) in options else read,
            default=f.default,
            help=f"default {f.default}",
        )
    run = parser.add_argument_group("run")
    defaults = RunConfig()
    run.add_argument("--strategy", choices=sorted(STRATEGIES), default=defaults.strategy)
    run.add_argument("--downlink", default=None, help='downlink codec, e.g. "fp16" (default: none)')
    run.add_argument(
        "--downlink-delivery",
        choices=["unicast", "broadcast"],
        default=defaults.downlink_delivery,
        help="unicast: one message per client (Flower's); broadcast: one transmission a round reaches "
        "every client, its bytes counted once",
    )
    run.add_argument(
        "--channel",
        default=None,
        help="simulated wireless network, e.g. urban-sub6, iot-lowpower, "
        '"urban-sub6:sharing=proportional-fair,loss=packet", "fixed:uplink_bps=1e6", '
        '"trace:path=bw.csv" (default: none)',
    )
    run.add_argument(
        "--budget",
        default=None,
        help='bit budget per client: "deadline" sizes each payload to what its link carries by the '
        "channel's deadline (top-k, STC, QSGD); needs --channel and --deadline (default: none)",
    )
    run.add_argument(
        "--deadline",
        type=number(low=0, above=True),
        default=None,
        help="round deadline in seconds (sets the channel's deadline_s)",
    )
    run.add_argument(
        "--rounds", type=number(int, 1), default=defaults.rounds, help=f"default {defaults.rounds}"
    )
    run.add_argument(
        "--fraction",
        type=number(low=0, high=1, above=True),
        default=defaults.fraction,
        help="clients per round, (0, 1]",
    )
    run.add_argument(
        "--run-seed", type=number(int, 0), default=defaults.seed, help="seeds sampling and encoders"
    )
    run.add_argument(
        "--engine",
        choices=["ray", "inline"],
        default=defaults.engine,
        help="ray: Flower's simulation engine; inline: one process, fast for many short rounds",
    )
    run.add_argument(
        "--client-cpus",
        type=number(low=0, above=True),
        default=defaults.client_cpus,
        help="Ray CPUs per client",
    )
    run.add_argument(
        "--max-client-states",
        type=number(int, 1),
        default=None,
        metavar="N",
        help="hold at most N clients' codec states on the server, evicting the least recently "
        "instructed (default: no bound)",
    )
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
    """The RunConfig of `codec` (canonical text) and the options; UsageError if any is bad."""
    from flcomp.codecs import Codec
    from flcomp.sim import RunConfig
    from flcomp.tasks import TaskConfig
    from flcomp.tasks.datasets import find_fashion_mnist

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TaskConfig)}
    task = checked("task", lambda: TaskConfig(**fields))
    if task.data_dir is not None and not Path(task.data_dir).is_dir():
        raise UsageError(f"--data-dir: {task.data_dir} is not a directory")
    if task.dataset == "fashion-mnist":
        checked("--data-dir", lambda: find_fashion_mnist(task.data_dir))
    if args.downlink is not None:
        checked("--downlink", lambda: Codec.parse(args.downlink))
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out: {args.out} exists and is not a directory")
    channel = checked("--channel", lambda: channel_text(args))
    return checked(
        "run",
        lambda: RunConfig(
            task=task,
            codec=codec,
            downlink=args.downlink,
            downlink_delivery=args.downlink_delivery,
            budget=args.budget,
            channel=channel,
            strategy=args.strategy,
            rounds=args.rounds,
            fraction=args.fraction,
            seed=args.run_seed,
            engine=args.engine,
            client_cpus=args.client_cpus,
            ray_address=args.ray_address,
            max_client_states=args.max_client_states,
            checkpoint_every=getattr(args, "checkpoint_every", None),
        ),
    )


def slug(text: str) -> str:
    """A directory name for a codec string."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def cmd_run(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec
    from flcomp.sim import run
    from flcomp.sim.runner import resumable

    if args.resume is not None:  # the run's own config.json holds every other option
        config, checkpoint = checked("--resume", lambda: resumable(args.resume))
        summary = run(config, args.resume, progress=not args.quiet, resume=checkpoint)
        print(f"{config.codec}: {summary}\nresults in {args.resume}")
        return
    codec = checked("--codec", lambda: Codec.parse(args.codec).describe())
    config = run_config(args, codec)
    out = args.out or Path("results") / "run" / slug(codec)
    summary = run(config, out, progress=not args.quiet)
    print(f"{codec}: {summary}\nresults in {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec
    from flcomp.sim import plot_runs, run

    codecs = [checked("codec", lambda c=c: Codec.parse(c).describe()) for c in (args.codec or DEFAULT_CODECS)]
    configs = [run_config(args, codec) for codec in codecs]  # every one checked before any runs
    out = args.out or Path("results") / "compare"
    summaries, directories = {}, []
    for i, (codec, config) in enumerate(zip(codecs, configs)):
        directory = out / f"{i:02d}-{slug(codec)}"
        summaries[codec] = run(config, directory, progress=not args.quiet)
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
    from matplotlib.backend_bases import FigureCanvasBase

    from flcomp.sim import plot_runs

    for directory in args.runs:
        check_run_directory(directory)
    formats = FigureCanvasBase.get_supported_filetypes()
    if args.output.suffix.lstrip(".").lower() not in formats:
        raise UsageError(f"--output: {str(args.output)!r} needs an image suffix, one of {', '.join(formats)}")
    if args.output.is_dir() or (args.output.parent.exists() and not args.output.parent.is_dir()):
        raise UsageError(f"--output: cannot write a file at {args.output}")
    print(plot_runs(args.runs, args.output))


def check_run_directory(directory: Path) -> None:
    """UsageError unless `directory` holds a run `plot_runs` can draw (as `flcomp run` writes it)."""
    from flcomp.sim.results import load_run

    if not directory.is_dir():
        raise UsageError(f"{directory}: no such results directory")
    try:
        config, rounds, _ = load_run(directory)
    except (ValueError, OSError, TypeError) as e:  # TypeError: a row with more cells than columns
        raise UsageError(f"{directory}: not a readable results directory ({e})") from e
    needed = ("round", "cumulative_uplink_bytes")
    if not (
        isinstance(config, dict)
        and "codec" in config
        and rounds
        and all(r.get(k) is not None for r in rounds for k in needed)
        and any(k in rounds[-1] for k in ("accuracy", "gap"))
    ):
        raise UsageError(f"{directory}: config.json or rounds.csv lacks codec, rounds or {', '.join(needed)}")


def cmd_codecs(args: argparse.Namespace) -> None:
    from flcomp.codecs import Codec, available, codec
    from flcomp.codecs.survey import measure, update_stream

    parsed = [checked("codec", lambda s=s: Codec.parse(s)) for s in args.codec]
    codecs = parsed or [codec(n) for n in available()]
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
    parser = Parser(prog="flcomp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compare", help="several codecs on the same task and seed; one table")
    p.add_argument("codec", nargs="*", help=f"codec strings (default: {' '.join(DEFAULT_CODECS)})")
    add_run_options(p)
    p.set_defaults(handler=cmd_compare, parser=p)

    p = sub.add_parser("run", help="one simulated run")
    p.add_argument("--codec", default="fp32", help='codec string, e.g. "topk:ratio=0.01"')
    add_run_options(p)
    p.add_argument(
        "--checkpoint-every",
        type=number(int, 1),
        default=None,
        metavar="N",
        help="save a checkpoint into the results directory after every N rounds (default: none)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue the checkpointed run in DIR with DIR's config.json (other options are ignored)",
    )
    p.set_defaults(handler=cmd_run, parser=p)

    p = sub.add_parser("plot", help="plot results directories side by side")
    p.add_argument("runs", nargs="+", type=Path, help="results directories")
    p.add_argument("-o", "--output", type=Path, default=Path("plot.png"))
    p.set_defaults(handler=cmd_plot, parser=p)

    p = sub.add_parser("codecs", help="every codec on an embedded update stream (no simulation)")
    p.add_argument(
        "codec", nargs="*", default=[], help='codec strings, e.g. "topk:ratio=0.001" (default: all)'
    )
    p.add_argument(
        "--entries",
        type=number(int, 1),
        default=1_000_000,
        help="entries per update (default 1,000,000)",
    )
    p.add_argument("--rounds", type=number(int, 1), default=10, help="updates in the stream (default 10)")
    p.set_defaults(handler=cmd_codecs, parser=p)

    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except UsageError as e:
        args.parser.error(str(e))


if __name__ == "__main__":
    main()
