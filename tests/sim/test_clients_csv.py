"""clients.csv: one row per instructed client and round, adding up to rounds.csv's sums."""

import csv

import pytest

from flcomp.sim import RunConfig, run
from flcomp.strategies.traffic import CLIENT_COLUMNS
from flcomp.tasks import TaskConfig

TASK = TaskConfig(dataset="digits", model="logreg", num_clients=6, lr=0.1)


def read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "channel, budget",
    [
        (None, None),
        ("iot-lowpower:seconds_per_sample=0.0002,heterogeneity=0.5,deadline_s=6", "deadline"),
        ("iot-lowpower:seconds_per_sample=0.002,heterogeneity=0.5,deadline_s=3", None),  # all late
    ],
)
def test_client_rows_add_up_to_the_rounds(tmp_path, channel, budget):
    config = RunConfig(
        task=TASK,
        codec="topk:ratio=0.3",
        channel=channel,
        budget=budget,
        rounds=4,
        fraction=0.5,
        engine="inline",
    )
    run(config, tmp_path, progress=False)
    rounds, clients = read(tmp_path / "rounds.csv")[1:], read(tmp_path / "clients.csv")
    assert list(clients[0]) == list(CLIENT_COLUMNS)
    for r in rounds:
        mine = [c for c in clients if c["round"] == r["round"]]
        assert len(mine) == int(r["clients_accepted"]) + int(r["clients_dropped"]) == 3
        assert len({c["client"] for c in mine}) == 3
        assert sum(int(c["uplink_bytes"]) for c in mine) == int(r["uplink_bytes"])
        assert sum(int(c["downlink_bytes"]) for c in mine) == int(r["downlink_bytes"])
        assert sum(c["outcome"] == "accepted" for c in mine) == int(r["clients_accepted"])
        if budget is not None and r["budget_bits"]:
            assert sum(float(c["budget_bits"] or 0) for c in mine) == pytest.approx(float(r["budget_bits"]))
        if channel is not None:
            assert sum(c["delivered"] == "True" for c in mine) == int(r["clients_delivered"])
            assert sum(float(c["energy_j"]) for c in mine) == pytest.approx(float(r["energy_j"]))
            assert all(c["outcome"].startswith("channel: ") for c in mine if c["delivered"] == "False")
        else:
            assert all(c["delivered"] == "" for c in mine)
    assert any(c["budget_bits"] for c in clients) == (budget is not None)
