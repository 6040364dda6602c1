"""Two-way compression: the server's broadcast with its own error memory and a stateful codec,
client replicas and decoder states kept in sync through loss, skipped rounds and key frames."""

import functools
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from test_channel_strategy import LOSSY, assert_in_sync
from test_flower_integration import NODES, fedavg, initial, make_app

from flcomp.clients import replica
from flcomp.codecs import Codec
from flcomp.protocol import records
from flcomp.sim.inline import InlineGrid
from flcomp.strategies import Compressed
from flcomp.strategies.downlink import Broadcast

TWO_WAY = ["signxor:lam=1", "scaled_sign", "topk:ratio=0.2", "stc:ratio=0.1"]
"""Stateful (SignXOR's previous signs) and stateless downlink codecs (STC: two-way sparse ternary
compression), all with error feedback."""


class RecordingGrid(InlineGrid):
    """An InlineGrid that keeps what each train message carried: (round, node) → ArrayRecord."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: dict[tuple[int, int], ArrayRecord] = {}

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            self.sent[int(m.content["config"]["server-round"]), m.metadata.dst_node_id] = m.content["arrays"]
        return super().send_and_receive(messages, timeout=timeout)


def run(strategy: Compressed, app, rounds: int, seed: int = 0) -> RecordingGrid:
    random.seed(seed)
    grid = RecordingGrid(app, NODES, first_node_id=101)
    strategy.start(grid=grid, initial_arrays=initial(), num_rounds=rounds)
    return grid


def is_key_frame(record: ArrayRecord) -> bool:
    """Whether the record carries a model (a key frame, alone or before a catch-up)."""
    return any(a.dtype == "float32" for k, a in record.items() if not k.startswith("flcomp."))


def payloads(record: ArrayRecord) -> list[bytes]:
    """The record's payloads, oldest first."""
    return [record[k].data for k in records.catch_up_keys(sum(k.startswith(records.PAYLOAD) for k in record))]


def assert_replicas_in_sync(strategy: Compressed, grid: RecordingGrid) -> None:
    """Every client that holds the latest version holds the server's replica and mirror decoder."""
    broadcast = strategy.broadcast
    mirror = broadcast.mirror.state_dict()
    current = 0
    for context in grid.contexts.values():
        meta = context.state.config_records["flcomp.replica.meta"]
        if meta["version"] != broadcast.version:
            continue
        current += 1
        replica = context.state.array_records["flcomp.replica"]
        for k in ("w", "b"):
            np.testing.assert_array_equal(replica[k].numpy(), broadcast.replica[k].numpy())
        assert meta["fingerprint"] == mirror["fingerprint"]
        stored = context.state.array_records["flcomp.replica.decoder"]
        assert set(stored) == {k for k in mirror if k != "fingerprint"}
        for k, a in stored.items():
            np.testing.assert_array_equal(a.numpy(), mirror[k])
    assert current > 0


# --- the server's error memory ------------------------------------------------------------


@pytest.mark.parametrize("downlink", TWO_WAY)
def test_replica_plus_server_error_memory_is_everything_the_server_meant_to_send(downlink):
    """ŵ(t) + e(t) = w(1) + Σ_{s ≤ t} (w(s) − ŵ(s−1)): two-way error feedback loses nothing."""
    rng = np.random.default_rng(0)
    broadcast = Broadcast(Codec.parse(downlink), seed=1)
    w = rng.standard_normal(300).astype(np.float32)
    broadcast.advance(1, ArrayRecord({"w": Array(w)}))
    meant = w.astype(np.float64)
    for t in range(2, 40):
        replica = broadcast.replica["w"].numpy()
        w = (replica - 0.1 * rng.standard_normal(300)).astype(np.float32)  # the aggregate of round t
        meant += w.astype(np.float64) - replica
        broadcast.advance(t, ArrayRecord({"w": Array(w)}))
        error = broadcast.encoder.local["ef/0"]
        np.testing.assert_allclose(broadcast.replica["w"].numpy() + error, meant, rtol=0, atol=1e-4)


def test_the_server_encoder_and_mirror_share_the_codec_state():
    rng = np.random.default_rng(1)
    broadcast = Broadcast(Codec.parse("signxor:lam=0.5"))
    for t in range(1, 10):
        broadcast.advance(t, ArrayRecord({"w": Array(rng.standard_normal(50).astype(np.float32))}))
        assert broadcast.encoder.fingerprint == broadcast.mirror.fingerprint
        assert np.array_equal(broadcast.encoder.shared["signs/0"], broadcast.mirror.shared["signs/0"])


# --- end to end through the Flower apps -----------------------------------------------------


@pytest.mark.parametrize("downlink", TWO_WAY)
def test_one_payload_a_round_for_every_up_to_date_client(downlink):
    strategy = Compressed(fedavg(), codec="signxor:lam=1", downlink=downlink)
    grid = run(strategy, make_app(), rounds=6)
    for t in range(1, 7):
        sent = [grid.sent[t, node] for node in grid.contexts]
        if t == 1:
            assert all(is_key_frame(r) for r in sent)
            continue
        payloads = {r[records.PAYLOAD].data for r in sent}
        assert len(payloads) == 1, "the same bytes for all"
        assert strategy.traffic[t].downlink_bytes == NODES * len(payloads.pop())
        assert strategy.traffic[t].accepted == NODES
    assert_replicas_in_sync(strategy, grid)
    assert_in_sync(strategy, grid, Codec.parse("signxor:lam=1"))


def test_a_signxor_key_frame_carries_the_signs_and_its_bytes_are_counted():
    strategy = Compressed(fedavg(), codec="fp32", downlink="signxor")
    grid = run(strategy, make_app(), rounds=2)
    key_frame = grid.sent[1, 101]
    state = {k: a for k, a in key_frame.items() if k.startswith(records.STATE_PREFIX)}
    # The signs, and the flips' context history (`flip_contexts`) the next payloads are coded with.
    keys = ("signs/0", "signs/1", "primed", "rates", "recent", "counts")
    assert set(state) == {records.STATE_PREFIX + f"shared/{k}" for k in keys}
    assert strategy.traffic[1].downlink_bytes_by_node[101] == sum(len(a.data) for a in key_frame.values())


@pytest.mark.parametrize("downlink", TWO_WAY)
def test_clients_that_skip_rounds_catch_up_on_the_payloads_they_missed(downlink):
    strategy = Compressed(fedavg(fraction_train=0.5), codec="signxor", downlink=downlink)
    grid = run(strategy, make_app(), rounds=12, seed=1)
    assert all(t.accepted == NODES // 2 and not t.dropped for t in strategy.traffic.values())
    last_round, caught_up = {}, 0
    for (t, node), record in sorted(grid.sent.items()):
        if node not in last_round:
            assert is_key_frame(record), (t, node)
        elif not is_key_frame(record):  # else the payloads it missed outweigh a key frame
            assert len(payloads(record)) == t - last_round[node], "every payload since its last round"
            caught_up += t - last_round[node] > 1
        assert strategy.traffic[t].downlink_bytes_by_node[node] == sum(len(a.data) for a in record.values())
        last_round[node] = t
    assert caught_up > 0
    assert_replicas_in_sync(strategy, grid)


def test_a_catch_up_longer_than_a_key_frame_is_a_key_frame():
    """fp32 payloads are the model plus a header: two of them are longer than the replica."""
    strategy = Compressed(fedavg(fraction_train=0.5), codec="fp32", downlink="fp32")
    grid = run(strategy, make_app(), rounds=12, seed=1)
    last_round = {}
    for (t, node), record in sorted(grid.sent.items()):
        behind = t - last_round.get(node, -10)
        assert is_key_frame(record) == (behind > 1), (t, node)
        last_round[node] = t
    assert_replicas_in_sync(strategy, grid)


# --- broadcast delivery ----------------------------------------------------------------------


def test_under_broadcast_the_kept_payloads_reach_further_than_a_key_frame():
    """Every client heard every broadcast: catch-ups of up to BROADCAST_HISTORY key frames' bytes."""
    strategy = Compressed(
        fedavg(fraction_train=0.5), codec="fp32", downlink="fp32", downlink_delivery="broadcast"
    )
    grid = run(strategy, make_app(), rounds=12, seed=1)
    last_round, long_catch_ups = {}, 0
    for (t, node), record in sorted(grid.sent.items()):
        if node in last_round:
            assert len(payloads(record)) == t - last_round[node] and not is_key_frame(record)
            long_catch_ups += t - last_round[node] > 1
        last_round[node] = t
    assert long_catch_ups > 0 and Broadcast.BROADCAST_HISTORY > 1
    assert_replicas_in_sync(strategy, grid)


@pytest.mark.parametrize("downlink", [*TWO_WAY, None])
def test_a_broadcast_puts_each_round_on_the_air_once(downlink):
    strategy = Compressed(
        fedavg(fraction_train=0.5), codec="signxor", downlink=downlink, downlink_delivery="broadcast"
    )
    unicast = Compressed(fedavg(fraction_train=0.5), codec="signxor", downlink=downlink)
    grid = run(strategy, make_app(), rounds=12, seed=1)
    run(unicast, make_app(), rounds=12, seed=1)
    model = sum(len(a.data) for a in initial().values())
    for t, traffic in strategy.traffic.items():
        sent = {node: r for (s, node), r in grid.sent.items() if s == t}
        # Key frames alone (the kept payloads no longer reach back to what a client holds) are unicast.
        alone = {n: r for n, r in sent.items() if downlink and t > 1 and is_key_frame(r) and not payloads(r)}
        assert traffic.downlink_bytes_by_node == {
            node: sum(len(a.data) for a in alone[node].values()) if node in alone else 0 for node in sent
        }
        if downlink is None:
            on_air = model  # the model, once
        elif t == 1:  # the starting model and a fresh decoder's state, as every client got it
            on_air = sum(len(a.data) for a in sent[min(sent)].values())
        else:  # the payload, once
            on_air = len(next(r for r in sent.values() if payloads(r))[records.PAYLOAD].data)
        assert traffic.downlink_bytes == on_air + sum(traffic.downlink_bytes_by_node.values())
        assert traffic.downlink_bytes <= unicast.traffic[t].downlink_bytes
    total = [sum(t.downlink_bytes for t in s.traffic.values()) for s in (strategy, unicast)]
    assert total[0] < total[1]
    if downlink is not None:
        assert_replicas_in_sync(strategy, grid)
        # The same training either way: the same replicas, models and uplink bytes.
        assert [t.uplink_bytes for t in strategy.traffic.values()] == [
            t.uplink_bytes for t in unicast.traffic.values()
        ]
        np.testing.assert_array_equal(
            strategy.broadcast.replica["w"].numpy(), unicast.broadcast.replica["w"].numpy()
        )


def test_under_broadcast_a_new_client_gets_the_starting_model_and_every_payload_since():
    strategy = Compressed(
        fedavg(fraction_train=0.5), codec="fp32", downlink="signxor", downlink_delivery="broadcast"
    )
    grid = run(strategy, make_app(), rounds=8, seed=1)
    first = {}
    for (t, node), record in sorted(grid.sent.items()):
        first.setdefault(node, (t, record))
    late = [(t, r) for t, r in first.values() if t > 1]
    assert late, "some client is first sampled after round 1"
    for t, record in late:
        assert is_key_frame(record) and len(payloads(record)) == t - 1
        np.testing.assert_array_equal(record["w"].numpy(), initial()["w"].numpy())
    assert_replicas_in_sync(strategy, grid)


@pytest.mark.parametrize("downlink", ["signxor", None])
def test_a_broadcast_over_a_lossy_cell_stays_in_sync_and_takes_less_downlink_airtime(downlink):
    make = functools.partial(Compressed, fedavg(), codec="scaled_sign", downlink=downlink, channel=LOSSY)
    broadcast, unicast = make(downlink_delivery="broadcast"), make()
    grid = run(broadcast, make_app(), rounds=20)
    run(unicast, make_app(), rounds=20)
    lost = [why for t in broadcast.traffic.values() for why in t.dropped.values() if "broadcast" in why]
    assert lost, "some listener lost a broadcast"
    airtime = [sum(t.channel.downlink_airtime_s for t in s.traffic.values()) for s in (broadcast, unicast)]
    assert airtime[0] < airtime[1] / 2
    if downlink is not None:
        assert_replicas_in_sync(broadcast, grid)
    assert sum(t.accepted for t in broadcast.traffic.values()) > NODES * 20 // 3


def test_an_unknown_delivery_is_refused():
    with pytest.raises(ValueError, match="delivery"):
        Compressed(fedavg(), codec="fp32", downlink_delivery="multicast")


@pytest.mark.parametrize("downlink", TWO_WAY)
def test_both_directions_stay_in_sync_over_lossy_links(downlink):
    uplink = "signxor:lam=1,momentum=0.5"
    strategy = Compressed(fedavg(), codec=uplink, downlink=downlink, channel=LOSSY)
    grid = run(strategy, make_app(), rounds=40)
    lost_models = [
        (t, node)
        for t, traffic in strategy.traffic.items()
        for node, why in traffic.dropped.items()
        if why.startswith("channel: downlink") and t < 40
    ]
    assert lost_models
    for t, node in lost_models:
        assert is_key_frame(grid.sent[t + 1, node]), "a client that missed a broadcast gets a key frame"
    assert_replicas_in_sync(strategy, grid)
    assert_in_sync(strategy, grid, Codec.parse(uplink))
    assert sum(t.accepted for t in strategy.traffic.values()) > NODES * 40 // 3


def test_a_client_whose_decoder_state_is_stale_is_dropped_once_then_resynchronised():
    def corrupt_decoder(msg, context, call_next):
        if context.node_id == 102 and msg.content["config"]["server-round"] == 4:
            meta = context.state.config_records["flcomp.replica.meta"]
            meta["fingerprint"] = (int(meta["fingerprint"]) + 1) % 2**32
        return call_next(msg, context)

    strategy = Compressed(fedavg(), codec="scaled_sign", downlink="signxor")
    grid = run(strategy, make_app(corrupt_decoder), rounds=6)
    assert list(strategy.traffic[4].dropped) == [102]
    assert "stale downlink state" in strategy.traffic[4].dropped[102]
    assert is_key_frame(grid.sent[5, 102]) and not is_key_frame(grid.sent[5, 101])
    assert strategy.traffic[5].accepted == strategy.traffic[6].accepted == NODES
    assert_replicas_in_sync(strategy, grid)


def test_a_catch_up_with_a_missing_payload_is_refused_and_changes_nothing():
    broadcast = Broadcast(Codec.parse("signxor"))
    rng = np.random.default_rng(2)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    for t in range(1, 5):
        broadcast.advance(t, ArrayRecord({"w": Array(rng.standard_normal(40).astype(np.float32))}))
        if t == 1:
            sent = broadcast.send(1)
            replica.receive_broadcast(sent.record, ConfigRecord(sent.instructions), context)
    sent = broadcast.send(1)
    assert len(payloads(sent.record)) == 3
    held = context.state.array_records["flcomp.replica"]["w"].numpy()
    for dropped in records.catch_up_keys(3):
        gapped = ArrayRecord({k: a for k, a in sent.record.items() if k != dropped})
        with pytest.raises(ValueError, match="3 payloads announced"):
            replica.receive_broadcast(gapped, ConfigRecord(sent.instructions), context)
    wrong_count = ConfigRecord(sent.instructions | {records.DOWNLINK_PAYLOADS: 10**9})
    with pytest.raises(ValueError, match="announced"):
        replica.receive_broadcast(sent.record, wrong_count, context)
    np.testing.assert_array_equal(context.state.array_records["flcomp.replica"]["w"].numpy(), held)
    out = replica.receive_broadcast(sent.record, ConfigRecord(sent.instructions), context)
    np.testing.assert_array_equal(out["w"].numpy(), broadcast.replica["w"].numpy())
