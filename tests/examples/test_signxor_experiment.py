"""examples/signxor_experiment.py end to end with tiny settings: digits, a few rounds (seconds)."""

import csv
from pathlib import Path

import pytest
from conftest import load_example


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


def test_flip_rates_are_read_from_every_signxor_payload(experiment, ran):
    tmp, _ = ran
    for arm in experiment.ARMS:
        flips = rows(tmp / "runs" / arm.key / "flips.csv")
        assert [int(r["round"]) for r in flips] == [1, 2, 3, 4]
        uplink = [int(r["uplink_entries"]) for r in flips]
        downlink = [int(r["downlink_entries"]) for r in flips]
        if arm.codec.startswith("signxor"):
            entries = uplink[0] // experiment.CLIENTS
            assert uplink == [experiment.CLIENTS * entries] * 4
            assert downlink == [0, entries, entries, entries]  # round 1 broadcasts key frames
            assert all(0 <= int(r["uplink_flips"]) <= int(r["uplink_entries"]) for r in flips)
            assert all(0 <= int(r["downlink_flips"]) <= int(r["downlink_entries"]) for r in flips)
        else:
            assert not any(uplink) and not any(downlink)


def test_signxor_at_lambda_zero_trains_exactly_like_scaled_sign_on_fewer_bits(ran):
    tmp, _ = ran
    signxor, scaled = (rows(tmp / "runs" / key / "rounds.csv") for key in ("signxor_lam0", "scaled_sign"))
    assert [r["accuracy"] for r in signxor] == [r["accuracy"] for r in scaled]
    assert sum(int(r["uplink_bytes"]) for r in signxor) < sum(int(r["uplink_bytes"]) for r in scaled)
