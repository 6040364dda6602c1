"""An in-process Grid: runs a ClientApp on each message directly, without Ray or a SuperLink."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LocalGrid(Grid):
    """`num_nodes` clients with node ids 101, 102, ...; each keeps its own Context."""

    def __init__(self, app: ClientApp, num_nodes: int) -> None:
        # Messages take their run and sender from the process's task identity, which
        # Flower's runtime sets; here the server is node 0 of run 1.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.app = app
        self.contexts = {
            101 + i: Context(
                run_id=1,
                node_id=101 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            context = self.contexts[message.metadata.dst_node_id]
            try:
                replies.append(self.app(message, context))
            except Exception as e:  # as Flower's runtime does: an exception becomes an error reply
                replies.append(Message(Error(code=1, reason=repr(e)), reply_to=message))
        return replies

    def create_message(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")

    def get_nodes(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")

    def pull_messages(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")

    def push_messages(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")

    def run(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")

    def set_run(self, *args, **kwargs):
        raise AssertionError("not used by the strategies")
