"""examples/two_way_stability.py runs (few rounds) and reports every pair at every step size."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "two_way_stability.py"


def test_it_prints_a_row_per_pair_and_step_size():
    spec = importlib.util.spec_from_file_location("two_way_stability", SCRIPT)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.main(["--rounds", "40", "--lr", "0.05", "0.01"])
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 * len(module.RUNS)
    first = [float(c) for c in rows[0].strip("|").split("|")[3:]]
    assert first[-1] < first[0], "uncompressed gradient descent gets closer to the optimum"
