"""LGC's parameters and the plain data its modules share: payload modes, the per-client
plan of a round, a parsed payload, and one stage-2 round as the autoencoder trains on it.

numpy only: the compressor (`codec`), the server pool (`pool`) and the autoencoder
(`autoencoder`, torch) all import it, and it imports none of them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flcomp.codecs.coding.sparse import ValueDtype

PLAIN, TOPK, VALUES, LATENT, INNOVATION = range(5)
"""Payload modes (see `flcomp.codecs.compressors.lgc.codec`)."""
MODE_NAMES = ("plain", "topk", "values", "latent", "innovation")


@dataclass(frozen=True)
class LGCConfig:
    ratio: float = 0.01
    """ρ, fraction of each tensor's entries in the index set I_t (and sent by the
    top-k warm-up), in (0, 1]. docs/METHODS.md §2: about 1e-3 for large models, larger for
    small ones; it sets n, the autoencoder's input length."""
    innovation_fraction: float = 0.1
    """Fraction of the n index-set values each client sends exactly in stage 3
    (m = ⌈fraction·n⌉), in (0, 1]: the "much smaller ratio" of docs/METHODS.md §2 relative
    to ρ. Raise it when clients' updates differ (non-IID data) and the joint estimate
    suffers; stage-3 bits grow about linearly with it."""
    stage1_rounds: int = 5
    """T1, warm-up rounds (stage 1), ≥ 0."""
    stage2_rounds: int = 20
    """T2, rounds in which the server trains the autoencoder (stage 2), ≥ 0. More
    rounds: more training data and autoencoder steps, later savings. 0 goes to stage
    3 with an untrained autoencoder (an ablation)."""
    warmup: Literal["plain", "topk"] = "plain"
    """Stage 1: "plain" sends the update whole (float32, as the paper's warm-up);
    "topk" sends each client's own top-k with error feedback."""
    autoencoder: Literal["conv", "identity"] = "conv"
    """"conv": the learned 1-D conv autoencoder of docs/METHODS.md §2 (torch, on the
    server's CPU; `flcomp.codecs.compressors.lgc.autoencoder`). "identity": no learning, the
    leader's values are its code and every client's estimate (the ablation that
    shows what learning adds; its code is n values instead of about n/4)."""
    encoder_channels: str = "64-128-256-64"
    """Channels of the encoder's strided conv layers, "-"-separated (input: 1)."""
    latent_channels: int = 4
    """Channels of the latent code (a kernel-1 conv after the stack): the code has
    latent_channels·⌈n/stride^layers⌉ values, about n/4 with the defaults."""
    decoder_channels: str = "32-64-128-32"
    """Channels of each decoder's transposed conv layers, "-"-separated; at least as
    many layers as the encoder, so that they reach back to n."""
    kernel_size: int = 3
    """Kernel of the strided (transposed) convs, odd (padding (k−1)/2)."""
    stride: int = 2
    """Stride of the strided (transposed) convs: each encoder layer divides the
    length by it (rounding up). Larger: a shorter code, coarser reconstruction."""
    output_kernel_size: int = 1
    """Kernel of each decoder's final conv, odd, which mixes the decoded channels with
    the innovation (and its mask) into the estimate."""
    negative_slope: float = 0.01
    """Slope of the LeakyReLU after every strided (transposed) conv, ≥ 0."""
    lambda_reconstruction: float = 0.5
    """λ1, weight of Σ_k MSE(x_k, x̂_k) in the autoencoder's loss, > 0."""
    lambda_similarity: float = 0.5
    """λ2, weight of Σ_{i≠j} MSE(z_i, z_j) (latent codes of one round's clients),
    ≥ 0: it makes one client's code stand in for the others'."""
    ae_lr: float = 1e-3
    """Adam's step size for the autoencoder (β = 0.9, 0.999, ε = 1e-8)."""
    ae_steps: int = 20
    """Adam steps per stage-2 round, ≥ 0: the server's training time per round is
    about proportional (see `LGCPool.history`)."""
    ae_batch: int = 4
    """Rounds (each: all of that round's clients) per Adam step, ≥ 1."""
    ae_window: int = 10
    """The newest rounds of stage-2 values kept to train on, ≥ 1."""
    per_client_decoders: bool = True
    """One decoder per client seen in stage 2 (docs/METHODS.md §2), and the shared decoder for
    the others; False: the shared decoder for everyone (fewer weights, for many
    clients or short stage 2)."""
    value_dtype: ValueDtype = "float32"
    """Wire type of every value sent (top-k, values, code, innovation); "float16"
    halves their bits. Plain warm-up updates stay float32."""
    feedback: Literal["innovation", "index_set"] = "innovation"
    """What a stage-3 client counts as delivered for its error feedback [decision].
    "innovation" (docs/METHODS.md §2: error feedback keeps what was not sent): only what it
    sent exactly; the rest of its values on I_t stays in e and is sent again later,
    so whatever the decoder filled in for it counts twice. "index_set" (the paper's
    reimplementation): its values on I_t, which the joint decode means to
    reconstruct; the reconstruction error is then lost. "index_set" suits an
    autoencoder whose estimates are accurate; how the two compare in runs: see
    docs/RESULTS.md, LGC section."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1 or not 0 < self.innovation_fraction <= 1:
            raise ValueError("LGC needs ratio and innovation_fraction in (0, 1]")
        if min(self.stage1_rounds, self.stage2_rounds, self.ae_steps) < 0:
            raise ValueError("LGC needs stage1_rounds, stage2_rounds and ae_steps ≥ 0")
        if min(self.ae_batch, self.ae_window, self.latent_channels, self.stride) < 1:
            raise ValueError("LGC needs ae_batch, ae_window, latent_channels and stride ≥ 1")
        for name in ("kernel_size", "output_kernel_size"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"LGC needs an odd {name} ≥ 1, got {k}")
        encoder, decoder = _channels(self.encoder_channels), _channels(self.decoder_channels)
        if len(decoder) < len(encoder):
            raise ValueError("LGC's decoder needs at least as many layers as its encoder")
        inf = math.inf
        if not (0 < self.lambda_reconstruction < inf and 0 <= self.lambda_similarity < inf):
            raise ValueError("LGC needs a finite lambda_reconstruction > 0 and lambda_similarity ≥ 0")
        if not 0 < self.ae_lr < inf:
            raise ValueError(f"LGC needs a finite ae_lr > 0, got {self.ae_lr}")
        if not 0 <= self.negative_slope < inf:
            raise ValueError("LGC needs a finite negative_slope ≥ 0")

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        return _channels(self.encoder_channels)

    @property
    def decoder_layers(self) -> tuple[int, ...]:
        return _channels(self.decoder_channels)

    def encoder_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of the encoder's parameters, in the order of its flat weights."""
        if self.autoencoder == "identity":
            return []
        layout = []
        channels = (1, *self.encoder_layers)
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layout += [(f"conv{i}.weight", (c_out, c_in, self.kernel_size)), (f"conv{i}.bias", (c_out,))]
        return layout + [
            ("latent.weight", (self.latent_channels, channels[-1], 1)),
            ("latent.bias", (self.latent_channels,)),
        ]

    def decoder_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of one decoder's parameters (conv-transpose weights are in × out × k)."""
        layout = []
        channels = (self.latent_channels, *self.decoder_layers)
        for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layout += [(f"deconv{i}.weight", (c_in, c_out, self.kernel_size)), (f"deconv{i}.bias", (c_out,))]
        return layout + [
            ("out.weight", (1, channels[-1] + 2, self.output_kernel_size)),
            ("out.bias", (1,)),
        ]

    @property
    def encoder_size(self) -> int:
        """P, the number of encoder weights (0 for the identity autoencoder)."""
        return sum(math.prod(shape) for _, shape in self.encoder_layout())

    def code_length(self, n: int) -> int:
        """The latent code's length per channel for n values."""
        for _ in self.encoder_layers:
            n = -(-n // self.stride)
        return n

    def code_size(self, n: int) -> int:
        """Values in the leader's code for n index-set values."""
        if self.autoencoder == "identity":
            return n
        return self.latent_channels * self.code_length(n)


def _channels(text: str) -> tuple[int, ...]:
    try:
        channels = tuple(int(c) for c in text.split("-"))
    except ValueError:
        raise ValueError(f"LGC channels must be '-'-separated integers, got {text!r}") from None
    if not channels or min(channels) < 1:
        raise ValueError(f"LGC channels must be positive, got {text!r}")
    return channels


def encoder_tag(weights: np.ndarray) -> int:
    """A nonzero 32-bit tag of encoder weights (0 means "no encoder")."""
    digest = hashlib.blake2b(np.ascontiguousarray(weights, np.float32).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") or 1


@dataclass(frozen=True, eq=False)
class Plan:
    """One client's part of a round's plan: what its side information says."""

    mode: int = TOPK
    """The payload mode the server expects (a leader without the encoder falls back
    from LATENT to VALUES)."""
    propose: bool = False
    """Whether the client proposes the next round's index set."""
    tag: int = 0
    """The tag of the encoder a LATENT client encodes with (0 otherwise, and always
    with the identity autoencoder)."""
    index: tuple[np.ndarray, ...] | None = None
    """I_t per tensor (sorted int64 positions), for modes VALUES, LATENT, INNOVATION."""
    weights: np.ndarray | None = None
    """The encoder's flat weights when they come with this plan."""


@dataclass(eq=False)
class Message:
    """A payload's body, parsed."""

    mode: int
    values: list[np.ndarray] | np.ndarray | None = None
    """PLAIN: the tensors; TOPK: dense tensors; VALUES: the n values (float32)."""
    code: np.ndarray | None = None
    """LATENT: the leader's code (float32)."""
    innovation: np.ndarray | None = None
    """LATENT, INNOVATION: positions of the innovation within [0, n)."""
    innovation_values: np.ndarray | None = None
    scale: float = 1.0
    """RMS of the client's values on I_t (conv autoencoder)."""
    proposal: tuple[np.ndarray, ...] | None = None


DEFAULT_PLAN = Plan()
"""The plan of a step without side information: own top-k, no proposal."""


@dataclass(frozen=True)
class Group:
    """One stage-2 round's values, as the autoencoder trains on them (K clients, n values)."""

    clients: tuple[str, ...]
    u: np.ndarray
    """(K, n) float32: each client's values divided by its scale."""
    innovation: np.ndarray
    """(K, n) float32: u on each client's innovation entries, 0 elsewhere."""
    mask: np.ndarray
    """(K, n) float32: 1 on each client's innovation entries."""
    scale: np.ndarray
    """(K,) float32: each client's RMS scale s."""
    leader: int
    """Index of the round's leader in `clients`, -1 when its values are missing."""
