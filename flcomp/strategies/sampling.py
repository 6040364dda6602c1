"""Reproducible node sampling: the cohort of a round from the seed, the round and the node ids."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator


@contextlib.contextmanager
def seeded_sampling(seed: int, stream: int) -> Iterator[None]:
    """Python's global `random`, which Flower's strategies sample nodes with, seeded by
    (`seed`, `stream`) inside the block and as it was after it.

    The cohort of a round is then a function of the seed, the round and the node ids alone:
    the same on every engine, for every codec of a comparison, and after a resume, whatever
    else draws from `random` in the process (Ray does).
    """
    state = random.getstate()
    random.seed(f"flcomp-sampling/{seed}/{stream}")
    try:
        yield
    finally:
        random.setstate(state)
