"""The Flower apps of a simulated run: a ClientApp that trains a task, a ServerApp that records it."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid, ServerApp

from flcomp.clients import compression_mod
from flcomp.protocol.arrays import from_numpy, to_numpy
from flcomp.sim.config import RunConfig
from flcomp.sim.results import RunRecorder
from flcomp.strategies import Compressed, RoundTraffic
from flcomp.tasks import Task, TaskConfig


@cache
def load_task(config: TaskConfig) -> Task:
    """One Task per process (each Ray actor loads its data once)."""
    return Task(config)


def client_app(config: TaskConfig, mods: Sequence[Mod] = ()) -> ClientApp:
    """A ClientApp that trains `config`'s task on its partition, with `compression_mod` and then
    `mods` (e.g. an experiment's diagnostics) around the training."""
    app = ClientApp(mods=[compression_mod, *mods])

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


def server_app(config: RunConfig, recorder: RunRecorder, on_round: Callable[[dict], None]) -> ServerApp:
    """A ServerApp that runs `serve`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, config, recorder, on_round)

    return app


def serve(grid: Grid, config: RunConfig, recorder: RunRecorder, on_round: Callable[[dict], None]) -> None:
    """Run `Compressed(inner strategy)` on `grid`; after every round evaluate the global model
    centrally and hand the round's row to `recorder` and `on_round`."""
    random.seed(config.seed)  # Flower samples clients with the global `random`
    task = load_task(config.task)
    strategy = Compressed(
        config.inner_strategy(),
        codec=config.codec,
        downlink=config.downlink,
        channel=config.channel,
        seed=config.seed,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = task.evaluate([to_numpy(arrays[k]) for k in task.keys])
        traffic = strategy.traffic.get(server_round)
        sent = RoundTraffic.empty_row(config.channel is not None) | (traffic.row() if traffic else {})
        on_round(recorder.add_round({"round": server_round, **sent, **metrics}))
        return MetricRecord(metrics)

    initial = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=config.rounds, evaluate_fn=evaluate)
