"""The ClientApp: train on this SuperNode's partition; flcomp compresses the upload."""

from __future__ import annotations

from functools import cache

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flcomp.clients import compression_mod
from flcomp.tasks import Task, TaskConfig
from flcomp_app.settings import run_config, task_config

# The one flcomp line on the client side: the mod encodes what `train` returns
# (Δ = w_global − w_local) into the codec's payload before it is uploaded, and
# keeps the encoder's state (error feedback, ...) in `context.state`.
app = ClientApp(mods=[compression_mod])


@cache
def load_task(config: TaskConfig) -> Task:
    return Task(config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A plain Flower train handler: it returns the locally trained arrays."""
    if "partition-id" not in context.node_config or "num-partitions" not in context.node_config:
        raise ValueError("start this SuperNode with --node-config 'partition-id=I num-partitions=N'")
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    task = load_task(task_config(run_config(context), num_partitions))

    received = msg.content["arrays"]
    arrays, num_examples, metrics = task.train(
        partition_id,
        [received[k].numpy() for k in task.keys],
        int(msg.content["config"]["server-round"]),
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(a) for k, a in zip(task.keys, arrays)}),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
        }
    )
    return Message(content, reply_to=msg)
