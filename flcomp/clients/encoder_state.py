"""The client's encoder state in `context.state`, checked against what it was made for.

Two records: a ConfigRecord (what the state was made for, its integers, and the name,
dtype and shape of each array) and an ArrayRecord holding one Array, the arrays' bytes
back to back. One Array rather than one per array because every client builds, stores
and parses them each round, and Flower's Array costs tens of microseconds apiece.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from flcomp.codecs import Codec, Encoder, ModelSpec
from flcomp.protocol import records

_STATE_ARRAYS = records.CLIENT_STATE_PREFIX + "encoder.arrays"
_STATE_META = records.CLIENT_STATE_PREFIX + "encoder.meta"
_PACKED = "packed"
_LAYOUT = ("arrays", "dtypes", "shapes")
"""The meta entries that describe the packed arrays: names, dtype strings, shapes as "3,10000"."""


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
    try:
        stored = _unpack(state.array_records.get(_STATE_ARRAYS, ArrayRecord()), meta)
        stored.update({k: int(v) for k, v in meta.items() if k not in ("codec", "spec", *_LAYOUT)})
        encoder.load_state_dict(stored)
    except (ValueError, TypeError):
        return codec.encoder(spec, seed=seed)
    return encoder


def save_encoder(state: RecordDict, codec: Codec, spec: ModelSpec, encoder: Encoder) -> None:
    """Store an encoder's state (pending step included) in a client's `context.state`."""
    codec_text, spec_text = _state_tag(codec, spec)
    meta: dict = {"codec": codec_text, "spec": spec_text}
    arrays = {}
    for k, v in encoder.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays[k] = v if v.flags.c_contiguous else v.copy()  # (ascontiguousarray makes 0-d arrays 1-d)
        else:
            meta[k] = int(v)
    meta["arrays"] = list(arrays)
    meta["dtypes"] = [a.dtype.str for a in arrays.values()]
    meta["shapes"] = [",".join(map(str, a.shape)) for a in arrays.values()]
    data = b"".join(a.data for a in arrays.values())
    packed = Array(dtype="uint8", shape=(len(data),), stype="flcomp/state", data=data)
    state[_STATE_ARRAYS] = ArrayRecord({_PACKED: packed})
    state[_STATE_META] = ConfigRecord(meta)


def _unpack(record: ArrayRecord, meta: ConfigRecord) -> dict[str, np.ndarray]:
    """The arrays `save_encoder` packed (read-only views); ValueError if they do not fit `meta`."""
    names, dtypes, shapes = (list(meta.get(k, [])) for k in _LAYOUT)
    if not len(names) == len(dtypes) == len(shapes):
        raise ValueError("the stored state's layout is inconsistent")
    data = record[_PACKED].data if _PACKED in record else b""
    out, offset = {}, 0
    for name, dtype, shape_text in zip(names, dtypes, shapes):
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"stored array {name!r} has dtype {dtype}")
        shape = tuple(int(n) for n in shape_text.split(",")) if shape_text else ()
        count = math.prod(shape)
        if any(n < 0 for n in shape) or offset + count * dtype.itemsize > len(data):
            raise ValueError("the stored state is shorter than its layout")
        out[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        offset += count * dtype.itemsize
    if offset != len(data):
        raise ValueError("the stored state is longer than its layout")
    return out


@functools.lru_cache(maxsize=64)
def _state_tag(codec: Codec, spec: ModelSpec) -> tuple[str, str]:
    """What a stored encoder state was made for (every client call checks it, so cached)."""
    return codec.describe(), repr(spec)
