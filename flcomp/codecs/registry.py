"""The codec registry: every codec selectable by name, with a typed config.

    from flcomp.codecs import codec
    c = codec("topk", ratio=0.01)                 # or Codec.parse("topk:ratio=0.01")
    c = codec("signxor", momentum=0.9)            # any lossy codec: error_feedback=, momentum=
    c = codec("scaled_sign", ef_decay=0.9)        # leaky error feedback (two-way downlinks)
    enc, dec = c.encoder(spec, seed=1), c.decoder(spec)

A codec module registers its `Compressor` subclass with `@register`; the list of
codec modules is `flcomp.codecs.__init__`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flcomp import keyvalue
from flcomp.codecs.compressor import Compressor
from flcomp.codecs.endpoints import Decoder, DecoderPool, Encoder
from flcomp.codecs.spec import ModelSpec
from flcomp.codecs.wrappers.error_feedback import ErrorFeedback
from flcomp.codecs.wrappers.momentum import Momentum

REGISTRY: dict[str, type[Compressor]] = {}
POOLS: dict[str, Callable[[Compressor, int], DecoderPool]] = {}
"""The server side of the codecs that plan rounds or decode clients jointly (LGC), by
name; the others get a plain `DecoderPool`. Called as pool(compressor, seed) with the
codec's own (unwrapped) compressor; the pool builds its decoders (wrappers decode as
their inner codec does)."""


def register(cls: type[Compressor], *, pool: Callable[..., DecoderPool] | None = None) -> type[Compressor]:
    """Add a compressor to the registry under `cls.name` (a class decorator), with the
    server-side pool it needs, if any: `register(LGC, pool=LGCPool)`."""
    if cls.name in REGISTRY:
        raise ValueError(f"codec name {cls.name!r} is registered twice")
    taken = {c.codec_id: n for n, c in REGISTRY.items()}
    if cls.codec_id in taken:
        raise ValueError(f"codec id {cls.codec_id} of {cls.name!r} is taken by {taken[cls.codec_id]!r}")
    if not 0 <= cls.codec_id < 256:
        raise ValueError("codec ids are one byte")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    REGISTRY[cls.name] = cls
    if pool is not None:
        POOLS[cls.name] = pool
    return cls


@dataclass(frozen=True)
class Codec:
    """A registered codec with its config: makes the encoders and decoders of a link."""

    name: str
    config: Any
    error_feedback: bool
    momentum: float = 0.0
    """β of `flcomp.codecs.wrappers.momentum` (m ← β·m + g before the codec, error feedback
    included); 0 (default) is off; see that module for when to turn it on. Lossy codecs only."""
    ef_decay: float = 1.0
    """β of `flcomp.codecs.wrappers.error_feedback` (e ← β·(p − C(p))); 1 (default) is exact error
    feedback. Below 1 the memory stays bounded but what is sent is biased: set it (0.9) on a
    two-way downlink with sign codecs, where exact error feedback winds up (see that module).
    Error feedback only."""

    @property
    def compressor_class(self) -> type[Compressor]:
        return REGISTRY[self.name]

    def compressor(self, spec: ModelSpec) -> Compressor:
        """The codec's math for `spec`, wrapped in error feedback and momentum if configured.

        Compressors hold no state, so one per (codec, spec) serves every endpoint: a
        client's mod rebuilds its encoder on every instruction.
        """
        return _compressor(self, spec)

    def encoder(self, spec: ModelSpec, seed: int = 0) -> Encoder:
        """A client-side encoder in the initial state."""
        return Encoder(self.compressor(spec), seed=seed)

    def decoder(self, spec: ModelSpec) -> Decoder:
        """A server-side decoder for one client, in the initial state."""
        return Decoder(self.compressor(spec))

    def decoder_pool(self, spec: ModelSpec, seed: int = 0) -> DecoderPool:
        """The server side for many clients (a subclass for codecs that plan rounds or
        decode jointly, seeded by `seed`)."""
        pool = POOLS.get(self.name)
        if pool is None:
            return DecoderPool(lambda: self.decoder(spec))
        return pool(self.compressor_class(spec, self.config), seed)

    def describe(self) -> str:
        """The codec as `parse` reads it back, every parameter spelled out."""
        params = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}
        if not self.compressor_class.lossless:
            params["error_feedback"] = self.error_feedback
        if self.momentum:
            params["momentum"] = self.momentum
        if self.ef_decay != 1:  # omitted at the default: the texts made before it stay as they were
            params["ef_decay"] = self.ef_decay
        if not params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in params.items())

    @classmethod
    def parse(cls, text: str) -> Codec:
        """Read "name" or "name:key=value,key=value" (values typed from the config).

        Every train instruction carries its codec as text, so parses are cached.
        """
        return _parse(text)


@functools.lru_cache(maxsize=64)
def _compressor(codec: Codec, spec: ModelSpec) -> Compressor:
    c = codec.compressor_class(spec, codec.config)
    c = ErrorFeedback(c, codec.ef_decay) if codec.error_feedback else c
    return Momentum(c, codec.momentum) if codec.momentum else c


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Codec:
    name, params = keyvalue.split(text, "codec")
    if name not in REGISTRY:
        raise ValueError(f"unknown codec {name!r}; available: {', '.join(available())}")
    extra = {"error_feedback": bool, "momentum": float, "ef_decay": float}
    return codec(name, **keyvalue.typed(params, REGISTRY[name].Config, extra))


def codec(
    name: str,
    *,
    error_feedback: bool | None = None,
    momentum: float = 0.0,
    ef_decay: float = 1.0,
    **params: Any,
) -> Codec:
    """Look up a codec by name and build its config from `params` (defaults otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown codec {name!r}; available: {', '.join(available())}")
    cls = REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"codec {name!r} has no parameter {sorted(unknown)}; it has {sorted(known)}")
    if error_feedback and cls.lossless:
        raise ValueError(f"codec {name!r} is lossless: error feedback has nothing to feed back")
    if error_feedback and cls.own_error_feedback:
        raise ValueError(f"codec {name!r} keeps its own error memory: leave error_feedback off")
    if momentum and cls.own_error_feedback:
        raise ValueError(f"codec {name!r} keeps its own memory (and momentum, if any): leave momentum off")
    if momentum and cls.lossless:
        raise ValueError(f"codec {name!r} is lossless: use the server's optimiser for momentum")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    ef = cls.error_feedback if error_feedback is None else error_feedback
    if not 0 <= ef_decay <= 1:  # NaN fails it too
        raise ValueError(f"ef_decay must be in [0, 1], got {ef_decay}")
    if ef_decay != 1 and not ef:
        raise ValueError(
            f"ef_decay scales the error-feedback memory, and codec {name!r} runs without error feedback"
            " here: turn it on (error_feedback=True) or leave ef_decay out"
        )
    return Codec(name, cls.Config(**params), ef, float(momentum), float(ef_decay))


def available() -> list[str]:
    """Names of the registered codecs."""
    return sorted(REGISTRY)
