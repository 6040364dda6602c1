"""The client's encoder state in `context.state`, checked against what it was made for.

Two records: a ConfigRecord (what the state was made for, its integers, and the name,
dtype and shape of each array, as one text) and an ArrayRecord holding one Array, the
arrays' bytes back to back. One Array rather than one per array, and one text rather
than lists, because every client builds, stores and parses them each round, and
Flower's records check every Array and list item they hold (tens of microseconds apiece).
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
_LAYOUT = "layout"
"""The meta entry that describes the packed arrays: "name dtype shape" for each, one per
line, the shape as "3,10000" ("" for a 0-d array); names hold no whitespace."""


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
        stored.update({k: int(v) for k, v in meta.items() if k not in ("codec", "spec", _LAYOUT)})
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
    meta[_LAYOUT] = "\n".join(f"{k} {a.dtype.str} {','.join(map(str, a.shape))}" for k, a in arrays.items())
    data = b"".join(a.data for a in arrays.values())
    packed = Array(dtype="uint8", shape=(len(data),), stype="flcomp/state", data=data)
    state[_STATE_ARRAYS] = ArrayRecord({_PACKED: packed})
    state[_STATE_META] = ConfigRecord(meta)


def _unpack(record: ArrayRecord, meta: ConfigRecord) -> dict[str, np.ndarray]:
    """The arrays `save_encoder` packed (read-only views); ValueError if they do not fit `meta`."""
    lines = [line.split(" ") for line in str(meta.get(_LAYOUT, "")).split("\n") if line]
    if any(len(fields) != 3 for fields in lines):
        raise ValueError("the stored state's layout is inconsistent")
    data = record[_PACKED].data if _PACKED in record else b""
    out, offset = {}, 0
    for name, dtype, shape_text in lines:
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
