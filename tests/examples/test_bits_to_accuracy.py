"""examples/bits_to_accuracy.py: its target and bits-to-target logic on synthetic rows, then end to end
with tiny settings (digits, 10 clients, 3 codecs, a few rounds: seconds)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import load_example

from flcomp.sim import experiment


@pytest.fixture(scope="module")
def bta():
    return load_example("bits_to_accuracy")


def rows_of(accuracy: list[float], uplink: list[int], downlink: list[int]) -> list[dict]:
    """rounds.csv rows as `load_run` reads them: round 0 (no traffic), then one per accuracy."""
    first = {"round": 0.0, "uplink_bytes": 0.0, "downlink_bytes": None, "accuracy": 0.1}
    return [first] + [
        {"round": float(t + 1), "uplink_bytes": float(u), "downlink_bytes": float(d), "accuracy": a}
        for t, (a, u, d) in enumerate(zip(accuracy, uplink, downlink))
    ]


def test_trailing_mean_averages_the_last_window_values():
    got = experiment.trailing_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2)
    np.testing.assert_allclose(got, [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(experiment.trailing_mean(np.array([2.0, 4.0]), 10), [2.0, 3.0])


def test_the_target_is_the_first_round_whose_trailing_mean_reaches_it_with_cumulative_bits(bta):
    rows = rows_of([0.5, 0.9, 0.7, 0.8, 0.8], uplink=[10, 20, 30, 40, 50], downlink=[1, 1, 1, 1, 1])
    curve = bta.Curve.of(rows, window=2)
    np.testing.assert_allclose(curve.accuracy, [0.5, 0.7, 0.8, 0.75, 0.8])
    assert curve.final_accuracy == pytest.approx(0.8)
    # A single round at 0.9 is not enough for 0.78: the trailing mean first reaches it at round 3.
    hit = curve.to_target(0.78)
    assert hit == {"round": 3, "uplink_bits": 8 * 60, "total_bits": 8 * 63}
    assert curve.to_target(0.81) is None
    assert bta.target_of(curve) == pytest.approx(0.8 - 0.005)


def test_the_floor_picks_the_run_with_most_times_fewer_total_bits(bta):
    fp32 = bta.Curve.of(rows_of([0.6, 0.8, 0.8], [1000] * 3, [1000] * 3), window=1)
    curves = {
        "fp32": fp32,
        # Reaches the target a round later but on 1/200 of the bits per round: 2/3 · 200 fewer.
        "small": bta.Curve.of(rows_of([0.6, 0.7, 0.8], [5] * 3, [5] * 3), window=1),
        "never": bta.Curve.of(rows_of([0.1, 0.1, 0.1], [1] * 3, [1] * 3), window=1),
        "half": bta.Curve.of(rows_of([0.8, 0.8, 0.8], [1000] * 3, [0] * 3), window=1),
    }
    arms = [bta.Arm(k, k, None) for k in curves]
    target = bta.target_of(fp32)
    best, ratio = bta.floor(arms, curves, target)
    assert best == "small" and ratio == pytest.approx(2000 * 2 / 30)
    assert bta.fewer(fp32.to_target(target), curves["half"].to_target(target), "total_bits") == 4
    assert bta.floor([arms[0], arms[2]], curves, target) == (None, None)  # fp32 and "never"


def test_a_broadcast_run_is_compared_with_fp32_under_broadcast(bta):
    fp32 = bta.Curve.of(rows_of([0.6, 0.8, 0.8], [1000] * 3, [1000] * 3), window=1)
    fp32_broadcast = bta.Curve.of(rows_of([0.6, 0.8, 0.8], [1000] * 3, [100] * 3), window=1)
    small = bta.Curve.of(rows_of([0.6, 0.8, 0.8], [10] * 3, [1] * 3), window=1)
    arms = bta.arms(["fp32"], [], ["small"])
    assert [(a.key, a.reference) for a in arms] == [
        ("fp32", "fp32"),
        ("fp32 broadcast", "fp32 broadcast"),
        ("small two-way broadcast", "fp32 broadcast"),
    ]
    curves = {"fp32": fp32, "fp32 broadcast": fp32_broadcast, "small two-way broadcast": small}
    assert bta.floor(arms, curves, bta.target_of(fp32)) == (
        "small two-way broadcast",
        pytest.approx(1100 / 11),
    )


@pytest.fixture(scope="module")
def ran(bta, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bits_to_accuracy")
    argv = [
        *("--dataset", "digits", "--clients", "10", "--fraction", "0.3", "--rounds", "3", "--window", "2"),
        *("--codecs", "fp32", "stc", "topk", "--two-way", "stc", "--broadcast", "stc", "--quiet"),
        *("--out", str(tmp / "runs"), "--docs", str(tmp / "docs")),
    ]
    return tmp, argv, bta.main(argv)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "`" in line]
    return {
        cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    }


def test_it_writes_its_section_table_floor_and_plot(ran):
    tmp, _, markdown = ran
    results = (tmp / "docs" / "RESULTS.md").read_text()
    assert "<!-- bits_to_accuracy:begin -->" in results and markdown.strip() in results
    assert (tmp / "docs" / "bits_to_accuracy" / "accuracy_vs_bits.png").stat().st_size > 0
    assert list(table_rows(markdown)) == [
        "fp32",
        "fp32 broadcast",
        "stc two-way broadcast",
        "stc",
        "topk",
        "stc two-way",
    ]
    assert "python examples/bits_to_accuracy.py --dataset digits --clients 10" in markdown
    assert (
        "Floor (a codec reaches the target with ≥ 100× fewer total bits than fp32 under the same" in markdown
    )


def test_the_table_counts_the_runs_bytes_both_ways(bta, ran):
    tmp, _, markdown = ran
    table = table_rows(markdown)
    fp32 = read_csv(tmp / "runs" / "fp32" / "rounds.csv")[1:]
    final = np.mean([float(r["accuracy"]) for r in fp32[-2:]])
    assert table["fp32"][2:4] == ["unicast", f"{final:.4f}"]
    for key in table:
        trained = read_csv(tmp / "runs" / bta.slug(key) / "rounds.csv")[1:]
        up = sum(int(r["uplink_bytes"]) for r in trained)
        down = sum(int(r["downlink_bytes"]) for r in trained)
        assert down > 0 and table[key][-1] == f"{down / (up + down):.1%}"
        reached = table[key][4]
        if reached != "not reached":  # the cumulative bits at that round
            upto = trained[: int(reached)]
            total = sum(int(r["uplink_bytes"]) + int(r["downlink_bytes"]) for r in upto)
            assert table[key][6] == f"{8 * total / 1e6:.3f}"
    stc_one, stc_two = (read_csv(tmp / "runs" / d / "rounds.csv")[1:] for d in ("stc", "stc_two-way"))
    assert [r["uplink_bytes"] for r in stc_one][:1] == [r["uplink_bytes"] for r in stc_two][:1]
    # One way the model goes as it is; two-way, round 1 sends every client a key frame (the replica).
    assert [r["downlink_bytes"] for r in stc_one] == [r["downlink_bytes"] for r in fp32]
    assert int(stc_two[0]["downlink_bytes"]) >= int(fp32[0]["downlink_bytes"])
    # Broadcast: the same training, the model (or the payload) once a round.
    fp32_b, stc_b = (
        read_csv(tmp / "runs" / d / "rounds.csv")[1:] for d in ("fp32_broadcast", "stc_two-way_broadcast")
    )
    assert [r["accuracy"] for r in fp32_b] == [r["accuracy"] for r in fp32]
    assert [r["accuracy"] for r in stc_b] == [r["accuracy"] for r in stc_two]
    assert all(3 * int(b["downlink_bytes"]) == int(u["downlink_bytes"]) for b, u in zip(fp32_b, fp32))
    assert sum(int(r["downlink_bytes"]) for r in stc_b) < sum(int(r["downlink_bytes"]) for r in stc_two)


def test_finished_runs_are_read_not_rerun_unless_the_config_changes(bta, ran):
    tmp, argv, markdown = ran
    summaries = {d: (d / "summary.json").stat().st_mtime_ns for d in (tmp / "runs").iterdir()}
    assert bta.main(argv) == markdown
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in summaries} == summaries
    bta.main([*argv[: argv.index("--codecs")], "--codecs", "fp32", "--two-way", "--seed", "1", *argv[-5:]])
    assert (tmp / "runs" / "fp32" / "summary.json").stat().st_mtime_ns != summaries[tmp / "runs" / "fp32"]
