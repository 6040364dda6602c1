"""LGC through Flower: `Compressed` plans each round, `compression_mod` receives the plan."""

import numpy as np
from test_flower_integration import NODES, fedavg, make_app, run

from flcomp.clients import encoder_state
from flcomp.codecs import Codec
from flcomp.strategies import Compressed

LGC = (
    "lgc:ratio=0.1,innovation_fraction=0.5,stage1_rounds=1,stage2_rounds=2,"
    "encoder_channels=8-8,decoder_channels=8-8,latent_channels=2,ae_steps=2"
)


def assert_in_sync(strategy: Compressed, grid) -> None:
    codec = Codec.parse(LGC)
    for node, context in grid.contexts.items():
        enc = encoder_state.load_encoder(context.state, codec, strategy._spec, seed=0)
        assert strategy.pool.fingerprint(str(node)) in (enc.fingerprint, enc.pending_fingerprint)


def test_lgc_runs_its_stages_through_flower():
    strategy = Compressed(fedavg(), codec=LGC)
    result, grid = run(strategy, make_app(), rounds=7)
    assert np.isfinite(result.arrays["w"].numpy()).all()
    pool, traffic = strategy.pool, strategy.traffic
    assert all(t.accepted == NODES and not t.dropped for t in traffic.values())
    assert [pool.stage(t) for t in range(1, 8)] == [1, 2, 2, 3, 3, 3, 3]
    assert [s.joint for s in pool.history] == [0, 0, 0, NODES, NODES, NODES, NODES]
    assert_in_sync(strategy, grid)
    # side information is counted as downlink, the encoder's copies included
    encoder_bytes = 4 * pool.lgc.encoder_size
    for t, stats in enumerate(pool.history, start=1):
        assert traffic[t].side_bytes == stats.side_bytes > 0
        assert (stats.encoder_bytes > 0) == (traffic[t].side_bytes > encoder_bytes)
    model_bytes = traffic[1].downlink_bytes - traffic[1].side_bytes
    assert traffic[4].downlink_bytes == model_bytes + traffic[4].side_bytes
    assert traffic[4].side_bytes > encoder_bytes  # the first leader of stage 3 gets the encoder
    assert traffic[6].uplink_bytes < traffic[2].uplink_bytes < traffic[1].uplink_bytes


def test_lgc_with_partial_participation_through_flower():
    strategy = Compressed(fedavg(fraction_train=0.5), codec=LGC, seed=2)
    run(strategy, make_app(), rounds=9, seed=5)
    for t, stats in enumerate(strategy.pool.history, start=1):
        traffic = strategy.traffic[t]
        assert traffic.accepted == NODES // 2 and not traffic.dropped
        assert stats.leader in {str(node) for node in traffic.downlink_bytes_by_node}  # among the sampled
        if stats.stage == 3:
            assert stats.joint == NODES // 2
