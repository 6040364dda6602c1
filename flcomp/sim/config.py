"""What one simulated run is: the task, the codec, the strategy, the rounds, the seed."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from flcomp.channel import Channel
from flcomp.codecs import Codec
from flcomp.strategies.budget import DeadlineBudget
from flcomp.strategies.downlink import DELIVERIES
from flcomp.tasks import TaskConfig

STRATEGIES: dict[str, tuple[type[Strategy], dict]] = {
    "fedavg": (FedAvg, {}),
    "fedadam": (FedAdam, {}),
    "fedprox": (FedProx, {"proximal_mu": 0.01}),
}
"""Inner strategies by name: the Flower class and its arguments beyond client sampling."""
ENGINES = ("ray", "inline")


@dataclass(frozen=True)
class RunConfig:
    """One simulation run. Every field is written to the run's config.json."""

    task: TaskConfig = field(default_factory=TaskConfig)
    codec: str = "fp32"
    """Uplink codec, as `flcomp.codecs.Codec.parse` reads it."""
    downlink: str | None = None
    """Downlink codec for the server's broadcast (None: the model is sent as it is)."""
    downlink_delivery: str = "unicast"
    """How the model or the downlink payloads travel and are counted (`Compressed`'s
    `downlink_delivery`): "unicast", one message per client (Flower's), or "broadcast", one
    transmission a round for the whole population."""
    channel: str | None = None
    """Simulated wireless network, as `flcomp.channel.Channel.parse` reads it (None: no
    network; rounds then have no virtual time or energy)."""
    budget: str | None = None
    """Bit-budget policy ("deadline" or "deadline:outage=0.05", `flcomp.strategies.budget`):
    each client's payload sized to what its link carries by the channel's deadline; needs a
    channel with a deadline. None: every client at its codec's rate."""
    strategy: str = "fedavg"
    """Inner Flower strategy: one of STRATEGIES."""
    rounds: int = 20
    fraction: float = 1.0
    """Fraction of the clients instructed each round, drawn by stable id (partition-id + 1)
    with a generator seeded by (seed, round) (`flcomp.strategies.sampling.seeded_sampling`):
    the same cohorts on both engines and for every codec."""
    seed: int = 0
    """Seeds node sampling and the clients' encoders (the task has its own seed)."""
    engine: str = "ray"
    """"ray": Flower's simulation engine (clients in Ray actors, as in any Flower
    simulation); "inline": the same ServerApp and ClientApp in one process, clients one
    after another (`flcomp.sim.inline`), much faster for many short rounds."""
    client_cpus: float = 1.0
    """Ray CPUs per simulated client: 1 runs two clients at a time on a 2-core machine."""
    ray_address: str | None = None
    """Join this Ray cluster (e.g. "127.0.0.1:6379") instead of starting a local one."""
    max_client_states: int | None = None
    """Hold at most this many clients' codec states on the server (`Compressed`'s
    `max_client_states`: the least recently instructed are evicted and resynchronised by key
    frames when they return); None: no bound."""
    checkpoint_every: int | None = None
    """Save a checkpoint after every this many rounds (`flcomp.sim.checkpoint`), from which
    `flcomp run --resume` continues the run; None: no checkpoints."""

    def __post_init__(self) -> None:
        # A misspelt codec or channel (or a trace file that is not there) fails here, not when
        # the run's first round starts.
        Codec.parse(self.codec)
        if self.downlink is not None:
            Codec.parse(self.downlink)
        if self.channel is not None:
            Channel.parse(self.channel)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; one of {sorted(STRATEGIES)}")
        if self.downlink_delivery not in DELIVERIES:
            raise ValueError(f"unknown downlink delivery {self.downlink_delivery!r}; one of {DELIVERIES}")
        if self.budget is not None:
            if DeadlineBudget.parse(self.budget).deadline_s is not None:
                raise ValueError("a budget's own deadline_s is for deployments: here the channel's is D")
            if self.channel is None or Channel.parse(self.channel).config.deadline_s is None:
                raise ValueError("a bit budget needs a channel with a deadline (deadline_s)")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; one of {ENGINES}")
        if not self.rounds >= 1:
            raise ValueError(f"a run needs rounds ≥ 1, got {self.rounds}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"a run needs a fraction of clients in (0, 1], got {self.fraction}")
        if not self.seed >= 0:
            raise ValueError(f"a run needs seed ≥ 0, got {self.seed}")
        if not 0 < self.client_cpus < math.inf:
            raise ValueError(f"a run needs a finite client_cpus > 0, got {self.client_cpus}")
        if self.checkpoint_every is not None and not (
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1
        ):
            raise ValueError(f"checkpoint_every must be an integer ≥ 1 or None, got {self.checkpoint_every}")

        bound = self.max_client_states
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
            raise ValueError(
                f"max_client_states must be an integer ≥ 1 or None, got {self.max_client_states}"
            )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return cls(**{**d, "task": TaskConfig(**d["task"])})

    def inner_strategy(self) -> Strategy:
        cls, kwargs = STRATEGIES[self.strategy]
        nodes = max(1, int(self.task.num_clients * self.fraction))
        strategy = cls(
            fraction_train=self.fraction, min_train_nodes=nodes, min_available_nodes=nodes, **kwargs
        )
        # No federated evaluation: the ServerApp evaluates centrally. These two attributes are what
        # fraction_evaluate=0.0 sets, without the warning it logs on every construction.
        strategy.fraction_evaluate, strategy.min_evaluate_nodes = 0.0, 0
        return strategy
