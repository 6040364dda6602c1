"""examples/gdsec_experiment.py: its main path and sweeps with tiny settings, how it reads the
entries sent from the encoders' stats, and how it checks the floors."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import load_example


@pytest.fixture(scope="module")
def experiment():
    return load_example("gdsec_experiment")


def test_the_experiment_writes_its_table_section_and_plots(experiment, tmp_path):
    """One synthetic problem (its floors included) and the federated extension, one round, one
    seed (a synthetic problem's reference solve takes seconds per seed)."""
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    problems, codecs = ["synthetic-linear", "digits-cnn-federated"], ["fp32", "topk:ratio=0.1", "gdsec"]
    argv = ["--seeds", "0", "--rounds", "1", "--problems", *problems, "--codecs", *codecs, "--quiet"]
    argv += ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path)]
    section = experiment.main(argv)

    for problem in problems:
        for c in codecs:
            assert f"| {problem} | `{c}` |" in section
        assert (tmp_path / f"gdsec_{problem}.png").stat().st_size > 0
    rows = {line.split(" | ")[1]: line for line in section.splitlines() if "| synthetic-linear |" in line}
    assert rows["`fp32`"].endswith("| 100.0% | 2.3e-01 |")  # one round of GD: far from 1e-6
    assert "| 10.1% |" in rows["`topk:ratio=0.1`"]  # ⌈0.1·1000⌉ + 1 (the bias) of 1001 entries
    assert "| 13.7% |" in rows["`gdsec`"]  # |Δ_i| > 1.5·rms(Δ): for Gaussian Δ, P(|z| > 1.5) = 13.4%
    assert "ξ sweep" not in section  # one ξ ran
    assert "- synthetic-linear, seed 0: GD did not reach the target: floors not met" in section
    assert section.startswith("## GD-SEC: sparsified gradient differences with error correction\n")
    assert "python examples/gdsec_experiment.py --seeds 0 --rounds 1" in section
    text = results.read_text()
    assert "<!-- gdsec:begin -->" in text and section.strip() in text and "kept" in text


def test_the_sweep_writes_its_own_section(experiment, tmp_path):
    codecs = ["fp32", "gdsec:xi=0.5", "gdsec"]
    argv = ["--sweep", "--seeds", "0", "--rounds", "2", "--problems", "digits-logreg", "--codecs", *codecs]
    section = experiment.main([*argv, "--quiet", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path)])
    rows = [line for line in section.splitlines() if line.startswith("| digits-logreg, seed 0 |")]
    assert [line.split(" | ")[1] for line in rows] == [f"`{c}`" for c in codecs]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- gdsec-xi:begin -->" in text and "<!-- gdsec:begin -->" not in text


def rows_of(per_round: list[dict], clients: int = 2) -> list[dict]:
    """rounds.csv rows: round 0, then one training round of `clients` clients per dict of stats."""
    rows = [{"round": 0.0, "clients_accepted": None} | dict.fromkeys(per_round[0], None)]
    return rows + [
        {"round": float(t), "clients_accepted": float(clients)} | s for t, s in enumerate(per_round, 1)
    ]


def test_entries_sent_are_the_encoders_counts(experiment):
    rows = rows_of([{"stat_entries_sent": 30.0}, {"stat_entries_sent": 10.0}])
    assert experiment.entries_sent(rows, size=100) == 40
    assert experiment.entries_sent(rows, size=100, rounds=1) == 30
    assert experiment.Outcome(rows, size=100).fraction_sent() == pytest.approx(40 / 400)


def test_lag_sends_every_entry_or_none_and_dense_codecs_every_entry(experiment):
    lag = rows_of([{"stat_sent": 2.0}, {"stat_sent": 1.0}])
    assert experiment.entries_sent(lag, size=100) == 300
    dense = rows_of([{}, {}])
    assert experiment.Outcome(dense, size=100).fraction_sent() == 1.0


def outcome(experiment, reached_at: int | None, total_bytes: int, rounds: int = 30):
    """A run whose uplink grows evenly to `total_bytes` over `rounds` rounds and whose gap
    drops below 1e-6 at round `reached_at` (never if None)."""
    rows = [{"round": 0, "cumulative_uplink_bytes": 0, "gap": 1.0}]
    for t in range(1, rounds + 1):
        gap = 1e-7 if reached_at is not None and t >= reached_at else 1e-3
        rows.append({"round": t, "cumulative_uplink_bytes": total_bytes * t // rounds, "gap": gap})
    return experiment.Outcome(rows, size=1)


def test_the_floors_compare_gdsec_with_gd_and_the_best_top_k(experiment):
    problem = experiment.PROBLEMS["synthetic-linear"]  # target: gap ≤ 1e-6
    gd = outcome(experiment, 10, 3000)  # 1000 bytes at the target
    met = {
        "fp32": gd,
        "gdsec": outcome(experiment, 12, 300),  # 1.2× the rounds, 12% of the bits
        "topk:ratio=0.5": outcome(experiment, 20, 900),  # 600 bytes at the target
        "topk:ratio=0.9": outcome(experiment, 15, 2400),  # 1200
    }
    (line,) = experiment.floor_lines("p", problem, met)
    assert line.count("NOT met") == 0 and "best top-k `topk:ratio=0.5` 0.005 Mbit (fewer: met)" in line
    missed = met | {"gdsec": outcome(experiment, 13, 1500), "topk:ratio=0.5": outcome(experiment, 20, 450)}
    (line,) = experiment.floor_lines("p", problem, missed)  # 1.3×, 65%, more bits than top-k's 300
    assert line.count("NOT met") == 3
    never = {
        "fp32": gd,
        "gdsec": outcome(experiment, 12, 300),
        "topk:ratio=0.5": outcome(experiment, None, 9),
    }
    (line,) = experiment.floor_lines("p", problem, never)
    assert "no top-k ratio" in line and "NOT met" not in line
    (line,) = experiment.floor_lines("p", problem, {"fp32": gd, "gdsec": outcome(experiment, None, 300)})
    assert line == "- p: GD-SEC did not reach the target: floors not met"


def test_the_floors_run_at_other_client_counts_and_splits_with_gd_and_the_default_only(experiment):
    problems = experiment.PROBLEMS
    expected = {f"synthetic-{p}-k{k}" for p in ("linear", "logistic") for k in (5, 20, 50)}
    expected |= {"synthetic-linear", "synthetic-logistic", "digits-logreg", "digits-logreg-dirichlet"}
    assert set(experiment.FLOOR_PROBLEMS) == expected
    for k in (5, 20, 50):
        variant, main = problems[f"synthetic-logistic-k{k}"], problems["synthetic-logistic"]
        assert variant.task == dataclasses.replace(main.task, num_clients=k) and variant.codecs == (
            "fp32",
            "gdsec",
        )
        assert variant.target == main.target and f"K = {k}" in variant.label
        assert 1.2 * 175 < variant.rounds <= main.rounds  # GD's rounds to the target: ≤ 175 at every seed
    dirichlet = problems["digits-logreg-dirichlet"].task
    assert (dirichlet.partition, dirichlet.alpha, dirichlet.num_clients) == ("dirichlet", 0.5, 10)
    assert "lag:xi=100" not in {c for p in problems.values() for c in p.codecs}


def test_without_top_k_the_floors_are_rounds_and_bits_only(experiment):
    problem = experiment.PROBLEMS["synthetic-linear-k50"]
    runs = {"fp32": outcome(experiment, 10, 3000), "gdsec": outcome(experiment, 11, 500)}
    (line,) = experiment.floor_lines("p", problem, runs)
    assert line == ("- p: 11 rounds = 1.10× GD's 10 (≤ 1.2×: met); 0.001 Mbit = 18.3% of GD's (≤ 20%: met)")


def test_other_seeds_rerun_gd_gdsec_and_the_best_top_k(experiment):
    problem = experiment.PROBLEMS["synthetic-linear"]
    runs = {"fp32": outcome(experiment, 10, 3000), "gdsec": outcome(experiment, 12, 300)}
    runs |= {"topk:ratio=0.1": outcome(experiment, None, 100), "topk:ratio=0.5": outcome(experiment, 20, 900)}
    assert experiment.floor_codecs(problem, runs) == ("fp32", "gdsec", "topk:ratio=0.5")
    runs["topk:ratio=0.5"] = outcome(experiment, None, 900)  # none reached: the largest ratio
    assert experiment.floor_codecs(problem, runs) == ("fp32", "gdsec", "topk:ratio=0.95")
