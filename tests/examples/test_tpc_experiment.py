"""examples/tpc_experiment.py: its main path and τ's sweep with tiny settings, how it reads TPC's
residuals from the encoders' stats, and how it checks the floors."""

from __future__ import annotations

import pytest
from conftest import load_example

from flcomp.sim.results import RunRecorder


@pytest.fixture(scope="module")
def experiment():
    return load_example("tpc_experiment")


def test_the_experiment_writes_its_table_section_and_plots(experiment, tmp_path):
    """Both digits problems (the synthetic one's reference solve alone takes seconds), one round."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    problems, codecs = ["digits-logreg", "digits-cnn-federated"], ["fp32", "tpc"]
    argv = ["--seeds", "0", "--rounds", "1", "--problems", *problems, "--codecs", *codecs, "--quiet"]
    argv += ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path)]
    section = experiment.main(argv)

    for problem in problems:
        for c in codecs:
            assert f"| {problem} | `{c}` |" in section
        assert (tmp_path / f"tpc_{problem}.png").stat().st_size > 0
    tpc_rows = [line for line in section.splitlines() if "| `tpc` |" in line]
    assert all(line.endswith("| 100.0% |") for line in tpc_rows)  # round 1 sends g itself
    assert section.startswith("## TPC: temporal predictive coding\n")
    assert "python examples/tpc_experiment.py --seeds 0 --rounds 1" in section
    assert "![tpc_digits-logreg](tpc_digits-logreg.png)" in section
    text = results.read_text()
    assert "<!-- tpc:begin -->" in text and section.strip() in text and "kept" in text


def test_the_sweep_writes_its_own_section(experiment, tmp_path):
    argv = ["--sweep", "--seeds", "0", "--rounds", "2", "--problems", "digits-logreg", "--quiet"]
    section = experiment.main([*argv, "--out", str(tmp_path / "runs"), "--docs", str(tmp_path)])
    rows = [line for line in section.splitlines() if line.startswith("| digits-logreg, seed 0 |")]
    assert [line.split(" | ")[1] for line in rows] == ["`fp32`"] + [
        f"`tpc:tau={t}`" for t in experiment.TAU_SWEEP
    ]
    assert all(line.endswith("% |") for line in rows[1:])  # every TPC row has its residual share
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- tpc-tau:begin -->" in text and "<!-- tpc:begin -->" not in text


def fake_run(tmp_path, name: str, cumulative_bytes: list[int], gaps: list[float]) -> list[dict]:
    """The rows of a run whose rounds 1, 2, ... upload these cumulative bytes and reach these gaps."""
    recorder = RunRecorder(tmp_path / name)
    recorder.start({})
    recorder.add_round({"round": 0, "uplink_bytes": 0, "gap": 1.0, "accuracy": 0.5})
    for t, (total, gap) in enumerate(zip(cumulative_bytes, gaps), start=1):
        uplink = total - recorder.rows[-1]["cumulative_uplink_bytes"]
        recorder.add_round({"round": t, "uplink_bytes": uplink, "gap": gap, "accuracy": 0.5})
    return recorder.rows


def test_the_floors_compare_tpc_with_gd_and_lag_at_the_target(experiment, tmp_path):
    problem = experiment.PROBLEMS["synthetic-logistic"]  # target: gap ≤ 1e-4
    gaps = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    kb = [1000 * k for k in range(1, 6)]
    runs = {
        "fp32": fake_run(tmp_path, "gd", [100 * b for b in kb], gaps),  # 300 kB at round 3
        "lag": fake_run(tmp_path, "lag", [20 * b for b in kb], gaps),  # 60 kB at round 3
        "lag:xi=0.5": fake_run(tmp_path, "lag05", [10 * b for b in kb], [1e-3] * 5),  # never
        "tpc": fake_run(tmp_path, "tpc", [20 * b for b in kb], [1e-2, 1e-3, 1e-3, 1e-4, 1e-5]),
    }
    (line,) = experiment.floor_lines(7, problem, runs)
    assert line.startswith("- seed 7: 4 rounds = 1.33× GD's 3 (≤ 1.2×: NOT met); ")
    assert "0.640 Mbit = 26.7% of GD's (≤ 30%: met)" in line
    assert "`lag` 0.480 Mbit (fewer: NOT met)" in line
    assert "`lag:xi=0.5` never reached (fewer: met)" in line


def test_the_residual_share_is_what_the_encoders_reported(experiment):
    rows = [{"round": 0.0, "clients_accepted": None, "stat_residual_sent": None}]
    rows += [
        {"round": float(t), "clients_accepted": 3.0, "stat_residual_sent": n}
        for t, n in enumerate([3, 1, 0, 2], 1)
    ]
    assert experiment.residual_share(rows) == "50.0%"  # 6 of 12 client-rounds
    assert experiment.residual_share([{**r, "clients_accepted": 2.0} for r in rows]) == "75.0%"
    assert experiment.residual_share([{"round": 1.0, "clients_accepted": 3.0}]) == ""  # not TPC
