"""Measured uploads in deployment: when each reply left its client and reached the server.

Without a simulated channel the server plans bit budgets from what it measured of each
client's last round (`flcomp.strategies.budget`). Neither a Flower mod nor the SuperLink
records when an upload happened, so the two ends each note one time:

- the client mod reports the wall-clock second its reply left the ClientApp
  (`records.SENT_AT`, in the reply's metrics);
- `TimedGrid`, around the ServerApp's grid, notes when it pushed each instruction and when
  the reply first reached the ServerApp, pulling every `poll_s` (Flower's grids pull every
  3 s, which would bury any upload under the wait).

    upload_s = arrival − sent_at         the reply's trip: SuperNode to SuperLink to ServerApp
    round_s  = arrival − pushed          the client's whole round, on the server's clock
    rate     = 8 · payload bytes / upload_s,   other_s = round_s − upload_s

`upload_s` compares two clocks: it assumes the client's is synchronised (NTP) to well
below an upload's duration. It holds the per-message latency as well as the transfer
(Flower handing the reply from the ClientApp process to the SuperNode, the push, up to one
`poll_s` of waiting for the pull), which dominates small payloads: their rate comes out
low, and the budgets with it (they err on the safe side, never past the deadline by the
measurement); the rate rule is linear in bits and exact only where the transfer dominates.
A reported send time that puts the upload outside
[`poll_s`, round_s] (a skewed clock, a client that lies) is clamped into it, so a client
can skew its own budget only within that range.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flcomp.protocol import records
from flcomp.strategies.replies import Upload


@dataclass(frozen=True)
class MeasuredUpload:
    """One client's last round as measured (see the module docstring)."""

    bits: int
    """The payload's bits (8 × its bytes)."""
    upload_s: float
    """Seconds from the client's send to the ServerApp's pull, clamped to [poll_s, round_s]."""
    round_s: float
    """Seconds from the instruction's push to the reply's pull, on the server's clock."""

    @property
    def rate_bps(self) -> float:
        """The upload's measured throughput, bits per second."""
        return self.bits / self.upload_s

    @property
    def other_s(self) -> float:
        """The rest of the round: delivery of the instruction, start-up, training, encoding."""
        return self.round_s - self.upload_s


class TimedGrid(Grid):
    """A grid that notes push and arrival times (`pushed`, `arrived`: server wall-clock seconds
    by instruction message id, of the last `send_and_receive`) and otherwise is `grid`.
    `send_and_receive` pulls every `poll_s`."""

    def __init__(self, grid: Grid, poll_s: float = 0.05) -> None:
        if not 0 < poll_s < math.inf:
            raise ValueError(f"a poll interval is a positive number of seconds, got {poll_s}")
        self.grid, self.poll_s = grid, poll_s
        self.pushed: dict[str, float] = {}
        self.arrived: dict[str, float] = {}

    def measure(self, reply: Message, sent_at: float | None, payload_bytes: int) -> MeasuredUpload | None:
        """The upload of `reply`, from the client's reported send time; None when either time is
        missing (the instruction did not go through `send_and_receive`, or no send time)."""
        instruction = reply.metadata.reply_to_message_id
        pushed, arrived = self.pushed.get(instruction), self.arrived.get(instruction)
        if pushed is None or arrived is None or sent_at is None or not math.isfinite(sent_at):
            return None
        round_s = max(arrived - pushed, self.poll_s)
        upload_s = min(max(arrived - sent_at, self.poll_s), round_s)
        return MeasuredUpload(8 * payload_bytes, upload_s, round_s)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Flower's `send_and_receive` (push, then pull until every reply or `timeout` s), noting times."""
        start = time.time()
        ids = list(self.grid.push_messages(messages))
        # A round's times are read (`measure`) before the next call: keep only this call's.
        self.pushed, self.arrived = dict.fromkeys(ids, start), {}
        pending, replies = set(ids), []
        end = None if timeout is None else time.monotonic() + timeout
        while pending:
            pulled = list(self.grid.pull_messages(pending))
            now = time.time()
            for reply in pulled:
                self.arrived.setdefault(reply.metadata.reply_to_message_id, now)
            replies += pulled
            pending -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.poll_s)
        return replies

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)


def measure_uploads(grid: TimedGrid, uploads: Mapping[int, Upload]) -> dict[int, MeasuredUpload]:
    """node → its measured upload, for each of the round's `uploads` whose client reported a send
    time (`records.SENT_AT`, a number)."""
    measured = {}
    for node, u in uploads.items():
        sent_at = u.metrics.get(records.SENT_AT)
        if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
            continue
        m = grid.measure(u.reply, float(sent_at), len(u.payload))
        if m is not None:
            measured[node] = m
    return measured
