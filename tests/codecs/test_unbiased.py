"""Unbiasedness: E[decode(encode(x))] = x for the codecs that claim it (QSGD, unbiased random-k,
TernGrad unclipped, DRIVE and EDEN with their unbiased scales, an unbiased pipeline).

The decodes of M committed steps of one encoder (step n draws from
default_rng((seed, n))) are averaged. Per coordinate, z = (mean − x) / (σ̂ / √M):
for an unbiased codec max|z| stays below a Bonferroni bound for d = 2,000 normal
tails (P(|z| > 5.5) ≈ 4e-8 each) and mean(z²) is close to 1. Top-k and biased
random-k are the negative controls: the same check must reject them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from conftest import config_id

from flcomp.codecs import Codec, ModelSpec, codec

D = 2_000
SPEC = ModelSpec.flat(D)
_rng = np.random.default_rng(2024)
X = (_rng.choice([-1.0, 1.0], D) * _rng.uniform(0.5, 1.5, D)).astype(np.float32)
"""The input: magnitudes in [0.5, 1.5], so that no coordinate is so small against its
bucket's norm that QSGD almost never moves it off zero (σ̂ = 0 in M draws) and every
z is defined and near-normal."""


@dataclass
class BiasCheck:
    max_abs_z: float
    mean_z2: float
    wrong_deterministic: int
    """Coordinates that never varied (σ̂ = 0) yet whose mean is not x."""

    @property
    def unbiased(self) -> bool:
        return self.max_abs_z < 5.5 and abs(self.mean_z2 - 1) < 0.2 and not self.wrong_deterministic


def decode_many(c: Codec, steps: int, seed: int = 5) -> np.ndarray:
    """Decodes of `steps` committed steps of one link, as a (steps, D) float64 array."""
    enc, dec = c.encoder(SPEC, seed=seed), c.decoder(SPEC)
    out = np.empty((steps, D))
    for i in range(steps):
        (out[i],) = dec.decode(enc.encode([X]))
        dec.commit()
        enc.sync(dec.fingerprint)
    return out


def bias_check(samples: np.ndarray, x: np.ndarray) -> BiasCheck:
    m = len(samples)
    mean, sd = samples.mean(axis=0), samples.std(axis=0, ddof=1)
    varying = sd > 0
    z = (mean[varying] - x[varying]) / (sd[varying] / np.sqrt(m))
    wrong = int(np.count_nonzero(~np.isclose(mean[~varying], x[~varying], rtol=1e-6, atol=0)))
    return BiasCheck(
        max_abs_z=float(np.abs(z).max()) if z.size else 0.0,
        mean_z2=float(np.mean(z**2)) if z.size else 1.0,
        wrong_deterministic=wrong,
    )


UNBIASED = [
    (codec("qsgd", levels=2, bucket_size=512), 2_000),
    (codec("qsgd", levels=1, bucket_size=128, coding="range"), 2_000),
    (codec("randomk", ratio=0.1, unbiased=True, error_feedback=False), 3_000),
    (codec("terngrad", clip=0.0), 2_000),
    (codec("drive"), 2_000),
    (codec("eden"), 2_000),
    (
        codec(
            "pipeline",
            sparsifier="randomk",
            ratio=0.1,
            unbiased=True,
            quantizer="qsgd",
            levels=2,
            block_size=128,
            error_feedback=False,
        ),
        3_000,
    ),
]


@pytest.mark.parametrize("c, steps", UNBIASED, ids=[config_id(c) for c, _ in UNBIASED])
def test_codec_is_unbiased(c, steps):
    check = bias_check(decode_many(c, steps), X.astype(np.float64))
    assert check.max_abs_z < 5.5, check
    assert abs(check.mean_z2 - 1) < 0.2, check
    assert check.wrong_deterministic == 0, check


BIASED = [
    (codec("topk", ratio=0.1, error_feedback=False), 50),
    (codec("randomk", ratio=0.1, unbiased=False, error_feedback=False), 3_000),
    (codec("scaled_sign", error_feedback=False), 50),
    (codec("stc", error_feedback=False), 50),
    (codec("drive", unbiased=False), 50),
]


@pytest.mark.parametrize("c, steps", BIASED, ids=[config_id(c) for c, _ in BIASED])
def test_negative_control_biased_codec_fails_the_check(c, steps):
    check = bias_check(decode_many(c, steps), X.astype(np.float64))
    assert not check.unbiased, check


def test_the_check_rejects_a_small_bias():
    """A bias of 5% of a level step in QSGD would already be caught at this M."""
    c, steps = UNBIASED[0]
    samples = decode_many(c, steps)
    step = np.linalg.norm(X[:512]) / c.config.levels  # the first bucket's level step
    shifted = samples.copy()
    shifted[:, :512] += 0.05 * step
    assert bias_check(samples, X.astype(np.float64)).unbiased
    assert not bias_check(shifted, X.astype(np.float64)).unbiased
