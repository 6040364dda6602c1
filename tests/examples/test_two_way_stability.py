"""examples/two_way_stability.py runs (few rounds) and reports every pair at every step size."""

from conftest import load_example


def test_it_prints_a_row_per_pair_and_step_size():
    module = load_example("two_way_stability")
    table = module.main(["--rounds", "40", "--lr", "0.05", "0.01"])
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 * len(module.RUNS)
    first = [float(c) for c in rows[0].strip("|").split("|")[3:]]
    assert first[-1] < first[0], "uncompressed gradient descent gets closer to the optimum"
