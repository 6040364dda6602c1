"""A quick survey of the codecs on an embedded update stream (the `flcomp codecs` command)."""

from __future__ import annotations

import numpy as np

from flcomp.codecs.registry import Codec
from flcomp.codecs.spec import ModelSpec


def update_stream(entries: int, rounds: int, seed: int = 0) -> list[list[np.ndarray]]:
    """T correlated updates of a two-tensor model (a matrix and a bias).

    Each update is 0.8 × the previous one plus fresh noise with heavy tails, a
    stand-in for successive gradients (temporally correlated, a few large entries).
    """
    rng = np.random.default_rng(seed)
    rows = max(1, int(np.sqrt(entries)))
    shapes = [(rows, entries // rows), (rows,)]
    prev = [np.zeros(s, np.float32) for s in shapes]
    stream = []
    for _ in range(rounds):
        prev = [0.8 * p + rng.standard_t(4, size=p.shape).astype(np.float32) for p in prev]
        stream.append(prev)
    return stream


def measure(c: Codec, stream: list[list[np.ndarray]]) -> dict[str, float]:
    """Bits per entry, last-round relative error and the error of the running sum."""
    spec = ModelSpec.of(stream[0])
    enc, dec = c.encoder(spec, seed=0), c.decoder(spec)
    bits, sent_sum, true_sum, last_err = 0, None, None, 0.0
    for update in stream:
        payload = enc.encode(update)
        decoded = dec.decode(payload)
        dec.commit()
        enc.sync(dec.fingerprint)
        bits += 8 * len(payload)
        flat_u = np.concatenate([u.ravel() for u in update]).astype(np.float64)
        flat_d = np.concatenate([d.ravel() for d in decoded]).astype(np.float64)
        last_err = float(np.linalg.norm(flat_d - flat_u) / np.linalg.norm(flat_u))
        sent_sum = flat_d if sent_sum is None else sent_sum + flat_d
        true_sum = flat_u if true_sum is None else true_sum + flat_u
    return {
        "bits/entry": bits / (spec.size * len(stream)),
        "error": last_err,
        "sum error": float(np.linalg.norm(sent_sum - true_sum) / np.linalg.norm(true_sum)),
    }
