"""Saved state without pickle: arrays in an .npz, everything else in a .json beside it.

A `Snapshot` is a flat `dict[str, np.ndarray]` (`arrays`) plus a JSON-able dict
(`meta`), filled by name:

    s = Snapshot()
    s.put_state("pool", pool.state_dict())       # a codec state dict: arrays and ints
    s.put_value("model", array_record)            # an ArrayRecord, bytes, None or a JSON-able value
    s.put_records("context", context.state)       # a RecordDict (Array/Config/Metric records)
    s.put("broadcast", broadcast.state_dict())    # another Snapshot, nested
    save(s, path / "server")                      # path/server.npz + path/server.json

`load` reads it back with `np.load(allow_pickle=False)`; the .json lists the arrays'
names, dtypes and shapes, so an .npz and a .json that do not belong together are
refused. Every problem (a missing or truncated file, a missing name, a value of the
wrong kind) is a `SnapshotError` that says which file and what.

JSON-able values keep their Python types through tagged objects: tuples, deques,
dicts with any keys, sets, bytes and non-finite floats, so `random.getstate()` or
a `dict[int, int]` come back as they went.
"""

from __future__ import annotations

import base64
import json
import math
import os
import zipfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from flcomp.codecs import ModelSpec, TensorSpec
from flcomp.protocol.arrays import from_numpy, to_numpy

FORMAT = "flcomp-snapshot/1"
_NUMPY_STYPE = "numpy.ndarray"
_RECORD_KINDS = {ArrayRecord: "arrays", ConfigRecord: "config", MetricRecord: "metrics"}


class SnapshotError(ValueError):
    """A snapshot that is missing, corrupted, or does not fit what it is loaded into."""


@dataclass
class Snapshot:
    """Arrays and JSON-able metadata, each entry put and read back by name (see the module docstring)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.meta

    # --- nested snapshots -------------------------------------------------------------

    def put(self, name: str, part: Snapshot) -> None:
        """Nest `part` under `name` (its arrays as "name/...")."""
        self.meta[name] = {"kind": "snapshot", "meta": part.meta}
        self.arrays.update({f"{name}/{k}": v for k, v in part.arrays.items()})

    def part(self, name: str) -> Snapshot:
        entry = self._entry(name, "snapshot")
        prefix = name + "/"
        arrays = {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}
        return Snapshot(arrays, entry["meta"])

    # --- codec state dicts (arrays and ints) --------------------------------------------

    def put_state(self, name: str, state: Mapping[str, np.ndarray | int]) -> None:
        """A state dict of arrays and ints (`Encoder.state_dict`, `DecoderPool.state_dict`)."""
        arrays, ints = [], {}
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                self._put_array(f"{name}/{k}", v)
                arrays.append(k)
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                ints[k] = int(v)
            else:
                raise TypeError(f"state entry {name}/{k} is a {type(v).__name__}, not an array or an int")
        self.meta[name] = {"kind": "state", "arrays": arrays, "ints": ints}

    def state(self, name: str) -> dict[str, np.ndarray | int]:
        entry = self._entry(name, "state")
        out: dict[str, np.ndarray | int] = {k: self._array(f"{name}/{k}") for k in entry["arrays"]}
        return out | {k: int(v) for k, v in entry["ints"].items()}

    # --- values: records, bytes, JSON-able ----------------------------------------------

    def put_value(self, name: str, value: Any) -> None:
        """An ArrayRecord, bytes (kept as an array), or a JSON-able value (see `to_json`)."""
        if isinstance(value, ArrayRecord):
            self.meta[name] = {"kind": "record", **self._put_record(name, value)}
        elif isinstance(value, (bytes, bytearray)):
            self._put_array(name, np.frombuffer(bytes(value), np.uint8))
            self.meta[name] = {"kind": "bytes"}
        else:
            self.meta[name] = {"kind": "value", "value": to_json(value)}

    def value(self, name: str) -> Any:
        kind = self._entry(name, None)["kind"]
        if kind == "record":
            return self._record(name, self.meta[name])
        if kind == "bytes":
            return self._array(name).tobytes()
        return from_json(self._entry(name, "value")["value"])

    def put_records(self, name: str, records: RecordDict) -> None:
        """A RecordDict (e.g. a client's `Context.state`): arrays to the .npz, the rest to JSON."""
        entries = []
        for i, (key, record) in enumerate(records.items()):
            kind = _RECORD_KINDS.get(type(record))
            if kind is None:
                raise TypeError(f"record {key!r} is a {type(record).__name__}")
            if kind == "arrays":
                entries.append([key, kind, self._put_record(f"{name}/{i}", record)])
            else:
                entries.append([key, kind, to_json(dict(record))])
        self.meta[name] = {"kind": "records", "records": entries}

    def records(self, name: str) -> RecordDict:
        out = RecordDict()
        try:
            for i, (key, kind, data) in enumerate(self._entry(name, "records")["records"]):
                if kind == "arrays":
                    out[key] = self._record(f"{name}/{i}", data)
                elif kind == "config":
                    out[key] = ConfigRecord(from_json(data))
                elif kind == "metrics":
                    out[key] = MetricRecord(from_json(data))
                else:
                    raise SnapshotError(f"record {key!r} of {name!r} has an unknown kind {kind!r}")
        except (TypeError, ValueError) as e:
            raise SnapshotError(f"snapshot entry {name!r}: {e}") from None
        return out

    # --- internals ----------------------------------------------------------------------

    def _entry(self, name: str, kind: str | None) -> dict:
        entry = self.meta.get(name)
        if not isinstance(entry, dict) or "kind" not in entry:
            raise SnapshotError(f"snapshot entry {name!r} is missing")
        if kind is not None and entry["kind"] != kind:
            raise SnapshotError(f"snapshot entry {name!r} is a {entry['kind']}, not a {kind}")
        return entry

    def _put_array(self, name: str, x: np.ndarray) -> None:
        if x.dtype.kind not in "biuf" or x.dtype.fields is not None:
            raise TypeError(f"array {name!r} has dtype {x.dtype}: only numbers are saved")
        self.arrays[name] = np.array(x)  # a copy: later changes to the source do not leak in

    def _array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise SnapshotError(f"snapshot array {name!r} is missing")
        return self.arrays[name]

    def _put_record(self, name: str, record: ArrayRecord) -> dict:
        """Store a record's arrays as "name/<i>"; return the JSON describing it."""
        raw = {}
        for i, a in enumerate(record.values()):
            if a.stype == _NUMPY_STYPE:
                self._put_array(f"{name}/{i}", to_numpy(a))
            else:  # a payload or any custom stype: its bytes as they are
                self._put_array(f"{name}/{i}", np.frombuffer(a.data, np.uint8))
                raw[str(i)] = [a.dtype, list(a.shape), a.stype]
        return {"keys": list(record.keys()), "raw": raw}

    def _record(self, name: str, entry: dict) -> ArrayRecord:
        out = {}
        for i, key in enumerate(entry["keys"]):
            x = self._array(f"{name}/{i}")
            if str(i) in entry["raw"]:
                dtype, shape, stype = entry["raw"][str(i)]
                out[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=x.tobytes())
            else:
                out[key] = from_numpy(np.array(x, order="C"))  # (np.ascontiguousarray makes 0-d arrays 1-d)
        return ArrayRecord(out)


def spec_to_json(spec: ModelSpec) -> list:
    """A ModelSpec as [[shape, dtype], ...]."""
    return [[list(t.shape), t.dtype.str] for t in spec.tensors]


def spec_from_json(data: Any) -> ModelSpec:
    try:
        return ModelSpec(tuple(TensorSpec(tuple(shape), np.dtype(dtype)) for shape, dtype in data))
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"not a model spec: {e}") from None


def to_json(value: Any) -> Any:
    """`value` as JSON (None, bools, numbers, text, lists, and tagged tuples, deques, dicts,
    sets, bytes, non-finite floats); TypeError for anything else (arrays go to `put_state`)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [to_json(v) for v in value]}
    if isinstance(value, deque):
        return {"deque": [to_json(v) for v in value], "maxlen": value.maxlen}
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(to_json(v) for v in value)}
    if isinstance(value, Mapping):
        return {"dict": [[to_json(k), to_json(v)] for k, v in value.items()]}
    raise TypeError(f"cannot save a {type(value).__name__} as JSON")


def from_json(data: Any) -> Any:
    """The inverse of `to_json`."""
    if isinstance(data, list):
        return [from_json(v) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1 and "float" in data:
        return float(data["float"])
    if len(data) == 1 and "bytes" in data:
        return base64.b64decode(data["bytes"])
    if len(data) == 1 and "tuple" in data:
        return tuple(from_json(v) for v in data["tuple"])
    if "deque" in data:
        return deque((from_json(v) for v in data["deque"]), maxlen=data.get("maxlen"))
    if len(data) == 1 and "set" in data:
        return {_hashable(from_json(v)) for v in data["set"]}
    if len(data) == 1 and "dict" in data:
        return {_hashable(from_json(k)): from_json(v) for k, v in data["dict"]}
    raise SnapshotError(f"not a saved value: {sorted(data)}")


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def save(snapshot: Snapshot, stem: Path) -> None:
    """Write stem.npz and stem.json (flushed to disk). Not atomic on its own: write into a
    fresh directory and rename it into place (`flcomp.sim.checkpoint` does)."""
    index = {k: [v.dtype.str, list(v.shape)] for k, v in snapshot.arrays.items()}
    text = json.dumps({"format": FORMAT, "arrays": index, "meta": snapshot.meta}, allow_nan=False)
    with open(stem.with_suffix(".npz"), "wb") as f:
        np.savez(f, **snapshot.arrays)
        f.flush()
        os.fsync(f.fileno())
    with open(stem.with_suffix(".json"), "w") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def load(stem: Path) -> Snapshot:
    """Read what `save` wrote; SnapshotError naming the file when it is missing or corrupted."""
    npz, meta_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
    for path in (npz, meta_path):
        if not path.is_file():
            raise SnapshotError(f"{path}: missing")
    try:
        header = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SnapshotError(f"{meta_path}: not a snapshot's JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError(f"{meta_path}: not an {FORMAT} file")
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SnapshotError(f"{npz}: unreadable ({e})") from None
    found = {k: [v.dtype.str, list(v.shape)] for k, v in arrays.items()}
    if found != header.get("arrays"):
        raise SnapshotError(f"{npz} does not hold the arrays {meta_path} lists")
    return Snapshot(arrays, header.get("meta", {}))
