"""Time and energy to a target accuracy over a wireless cell with a round deadline.

The same federated task (digits, an MLP of 4,810 weights, 10 clients, 2 local
epochs) runs over two cells, each with a deadline, for fp32 and several codecs,
on Flower's simulation engine. Devices are heterogeneous (log-normal compute
speeds); placements and fading are the same for every codec (same seed).

- urban-sub6 (deadline 0.7 s): 20 MHz shared by the 10 clients; an upload takes
  a fraction of the compute time, so the slow devices set the round time and
  compression saves little time per round.
- iot-lowpower (deadline 15 s): one 180 kHz NB-IoT-like carrier shared by the 10
  clients; the model takes seconds each way and an fp32 upload misses the deadline.

For each codec it prints the rounds, virtual seconds, client energy and uplink
bytes until the test accuracy first reaches the target, and compares each codec
with fp32 (or, if fp32 never gets there, the first codec that does): seconds saved
per round against the extra rounds' cost.

    python examples/wireless_deadline.py [--rounds 30] [--target 0.9] [--engine ray|inline]
"""

from __future__ import annotations

from pathlib import Path

from flcomp.cli import slug
from flcomp.sim import RunConfig, experiment, load_run
from flcomp.tasks import TaskConfig

TASK = TaskConfig(dataset="digits", model="mlp", num_clients=10, local_epochs=2)
DEVICES = "seconds_per_sample=0.002,heterogeneity=0.5"
"""Median device: 2 ms per reported training example per round (0.27 s for 135 examples)."""
SCENARIOS = {
    "urban-sub6": f"urban-sub6:deadline_s=0.7,{DEVICES}",
    "iot-lowpower": f"iot-lowpower:deadline_s=15.0,{DEVICES}",
}
CODECS = ["fp32", "fp16", "qsgd", "topk:ratio=0.05", "scaled_sign"]


def to_target(rounds: list[dict], target: float) -> dict | None:
    """The cumulative figures at the first round whose accuracy reaches `target`."""
    for r in rounds:
        if r["round"] > 0 and r["accuracy"] >= target:
            return r
    return None


def scenario_table(name: str, directories: dict[str, Path], target: float) -> str:
    """Markdown table of one scenario, then one line per codec comparing it with fp32."""
    lines = [
        f"### {name}: `{SCENARIOS[name]}`, target accuracy {target}",
        "",
        "| codec | rounds to target | virtual s to target | energy J to target | uplink MB to target "
        "| s per round | dropped clients | final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    reached = {}
    for codec, directory in directories.items():
        _, rounds, summary = load_run(directory)
        hit = reached[codec] = to_target(rounds, target)
        per_round = summary["virtual_seconds"] / summary["rounds"]
        cells = (
            [f"{hit['round']:.0f}", f"{hit['cumulative_virtual_seconds']:.1f}"]
            + [f"{hit['cumulative_energy_j']:.3g}", f"{hit['cumulative_uplink_bytes'] / 1e6:.3f}"]
            if hit
            else ["not reached"] * 4
        )
        lines.append(
            f"| {codec} | {' | '.join(cells)} | {per_round:.2f} | {summary['clients_dropped']} "
            f"| {summary['final_accuracy']:.4f} |"
        )
    lines.append("")
    # The reference: fp32, or the first codec (in CODECS order) that reached the target.
    reference = next((c for c in directories if reached[c] is not None), None)
    if reference is None:
        lines.append("- no codec reached the target within the rounds run.")
    elif reference != "fp32":
        lines.append(f"- fp32 never reached the target; the reference is {reference}.")
    base = reached.get(reference)
    for codec, hit in reached.items():
        if codec == reference or hit is None or base is None:
            continue
        per_round = [r["cumulative_virtual_seconds"] / r["round"] for r in (base, hit)]
        net = base["cumulative_virtual_seconds"] - hit["cumulative_virtual_seconds"]
        verdict = "wins" if net > 0.05 else "loses" if net < -0.05 else "ties"
        lines.append(
            f"- {codec} {verdict} on time: {per_round[0] - per_round[1]:+.2f} s saved per round, "
            f"{int(hit['round'] - base['round']):+d} rounds, net {net:+.1f} s; "
            f"energy {base['cumulative_energy_j'] - hit['cumulative_energy_j']:+.3g} J saved vs {reference}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run both scenarios; print the report and write it to <out>/report.md; return it."""
    parser = experiment.parser(__doc__, out="results/wireless_deadline", rounds=30, docs=False)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--engine", choices=["ray", "inline"], default="ray", help="see RunConfig.engine")
    args = parser.parse_args(argv)

    tables = []
    for name, channel in SCENARIOS.items():
        runs = [
            experiment.Run(
                codec,
                RunConfig(task=TASK, codec=codec, channel=channel, rounds=args.rounds, engine=args.engine),
                args.out / name / slug(codec),
            )
            for codec in CODECS
        ]
        experiment.run_all(runs, args.quiet)
        tables.append(scenario_table(name, {r.key: r.directory for r in runs}, args.target))
    report = "\n\n".join(tables)
    (args.out / "report.md").write_text(report + "\n")
    print(report)
    print(f"\nresults in {args.out}; plot with: flcomp plot {args.out}/iot-lowpower/* -o iot.png")
    return report


if __name__ == "__main__":
    main()
