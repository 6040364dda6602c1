"""examples/tpc_experiment.py: its main path with tiny settings, and how it counts TPC's residuals."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_example

from flcomp.codecs import HEADER_BYTES, ModelSpec, codec
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
    argv += ["--out", str(tmp_path / "runs"), "--results", str(results), "--plots", str(tmp_path)]
    section = experiment.main(argv)

    for problem in problems:
        for c in codecs:
            assert f"| {problem} | `{c}` |" in section
        assert (tmp_path / f"tpc_{problem}.png").stat().st_size > 0
    tpc_rows = [line for line in section.splitlines() if "| `tpc` |" in line]
    assert all(line.endswith("| 100.0% |") for line in tpc_rows)  # round 1 sends g itself
    assert "python examples/tpc_experiment.py --seeds 0 --rounds 1" in section
    text = results.read_text()
    assert "<!-- tpc:begin -->" in text and section.strip() in text and "kept" in text


def fake_run(directory: Path, cumulative_bytes: list[int], gaps: list[float]) -> Path:
    """A results directory whose rounds 1, 2, ... upload these cumulative bytes and reach these gaps."""
    recorder = RunRecorder(directory)
    recorder.start({})
    recorder.add_round({"round": 0, "uplink_bytes": 0, "gap": 1.0, "accuracy": 0.5})
    for t, (total, gap) in enumerate(zip(cumulative_bytes, gaps), start=1):
        uplink = total - recorder.rows[-1]["cumulative_uplink_bytes"]
        recorder.add_round({"round": t, "uplink_bytes": uplink, "gap": gap, "accuracy": 0.5})
    recorder.finish()
    return directory


def test_the_floors_compare_tpc_with_gd_and_lag_at_the_target(experiment, tmp_path):
    problem = experiment.PROBLEMS["synthetic-logistic"]  # target: gap ≤ 1e-4
    gaps = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    kb = [1000 * k for k in range(1, 6)]
    runs = {
        "fp32": fake_run(tmp_path / "gd", [100 * b for b in kb], gaps),  # 300 kB at round 3
        "lag": fake_run(tmp_path / "lag", [20 * b for b in kb], gaps),  # 60 kB at round 3
        "lag:xi=100": fake_run(tmp_path / "lag100", [10 * b for b in kb], [1e-3] * 5),  # never
        "tpc": fake_run(tmp_path / "tpc", [20 * b for b in kb], [1e-2, 1e-3, 1e-3, 1e-4, 1e-5]),
    }
    (line,) = experiment.floor_lines(7, problem, runs)
    assert line.startswith("- seed 7: 4 rounds = 1.33× GD's 3 (≤ 1.2×: NOT met); ")
    assert "0.640 Mbit = 26.7% of GD's (≤ 30%: met)" in line
    assert "`lag` 0.480 Mbit (fewer: NOT met)" in line
    assert "`lag:xi=100` never reached (fewer: met)" in line


SPEC = ModelSpec.flat(30, 10)


def rounds_with(sent: list[int], clients: int = 3, memory: int = 3) -> list[dict]:
    """rounds.csv rows of a TPC fp32 run in which `sent[t]` clients sent the residual in round t + 1."""
    rows = [{"round": 0.0, "uplink_bytes": 0.0}]
    for t, n in enumerate(sent):
        base = HEADER_BYTES + 4 * min(t, memory) + 1
        rows.append(
            {
                "round": float(t + 1),
                "uplink_bytes": float(clients * base + n * 4 * SPEC.size),
                "clients_accepted": float(clients),
                "clients_dropped": 0.0,
            }
        )
    return rows


def test_the_residual_share_is_counted_from_the_bytes(experiment):
    share, exact = experiment.residual_share(rounds_with([3, 1, 0, 2]), codec("tpc"), SPEC, clients=3)
    assert exact and share == pytest.approx(6 / 12)


def test_bytes_that_do_not_fit_tpcs_format_are_refused(experiment):
    rows = rounds_with([3, 1])
    rows[2]["uplink_bytes"] += 3
    with pytest.raises(ValueError, match="do not fit"):
        experiment.residual_share(rows, codec("tpc"), SPEC, clients=3)


def test_a_variable_size_inner_codec_gives_the_share_of_rounds(experiment):
    rows = rounds_with([3, 0, 0, 1])
    share, exact = experiment.residual_share(rows, codec("tpc", inner="topk:ratio=0.1"), SPEC, clients=3)
    assert not exact and share == pytest.approx(2 / 4)
