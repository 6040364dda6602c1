"""benchmarks/sim_overhead.py runs end to end on Ray with tiny settings (about 30 s)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_overhead.py"


@pytest.mark.slow
def test_sim_overhead_runs_and_prints_its_tables():
    args = ["--clients", "3", "--rounds", "2", "--entries", "1000"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 3 ")]
    assert len(rows) == 2  # seconds and bytes
    seconds, uplink = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert all(float(c) > 0 for c in seconds[1:])
    plain, fp32, topk = (int(c.replace(",", "")) for c in uplink[1:4])
    assert topk < fp32 <= plain
