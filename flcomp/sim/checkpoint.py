"""Checkpoints of a simulated run, and what resuming from one needs.

In the run's results directory:

    checkpoint/<round>/server.npz, .json       the run after round <round>'s central evaluation:
                                               the Compressed state, the inner strategy's state,
                                               the global model, the rounds.csv rows so far and
                                               Python's `random` state (Flower samples with it)
    checkpoint-clients/<partition-id>/<round>/state.npz, .json
                                               a client's Context.state after its train reply

Each is written into a hidden temporary directory beside its place, then renamed into
place, so a kill mid-write leaves the previous checkpoint valid; the newest complete
server checkpoint is the one `load` reads, and older ones are pruned after each save.

Clients' codec states live in their Contexts (or, moved in and out around them, in the
run's client store: `flcomp.sim.client_store`, whose mod runs outside this one), which
the server cannot reach on Ray (they are the simulation engine's), and a resumed
simulation starts with empty Contexts and an empty store. So both engines do the same:
the ClientApp's `ClientSnapshots` mod saves the Context after each train reply and, on
a node's first instruction after a resume (its Context is empty), restores the newest
snapshot from before that round. A client
without a snapshot (deleted, corrupted, never written) starts afresh, and the codec
protocol resynchronises it with key frames. The path reaches the clients inside the
ClientApp, so on a Ray cluster of several machines the results directory must be
shared storage that every node can write.

Flower's `Strategy.start` counts rounds from 1: a resumed run starts it for the rounds
left, through `OffsetRounds`, which numbers them on from the checkpoint's round.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flcomp.protocol.snapshot import Snapshot, SnapshotError, load, save
from flcomp.sim.client_store import STORE_DIR

log = logging.getLogger(__name__)

SERVER_DIR = "checkpoint"
CLIENTS_DIR = "checkpoint-clients"
_TMP = ".tmp-"
_INNER_STATE = ("m_t", "v_t")
"""Inner-strategy attributes that carry state across rounds: FedOpt's moments (FedAdam,
FedYogi, FedAdagrad), None or name → array. FedAvg and FedProx have none. (FedOpt's
`current_arrays` is set afresh by every `configure_train`.)"""


@dataclass
class Checkpoint:
    """A run after `round`'s central evaluation."""

    round: int
    model: ArrayRecord
    """The global model after `round`."""
    strategy: Snapshot
    """`Compressed.state_dict()`."""
    inner: Snapshot
    """The inner strategy's state (`inner_state`)."""
    rows: list[dict]
    """rounds.csv's rows up to `round`, as the recorder holds them."""
    random_state: tuple
    """`random.getstate()`."""


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` atomically under directory/checkpoint/ and prune the older ones;
    returns its directory."""
    s = Snapshot()
    s.put_value("round", checkpoint.round)
    s.put_value("model", checkpoint.model)
    s.put("strategy", checkpoint.strategy)
    s.put("inner", checkpoint.inner)
    s.put_value("rows", checkpoint.rows)
    s.put_value("random", checkpoint.random_state)
    root = Path(directory) / SERVER_DIR
    target = _write_atomic(root / f"{checkpoint.round:06d}", "server", s)
    for r, path in _rounds(root):
        if r < checkpoint.round:
            shutil.rmtree(path, ignore_errors=True)
    return target


def load_checkpoint(directory: Path) -> Checkpoint:
    """The newest complete checkpoint of a run; SnapshotError (a ValueError) saying why not."""
    rounds = _rounds(Path(directory) / SERVER_DIR)
    if not rounds:
        raise SnapshotError(f"{directory}: no checkpoint (was the run started with --checkpoint-every?)")
    r, path = rounds[-1]
    s = load(path / "server")
    random_state = s.value("random")
    model = s.value("model")
    if s.value("round") != r or not isinstance(model, ArrayRecord) or not isinstance(random_state, tuple):
        raise SnapshotError(f"{path}: not the checkpoint of round {r}")
    rows = s.value("rows")
    if not isinstance(rows, list) or [row.get("round") for row in rows] != list(range(r + 1)):
        raise SnapshotError(f"{path}: its rounds.csv rows are not rounds 0..{r}")
    return Checkpoint(r, model, s.part("strategy"), s.part("inner"), rows, random_state)


def start_fresh(directory: Path) -> None:
    """Remove a previous run's checkpoints and client store from `directory` (a new run starts there)."""
    for name in (SERVER_DIR, CLIENTS_DIR, STORE_DIR):
        shutil.rmtree(Path(directory) / name, ignore_errors=True)


def prepare_resume(directory: Path, server_round: int) -> None:
    """Before resuming after `server_round`: drop the client snapshots of later rounds (a
    killed run may have left some) and unfinished writes, so that each client restores
    the newest snapshot from before the checkpoint; empty the client store (`flcomp.sim.client_store`),
    which holds the clients' states of the lost rounds."""
    shutil.rmtree(Path(directory) / STORE_DIR, ignore_errors=True)
    _clean(Path(directory) / SERVER_DIR)
    for client in _subdirs(Path(directory) / CLIENTS_DIR):
        _clean(client)
        for r, path in _rounds(client):
            if r > server_round:
                shutil.rmtree(path, ignore_errors=True)


def inner_state(strategy: Strategy) -> Snapshot:
    """The state an inner Flower strategy carries across rounds (`_INNER_STATE`)."""
    s = Snapshot()
    for name in _INNER_STATE:
        if hasattr(strategy, name):
            value = getattr(strategy, name)
            if value is None:
                s.put_value(name, None)
            else:
                s.put_state(name, dict(value))
    return s


def load_inner_state(strategy: Strategy, state: Snapshot) -> None:
    """Restore `inner_state`'s state into a strategy of the same class; SnapshotError if it does not fit."""
    for name in _INNER_STATE:
        if hasattr(strategy, name) != (name in state):
            raise SnapshotError(f"inner strategy state: {name} does not fit {type(strategy).__name__}")
        if name in state:
            kind = state.meta[name]["kind"]
            setattr(strategy, name, dict(state.state(name)) if kind == "state" else state.value(name))


class OffsetRounds(Strategy):
    """`strategy` with Flower's round numbers shifted by `offset`: `Strategy.start` counts from
    1, so a run resumed after round `offset` runs the rounds left as offset+1, offset+2, ..."""

    def __init__(self, strategy: Strategy, offset: int) -> None:
        self.strategy, self.offset = strategy, offset

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)


@dataclass(frozen=True)
class ClientSnapshots:
    """A ClientApp mod (outside `compression_mod`, inside the client store's mod, so that it sees
    the client's whole state) that keeps each client's Context.state under
    directory/checkpoint-clients/<partition-id>/ for a run checkpointed every `every` rounds
    (see the module docstring). It keeps the newest snapshot the last complete checkpoint may
    need and the later ones."""

    directory: Path
    every: int

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        server_round = _server_round(msg)
        if msg.metadata.message_type != MessageType.TRAIN or server_round is None:
            return call_next(msg, context)
        partition = context.node_config.get("partition-id", context.node_id)
        client = Path(self.directory) / CLIENTS_DIR / str(partition)
        if not list(context.state.keys()):
            self._restore(client, server_round, context)
        reply = call_next(msg, context)
        s = Snapshot()
        s.put_records("state", context.state)
        _write_atomic(client / f"{server_round:06d}", "state", s)
        # The checkpoint of the last multiple of `every` before this round is complete (the
        # server wrote it before instructing this round): older snapshots are no longer needed.
        complete = self.every * ((server_round - 1) // self.every)
        rounds = _rounds(client)
        needed = max((r for r, _ in rounds if r <= complete), default=None)
        for r, path in rounds:
            if needed is not None and r < needed:
                shutil.rmtree(path, ignore_errors=True)
        return reply

    @staticmethod
    def _restore(client: Path, server_round: int, context: Context) -> None:
        earlier = [(r, path) for r, path in _rounds(client) if r < server_round]
        if not earlier:
            return
        r, path = earlier[-1]
        try:
            restored = load(path / "state").records("state")
        except SnapshotError as e:
            log.warning("client snapshot of round %d unusable, the client starts afresh: %s", r, e)
            return
        for key, record in restored.items():
            context.state[key] = record


def _server_round(msg: Message) -> int | None:
    """The round Flower's strategies write into a train instruction's config ("server-round")."""
    for config in msg.content.config_records.values():
        if "server-round" in config:
            return int(config["server-round"])
    return None


def _write_atomic(target: Path, stem: str, snapshot: Snapshot) -> Path:
    """Write `snapshot` as target/<stem>.npz and .json, all at once: into a temporary directory
    beside `target`, renamed into place (replacing any older `target`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{_TMP}{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save(snapshot, tmp / stem)
    if target.exists():
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target


def _rounds(root: Path) -> list[tuple[int, Path]]:
    """The complete round directories under `root`, oldest first."""
    return sorted((int(p.name), p) for p in _subdirs(root) if p.name.isdigit())


def _subdirs(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def _clean(root: Path) -> None:
    """Remove unfinished writes (a killed run's temporaries) under `root`."""
    for p in _subdirs(root):
        if p.name.startswith(_TMP):
            shutil.rmtree(p, ignore_errors=True)
