"""flcomp.sim.experiment: the common flags, running runs (and resuming them), reading the codecs'
stats from rounds.csv, publishing a section and the shared table cells."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from flcomp.sim import RunConfig, experiment
from flcomp.tasks import TaskConfig


def test_the_common_flags():
    args = experiment.parser("doc", "results/x", rounds=7, seeds=[0, 1]).parse_args([])
    assert (args.out, args.docs, args.quiet, args.rounds, args.seeds) == (
        Path("results/x"),
        Path("docs"),
        False,
        7,
        [0, 1],
    )
    args = experiment.parser("doc", "r", docs=False).parse_args(["--rounds", "3", "--quiet"])
    assert args.rounds == 3 and args.quiet and not hasattr(args, "docs") and not hasattr(args, "seeds")
    bare = experiment.parser("doc", None, rounds=5).parse_args([])
    assert vars(bare) == {"docs": Path("docs"), "rounds": 5}  # no runs: no --out, no --quiet
    with pytest.raises(SystemExit):
        experiment.parser("doc", None).parse_args(["--out", "x"])


def test_the_reproduce_command_quotes_its_arguments():
    assert experiment.command("x.py", ["--a", "b c"]) == "python examples/x.py --a 'b c'"


def rows(stats: list[dict]) -> list[dict]:
    return [{"round": 0.0} | dict.fromkeys(stats[0], None)] + [
        {"round": float(t)} | s for t, s in enumerate(stats, 1)
    ]


def test_stats_are_summed_over_the_training_rounds():
    r = rows(
        [{"stat_flips": 3.0, "downlink_stat_flips": None}, {"stat_flips": 4.0, "downlink_stat_flips": 2.0}]
    )
    assert experiment.stat_sum(r, "flips") == 7
    assert experiment.stat_sum(r, "flips", rounds=1) == 3
    assert experiment.stat_sum(r, "flips", downlink=True) == 2  # an empty cell counts 0
    assert experiment.stat_sum(r, "signs") is None  # the codec does not report it
    assert [t["round"] for t in experiment.trained(r)] == [1, 2]


def test_target_cells_against_the_reference():
    hit = {"round": 6.0, "cumulative_uplink_bytes": 250_000.0}
    base = {"round": 4.0, "cumulative_uplink_bytes": 1_000_000.0}
    assert experiment.target_cells(hit, base) == ["6", "1.50", "2.000", "25.0%"]
    assert experiment.target_cells(hit, None) == ["6", "", "2.000", ""]
    assert experiment.target_cells(None, base) == ["not reached", "", "", ""]


def test_runs_are_run_resumed_plotted_and_published(tmp_path, capsys):
    task = TaskConfig(dataset="digits", model="logreg", mode="gd", batch_size=0, num_clients=2)
    runs = [
        experiment.Run(c, RunConfig(task=task, codec=c, rounds=2, engine="inline"), tmp_path / "runs" / c)
        for c in ("fp32", "topk")
    ]
    out = experiment.run_all(runs, quiet=True)
    assert list(out) == ["fp32", "topk"] and [r["round"] for r in out["topk"]] == [0, 1, 2]
    assert experiment.stat_sum(out["topk"], "entries_sent") > 0  # what the top-k encoders reported
    assert experiment.stat_sum(out["fp32"], "entries_sent") is None
    assert all(experiment.finished(r) for r in runs)
    config = runs[0].directory / "config.json"  # as a run written before a field existed left it
    config.write_text(
        json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "downlink_delivery"})
    )
    assert experiment.finished(runs[0])
    assert not experiment.finished(dataclasses.replace(runs[0], config=RunConfig(task=task, rounds=3)))
    written = (runs[0].directory / "rounds.csv").stat().st_mtime_ns
    experiment.run_all(runs[:1], quiet=True, resume=True)
    assert (runs[0].directory / "rounds.csv").stat().st_mtime_ns == written  # kept, not rerun

    docs = tmp_path / "docs"
    link = experiment.plot(docs, "x.png", [r.directory for r in runs])
    assert link == "![x](x.png)" and (docs / "x.png").stat().st_size > 0
    section = experiment.publish(docs, "x", f"## X\n\n{link}")
    assert section in capsys.readouterr().out
    assert "<!-- x:begin -->\n## X" in (docs / "RESULTS.md").read_text()
