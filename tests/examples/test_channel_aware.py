"""examples/channel_aware.py end to end with tiny settings: digits, 20 clients, 2 rounds."""

import json

import pytest
from conftest import load_example

ARGV = ["--dataset", "digits", "--clients", "20", "--rounds", "2", "--target", "0.2", "--quiet"]


@pytest.fixture(scope="module")
def experiment():
    return load_example("channel_aware")


@pytest.fixture(scope="module")
def ran(experiment, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("channel_aware")
    markdown = experiment.main([*ARGV, "--out", str(tmp / "runs"), "--docs", str(tmp / "docs")])
    return tmp, markdown


def test_it_writes_its_section_and_plots(experiment, ran):
    tmp, markdown = ran
    results = (tmp / "docs" / "RESULTS.md").read_text()
    assert "<!-- channel_aware:begin -->" in results and markdown.strip() in results
    for cell in experiment.CELLS:
        assert f"### {cell}: `{cell}:deadline_s=" in markdown
        assert (tmp / "docs" / "channel_aware" / f"{cell}.png").stat().st_size > 0
    assert "### Downlink delivery" in markdown
    assert "python examples/channel_aware.py --dataset digits --clients 20 --rounds 2" in markdown


def test_every_arm_has_a_row_in_each_cell(experiment, ran):
    _, markdown = ran
    arms = [a.label for a in experiment.ARMS]
    tables = markdown.split("\n### ")[1:]
    for cell, table in zip(experiment.CELLS, tables):
        assert table.startswith(cell)
        labels = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
        rows = [label for label in labels if label in arms]
        # fp16 only where it can fit in the deadline; every other arm on every cell.
        assert rows == [label for label in arms if label in rows]
        assert set(arms) - set(rows) <= {"fp16"}
    assert tables[-1].startswith("Downlink delivery")
    assert "\n| unicast | " in tables[-1] and "\n| broadcast | " in tables[-1]


def test_the_floor_lines_say_met_or_not(experiment, ran):
    _, markdown = ran
    floors = [line for line in markdown.splitlines() if line.startswith("- Floor")]
    budgeted = [a for a in experiment.ARMS if a.budgeted]
    # One overall line per budgeted arm, one per cell and budgeted arm, the broadcast's twice.
    assert len(floors) == len(budgeted) * (1 + len(experiment.CELLS)) + 2
    assert all(": met" in line or ": NOT met" in line for line in floors)
    # Broadcast puts the fp16 downlink on the air once for the 10 clients, unicast ten times.
    assert "unicast / broadcast = " in floors[len(budgeted)] and ": met" in floors[len(budgeted)]


def test_the_runs_are_configured_as_the_docstring_says(experiment, ran):
    tmp, _ = ran
    for cell in experiment.CELLS:
        for arm in experiment.ARMS:
            path = tmp / "runs" / cell / arm.key / "config.json"
            if arm.codec == "fp16" and not path.exists():
                continue
            config = json.loads(path.read_text())
            assert config["codec"] == arm.codec and config["budget"] == ("deadline" if arm.budgeted else None)
            assert config["channel"].startswith(f"{cell}:deadline_s=")
            assert config["downlink_delivery"] == "broadcast" and config["fraction"] == experiment.FRACTION
    for delivery in ("unicast", "broadcast"):
        config = json.loads((tmp / "runs" / "broadcast" / delivery / "config.json").read_text())
        assert config["downlink"] == experiment.BROADCAST_DOWNLINK and config["downlink_delivery"] == delivery
        assert config["task"]["num_clients"] == experiment.BROADCAST_CLIENTS and config["fraction"] == 1.0
