"""`RoundTraffic`: a round's traffic, as round metrics and rounds.csv fields, and the codecs' stats."""

import logging

from flwr.app import MetricRecord
from test_flower_integration import NODES, corrupt_mod, fedavg, make_app, run

from flcomp.channel import ClientOutcome, RoundReport
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.sim import RunConfig, load_run
from flcomp.sim import run as simulate
from flcomp.sim.results import ROUND_COLUMNS
from flcomp.strategies import Compressed, RoundTraffic
from flcomp.tasks import TaskConfig

TOPK = "topk:ratio=0.25"
K = 16 + 1
"""Entries top-k keeps of the test model per client: 16 of w's 64, 1 of b's 3 (at least one)."""


def outcome(delivered: bool) -> ClientOutcome:
    return ClientOutcome(delivered, "" if delivered else "deadline", 0.1, 0.2, 0.3, 0.05, 0.25, 1.5, 0.5)


def a_round() -> RoundTraffic:
    t = RoundTraffic(accepted=2, dropped={7: "channel: deadline"}, encode_seconds=0.1234567)
    t.uploads = {1: (0, 100), 2: (1, 200)}  # 300 uplink bytes
    t.channel = RoundReport(0.7, {0: outcome(True), 1: outcome(True), 2: outcome(False)})
    t.stats, t.downlink_stats = {"entries_sent": 34.0}, {"flips": 3.0}
    t.uplink_contractions = [0.25, 1.0]
    t.add_downlink_health(0.125, 2.0, 0.5)
    t.budgets, t.over_budget = {5: 8000.0}, 1
    t.add_downlink(5, 1000)
    return t


def test_metrics_and_row_report_the_same_fields():
    t = a_round()
    metrics, row = t.to_metrics(), t.row()
    assert len(metrics) == len(row) == len(RoundTraffic.COLUMNS) + 2
    named = dict(zip(RoundTraffic.COLUMNS, metrics))  # the stats' come after the columns' metrics
    for column, metric in named.items():
        expected = round(metrics[metric], 6) if column == "encode_seconds" else metrics[metric]
        assert row[column] == expected, column
    assert named["uplink_bytes"] == records.UPLINK_BYTES and named["energy_j"] == "flcomp.energy-j"
    assert (row["clients_delivered"], row["clients_lost"], row["clients_dropped"]) == (2, 1, 1)
    assert row["energy_j"] == metrics["flcomp.energy-j"] == 4.5
    assert row["stat_entries_sent"] == metrics[records.STAT_PREFIX + "entries_sent"] == 34.0
    assert row["downlink_stat_flips"] == metrics[records.DOWNLINK_STAT_PREFIX + "flips"] == 3.0
    assert set(RoundTraffic.COLUMNS) <= set(ROUND_COLUMNS)


def test_without_a_channel_there_are_no_channel_fields():
    t = RoundTraffic(uploads={1: (0, 10)})
    assert "virtual_seconds" not in t.row() and "flcomp.virtual-seconds" not in t.to_metrics()
    assert RoundTraffic.empty_row(channel=False) == {"uplink_bytes": 0}
    assert RoundTraffic.empty_row(channel=True) == {
        "uplink_bytes": 0,
        "virtual_seconds": 0.0,
        "energy_j": 0.0,
    }


def test_a_nodes_bytes_are_added_once_whatever_they_carry():
    t = RoundTraffic()
    t.add_downlink(1, 100)
    t.add_downlink(1, 20, side=True)
    t.add_downlink(2, 100)
    assert (t.downlink_bytes, t.side_bytes, t.downlink_bytes_by_node) == (220, 20, {1: 120, 2: 100})


def test_accepted_clients_add_their_stats_and_bad_values_are_ignored(caplog):
    t = RoundTraffic()
    good = MetricRecord({records.STAT_PREFIX + "sent": 2.0, records.ENCODE_SECONDS: 0.5})
    t.add_accepted(1, [good], ["sent"])
    with caplog.at_level(logging.WARNING):
        for node, bad in enumerate([float("nan"), float("inf"), [1.0, 2.0], "3", True], start=2):
            t.add_accepted(node, [{records.STAT_PREFIX + "sent": bad, records.ENCODE_SECONDS: bad}], ["sent"])
    t.add_accepted(9, [MetricRecord()], ["sent"])  # reported nothing: counts zero
    assert (t.accepted, t.stats, t.encode_seconds) == (7, {"sent": 2.0}, 0.5)
    assert caplog.text.count("not a finite number") == 10 and "client 4" in caplog.text


def test_stats_are_summed_over_the_accepted_clients_only():
    strategy = Compressed(fedavg(), codec=TOPK)
    result, _ = run(strategy, make_app(corrupt_mod(102)), rounds=3)
    for rnd, metrics in result.train_metrics_clientapp.items():
        assert strategy.traffic[rnd].stats == {"entries_sent": (NODES - 1) * K}
        assert metrics[records.STAT_PREFIX + "entries_sent"] == (NODES - 1) * K


def lie_about_stats(msg, context, call_next):
    """Client 103 reports a non-finite stat."""
    reply = call_next(msg, context)
    if context.node_id == 103:
        reply.content["metrics"][records.STAT_PREFIX + "entries_sent"] = float("nan")
    return reply


def test_a_clients_bad_stat_is_ignored_and_the_round_goes_on(caplog):
    strategy = Compressed(fedavg(), codec=TOPK)
    with caplog.at_level(logging.WARNING):
        run(strategy, make_app(lie_about_stats), rounds=2)
    assert all(
        t.accepted == NODES and t.stats == {"entries_sent": (NODES - 1) * K}
        for t in strategy.traffic.values()
    )
    assert "client 103: ignored flcomp.stat.entries_sent = nan" in caplog.text


def test_the_broadcasts_stats_join_the_round_metrics():
    strategy = Compressed(fedavg(), codec="fp32", downlink=TOPK)
    result, _ = run(strategy, make_app(), rounds=3)
    metrics = result.train_metrics_clientapp
    assert strategy.traffic[1].downlink_stats == {}  # round 1 sends key frames: nothing encoded
    assert records.DOWNLINK_STAT_PREFIX + "entries_sent" not in metrics[1]
    assert all(metrics[t][records.DOWNLINK_STAT_PREFIX + "entries_sent"] == K for t in (2, 3))


def test_stat_columns_follow_the_codecs():
    assert RoundTraffic.stat_columns(Codec.parse("fp32")) == []
    assert RoundTraffic.stat_columns(Codec.parse("topk"), Codec.parse("lag")) == [
        "stat_entries_sent",
        "downlink_stat_sent",
    ]


def test_a_topk_runs_rounds_csv_counts_clients_times_k(tmp_path):
    task = TaskConfig(dataset="digits", model="logreg", num_clients=3, lr=0.1)
    config = RunConfig(
        task=task, codec="topk:ratio=0.1", downlink="topk:ratio=0.5", rounds=2, engine="inline"
    )
    simulate(config, tmp_path, progress=False)
    _, rounds, _ = load_run(tmp_path)
    assert list(rounds[0])[: len(ROUND_COLUMNS)] == ROUND_COLUMNS
    assert list(rounds[0])[len(ROUND_COLUMNS) :] == ["stat_entries_sent", "downlink_stat_entries_sent"]
    # logreg on 8×8 digits: a 64×10 matrix (k = 64) and 10 biases (k = 1); the downlink keeps half
    assert [r["stat_entries_sent"] for r in rounds] == [None, 3 * 65, 3 * 65]
    assert [r["downlink_stat_entries_sent"] for r in rounds] == [None, None, 320 + 5]
