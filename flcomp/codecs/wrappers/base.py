"""The base of the wrappers that preprocess a compressor's input (error feedback, momentum).

A wrapper keeps encoder-local state of its own beside the inner compressor's (stored
under "inner/<key>") and changes only what goes into `inner.encode`: the payload, the
shared state, decoding, side information and the server side are the inner codec's.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from flcomp.codecs.compressor import Compressor, State, Step
from flcomp.codecs.wire import PayloadReader

_INNER = "inner/"


class Wrapper(Compressor):
    """`inner` behind an encoder-side transformation; subclasses define `own_local` and `encode`."""

    def __init__(self, inner: Compressor) -> None:
        super().__init__(inner.spec, inner.config)
        self.inner = inner
        self.name = inner.name
        self.codec_id = inner.codec_id
        self.Config = inner.Config
        self.stats = inner.stats
        self.finite_reconstruction = inner.finite_reconstruction

    @abstractmethod
    def own_local(self) -> State:
        """The wrapper's own encoder-local state at the start."""

    def initial_shared(self) -> State:
        return self.inner.initial_shared()

    def initial_local(self) -> State:
        return self.own_local() | {_INNER + k: v for k, v in self.inner.initial_local().items()}

    @staticmethod
    def inner_local(local: State) -> State:
        """The inner compressor's part of `local`."""
        return {k[len(_INNER) :]: v for k, v in local.items() if k.startswith(_INNER)}

    @staticmethod
    def with_inner(own: State, step: Step) -> Step:
        """`step` (the inner compressor's) with the wrapper's new local state `own` beside its own."""
        step.local = own | {_INNER + k: v for k, v in step.local.items()}
        return step

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        return self.inner.decode(body, shared)

    def receive(self, side: bytes, shared: State) -> State:
        return self.inner.receive(side, shared)
