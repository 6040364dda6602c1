"""benchmarks/scale.py runs end to end with tiny settings, on both engines."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scale.py"


@pytest.mark.slow
def test_scale_runs_and_prints_its_table():
    args = ["--clients", "20", "--rounds", "1", "--entries", "1000", "--codecs", "topk", "tpc"]
    args += ["--only", "20:0.1"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [
        line.strip("|").split("|")
        for line in done.stdout.splitlines()
        if line.startswith("| ray") or line.startswith("| inline")
    ]
    assert len(rows) == 4  # two engines, two codecs
    for row in rows:
        codec, plain, wrapped, _, rss, server, client = (c.strip() for c in row[3:])
        assert float(plain) > 0 and float(wrapped) > 0 and float(rss) > 0
        assert int(client.replace(",", "")) > 0  # both codecs keep client state
        assert (int(server.replace(",", "")) > 0) == (codec == "tpc")  # top-k's server side is stateless
