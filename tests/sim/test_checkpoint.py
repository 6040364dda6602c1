"""Checkpoints and resumed runs: the server's state round trip, the files, and runs killed with
SIGKILL and resumed, which must write the rounds.csv of a run that was never interrupted."""

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import deque

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flcomp.cli import main
from flcomp.protocol.snapshot import Snapshot, SnapshotError, from_json, load, save, to_json
from flcomp.sim import RunConfig, run
from flcomp.sim import checkpoint as ckpt
from flcomp.sim.apps import client_app, load_task
from flcomp.sim.inline import InlineGrid
from flcomp.sim.runner import resumable
from flcomp.strategies import Compressed
from flcomp.tasks import TaskConfig

TASK = TaskConfig(dataset="digits", model="logreg", num_clients=4, lr=0.1)
VOLATILE = {"wall_seconds", "encode_seconds"}
"""rounds.csv columns that measure time, so differ between identical runs."""
CLI_TASK = ["--dataset", "digits", "--model", "logreg", "--num-clients", "4", "--lr", "0.1"]


def stable_rows(directory, name: str = "rounds.csv") -> list[dict]:
    with open(directory / name, newline="") as f:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(f)]


# --- the server's state -------------------------------------------------------------------


TWO_WAY = ("topk:ratio=0.05", "scaled_sign", "urban-sub6:sharing=proportional-fair")
"""Error feedback both ways, over a channel with state of its own (proportional-fair averages)."""
LGC = "lgc:stage1_rounds=1,stage2_rounds=2,ae_steps=2,encoder_channels=8-8,decoder_channels=8-8,ratio=0.1"
"""LGC, tiny: the checkpoint falls in stage 2 (autoencoder training), the next rounds in stage 3."""
ROUND_TRIPS = {
    "two-way": TWO_WAY,
    "lgc": (LGC, None, None),
    "lag": ("lag", None, None),
    "tpc": ("tpc", None, None),
    "broadcast": (TWO_WAY[0], TWO_WAY[1], None, "broadcast"),
}


def make_strategy(
    codec: str = TWO_WAY[0], downlink: str | None = TWO_WAY[1], channel=TWO_WAY[2], delivery="unicast"
) -> Compressed:
    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=4)
    return Compressed(
        inner, codec=codec, downlink=downlink, channel=channel, seed=3, downlink_delivery=delivery
    )


def train_round(strategy: Compressed, grid: InlineGrid, server_round: int, arrays: ArrayRecord):
    random.seed(server_round)  # Flower samples the nodes with the global `random`
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    new, metrics = strategy.aggregate_train(server_round, replies)
    return messages, new or arrays, metrics


def copy_contexts(source: InlineGrid, target: InlineGrid) -> None:
    """The clients' Context.state through a snapshot, as a resumed run restores them."""
    for node, context in source.contexts.items():
        s = Snapshot()
        s.put_records("state", context.state)
        for key, record in s.records("state").items():
            target.contexts[node].state[key] = record


def content(message) -> dict:
    out = {k: dict(r) for k, r in message.content.config_records.items()}
    out |= {k: {n: a.data for n, a in r.items()} for k, r in message.content.array_records.items()}
    return {"dst": message.metadata.dst_node_id, **out}


def timeless(metrics) -> dict:
    return {k: v for k, v in metrics.items() if k in ("flcomp.virtual-seconds",) or "seconds" not in k}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_compressed_state_round_trip_gives_the_same_next_rounds(tmp_path, name):
    task = load_task(TASK)
    arrays = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    strategy, grid = make_strategy(*ROUND_TRIPS[name]), InlineGrid(client_app(TASK), 4)
    for r in (1, 2, 3):
        _, arrays, _ = train_round(strategy, grid, r, arrays)

    save(strategy.state_dict(), tmp_path / "server")
    restored, grid2 = make_strategy(*ROUND_TRIPS[name]), InlineGrid(client_app(TASK), 4)
    restored.load_state_dict(load(tmp_path / "server"))
    copy_contexts(grid, grid2)

    for r in (4, 5):
        sent, after, metrics = train_round(strategy, grid, r, arrays)
        sent2, after2, metrics2 = train_round(restored, grid2, r, arrays)
        assert [content(m) for m in sent] == [content(m) for m in sent2]
        assert {k: a.data for k, a in after.items()} == {k: a.data for k, a in after2.items()}
        assert timeless(metrics) == timeless(metrics2)
        assert metrics["flcomp.clients-accepted"] == 4
        arrays = after


def test_a_fresh_strategy_differs_so_the_round_trip_test_can_fail():
    task = load_task(TASK)
    arrays = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    strategy, grid = make_strategy(), InlineGrid(client_app(TASK), 4)
    for r in (1, 2):
        _, arrays, _ = train_round(strategy, grid, r, arrays)
    fresh, grid2 = make_strategy(), InlineGrid(client_app(TASK), 4)
    copy_contexts(grid, grid2)
    sent, _, _ = train_round(strategy, grid, 3, arrays)
    sent2, _, _ = train_round(fresh, grid2, 3, arrays)
    assert [content(m) for m in sent] != [content(m) for m in sent2]


def test_state_of_another_codec_is_refused(tmp_path):
    state = make_strategy().state_dict()
    other = Compressed(FedAvg(), codec="topk:ratio=0.1", downlink="scaled_sign", seed=3)
    with pytest.raises(SnapshotError, match="the state is of"):
        other.load_state_dict(state)


def test_values_keep_their_types_through_json():
    values = {
        "random": random.Random(5).getstate(),
        "held": {1: 4, 2: 3},
        "changes": deque([1.5, 2.25], maxlen=10),
        "nodes": {3, 1},
        "side": b"\x00\xff",
        "odd": [math.inf, -math.inf],
        "none": None,
    }
    back = from_json(json.loads(json.dumps(to_json(values), allow_nan=False)))
    assert back == values and back["changes"].maxlen == 10
    assert isinstance(back["random"], tuple) and isinstance(back["random"][1], tuple)
    assert math.isnan(from_json(to_json(math.nan)))
    with pytest.raises(TypeError):
        to_json(np.zeros(3))


def test_records_come_back_as_they_went(tmp_path):
    arrays = ArrayRecord(
        {
            "count": Array(np.array(7, np.int64)),  # 0-d: TPC's "filled"
            "w": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
            "payload": Array(dtype="uint8", shape=(3,), stype="flcomp/topk", data=b"\x01\x02\x03"),
        }
    )
    state = RecordDict(
        {
            "a": arrays,
            "c": ConfigRecord({"codec": "tpc", "n": 3, "x": 0.5, "side": b"\x00", "l": [1, 2], "ok": True}),
            "m": MetricRecord({"loss": 0.25, "k": [1.0, 2.0]}),
        }
    )
    s = Snapshot()
    s.put_records("state", state)
    save(s, tmp_path / "state")
    back = load(tmp_path / "state").records("state")
    assert list(back.keys()) == ["a", "c", "m"]
    for k, a in arrays.items():
        b = back["a"][k]
        assert (b.dtype, tuple(b.shape), b.stype, b.data) == (a.dtype, tuple(a.shape), a.stype, a.data)
    assert dict(back["c"]) == dict(state["c"]) and dict(back["m"]) == dict(state["m"])


# --- files --------------------------------------------------------------------------------


def make_checkpoint(server_round: int, columns: int = 3) -> ckpt.Checkpoint:
    model = ArrayRecord({"w": Array(np.arange(2 * columns, dtype=np.float32).reshape(2, columns))})
    rows = [{"round": r, "uplink_bytes": 10 * r, "accuracy": 0.5} for r in range(server_round + 1)]
    return ckpt.Checkpoint(server_round, model, Snapshot(), Snapshot(), rows, random.Random(1).getstate())


def test_checkpoint_files_hold_no_pickle(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, make_checkpoint(2))
    with np.load(path / "server.npz", allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)
    json.loads((path / "server.json").read_text())
    back = ckpt.load_checkpoint(tmp_path)
    assert back.round == 2 and back.random_state == random.Random(1).getstate()
    assert back.model["w"].numpy().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_object_arrays_are_refused():
    with pytest.raises(TypeError):
        Snapshot().put_state("x", {"a": np.array([object()])})


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, make_checkpoint(2))

    def dies_after_the_arrays(snapshot, stem):
        (stem.parent / "server.npz").write_bytes(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(ckpt, "save", dies_after_the_arrays)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, make_checkpoint(4))
    assert ckpt.load_checkpoint(tmp_path).round == 2
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoint").iterdir())
    ckpt.prepare_resume(tmp_path, 2)
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["000002"]


def test_older_checkpoints_are_pruned(tmp_path):
    for r in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path, make_checkpoint(r))
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["000006"]


def test_a_missing_or_corrupted_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SnapshotError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)
    path = ckpt.save_checkpoint(tmp_path, make_checkpoint(2))
    npz = path / "server.npz"
    good = npz.read_bytes()
    npz.write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotError, match="server.npz: unreadable"):
        ckpt.load_checkpoint(tmp_path)
    npz.write_bytes(good)
    (path / "server.json").write_text("{")
    with pytest.raises(SnapshotError, match="server.json: not a snapshot"):
        ckpt.load_checkpoint(tmp_path)
    other = ckpt.save_checkpoint(tmp_path / "other", make_checkpoint(2, columns=4))
    shutil.copy(other / "server.json", path / "server.json")
    with pytest.raises(SnapshotError, match="does not hold the arrays"):
        ckpt.load_checkpoint(tmp_path)
    (path / "server.npz").unlink()
    with pytest.raises(SnapshotError, match="server.npz: missing"):
        ckpt.load_checkpoint(tmp_path)

    with pytest.raises(SystemExit) as e:
        main(["run", "--resume", str(tmp_path / "nowhere"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "config.json: missing" in err


def test_client_snapshots_keep_what_the_last_checkpoint_needs(tmp_path):
    mod = ckpt.ClientSnapshots(tmp_path, every=2)
    app = client_app(TASK, snapshots=mod)
    grid = InlineGrid(app, 4)
    strategy = Compressed(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), codec="signxor", seed=0)
    task = load_task(TASK)
    arrays = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    for r in range(1, 6):
        _, arrays, _ = train_round(strategy, grid, r, arrays)
    client = tmp_path / "checkpoint-clients" / "0"
    assert sorted(p.name for p in client.iterdir()) == ["000004", "000005"]
    ckpt.prepare_resume(tmp_path, 4)  # resuming after round 4: round 5's snapshot is of the lost future
    assert sorted(p.name for p in client.iterdir()) == ["000004"]

    # A resumed simulation: the node's Context is empty, and restored before the app sees it.
    random.seed(5)
    message = next(
        m for m in strategy.configure_train(5, arrays, ConfigRecord(), grid) if m.metadata.dst_node_id == 1
    )
    seen = Snapshot()

    def app_sees(msg, context):
        seen.put_records("state", context.state)
        return Message(RecordDict(), reply_to=msg)

    mod(message, InlineGrid(app, 4).contexts[1], app_sees)
    saved = load(client / "000004" / "state")
    assert seen.meta == saved.meta and seen.arrays.keys() == saved.arrays.keys()
    assert all(np.array_equal(seen.arrays[k], saved.arrays[k]) for k in saved.arrays)


def test_resume_after_the_last_round_writes_the_summary(tmp_path):
    config = RunConfig(task=TASK, codec="fp32", rounds=2, engine="inline", checkpoint_every=2)
    summary = run(config, tmp_path, progress=False)
    (tmp_path / "summary.json").unlink()
    config2, checkpoint = resumable(tmp_path)
    assert config2 == config and checkpoint.round == 2
    assert run(config2, tmp_path, progress=False, resume=checkpoint) == summary


# --- runs killed and resumed --------------------------------------------------------------


def flcomp_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flcomp.cli", "run", *args, "--quiet"]


def last_round(directory) -> int:
    try:
        lines = (directory / "rounds.csv").read_text().splitlines()
    except FileNotFoundError:
        return -1
    return int(lines[-1].split(",")[0]) if len(lines) > 1 and lines[-1][:1].isdigit() else -1


def killed(directory, args: list[str], after_round: int = 3) -> None:
    """Run `flcomp run args` checkpointing every 2 rounds; SIGKILL it once rounds.csv shows
    `after_round`."""
    proc = subprocess.Popen(
        flcomp_cli(*args, "--checkpoint-every", "2", "--out", str(directory)),
        start_new_session=True,  # its own process group: the kill takes Ray's workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while last_round(directory) < after_round and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (directory / "summary.json").exists()


def killed_then_resumed(directory, args: list[str]) -> None:
    killed(directory, args)
    resume_cli(directory)


def resume_cli(directory) -> None:
    resumed = subprocess.run(
        flcomp_cli("--resume", str(directory)), timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def uninterrupted(directory, resumed) -> None:
    config = json.loads((resumed / "config.json").read_text()) | {"checkpoint_every": None}
    run(RunConfig.from_dict(config), directory, progress=False)


KILLED = {
    "topk-fedadam": ["--codec", "topk:ratio=0.05", "--strategy", "fedadam"],
    "tpc": ["--codec", "tpc"],
    "signxor-two-way": ["--codec", "signxor", "--downlink", "scaled_sign"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", KILLED)
def test_killed_and_resumed_inline_run_is_the_uninterrupted_run(tmp_path, name):
    args = [*CLI_TASK, *KILLED[name], "--engine", "inline", "--rounds", "40"]
    killed_then_resumed(tmp_path / "resumed", args)
    uninterrupted(tmp_path / "straight", tmp_path / "resumed")
    resumed, straight = stable_rows(tmp_path / "resumed"), stable_rows(tmp_path / "straight")
    assert [r["round"] for r in resumed] == [str(r) for r in range(41)]
    assert resumed == straight
    assert stable_rows(tmp_path / "resumed", "clients.csv") == stable_rows(
        tmp_path / "straight", "clients.csv"
    )
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    expected = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "wall_seconds"} == {
        k: v for k, v in expected.items() if k != "wall_seconds"
    }


@pytest.mark.slow
def test_killed_and_resumed_ray_run_is_the_uninterrupted_run(tmp_path):
    args = [
        *CLI_TASK,
        "--codec",
        "signxor",
        "--downlink",
        "topk:ratio=0.2",
        "--rounds",
        "10",
        "--fraction",
        "1",
    ]
    killed_then_resumed(tmp_path / "resumed", args)
    uninterrupted(tmp_path / "straight", tmp_path / "resumed")
    assert stable_rows(tmp_path / "resumed") == stable_rows(tmp_path / "straight")


@pytest.mark.slow
def test_resume_without_client_snapshots_resynchronises_by_key_frames(tmp_path):
    args = [
        *CLI_TASK,
        "--codec",
        "signxor",
        "--downlink",
        "scaled_sign",
        "--engine",
        "inline",
        "--rounds",
        "40",
    ]
    killed(tmp_path / "kept", args)
    lost = tmp_path / "lost"
    shutil.copytree(tmp_path / "kept", lost)
    shutil.rmtree(lost / "checkpoint-clients")
    resume_cli(tmp_path / "kept")
    config, checkpoint = resumable(lost)
    run(config, lost, progress=False, resume=checkpoint)
    rows, kept = stable_rows(lost), stable_rows(tmp_path / "kept")
    assert [r["round"] for r in rows] == [str(r) for r in range(41)]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    t = checkpoint.round
    assert rows[: t + 1] == kept[: t + 1]
    # The clients lost their replicas and encoders: the first broadcast finds each replica
    # stale (the client is dropped), the next is a key frame (the full replica) to each,
    # which costs more downlink than the payload an up-to-date client gets.
    assert int(rows[t + 1]["clients_dropped"]) == 4 and int(kept[t + 1]["clients_dropped"]) == 0
    assert int(rows[t + 2]["downlink_bytes"]) > int(kept[t + 2]["downlink_bytes"])
    assert int(rows[t + 2]["clients_accepted"]) == 4
