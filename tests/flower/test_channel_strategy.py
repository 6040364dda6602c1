"""`Compressed(..., channel=...)`: a simulated network between the mod and the strategy."""

import numpy as np
import pytest
from conftest import CONFIGS, config_id
from test_flower_integration import NODES, fedavg, make_app, replica_of, run

from flcomp.clients import encoder_state
from flcomp.codecs import Codec
from flcomp.strategies import Compressed

LOSSY = "fixed:loss=erasure,erasure_probability=0.3"


def assert_in_sync(strategy: Compressed, grid, codec: Codec) -> None:
    """Every client's encoder matches its server decoder (committed or pending step)."""
    for node, context in grid.contexts.items():
        enc = encoder_state.load_encoder(context.state, codec, strategy._spec, seed=0)
        assert strategy.pool.fingerprint(str(node)) in (enc.fingerprint, enc.pending_fingerprint)


def channel_drops(strategy: Compressed) -> list[str]:
    return [reason for t in strategy.traffic.values() for reason in t.dropped.values()]


@pytest.mark.parametrize("codec", CONFIGS, ids=config_id)
def test_codec_states_stay_in_sync_over_100_rounds_with_30_percent_loss(codec):
    strategy = Compressed(fedavg(), codec=codec, channel=LOSSY)
    _, grid = run(strategy, make_app(), rounds=100)
    dropped = channel_drops(strategy)
    assert all(reason.startswith("channel: ") for reason in dropped), dropped
    # a client is lost when its model or its update is erased: 1 − 0.7² = 51%
    assert 0.4 < len(dropped) / (100 * NODES) < 0.62
    assert sum(t.accepted for t in strategy.traffic.values()) == 100 * NODES - len(dropped)
    assert_in_sync(strategy, grid, codec)


def test_a_compressed_downlink_survives_loss_with_key_frames():
    strategy = Compressed(fedavg(), codec="topk:ratio=0.2", downlink="fp16", channel=LOSSY)
    _, grid = run(strategy, make_app(), rounds=30)
    dropped = channel_drops(strategy)
    assert dropped and all(reason.startswith("channel: ") for reason in dropped)
    assert_in_sync(strategy, grid, Codec.parse("topk:ratio=0.2"))
    # a client that lost its model gets a key frame: as many bytes as round 1's
    key_frame = strategy.traffic[1].downlink_bytes // NODES
    lost_models = [
        (t, node)
        for t, traffic in strategy.traffic.items()
        for node, why in traffic.dropped.items()
        if "downlink" in why and t < 30
    ]
    assert lost_models
    for t, node in lost_models:
        assert strategy.traffic[t + 1].downlink_bytes_by_node.get(node, key_frame) == key_frame
    server = strategy.broadcast.replica
    for context in grid.contexts.values():
        if context.state.config_records["flcomp.replica.meta"]["version"] == 30:
            np.testing.assert_array_equal(replica_of(context)["w"].numpy(), server["w"].numpy())


def test_a_deadline_drops_exactly_the_clients_that_compute_too_long():
    # client k reports 10 + k examples; 0.1 s each: 1.0, 1.1, 1.2, 1.3 s of compute
    channel = "fixed:uplink_bps=1e12,downlink_bps=1e12,seconds_per_sample=0.1,deadline_s=1.15"
    strategy = Compressed(fedavg(), codec="fp32", channel=channel)
    _, grid = run(strategy, make_app(), rounds=3)
    late = {node for node, c in grid.contexts.items() if c.node_config["partition-id"] >= 2}
    for t in (1, 2, 3):
        traffic = strategy.traffic[t]
        assert set(traffic.dropped) == late
        assert all("deadline" in why for why in traffic.dropped.values())
        assert traffic.channel.seconds == 1.15
        assert traffic.accepted == NODES - len(late)


def test_channel_metrics_join_the_rounds_metrics():
    strategy = Compressed(fedavg(), codec="qsgd", channel="urban-sub6")
    result, _ = run(strategy, make_app(), rounds=2)
    metrics = result.train_metrics_clientapp[2]
    report = strategy.traffic[2].channel
    assert metrics["flcomp.virtual-seconds"] == report.seconds > 0
    assert metrics["flcomp.clients-delivered"] == report.delivered == NODES
    assert metrics["flcomp.energy-j"] == report.energy_j > 0
    assert metrics["flcomp.uplink-airtime-s"] > 0 and metrics["flcomp.downlink-airtime-s"] > 0
    plain, _ = run(Compressed(fedavg(), codec="qsgd"), make_app(), rounds=1)
    assert "flcomp.virtual-seconds" not in plain.train_metrics_clientapp[1]


def test_runs_over_a_lossy_cell_are_reproducible():
    channel = "urban-sub6:loss=packet,deadline_s=0.05,heterogeneity=1,seconds_per_sample=1e-3"

    def once():
        strategy = Compressed(fedavg(), codec="topk:ratio=0.1", channel=channel, seed=3)
        result, _ = run(strategy, make_app(), rounds=6)
        return result.arrays["w"].numpy(), [(t.channel, sorted(t.dropped)) for t in strategy.traffic.values()]

    (w1, t1), (w2, t2) = once(), once()
    np.testing.assert_array_equal(w1, w2)
    assert t1 == t2
    assert any(dropped for _, dropped in t1) and any(r.delivered for r, _ in t1)
