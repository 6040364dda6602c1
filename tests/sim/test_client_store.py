"""`ClientStore`: the clients' codec state kept in the run's directory, not in Flower's Context."""

import dataclasses
import logging
import struct

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from isal.isal_zlib import crc32
from test_checkpoint import TASK, content, make_strategy, stable_rows, timeless, train_round

from flcomp.codecs import Codec
from flcomp.codecs.wire import unpack
from flcomp.protocol import records
from flcomp.protocol.snapshot import load
from flcomp.sim import RunConfig, run
from flcomp.sim.apps import client_app, load_task, serve
from flcomp.sim.checkpoint import ClientSnapshots
from flcomp.sim.client_store import STORE_DIR, ClientStore
from flcomp.sim.inline import InlineGrid
from flcomp.sim.results import RunRecorder
from flcomp.strategies import RoundTraffic

UPLINK = "topk:ratio=0.05"


def initial() -> ArrayRecord:
    task = load_task(TASK)
    return ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})


def flcomp_keys(grid: InlineGrid) -> list[str]:
    return [
        k for c in grid.contexts.values() for k in c.state.keys() if k.startswith(records.CLIENT_STATE_PREFIX)
    ]


def key_frames(replies) -> dict[int, bool]:
    """node → whether its reply's payload is a key frame."""
    codec_id = Codec.parse(UPLINK).compressor_class.codec_id
    out = {}
    for r in replies:
        if not r.has_error():
            header, _ = unpack(r.content["arrays"][records.PAYLOAD].data, codec_id, 2)
            out[r.metadata.src_node_id] = header.key_frame
    return out


def rounds(strategy, grid, numbers, arrays):
    """Train rounds `numbers`; per round (messages, metrics), and the last model."""
    out = []
    for r in numbers:
        sent, arrays, metrics = train_round(strategy, grid, r, arrays)
        out.append(([content(m) for m in sent], timeless(metrics)))
    return out, arrays


def test_the_store_keeps_the_context_small_and_changes_nothing(tmp_path):
    plain, stored = InlineGrid(client_app(TASK), 4), InlineGrid(client_app(TASK, results_dir=tmp_path), 4)
    a, arrays_a = rounds(make_strategy(), plain, range(1, 5), initial())
    b, arrays_b = rounds(make_strategy(), stored, range(1, 5), initial())
    assert a == b
    assert {k: x.data for k, x in arrays_a.items()} == {k: x.data for k, x in arrays_b.items()}
    assert a[-1][1][records.CLIENT_STATE_BYTES] > 0 and a[-1][1]["flcomp.clients-accepted"] == 4
    # The Contexts hold nothing of flcomp's, no arrays at all; without the store they hold the codec state.
    assert not flcomp_keys(stored) and all(not c.state.array_records for c in stored.contexts.values())
    assert any(flcomp_keys(plain))
    assert sorted(p.name for p in (tmp_path / STORE_DIR).iterdir()) == [f"{i}.state" for i in range(4)]


def test_a_missing_entry_means_a_fresh_client_resynchronised_by_a_key_frame(tmp_path):
    strategy = make_strategy(UPLINK, None, None)
    grid = InlineGrid(client_app(TASK, results_dir=tmp_path), 4)
    _, arrays = rounds(strategy, grid, (1, 2, 3), initial())
    (tmp_path / STORE_DIR / "0.state").unlink()  # partition 0 is node 1
    sent = list(strategy.configure_train(4, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(sent)
    assert key_frames(replies) == {1: True, 2: False, 3: False, 4: False}
    arrays, metrics = strategy.aggregate_train(4, replies)
    assert metrics["flcomp.clients-accepted"] == 4 and all(
        np.isfinite(a.numpy()).all() for a in arrays.values()
    )
    _, metrics = rounds(strategy, grid, (5,), arrays)[0][0]
    assert metrics["flcomp.clients-accepted"] == 4


DAMAGES = {
    "not a state file": lambda data: b"{not json",
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "one byte flipped": lambda data: data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
    "a valid CRC over garbage": lambda data: data[:4] + struct.pack("<I", crc32(b"x" * 9)) + b"x" * 9,
    "a valid CRC over an index past the end": lambda data: forged(
        b'{"small": 0, "arrays": {"k": [["a", "uint8", [9], "s", 999999]]}}'
    ),
    "a valid CRC over an index of the wrong kind": lambda data: forged(b'{"small": 0, "arrays": [1, 2]}'),
    "a valid CRC over an index longer than the file": lambda data: forged(b"{}", length=10**6),
}


def forged(index: bytes, length: int | None = None) -> bytes:
    """A state file with a correct CRC-32 over `index` (its length field `length`) and nothing else."""
    body = struct.pack("<I", len(index) if length is None else length) + index
    return b"FLC2" + struct.pack("<I", crc32(body)) + body


@pytest.mark.parametrize("damage", DAMAGES)
def test_an_unreadable_entry_is_a_warning_and_a_key_frame(tmp_path, caplog, damage):
    strategy = make_strategy(UPLINK, None, None)
    grid = InlineGrid(client_app(TASK, results_dir=tmp_path), 4)
    _, arrays = rounds(strategy, grid, (1, 2), initial())
    entry = ClientStore(tmp_path / STORE_DIR).file(2)
    entry.write_bytes(DAMAGES[damage](entry.read_bytes()))
    with caplog.at_level(logging.WARNING):
        replies = grid.send_and_receive(list(strategy.configure_train(3, arrays, ConfigRecord(), grid)))
    assert "stored client state unusable" in caplog.text
    assert key_frames(replies) == {1: False, 2: False, 3: True, 4: False}
    assert strategy.aggregate_train(3, replies)[1]["flcomp.clients-accepted"] == 4


def test_two_way_a_missing_entry_costs_one_round_then_key_frames(tmp_path):
    strategy = make_strategy(UPLINK, "scaled_sign", None)
    grid = InlineGrid(client_app(TASK, results_dir=tmp_path), 4)
    _, arrays = rounds(strategy, grid, (1, 2), initial())
    (tmp_path / STORE_DIR / "1.state").unlink()  # partition 1 is node 2
    _, arrays, metrics = train_round(strategy, grid, 3, arrays)
    assert metrics["flcomp.clients-accepted"] == 3 and "stale replica" in strategy.traffic[3].dropped[2]
    sent, arrays, metrics = train_round(strategy, grid, 4, arrays)
    config = next(m for m in sent if m.metadata.dst_node_id == 2).content["config"]
    assert config[records.DOWNLINK_BASE] == -1  # the replica in full
    assert metrics["flcomp.clients-accepted"] == 4 and all(
        np.isfinite(a.numpy()).all() for a in arrays.values()
    )


def test_client_snapshots_inside_the_store_capture_the_whole_state(tmp_path):
    snapshots = ClientSnapshots(tmp_path, every=1)
    grid = InlineGrid(client_app(TASK, snapshots=snapshots, results_dir=tmp_path), 4)
    rounds(make_strategy(), grid, (1, 2), initial())
    snapshot = load(tmp_path / "checkpoint-clients" / "0" / "000002" / "state").records("state")
    stored = ClientStore(tmp_path / STORE_DIR).records(0)
    assert "flcomp.encoder.arrays" in snapshot and "flcomp.replica" in snapshot
    assert list(snapshot.keys()) == list(stored.keys())
    for key, record in stored.array_records.items():
        assert {k: a.data for k, a in record.items()} == {k: a.data for k, a in snapshot[key].items()}
    assert not flcomp_keys(grid)


def store_free_rows(config: RunConfig, directory) -> list[dict]:
    """rounds.csv of `config` served inline by a ClientApp without the store (state in Context)."""
    downlink = Codec.parse(config.downlink) if config.downlink else None
    recorder = RunRecorder(directory, RoundTraffic.stat_columns(Codec.parse(config.codec), downlink))
    recorder.start(config.as_dict())
    serve(InlineGrid(client_app(config.task), config.task.num_clients), config, recorder, lambda row: None)
    return stable_rows(directory)


def test_inline_runs_with_and_without_the_store_write_the_same_rounds(tmp_path):
    config = RunConfig(task=TASK, codec=UPLINK, downlink="fp16", rounds=3, fraction=0.5, engine="inline")
    summary = run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / STORE_DIR).exists()  # a finished run clears its store
    assert stable_rows(tmp_path / "run") == store_free_rows(config, tmp_path / "plain")
    rows = stable_rows(tmp_path / "run")
    assert float(rows[-1]["client_state_bytes"]) > 0 and int(rows[-1]["clients_held"]) >= 2
    assert summary["peak_clients_held"] == max(int(r["clients_held"] or 0) for r in rows)
    assert summary["max_client_state_bytes"] == max(int(r["client_state_max"] or 0) for r in rows) > 0
    assert summary["peak_downlink_state_bytes"] > 0


def test_a_bounded_inline_run_holds_at_most_the_bound(tmp_path):
    task = dataclasses.replace(TASK, num_clients=10)
    config = RunConfig(task=task, codec=UPLINK, rounds=4, fraction=0.3, engine="inline", max_client_states=3)
    summary = run(config, tmp_path, progress=False)
    rows = stable_rows(tmp_path)
    assert all(int(r["clients_held"]) <= 3 for r in rows[1:]) and summary["peak_clients_held"] == 3
    assert all(r["clients_accepted"] == "3" for r in rows[1:])


@pytest.mark.slow
def test_a_ray_run_with_the_store_writes_the_rounds_of_an_inline_run_without(tmp_path):
    config = RunConfig(task=TASK, codec=UPLINK, downlink="scaled_sign", rounds=3, fraction=0.5)
    run(config, tmp_path / "ray", progress=False)
    assert not (tmp_path / "ray" / STORE_DIR).exists()
    inline = dataclasses.replace(config, engine="inline")
    assert stable_rows(tmp_path / "ray") == store_free_rows(inline, tmp_path / "plain")
