"""A task with a target to reach, for experiments that count rounds and bits to reach it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flcomp.sim.apps import load_task
from flcomp.tasks import TaskConfig


@dataclass(frozen=True)
class Problem:
    """A task, how long it runs and what it must reach."""

    label: str
    task: TaskConfig
    rounds: int
    metric: str
    """"gap" (relative objective gap, reached when ≤ target) or "accuracy" (≥ target)."""
    target: float
    step_one_over_l: bool = True
    """Replace task.lr by 1/L, L the objective's smoothness (GD's classical step)."""

    def task_for(self, seed: int) -> TaskConfig:
        """The task as it runs with `seed`: that seed, and the step 1/L when `step_one_over_l`."""
        task = dataclasses.replace(self.task, seed=seed)
        if self.step_one_over_l:
            task = dataclasses.replace(task, lr=1.0 / load_task(task).smoothness())
        return task

    def reached(self, rounds: list[dict]) -> dict | None:
        """The first trained round of a run's rounds.csv rows that meets the target, or None."""
        for r in rounds:
            value = r[self.metric]
            if (
                r["round"] > 0
                and value is not None
                and (value <= self.target if self.metric == "gap" else value >= self.target)
            ):
                return r
        return None


def uplink_mbit(row: dict) -> float:
    """The cumulative uplink Mbit (all clients) of a rounds.csv row."""
    return 8 * row["cumulative_uplink_bytes"] / 1e6
