"""The ServerApp: FedAvg, wrapped so that it decodes the clients' compressed uploads."""

from __future__ import annotations

import os
import random
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flcomp.strategies import Compressed
from flcomp.tasks import Task
from flcomp_app.settings import run_config, task_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = run_config(context)
    num_nodes = int(config["num-partitions"])
    seed = int(config["seed"])
    random.seed(seed)  # Flower samples the nodes of a round with the global `random`

    task = Task(task_config(config, num_nodes))
    # The one flcomp line on the server side: wrap the strategy. `Compressed` tells
    # each client the codec and decodes its payload back into arrays for FedAvg.
    strategy = Compressed(
        FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_available_nodes=num_nodes,
            min_train_nodes=num_nodes,
        ),
        codec=str(config["codec"]),
        seed=seed,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central evaluation of the global model on the task's test set."""
        return MetricRecord(task.evaluate([arrays[k].numpy() for k in task.keys]))

    initial = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=evaluate,
    )

    for rnd, traffic in sorted(strategy.traffic.items()):
        metrics = result.evaluate_metrics_serverapp.get(rnd, {})
        log(
            INFO,
            "round %d: accuracy %.4f, uplink %d B, downlink %d B",
            rnd,
            metrics.get("accuracy", float("nan")),
            traffic.uplink_bytes,
            traffic.downlink_bytes,
        )

    final = result.arrays
    if len(final) == 0:
        log(WARNING, "no round produced a model: the final model is the initial one")
        final = initial
    path = str(config.get("result-path", "")) or os.environ.get("FLCOMP_RESULT_PATH", "")
    if path:
        np.savez(path, **{k: final[k].numpy() for k in task.keys})
        log(INFO, "final model saved to %s", path)
