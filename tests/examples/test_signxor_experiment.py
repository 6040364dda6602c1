"""examples/signxor_experiment.py end to end with tiny settings: digits, a few rounds (seconds)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import load_example

from flcomp.sim import load_run


@pytest.fixture(scope="module")
def experiment():
    return load_example("signxor_experiment")


@pytest.fixture(scope="module")
def ran(experiment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signxor")
    args = ["--rounds", "4", "--dataset", "digits", "--window", "2", "--quiet"]
    markdown = experiment.main([*args, "--out", str(tmp / "runs"), "--docs", str(tmp / "docs")])
    return tmp, markdown


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_it_writes_its_section_and_plots(experiment, ran):
    tmp, markdown = ran
    results = (tmp / "docs" / "RESULTS.md").read_text()
    assert "<!-- signxor:begin -->" in results and markdown.strip() in results
    assert (tmp / "docs" / "signxor_accuracy.png").stat().st_size > 0
    assert (tmp / "docs" / "signxor_flips.png").stat().st_size > 0
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "`" in line]
    assert [line.split("|")[1].strip() for line in table] == [arm.label for arm in experiment.ARMS]
    assert "python examples/signxor_experiment.py --rounds 4 --dataset digits" in markdown


def test_flip_counts_are_the_encoders_both_ways(experiment, ran):
    tmp, _ = ran
    for arm in experiment.ARMS:
        trained = rows(tmp / "runs" / arm.key / "rounds.csv")[1:]
        assert [int(r["round"]) for r in trained] == [1, 2, 3, 4]
        if not arm.codec.startswith("signxor"):
            assert "stat_flips" not in trained[0] and "downlink_stat_flips" not in trained[0]
            continue
        signs = [float(r["stat_signs"]) for r in trained]
        entries = signs[0] / experiment.CLIENTS
        assert signs == [experiment.CLIENTS * entries] * 4  # every client codes every sign
        # Round 1 broadcasts key frames (the replica, no flips); then one payload for everyone.
        assert [float(r["downlink_stat_signs"] or 0) for r in trained] == [0, entries, entries, entries]
        assert all(0 <= float(r["stat_flips"]) <= float(r["stat_signs"]) for r in trained)
        assert all(0 <= float(r["downlink_stat_flips"]) <= entries for r in trained[1:])
        rates = experiment.flip_rates(load_run(tmp / "runs" / arm.key)[1])
        assert np.isnan(rates["downlink_rate"][0]) and np.isfinite(rates["uplink_rate"]).all()


def test_signxor_at_lambda_zero_trains_exactly_like_scaled_sign_on_fewer_bits(ran):
    tmp, _ = ran
    signxor, scaled = (rows(tmp / "runs" / key / "rounds.csv") for key in ("signxor_lam0", "scaled_sign"))
    assert [r["accuracy"] for r in signxor] == [r["accuracy"] for r in scaled]
    assert sum(int(r["uplink_bytes"]) for r in signxor) < sum(int(r["uplink_bytes"]) for r in scaled)
