"""Codec state accounted (bytes per client, both ends) and bounded on the server (`max_client_states`)."""

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from test_flower_integration import SIZE, fedavg, initial, make_app

from flcomp.cli import main
from flcomp.clients import encoder_state
from flcomp.codecs import Codec
from flcomp.codecs.wire import unpack
from flcomp.protocol import records
from flcomp.protocol.snapshot import load, save
from flcomp.sim import RunConfig
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed

D = SIZE + 3
"""Float entries of the test model (w and b)."""
TOPK = "topk:ratio=0.1,error_feedback=True"


def arrays_nbytes(state: dict) -> int:
    return sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))


def key_frame_log(log: list, codec: str):
    """A mod (outside compression_mod) that notes, for each payload, (node, whether it is a key
    frame, whether the client's stored encoder held the state the server's decoder names)."""
    c = Codec.parse(codec)

    def mod(msg, context, call_next):
        spec = (
            records.spec_of(msg.content["arrays"]) if records.DOWNLINK not in msg.content["config"] else None
        )
        before = encoder_state.load_encoder(context.state, c, spec, seed=0) if spec is not None else None
        reply = call_next(msg, context)
        if not reply.has_error() and records.PAYLOAD in reply.content["arrays"]:
            header, _ = unpack(reply.content["arrays"][records.PAYLOAD].data, c.compressor_class.codec_id, 2)
            named = int(msg.content["config"][records.FINGERPRINT])
            held = before is None or named in (before.fingerprint, before.pending_fingerprint)
            log.append((context.node_id, header.key_frame, held))
        return reply

    return mod


def sampled_run(strategy: Compressed, nodes: int, cohort: int, rounds: int, *mods):
    """`rounds` rounds on `nodes` inline clients, `cohort` of them sampled each round."""
    random.seed(0)
    grid = InlineGrid(make_app(*mods), nodes, first_node_id=101)
    result = strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds)
    return result, grid


def bounded(bound: int | None, downlink: str | None = "fp16", cohort: int = 4) -> Compressed:
    inner = FedAvg(
        fraction_train=cohort / 40, fraction_evaluate=0.0, min_train_nodes=cohort, min_available_nodes=40
    )
    return Compressed(inner, codec=TOPK, downlink=downlink, seed=1, max_client_states=bound)


# --- accounting -----------------------------------------------------------------------------


def test_topk_error_feedback_state_is_4d_bytes_committed_plus_4d_pending():
    strategy = Compressed(fedavg(), codec=TOPK)
    result, grid = sampled_run(strategy, 4, 4, 2)
    spec = records.spec_of(result.arrays)
    for context in grid.contexts.values():
        encoder = encoder_state.load_encoder(context.state, Codec.parse(TOPK), spec, seed=0)
        assert encoder.pending  # the last step awaits the next instruction's fingerprint
        assert arrays_nbytes(encoder.state_dict()) == encoder.state_bytes == 2 * 4 * D
    metrics = result.train_metrics_clientapp[2]
    assert metrics[records.CLIENT_STATE_BYTES] == 2 * 4 * D
    assert metrics["flcomp.client-state-max"] == 2 * 4 * D
    # top-k's decoders share no state with the encoders: the server holds clients, not bytes
    assert metrics["flcomp.server-state-bytes"] == 0 and metrics["flcomp.clients-held"] == 4
    assert strategy.traffic[2].row()["client_state_bytes"] == 2 * 4 * D


def test_tpc_history_is_counted_on_the_server():
    strategy = Compressed(fedavg(), codec="tpc")
    result, _ = sampled_run(strategy, 4, 4, 3)
    held = strategy.pool.state_bytes()
    assert sorted(held) == ["101", "102", "103", "104"]
    memory = strategy.codec.compressor(records.spec_of(result.arrays)).config.memory
    for client, nbytes in held.items():
        assert nbytes == arrays_nbytes(strategy.pool.decoders[client].state_dict())
        assert nbytes >= memory * 4 * D  # the predictor's memory of s reconstructed updates
    assert result.train_metrics_clientapp[3]["flcomp.server-state-bytes"] == sum(held.values())


def test_the_downlink_state_is_reported_once_for_all_clients():
    strategy = Compressed(fedavg(), codec="fp32", downlink="topk:ratio=0.1")
    result, grid = sampled_run(strategy, 4, 4, 2)
    b = strategy.broadcast
    kept = len(b.payload)  # this round's payload, for the clients that catch up later
    expected = 4 * D + arrays_nbytes(b.encoder.state_dict()) + arrays_nbytes(b.mirror.state_dict()) + kept
    assert b.state_bytes() == expected and arrays_nbytes(b.encoder.state_dict()) == 4 * D  # error memory
    metrics = result.train_metrics_clientapp[2]
    assert metrics["flcomp.downlink-state-bytes"] == expected
    # each client holds its replica (w and b) beside its fp32 encoder (no state)
    assert metrics[records.CLIENT_STATE_BYTES] == 4 * D
    sent = Compressed(fedavg(), codec="fp32")
    assert sampled_run(sent, 4, 4, 1)[0].train_metrics_clientapp[1]["flcomp.downlink-state-bytes"] == 0


def test_lgc_counts_and_evicts_each_clients_own_autoencoder_decoder():
    lgc = "lgc:stage1_rounds=1,stage2_rounds=2,ae_steps=2,encoder_channels=8-8,decoder_channels=8-8,ratio=0.1"
    strategy = Compressed(fedavg(), codec=lgc)
    sampled_run(strategy, 4, 4, 3)
    pool, ae = strategy.pool, strategy.pool.autoencoder
    assert sorted(ae.clients) == ["101", "102", "103", "104"]
    own = {
        c: sum(p.nbytes for n, p in ae.params.items() if n.startswith(f"decoder/{c}/")) for c in ae.clients
    }
    held = pool.state_bytes()
    for c in ae.clients:
        assert held[c] >= own[c] + pool.decoders[c].state_bytes > own[c] > 0
    pool.evict("102")
    assert "102" not in ae.clients and not any(n.startswith("decoder/102/") for n in ae.params)
    assert "102" not in pool.state_bytes() and not any("decoder/102/" in n for n in ae.moments)


# --- the bound ------------------------------------------------------------------------------


@pytest.mark.parametrize("bound", [4, 2])
def test_never_more_than_the_bound_held_and_evicted_clients_come_back_by_key_frames(bound):
    frames: list = []
    strategy = bounded(bound, downlink=None)
    result, _ = sampled_run(strategy, 40, 4, 60, key_frame_log(frames, TOPK))
    for rnd, metrics in result.train_metrics_clientapp.items():
        assert metrics["flcomp.clients-held"] <= bound
        assert metrics["flcomp.clients-accepted"] == 4 and metrics["flcomp.clients-dropped"] == 0, rnd
    assert len(strategy.pool.decoders) <= bound and len(strategy._last_instructed) <= bound
    # A client evicted after it committed a step holds a state the fresh decoder lacks: key frame.
    assert all(key == (not held) for _, key, held in frames)
    assert sum(key for _, key, _ in frames) >= 2, frames
    assert np.isfinite(result.arrays["w"].numpy()).all()


def test_two_way_evicted_clients_get_the_replica_in_full_and_are_accepted():
    bases: list = []

    def note_base(msg, context, call_next):
        config = msg.content["config"]
        bases.append((int(config["server-round"]), context.node_id, int(config[records.DOWNLINK_BASE])))
        return call_next(msg, context)

    strategy = bounded(4, downlink="topk:ratio=0.2")
    result, _ = sampled_run(strategy, 40, 4, 40, note_base)
    for metrics in result.train_metrics_clientapp.values():
        assert metrics["flcomp.clients-held"] <= 4 and metrics["flcomp.clients-accepted"] == 4
    assert len(strategy.broadcast._held) <= 4
    # With the bound at the cohort's size, the server keeps the last round's clients only: they
    # get the broadcast payload, every other client the replica in full.
    cohorts: dict = {}
    for rnd, node, _ in bases:
        cohorts.setdefault(rnd, set()).add(node)
    assert all((base >= 0) == (node in cohorts.get(rnd - 1, ())) for rnd, node, base in bases)
    assert any(base >= 0 for *_, base in bases) and any(base < 0 for *_, base in bases[4:])
    assert np.isfinite(result.arrays["w"].numpy()).all()


def test_without_a_bound_the_server_holds_every_client_it_met():
    strategy = bounded(None)
    result, _ = sampled_run(strategy, 40, 4, 12)
    held = result.train_metrics_clientapp[12]["flcomp.clients-held"]
    assert held == len(strategy._last_instructed) > 4


def test_the_least_recently_instructed_go_first_ties_by_node_id():
    strategy = bounded(2, downlink=None, cohort=2)
    strategy.pool = strategy.codec.decoder_pool(records.spec_of(initial()))
    strategy._last_instructed = {5: 1, 9: 2, 3: 2, 4: 3}
    for node in strategy._last_instructed:
        strategy.pool.decoder(str(node))
    strategy._bound_states(3)
    assert sorted(strategy._last_instructed) == [4, 9] and sorted(strategy.pool.decoders) == ["4", "9"]
    strategy.max_client_states = 1
    strategy._bound_states(4)
    assert list(strategy._last_instructed) == [4] and list(strategy.pool.decoders) == ["4"]


def test_bounded_runs_are_reproducible():
    runs = [sampled_run(bounded(3), 40, 4, 8) for _ in range(2)]
    (a, _), (b, _) = runs
    assert {k: x.data for k, x in a.arrays.items()} == {k: x.data for k, x in b.arrays.items()}
    timeless = [
        {r: {k: v for k, v in m.items() if "seconds" not in k} for r, m in x.train_metrics_clientapp.items()}
        for x in (a, b)
    ]
    assert timeless[0] == timeless[1]


def test_the_last_instructed_rounds_round_trip_through_a_checkpoint(tmp_path):
    strategy = bounded(3)
    sampled_run(strategy, 40, 4, 5)
    save(strategy.state_dict(), tmp_path / "server")
    restored = bounded(3)
    restored.load_state_dict(load(tmp_path / "server"))
    assert restored._last_instructed == strategy._last_instructed and len(restored._last_instructed) == 3
    assert sorted(restored.pool.decoders) == sorted(str(n) for n in strategy._last_instructed)
    arrays = ArrayRecord({"w": Array(np.ones(SIZE, np.float32)), "b": Array(np.zeros(3, np.float32))})
    grid = InlineGrid(make_app(), 40, first_node_id=101)
    random.seed(6)
    for s in (strategy, restored):
        s.configure_train(6, arrays, ConfigRecord(), grid)
    assert restored._last_instructed == strategy._last_instructed


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bound_below_one_is_refused(bad):
    with pytest.raises(ValueError, match="max_client_states"):
        Compressed(fedavg(), codec=TOPK, max_client_states=bad)
    with pytest.raises(ValueError, match="max_client_states"):
        RunConfig(max_client_states=bad)


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "nan"])
def test_the_cli_refuses_a_bad_bound_in_one_line(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--max-client-states", text, "--engine", "inline"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "--max-client-states" in err
