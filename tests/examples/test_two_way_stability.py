"""examples/two_way_stability.py: every pair at every step size, its floor lines and RESULTS section,
and the mechanism it reports (exact two-way error feedback winds up, `ef_decay=0.9` does not)."""

from conftest import load_example


def test_it_prints_a_row_per_pair_and_step_size_and_writes_its_section(tmp_path):
    module = load_example("two_way_stability")
    table = module.main(["--rounds", "40", "--lr", "0.05", "0.01", "--docs", str(tmp_path)])
    rows = [line for line in table.splitlines() if line.startswith("| 0.")]
    assert len(rows) == 2 * len(module.RUNS)
    first = [float(c) for c in rows[0].strip("|").split("|")[3:8]]
    assert first[-1] < first[0], "uncompressed gradient descent gets closer to the optimum"
    assert table.count("- lr ") == 2 and "(two-way" in table
    written = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- two_way:begin -->" in written and "--docs" in written


def test_the_servers_memory_winds_up_with_exact_error_feedback_and_not_with_a_decay():
    module = load_example("two_way_stability")
    rounds, report = 300, [0, 299]
    one_way = module.run(*module.ONE_WAY, 0.05, rounds, 0, report)
    exact = module.run("scaled_sign", "scaled_sign", 0.05, rounds, 0, report)
    decayed = module.run(*module.TWO_WAY, 0.05, rounds, 0, report)
    assert exact.warned is not None and exact.final > 3 * one_way.final
    assert exact.server_contraction < 0.2  # the clients' signs disagree: the average is spread thin
    assert decayed.warned is None and decayed.final < module.FLOOR * one_way.final
    assert one_way.warned is None and one_way.server_contraction is None  # fp32 downlink: no memory
