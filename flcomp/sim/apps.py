"""The Flower apps of a simulated run: a ClientApp that trains a task, a ServerApp that records it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from flcomp.clients import compression_mod
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.sim.checkpoint import (
    Checkpoint,
    ClientSnapshots,
    OffsetRounds,
    inner_state,
    load_inner_state,
    save_checkpoint,
)
from flcomp.sim.client_store import STORE_DIR, ClientStore
from flcomp.sim.config import RunConfig
from flcomp.sim.results import RunRecorder
from flcomp.strategies import Compressed, RoundTraffic
from flcomp.tasks import Task, TaskConfig

_PARTITION_ID = "partition-id"


@cache
def load_task(config: TaskConfig) -> Task:
    """One Task per process (each Ray actor loads its data once)."""
    return Task(config)


def client_app(
    config: TaskConfig,
    mods: Sequence[Mod] = (),
    snapshots: ClientSnapshots | None = None,
    results_dir: Path | None = None,
) -> ClientApp:
    """A ClientApp that trains `config`'s task on its partition, with `compression_mod` and then
    `mods` (e.g. an experiment's diagnostics) around the training, `snapshots` (a
    checkpointed run's) around them and, given the run's `results_dir`, a `ClientStore` around
    them all, which keeps the clients' codec state in results_dir/client-state/ instead of their
    Contexts (None: it stays in them). It answers `StableNodes`' query with its partition-id."""
    store = ClientStore(Path(results_dir) / STORE_DIR) if results_dir is not None else None
    outer = [m for m in (store, snapshots) if m is not None]
    app = ClientApp(mods=[*outer, compression_mod, *mods])

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition = ConfigRecord({_PARTITION_ID: int(context.node_config[_PARTITION_ID])})
        return Message(RecordDict({"node": partition}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        task = load_task(config)
        record = msg.content["arrays"]
        arrays, examples, metrics = task.train(
            int(context.node_config["partition-id"]),
            [to_numpy(record[k]) for k in task.keys],
            int(msg.content["config"]["server-round"]),
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: from_numpy(a) for k, a in zip(task.keys, arrays)}),
                "metrics": MetricRecord({"num-examples": examples, **metrics}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def server_app(
    config: RunConfig,
    recorder: RunRecorder,
    on_round: Callable[[dict], None],
    resume: Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp that runs `serve`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, config, recorder, on_round, resume)

    return app


def serve(
    grid: Grid,
    config: RunConfig,
    recorder: RunRecorder,
    on_round: Callable[[dict], None],
    resume: Checkpoint | None = None,
) -> None:
    """Run `Compressed(inner strategy)` on `grid` (its nodes as `StableNodes` names them); after
    every round evaluate the global model centrally and hand the round's row to `recorder` and
    `on_round`. With `config.checkpoint_every` = N, save a checkpoint into the recorder's
    directory after every N-th round's evaluation (`flcomp.sim.checkpoint`); with `resume`, go
    on from that checkpoint as if the run had never stopped."""
    random.seed(config.seed)  # Flower samples clients with the global `random`
    task = load_task(config.task)
    inner = config.inner_strategy()
    strategy = Compressed(
        inner,
        codec=config.codec,
        downlink=config.downlink,
        downlink_delivery=config.downlink_delivery,
        budget=config.budget,
        channel=config.channel,
        seed=config.seed,
        max_client_states=config.max_client_states,
    )
    initial = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    done = 0
    if resume is not None:
        strategy.load_state_dict(resume.strategy)
        load_inner_state(inner, resume.inner)
        random.setstate(resume.random_state)
        initial, done = resume.model, resume.round

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round += done
        if resume is not None and server_round == done:
            return None  # Strategy.start's initial evaluation: the checkpoint's round, recorded already
        metrics = task.evaluate([to_numpy(arrays[k]) for k in task.keys])
        traffic = strategy.traffic.get(server_round)
        sent = RoundTraffic.empty_row(config.channel is not None) | (traffic.row() if traffic else {})
        clients = traffic.client_rows() if traffic else []
        on_round(recorder.add_round({"round": server_round, **sent, **metrics}, clients))
        every = config.checkpoint_every
        if every and server_round > 0 and server_round % every == 0:
            state = Checkpoint(
                server_round,
                arrays,
                strategy.state_dict(),
                inner_state(inner),
                recorder.rows,
                random.getstate(),
            )
            save_checkpoint(recorder.directory, state)
        return MetricRecord(metrics)

    runner = OffsetRounds(strategy, done) if done else strategy
    runner.start(
        grid=StableNodes(grid, config.task.num_clients),
        initial_arrays=initial,
        num_rounds=config.rounds - done,
        evaluate_fn=evaluate,
    )


class StableNodes(Grid):
    """`grid` with node ids that are the same in every run: partition-id + 1, as `InlineGrid`'s.

    Flower's simulation engine gives its nodes random ids, so a resumed run would not find
    its clients' server-side state (decoders, replica versions) under their new ids, and
    sampling by node id would differ from run to run. On first use this waits for the
    `num_nodes` nodes and asks each its partition-id (one query, which `client_app`
    answers); then it translates ids both ways: instructions go to the real nodes, and
    replies name the stable id of the node that sent them.
    """

    def __init__(self, grid: Grid, num_nodes: int, timeout: float = 3600.0) -> None:
        self.grid, self.num_nodes, self.timeout = grid, num_nodes, timeout
        self._real: dict[int, int] | None = None
        """Stable id → the grid's node id."""

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self._nodes())

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        real = self._nodes()
        stable = {node: s for s, node in real.items()}
        messages = list(messages)
        sent = [m.metadata.dst_node_id for m in messages]
        unknown = sorted(set(sent) - set(real))
        if unknown:
            raise ValueError(f"messages to unknown nodes {unknown}")
        for m, s in zip(messages, sent):
            m.metadata.dst_node_id = real[s]
        try:
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        finally:
            for m, s in zip(messages, sent):
                m.metadata.dst_node_id = s  # the caller's messages keep the ids it gave them
        for reply in replies:
            src = reply.metadata.src_node_id
            if src in stable:  # Metadata has no setter for its sender (Flower's grids set ids this way)
                reply.metadata.__dict__["_src_node_id"] = stable[src]
        return replies

    def _nodes(self) -> dict[int, int]:
        if self._real is None:
            deadline = time.monotonic() + self.timeout
            while len(nodes := sorted(self.grid.get_node_ids())) < self.num_nodes:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(nodes)} of {self.num_nodes} nodes connected")
                time.sleep(0.1)
            queries = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
            replies = self.grid.send_and_receive(queries, timeout=self.timeout)
            asked = {m.metadata.message_id: m.metadata.dst_node_id for m in queries}
            real = {}
            for reply in replies:
                node = asked.get(reply.metadata.reply_to_message_id)
                if node is not None and not reply.has_error() and "node" in reply.content.config_records:
                    real[int(reply.content.config_records["node"][_PARTITION_ID]) + 1] = node
            if sorted(real.values()) != nodes:
                raise RuntimeError(f"only {len(real)} of {len(nodes)} nodes gave distinct partition-ids")
            self._real = real
        return self._real

    def _unsupported(self, *args, **kwargs):
        raise RuntimeError("StableNodes serves send_and_receive and get_node_ids only (what strategies use)")

    create_message = get_nodes = pull_messages = push_messages = run = set_run = _unsupported
