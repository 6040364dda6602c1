"""The `flcomp` command line and the codec benchmark run end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

from flcomp.cli import main
from flcomp.codecs import available

ROOT = Path(__file__).resolve().parents[2]


def test_flcomp_codecs_measures_every_codec(capsys):
    main(["codecs", "--entries", "5000", "--rounds", "3"])
    out = capsys.readouterr().out
    rows = [line.split()[0].partition(":")[0] for line in out.splitlines()[3:] if line.strip()]
    assert rows == available()


def test_flcomp_codecs_takes_codec_strings(capsys):
    main(["codecs", "--entries", "2000", "--rounds", "2", "topk:ratio=0.1,value_dtype=float16", "fp32"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("topk:ratio=0.1,value_dtype=float16,error_feedback=True")
    fp32 = lines[-1].split()
    assert fp32[0] == "fp32" and float(fp32[3]) == 0.0


def test_flcomp_refuses_an_unknown_codec(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["codecs", "nosuchcodec"])
    assert exit_info.value.code == 2 and "unknown codec" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "codecs.py"), "--repeats", "2", "--sizes", "1000000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    # two tables, each a header and a row per codec (two extra configs): throughput, fixed cost
    throughput, fixed_cost = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    assert throughput[0].split("|")[1].strip() == fixed_cost[0].split("|")[1].strip() == "codec"
    assert len(throughput) == len(fixed_cost) == 1 + len(available()) + 2
