"""examples/lgc_experiment.py end to end, on tiny settings (digits, a few rounds)."""

from conftest import load_example


def test_the_experiment_runs_and_writes_its_section(tmp_path):
    experiment = load_example("lgc_experiment")
    argv = ["--dataset", "digits", "--rounds", "8", "--stage1", "1", "--stage2", "3", "--ae-steps", "1"]
    argv += ["--eval-every", "4", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]
    floors = experiment.main(argv)
    assert len(floors) == 2
    results = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "<!-- lgc:begin -->" in results and "<!-- lgc:end -->" in results
    for heading in ("### iid", "### dirichlet", "| LGC |", "| topk+EF |", "| fp32 |", "| 3 | 4 |"):
        assert heading in results, heading
    for png in ("lgc_accuracy_vs_bits.png", "lgc_reconstruction_error.png"):
        assert (tmp_path / "docs" / png).stat().st_size > 0
    rows = (tmp_path / "runs" / "iid" / "LGC.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("round,stage")
