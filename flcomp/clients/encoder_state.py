"""The client's encoder state in `context.state`, checked against what it was made for.

Two records: a ConfigRecord of one text entry, JSON of what the state was made for
(codec, spec), its integers and the name, dtype and shape of each array (the layout),
and an ArrayRecord holding one Array, the arrays' bytes back to back. One Array and
one entry rather than one per value, because every client builds, stores and parses
them each round, and Flower's records check every Array and entry they hold (microseconds
apiece).
"""

from __future__ import annotations

import functools
import json
import math
import operator

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from flcomp.codecs import Codec, Encoder, ModelSpec
from flcomp.protocol import records

_STATE_ARRAYS = records.CLIENT_STATE_PREFIX + "encoder.arrays"
_STATE_META = records.CLIENT_STATE_PREFIX + "encoder.meta"
_PACKED = "packed"
_META = "state"
"""The meta record's entry: JSON {"codec": text, "spec": text, "integers": {name: int},
"layout": [[name, dtype, shape], ...]}, the layout in the packed bytes' order."""


def load_encoder(state: RecordDict, codec: Codec, spec: ModelSpec, seed: int) -> Encoder:
    """The encoder kept in a client's `context.state`, or a fresh one.

    A fresh encoder (in the initial state) replaces a stored one made for another
    codec, spec or seed, or one whose record is damaged; its first payload then mismatches
    the server's decoder fingerprint, and `Encoder.sync` turns it into a key frame.
    """
    encoder = codec.encoder(spec, seed=seed)
    record = state.config_records.get(_STATE_META)
    if record is None:
        return encoder
    codec_text, spec_text = _state_tag(codec, spec)
    try:
        meta = json.loads(str(record.get(_META, "")))
        if meta["codec"] != codec_text or meta["spec"] != spec_text:
            return encoder
        stored = _unpack(state.array_records.get(_STATE_ARRAYS, ArrayRecord()), meta["layout"])
        stored.update({k: int(v) for k, v in meta["integers"].items()})
        encoder.load_state_dict(stored)
    except (ValueError, TypeError, KeyError, AttributeError):
        return codec.encoder(spec, seed=seed)
    return encoder


def save_encoder(state: RecordDict, codec: Codec, spec: ModelSpec, encoder: Encoder) -> None:
    """Store an encoder's state (pending step included) in a client's `context.state`."""
    codec_text, spec_text = _state_tag(codec, spec)
    integers, arrays = {}, {}
    for k, v in encoder.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays[k] = v if v.flags.c_contiguous else v.copy()  # (ascontiguousarray makes 0-d arrays 1-d)
        else:
            integers[k] = int(v)
    layout = [[k, a.dtype.str, list(a.shape)] for k, a in arrays.items()]
    meta = {"codec": codec_text, "spec": spec_text, "integers": integers, "layout": layout}
    data = b"".join(a.data for a in arrays.values())
    packed = Array(dtype="uint8", shape=(len(data),), stype="flcomp/state", data=data)
    state[_STATE_ARRAYS] = ArrayRecord({_PACKED: packed})
    state[_STATE_META] = ConfigRecord({_META: json.dumps(meta)})


def _unpack(record: ArrayRecord, layout: list) -> dict[str, np.ndarray]:
    """The arrays `save_encoder` packed (read-only views); ValueError if they do not fit `layout`."""
    data = record[_PACKED].data if _PACKED in record else b""
    out, offset = {}, 0
    for name, dtype, shape in layout:
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"stored array {name!r} has dtype {dtype}")
        shape = tuple(operator.index(n) for n in shape)
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
