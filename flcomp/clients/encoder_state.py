"""The client's encoder state in `context.state`, checked against what it was made for."""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from flcomp.codecs import Codec, Encoder, ModelSpec
from flcomp.protocol import records
from flcomp.protocol.arrays import from_numpy, to_numpy

_STATE_ARRAYS = records.CLIENT_STATE_PREFIX + "encoder.arrays"
_STATE_META = records.CLIENT_STATE_PREFIX + "encoder.meta"


def load_encoder(state: RecordDict, codec: Codec, spec: ModelSpec, seed: int) -> Encoder:
    """The encoder kept in a client's `context.state`, or a fresh one.

    A fresh encoder (in the initial state) replaces a stored one made for another
    codec, spec or seed; its first payload then mismatches the server's decoder
    fingerprint, and `Encoder.sync` turns it into a key frame.
    """
    encoder = codec.encoder(spec, seed=seed)
    meta = state.config_records.get(_STATE_META)
    codec_text, spec_text = _state_tag(codec, spec)
    if meta is None or meta.get("codec") != codec_text or meta.get("spec") != spec_text:
        return encoder
    arrays = state.array_records.get(_STATE_ARRAYS, ArrayRecord())
    stored = {k: to_numpy(a) for k, a in arrays.items()}
    stored.update({k: int(v) for k, v in meta.items() if k not in ("codec", "spec")})
    try:
        encoder.load_state_dict(stored)
    except ValueError:
        return codec.encoder(spec, seed=seed)
    return encoder


def save_encoder(state: RecordDict, codec: Codec, spec: ModelSpec, encoder: Encoder) -> None:
    """Store an encoder's state (pending step included) in a client's `context.state`."""
    codec_text, spec_text = _state_tag(codec, spec)
    arrays, meta = {}, {"codec": codec_text, "spec": spec_text}
    for k, v in encoder.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays[k] = from_numpy(v)
        else:
            meta[k] = int(v)
    state[_STATE_ARRAYS] = ArrayRecord(arrays)
    state[_STATE_META] = ConfigRecord(meta)


@functools.lru_cache(maxsize=64)
def _state_tag(codec: Codec, spec: ModelSpec) -> tuple[str, str]:
    """What a stored encoder state was made for (every client call checks it, so cached)."""
    return codec.describe(), repr(spec)
