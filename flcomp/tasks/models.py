"""Models by name: torch modules whose state_dict holds float32 parameters only (no buffers)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


def linear(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """One affine layer on the flattened input (logistic / linear regression)."""
    return nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(math.prod(input_shape), num_outputs)))


def mlp(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """flatten → Linear(·, 64) → ReLU → Linear(64, num_outputs)."""
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(math.prod(input_shape), 64),
            relu=nn.ReLU(),
            fc2=nn.Linear(64, num_outputs),
        )
    )


def cnn(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A small conv net for (C, H, W) images with H, W ≥ 2 (8×8 digits, 28×28 Fashion-MNIST):
    conv 3×3 16 ch → ReLU → max-pool 2 → conv 3×3 32 ch → ReLU → global average pool → Linear."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs (C, H, W) images, not inputs shaped {input_shape}")
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(input_shape[0], 16, 3, padding=1),
            relu1=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(32, num_outputs),
        )
    )


@dataclass(frozen=True)
class ModelEntry:
    """A model builder and the problems (keys of objective.PROBLEMS) it serves."""

    build: Callable[[tuple[int, ...], int], nn.Module]
    """(input_shape, num_outputs) → module, initialised from torch's global RNG."""
    problems: frozenset[str]


MODELS: dict[str, ModelEntry] = {
    "logreg": ModelEntry(linear, frozenset({"multiclass", "binary"})),
    "linear": ModelEntry(linear, frozenset({"regression"})),
    "mlp": ModelEntry(mlp, frozenset({"multiclass"})),
    "cnn": ModelEntry(cnn, frozenset({"multiclass"})),
}
"""Model name → entry. "logreg" is multinomial logistic regression (softmax over the
classes) or, for binary data, logistic regression with a single logit; "linear" is
linear regression. The synthetic problems take the linear models only, so that their
known optimum is the model's."""
