"""The ServerApp: FedAvg, wrapped so that it decodes the clients' compressed uploads."""

from __future__ import annotations

import json
import os
import random
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flcomp.strategies import Compressed
from flcomp.tasks import Task
from flcomp_app.settings import participation, run_config, task_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = run_config(context)
    num_partitions = int(config["num-partitions"])
    nodes = participation(config)
    seed = int(config["seed"])
    random.seed(seed)  # Flower samples the nodes of a round with the global `random`

    task = Task(task_config(config, num_partitions))
    # The one flcomp line on the server side: wrap the strategy. `Compressed` tells
    # each client the codec and decodes its payload back into arrays for FedAvg.
    strategy = Compressed(
        # Each round trains every SuperNode connected when it starts, once there are
        # min-nodes of them: a device that drops out is left out until it returns.
        FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_available_nodes=nodes.min_nodes,
            min_train_nodes=nodes.min_nodes,
        ),
        codec=str(config["codec"]),
        seed=seed,
        budget=str(config.get("budget", "")) or None,
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Central evaluation of the global model on the task's test set."""
        return MetricRecord(task.evaluate([arrays[k].numpy() for k in task.keys]))

    initial = ArrayRecord({k: Array(a) for k, a in zip(task.keys, task.initial_arrays())})
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(config["num-server-rounds"]),
        # A node that dies mid-round gets an error reply from the SuperLink once its
        # heartbeat lapses; the timeout bounds a round whose node is alive but stuck.
        timeout=nodes.round_timeout,
        evaluate_fn=evaluate,
    )

    for rnd, traffic in sorted(strategy.traffic.items()):
        metrics = result.evaluate_metrics_serverapp.get(rnd, {})
        log(
            INFO,
            "round %d: %d clients, accuracy %.4f, uplink %d B, downlink %d B",
            rnd,
            traffic.accepted,
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
        traffic = sorted(strategy.traffic.items())
        rows = [{"round": rnd} | row for rnd, t in traffic for row in t.client_rows()]
        Path(f"{path}.clients.json").write_text(json.dumps(rows, indent=1))
        log(INFO, "final model saved to %s, each round's clients to %s.clients.json", path, path)
