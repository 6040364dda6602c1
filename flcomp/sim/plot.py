"""Plots of runs side by side: accuracy (or objective gap) vs cumulative uplink bits and vs rounds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from flcomp.sim.results import load_run  # noqa: E402


def plot_runs(directories: list[Path], output: Path) -> Path:
    """One PNG, two panels; y is accuracy, or the relative gap (log scale) for synthetic tasks."""
    runs = [load_run(Path(d)) for d in directories]
    use_gap = all(r[1][-1].get("gap") is not None for r in runs)
    metric = "gap" if use_gap else "accuracy"
    fig, (by_bits, by_round) = plt.subplots(1, 2, figsize=(11, 4.2 + 0.3 * len(runs)))
    for config, rounds, _ in runs:
        sent = [r for r in rounds if r["cumulative_uplink_bytes"] > 0]  # round 0 sends nothing
        by_bits.plot([8 * r["cumulative_uplink_bytes"] for r in sent], [r[metric] for r in sent], marker=".")
        by_round.plot(
            [r["round"] for r in rounds], [r[metric] for r in rounds], marker=".", label=config["codec"]
        )
    by_bits.set_xscale("log")
    by_bits.set_xlabel("cumulative uplink bits (all clients)")
    by_round.set_xlabel("round")
    for ax in (by_bits, by_round):
        ax.set_ylabel("relative objective gap" if use_gap else "test accuracy")
        if use_gap:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.035 * (1 + len(runs) // 2), 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
