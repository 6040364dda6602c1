"""Plots of runs side by side: accuracy (or objective gap) vs cumulative uplink bits and vs
rounds, and, when the runs had a simulated channel, vs virtual time and vs client energy."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flcomp.sim.results import load_run  # noqa: E402

_AXES = [
    # (x label, x of a row, log scale)
    ("cumulative uplink bits (all clients)", lambda r: 8 * r["cumulative_uplink_bytes"], True),
    ("round", lambda r: r["round"], False),
]
_CHANNEL_AXES = [
    ("virtual time (s)", lambda r: r["cumulative_virtual_seconds"], False),
    ("clients' energy (J)", lambda r: r["cumulative_energy_j"], True),
]


def plot_runs(directories: list[Path], output: Path) -> Path:
    """One PNG, a panel per x axis; y is accuracy, or the relative gap (log scale) for synthetic tasks."""
    runs = [load_run(Path(d)) for d in directories]
    use_gap = all(r[1][-1].get("gap") is not None for r in runs)
    metric = "gap" if use_gap else "accuracy"
    with_channel = all(r[1][-1].get("cumulative_virtual_seconds") is not None for r in runs)
    axes_spec = _AXES + (_CHANNEL_AXES if with_channel else [])
    rows, cols = (2, 2) if with_channel else (1, 2)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 4.2 * rows + 0.3 * len(runs)), squeeze=False)
    for ax, (label, x_of, log_x) in zip(axes.flat, axes_spec):
        for config, rounds, _ in runs:
            points = [r for r in rounds if not log_x or x_of(r) > 0]  # round 0 has no traffic
            ax.plot([x_of(r) for r in points], [r[metric] for r in points], marker=".", label=config["codec"])
        ax.set_xlabel(label)
        ax.set_ylabel("relative objective gap" if use_gap else "test accuracy")
        if log_x:
            ax.set_xscale("log")
        if use_gap:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.035 * (1 + len(runs) // 2) / rows, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
