"""How flcomp travels in Flower records: the keys both ends agree on, and the payload Array.

The server's wrapper (`flcomp.strategies.Compressed`) adds to each train
instruction's ConfigRecord the codec (as `Codec.describe()` text), the
fingerprint of that client's decoder (so the client can settle its pending step
with `Encoder.sync`), the number of clients in the round, the recent model
changes (for event-triggered codecs) and, for codecs whose server plans the
round (LGC), that client's side information. The client's mod answers with one Array of
stype "flcomp/<codec>" holding the payload's bytes, beside any non-float arrays
of the model (integer buffers travel as they are).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from flcomp.codecs import Codec, ModelSpec, TensorSpec
from flcomp.protocol.arrays import from_numpy, to_numpy

CODEC = "flcomp.codec"
"""ConfigRecord key: the uplink codec, as text `Codec.parse` reads."""
FINGERPRINT = "flcomp.fingerprint"
"""ConfigRecord key: the server decoder's fingerprint for this client."""
NUM_CLIENTS = "flcomp.num-clients"
"""ConfigRecord key: how many clients the round instructs."""
MODEL_CHANGE_SQ = "flcomp.model-change-sq"
"""ConfigRecord key: ‖w(t+1−d) − w(t−d)‖², d = 1..10, newest first."""
DOWNLINK = "flcomp.downlink"
"""ConfigRecord key: the downlink codec's text, when the server compresses its broadcast."""
DOWNLINK_VERSION = "flcomp.downlink-version"
"""ConfigRecord key: the replica version (round) the message's arrays describe."""
DOWNLINK_BASE = "flcomp.downlink-base"
"""ConfigRecord key: the replica version a downlink payload applies to (-1: a key frame)."""
DOWNLINK_PAYLOADS = "flcomp.downlink-payloads"
"""ConfigRecord key: how many payloads the downlink message carries (0 for a key frame alone)."""
REPORT_SENT_AT = "flcomp.report-sent-at"
"""ConfigRecord key: True when the server measures uploads (a budget in deployment) and
wants the reply's send time (`SENT_AT`); absent otherwise, so that runs' metrics stay
reproducible."""
BUDGET_BITS = "flcomp.budget-bits"
"""ConfigRecord key: the most bits the client's payload should take this round
(`flcomp.strategies.budget`); absent without a budget policy."""
SEED = "flcomp.seed"
"""ConfigRecord key: the run's seed, from which each client's encoder seed derives."""
ROUND = "flcomp.round"
"""ConfigRecord key: the round the instruction belongs to; the mod echoes it under the same
MetricRecord key, and the server refuses a reply that answers another round."""
SIDE = "flcomp.side"
"""ConfigRecord key: side information for the client's encoder from the codec's server
(bytes, `RoundContext.side`); absent when the codec plans none."""

DOWNLINK_FINGERPRINT = "flcomp.downlink-fingerprint"
"""ConfigRecord key of a key frame: the fingerprint of the decoder state it carries."""

PAYLOAD = "flcomp.payload"
"""ArrayRecord key of the payload in a reply, and of the last (or only) payload of a downlink
message; a catch-up's earlier ones are "flcomp.payload.0", ".1", ... (`catch_up_keys`)."""
STYPE_PREFIX = "flcomp/"
"""Payload Arrays' stype: "flcomp/<codec name>"."""
STATE_PREFIX = "flcomp.downlink-state/"
"""ArrayRecord key prefix of a key frame's decoder-state arrays (beside the model's arrays)."""

UPLINK_BYTES = "flcomp.uplink-bytes"
"""MetricRecord key: payload bytes (a client's reply; the round's sum on the server)."""
ENCODE_SECONDS = "flcomp.encode-seconds"
"""MetricRecord key: seconds spent encoding."""
SENT_AT = "flcomp.sent-at"
"""MetricRecord key: the client's wall clock (seconds since the epoch) as its reply left the
ClientApp, from which the server measures the upload (`flcomp.strategies.timing`); reported
when the instruction asks for it (`REPORT_SENT_AT`)."""
TRAIN_SECONDS = "flcomp.train-seconds"
"""MetricRecord key: wall seconds the ClientApp's train function took (for a measured compute model)."""
STAT_PREFIX = "flcomp.stat."
"""MetricRecord key prefix: "flcomp.stat.<name>" is what the client's encoding step reported
(`Step.stats`); the server's round metrics hold their sum over the accepted clients."""
DOWNLINK_STAT_PREFIX = "flcomp.downlink-stat."
"""MetricRecord key prefix (round metrics): what the server's downlink encoding step reported."""
CLIENT_STATE_PREFIX = "flcomp."
"""Key prefix of the records the client mod keeps in `context.state` (the encoder's state,
the replica and its decoder's): what `flcomp.sim.client_store` moves out of the Context."""
CLIENT_STATE_BYTES = "flcomp.client-state-bytes"
"""MetricRecord key: the bytes of the codec state a client holds after its reply (its encoder's
arrays, pending step included, and with a compressed downlink its replica and downlink decoder);
the server's round metrics hold the mean over the accepted clients."""
CLIENT = "flcomp.client"
"""MetricRecord key: the client's stable id (partition-id, else node id); the server
aggregates in this order, so float sums do not depend on arrival order."""


def is_float(array: Array) -> bool:
    """Whether an Array holds floating-point entries (what the codecs compress)."""
    return np.dtype(array.dtype).kind == "f"


def float_keys(record: ArrayRecord) -> list[str]:
    """Keys of the floating-point arrays, in record order."""
    return [k for k, a in record.items() if is_float(a)]


def spec_of(record: ArrayRecord) -> ModelSpec:
    """The codec spec of a model record: its floating-point arrays (read from metadata, not data)."""
    return ModelSpec(tuple(TensorSpec(record[k].shape, record[k].dtype) for k in float_keys(record)))


def record_nbytes(record: ArrayRecord) -> int:
    """The bytes a record's arrays hold as NumPy arrays (from metadata; headers not counted)."""
    return sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in record.values())


def payload_array(codec: Codec, payload: bytes) -> Array:
    """A payload as an Array that Flower forwards untouched."""
    return Array(dtype="uint8", shape=(len(payload),), stype=STYPE_PREFIX + codec.name, data=payload)


def catch_up_keys(n: int) -> list[str]:
    """The ArrayRecord keys of a downlink message's n payloads, oldest first (PAYLOAD last)."""
    return [f"{PAYLOAD}.{i}" for i in range(n - 1)] + [PAYLOAD] if n else []


def is_payload_key(key: str) -> bool:
    """Whether `key` names a payload (`catch_up_keys`) rather than a model or state array."""
    return key == PAYLOAD or key.startswith(PAYLOAD + ".")


def the_record(records: Iterable[tuple[str, ArrayRecord]]) -> tuple[str, ArrayRecord]:
    """The one (key, ArrayRecord) of a message; ValueError if there is not exactly one."""
    items = list(records)
    if len(items) != 1:
        raise ValueError(f"expected one ArrayRecord in the message, found {len(items)}")
    return items[0]


def replica_plus(replica: ArrayRecord, change: dict[str, np.ndarray], raw: ArrayRecord) -> ArrayRecord:
    """A model replica advanced by a decoded change; its non-float arrays taken from `raw`.

    Client and server both advance their replicas with this, so they hold the same values.
    """
    out = {}
    for k, a in replica.items():
        if k in change:
            w = to_numpy(a)
            out[k] = from_numpy((w + change[k]).astype(w.dtype, copy=False))
        else:
            out[k] = raw[k] if k in raw else a
    return ArrayRecord(out)
