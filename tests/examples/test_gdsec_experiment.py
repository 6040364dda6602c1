"""examples/gdsec_experiment.py: its main path with tiny settings, how it counts the entries a
payload carries, and how it checks issue 6's floors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_example

from flcomp.codecs import Codec, ModelSpec, RoundContext


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
    argv += ["--out", str(tmp_path / "runs"), "--results", str(results), "--plots", str(tmp_path)]
    section = experiment.main(argv)

    for problem in problems:
        for c in codecs:
            assert f"| {problem} | `{c}` |" in section
        assert (tmp_path / f"gdsec_{problem}.png").stat().st_size > 0
    rows = {line.split(" | ")[1]: line for line in section.splitlines() if "| synthetic-linear |" in line}
    assert rows["`fp32`"].endswith("| 100.0% | 2.3e-01 |")  # one round of GD: far from 1e-6
    assert "| 10.1% |" in rows["`topk:ratio=0.1`"]  # ⌈0.1·1000⌉ + 1 (the bias) of 1001 entries
    assert "| 5.1% |" in rows["`gdsec`"]  # no model change yet: the 5% largest of each tensor
    assert "ξ sweep" not in section  # one ξ ran
    assert "- synthetic-linear, seed 0: GD did not reach the target: floors not met" in section
    assert "python examples/gdsec_experiment.py --seeds 0 --rounds 1" in section
    text = results.read_text()
    assert "<!-- gdsec:begin -->" in text and section.strip() in text and "kept" in text


SPEC = ModelSpec.of([np.zeros((4, 50), np.float32), np.zeros(7, np.float32)])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fp32", SPEC.size),
        ("qsgd", SPEC.size),
        ("topk:ratio=0.1", 20 + 1),  # ⌈0.1·n⌉ of each tensor
        ("gdsec:rule=absolute,threshold=1.0", None),  # |g_i| > 1
        ("gdsec:rule=absolute,threshold=1.0,value_dtype=float16", None),
    ],
)
def test_entries_are_counted_from_the_payloads(experiment, text, expected, rng):
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    if expected is None:
        expected = sum(int((np.abs(u) > 1).sum()) for u in update)
    c = Codec.parse(text)
    assert experiment.count_components(c, SPEC, c.encoder(SPEC).encode(update)) == expected


def test_lag_counts_every_entry_or_none(experiment, rng):
    c = Codec.parse("lag")
    enc = c.encoder(SPEC)
    update = [rng.standard_normal(t.shape).astype(np.float32) for t in SPEC.tensors]
    ctx = RoundContext(num_clients=2, model_change_sq=(1.0,))
    assert experiment.count_components(c, SPEC, enc.encode(update, ctx)) == SPEC.size
    enc.commit()
    assert experiment.count_components(c, SPEC, enc.encode(update, ctx)) == 0  # unchanged: skipped


def outcome(experiment, reached_at: int | None, total_bytes: int, rounds: int = 30):
    """A run whose uplink grows evenly to `total_bytes` over `rounds` rounds and whose gap
    drops below 1e-6 at round `reached_at` (never if None)."""
    rows = [{"round": 0, "cumulative_uplink_bytes": 0, "gap": 1.0}]
    for t in range(1, rounds + 1):
        gap = 1e-7 if reached_at is not None and t >= reached_at else 1e-3
        rows.append({"round": t, "cumulative_uplink_bytes": total_bytes * t // rounds, "gap": gap})
    return experiment.Outcome(rows, [(1, 1)] * rounds, size=1)


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


def test_other_seeds_rerun_gd_gdsec_and_the_best_top_k(experiment):
    problem = experiment.PROBLEMS["synthetic-linear"]
    runs = {"fp32": outcome(experiment, 10, 3000), "gdsec": outcome(experiment, 12, 300)}
    runs |= {"topk:ratio=0.1": outcome(experiment, None, 100), "topk:ratio=0.5": outcome(experiment, 20, 900)}
    assert experiment.floor_codecs(problem, runs) == ("fp32", "gdsec", "topk:ratio=0.5")
    runs["topk:ratio=0.5"] = outcome(experiment, None, 900)  # none reached: the largest ratio
    assert experiment.floor_codecs(problem, runs) == ("fp32", "gdsec", "topk:ratio=0.95")
