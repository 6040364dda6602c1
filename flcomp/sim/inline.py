"""An in-process Grid: the ServerApp's messages run through the ClientApp directly.

No Ray, no SuperLink: one process, clients one after another. For experiments of
hundreds of short rounds (distributed-GD mode), where Ray's per-message cost would
dominate, and for tests. Each node keeps its own Context, as on a SuperNode; node
ids are fixed (`first_node_id`, +1, ...), so client sampling is reproducible too.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InlineGrid(Grid):
    """`num_nodes` clients running `app`; node i has partition-id i of num-partitions."""

    def __init__(self, app: ClientApp, num_nodes: int, first_node_id: int = 1, run_id: int = 1) -> None:
        # Messages take their run and sender from the process's task identity, which
        # Flower's runtime sets; here the server is node 0.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, 0
        self.app = app
        self._sent = 0
        self.contexts = {
            first_node_id + i: Context(
                run_id=run_id,
                node_id=first_node_id + i,
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
            self._sent += 1  # message ids as Flower's grids give them, so replies name what they answer
            message.metadata.__dict__["_message_id"] = f"inline-{self._sent}"
            context = self.contexts[message.metadata.dst_node_id]
            try:
                replies.append(self.app(message, context))
            except Exception as e:  # as Flower's runtime does: an exception becomes an error reply
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(e))
                replies.append(Message(error, reply_to=message))
        return replies

    def _not_inline(self, *args, **kwargs):
        raise RuntimeError("InlineGrid serves send_and_receive and get_node_ids only (what strategies use)")

    create_message = get_nodes = pull_messages = push_messages = run = set_run = _not_inline
