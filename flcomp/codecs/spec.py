"""The model spec a codec is built for: one (shape, dtype) per tensor of the update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from math import isfinite, prod

import numpy as np

_FLOAT_KINDS = ("f",)


def all_finite(x: np.ndarray) -> bool:
    """Whether every entry of a flat float array is finite (no NaN, no ±Inf).

    x·x is one vectorised read with no temporary (isfinite writes a boolean array): it
    is finite unless an entry is NaN or ±Inf or the squares overflow (entries past
    ~1e19), and only then are the extremes tested, into which NaN propagates.
    """
    if not x.size:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        square = np.dot(x, x)
    return isfinite(square) or (isfinite(x.min()) and isfinite(x.max()))


@dataclass(frozen=True)
class TensorSpec:
    """Shape and floating dtype of one tensor of the update."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if any(s < 0 for s in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        if self.dtype.kind not in _FLOAT_KINDS:
            raise ValueError(
                f"flcomp compresses floating-point updates, got dtype {self.dtype}; "
                "send integer buffers (e.g. BatchNorm's num_batches_tracked) outside the codec"
            )

    @cached_property
    def size(self) -> int:
        """Number of entries."""
        return prod(self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """The tensors of an update, in order; every encoder and decoder is built for one."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> ModelSpec:
        """The spec of a list of arrays (e.g. a model's parameters)."""
        return cls(tuple(TensorSpec(a.shape, a.dtype) for a in arrays))

    @classmethod
    def flat(cls, *sizes: int, dtype: str = "float32") -> ModelSpec:
        """A spec of 1-D tensors of the given sizes."""
        return cls(tuple(TensorSpec((n,), np.dtype(dtype)) for n in sizes))

    def __len__(self) -> int:
        return len(self.tensors)

    @cached_property
    def size(self) -> int:
        """Total number of entries d."""
        return sum(t.size for t in self.tensors)

    def check(self, update: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Validate an update against the spec; return it as flat float32 arrays.

        Raises ValueError on a wrong tensor count, a wrong shape or a NaN/Inf entry.
        """
        if len(update) != len(self.tensors):
            raise ValueError(f"update has {len(update)} tensors, the spec {len(self.tensors)}")
        flat = []
        for i, (x, t) in enumerate(zip(update, self.tensors)):
            x = np.asarray(x)
            if x.shape != t.shape:
                raise ValueError(f"tensor {i} has shape {x.shape}, the spec {t.shape}")
            x = x.reshape(-1).astype(np.float32, copy=False)
            if not all_finite(x):
                raise ValueError(f"tensor {i} holds NaN or Inf")
            flat.append(x)
        return flat

    def restore(self, flat: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Flat float32 arrays back to the spec's shapes and dtypes.

        Into a narrower dtype (float16) values saturate at its largest finite value
        rather than become infinite.
        """
        out = []
        for x, t in zip(flat, self.tensors):
            if t.dtype.itemsize < 4:
                limit = float(np.finfo(t.dtype).max)
                x = np.clip(x, -limit, limit)
            out.append(x.reshape(t.shape).astype(t.dtype, copy=False))
        return out
