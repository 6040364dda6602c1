"""flcomp.sim: simulated runs on Flower's simulation engine (Ray), their results and plots."""

from flcomp.sim.config import STRATEGIES, RunConfig
from flcomp.sim.plot import plot_runs
from flcomp.sim.results import load_run
from flcomp.sim.runner import run

__all__ = ["STRATEGIES", "RunConfig", "load_run", "plot_runs", "run"]
