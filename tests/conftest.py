"""Shared by the suite: the codec layer's specs, configs and link helpers, and the loader of
the example scripts (tests are grouped by layer: codecs, channel, flower, sim, examples)."""

from __future__ import annotations

import importlib.util
import signal
import struct
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from flcomp.codecs import REGISTRY, Codec, ModelSpec, available, codec

# Every @settings in the suite also spells out deadline=None and derandomize=True;
# the profile adds what they leave out: no example database, so runs never depend
# on what an earlier run found.
settings.register_profile(
    "flcomp",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("flcomp")

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (examples/, benchmarks/, docs/ are beside flcomp/)."""


def load_example(name: str) -> ModuleType:
    """examples/<name>.py as a module, registered in sys.modules under `name` (its
    dataclasses look their module up by name); a later call reloads it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHAPES = [(20, 30), (30,), (7, 5, 3)]
SPEC = ModelSpec.of([np.zeros(s, np.float32) for s in SHAPES])
"""The default multi-tensor spec: a matrix, a vector and a 3-D tensor (735 entries)."""

TINY_SPEC = ModelSpec.of([np.zeros(s, np.float32) for s in [(8, 12), (5,), (4, 3, 2)]])
"""A smaller spec (125 entries) for the fuzzers: PowerSGD still compresses both matrices."""

NAMES = available()

EXTRA_CONFIGS = [
    codec("qsgd", coding="range"),
    codec("scaled_sign", ef_decay=0.9),
    codec("signxor", lam=1, ef_decay=0.9),
    codec("topk", value_dtype="float16"),
    codec("randomk", unbiased=True, error_feedback=False),
    codec("lag", rule="relative", xi=0.5),
    codec("powersgd", rank=2),
    codec("powersgd", warm_start=False),
    # GD-SEC with fp16 values, with its fixed-fraction rule, and with an absolute
    # threshold and a reference that follows half of each transmission.
    codec("gdsec", value_dtype="float16"),
    codec("gdsec", rule="topk", ratio=0.1),
    codec("gdsec", rule="absolute", threshold=0.5, beta=0.5),
    # Not in the default configs' paths: several QSGD buckets per tensor with a
    # ragged last one, bitmap-coded top-k positions, error feedback around QSGD.
    codec("qsgd", levels=3, bucket_size=7),
    codec("topk", ratio=0.5),
    codec("qsgd", error_feedback=True),
    # SignXOR with the rate-distortion step on, and without error feedback.
    codec("signxor", lam=0.5),
    codec("signxor", error_feedback=False),
    # TPC per tensor with a shorter memory; TPC coding its residual with top-k (and
    # top-k's error feedback on the residual, under TPC's state).
    codec("tpc", per_tensor=True, memory=2),
    codec("tpc", inner="topk:ratio=0.1"),
    # STC over the whole update; TernGrad unclipped; DRIVE with its least-squares scale;
    # EDEN at 3 bits (indices not byte-aligned) and 4 bits with the biased scale.
    codec("stc", per_tensor=False),
    codec("terngrad", clip=0.0),
    codec("drive", unbiased=False),
    codec("eden", bits=3),
    codec("eden", bits=4, unbiased=False),
    # DGC without momentum; with fp16 values and clipping; without warm-up at a high density.
    codec("dgc", m=0.0),
    codec("dgc", value_dtype="float16", clip_norm=1.0),
    codec("dgc", warmup_rounds=0, ratio=0.3),
    # A ladder whose rungs draw random numbers and use every kind of stage; one without error feedback.
    codec("ladder", rungs="drive/pipeline:quantizer=qsgd;levels=4/randomk:ratio=0.2"),
    codec("ladder", rungs="qsgd", error_feedback=False),
    # Pipelines: unbiased random-k + QSGD without error feedback; threshold + blockwise;
    # dense QSGD with ragged blocks (range-coded levels); dense bf16; fp16 with momentum;
    # random-k + sign.
    codec(
        "pipeline",
        sparsifier="randomk",
        ratio=0.1,
        unbiased=True,
        quantizer="qsgd",
        levels=2,
        error_feedback=False,
    ),
    codec("pipeline", sparsifier="threshold", threshold=0.5, quantizer="blockwise", block_size=64),
    codec("pipeline", sparsifier="none", quantizer="qsgd", levels=1, block_size=7),
    codec("pipeline", sparsifier="none", quantizer="bf16"),
    codec("pipeline", sparsifier="topk", ratio=0.5, quantizer="fp16", momentum=0.9),
    codec("pipeline", sparsifier="randomk", quantizer="sign"),
    # Block-wise quantization with small odd blocks (ragged last blocks, nf4 packing across blocks).
    codec("blockwise8", block_size=7),
    codec("nf4", block_size=5, error_feedback=False),
]

CONFIGS = [codec(name) for name in NAMES] + EXTRA_CONFIGS
"""Every registered codec with its defaults, then the extra configs that matter."""

LOSSY_CONFIGS = [c for c in CONFIGS if not REGISTRY[c.name].lossless]


def config_id(c: Codec) -> str:
    return c.describe()


def random_update(rng: np.random.Generator, spec: ModelSpec = SPEC, scale: float = 1.0):
    """A Gaussian update shaped as `spec` (dtypes of the spec)."""
    return [(scale * rng.standard_normal(t.shape)).astype(t.dtype) for t in spec.tensors]


def transmit(enc, dec, update, delivered: bool):
    """One round over the link: encode, deliver or lose the payload, sync the encoder.

    Returns the decoder's output when delivered, else None. A lost payload is rolled
    back by `enc.sync(dec.fingerprint)`.
    """
    payload = enc.encode(update)
    decoded = None
    if delivered:
        decoded = dec.decode(payload)
        dec.commit()
    enc.sync(dec.fingerprint)
    return decoded


def shared_states_equal(enc, dec) -> bool:
    """Whether the encoder's committed shared state is the decoder's, array for array."""
    e, d = enc.state_dict(), dec.state_dict()
    keys = {k for k in d if k.startswith("shared/")}
    if keys != {k for k in e if k.startswith("shared/")}:
        return False
    return all(np.array_equal(e[k], d[k]) and e[k].dtype == d[k].dtype for k in keys)


def copied_state(state: dict) -> dict:
    """A state dict as it comes back from storage: fresh arrays and plain ints."""
    return {k: np.array(v, copy=True) if isinstance(v, np.ndarray) else int(v) for k, v in state.items()}


def forge(payload: bytes, body: bytes, **header) -> bytes:
    """`payload`'s header (fields overridden by `header`) around `body`, with a correct CRC.

    Header fields (wire.py): magic, version, codec_id, flags, fingerprint, count.
    """
    magic, version, codec_id, flags, fingerprint, count = struct.unpack_from("<2sBBBII", payload)
    fields = dict(
        magic=magic,
        version=version,
        codec_id=codec_id,
        flags=flags,
        fingerprint=fingerprint,
        count=count,
    )
    fields.update(header)
    head = struct.pack("<2sBBBII", *fields.values())
    crc = zlib.crc32(body, zlib.crc32(head))
    return head + struct.pack("<I", crc) + bytes(body)


@contextmanager
def no_hang(seconds: float = 10.0):
    """Fail with TimeoutError instead of hanging (SIGALRM; main thread only)."""

    def alarm(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
