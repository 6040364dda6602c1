"""flcomp.strategies: the Flower ServerApp side (a wrapper around any strategy)."""

from flcomp.strategies.compressed import Compressed
from flcomp.strategies.traffic import RoundTraffic

__all__ = ["Compressed", "RoundTraffic"]
