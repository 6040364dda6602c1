"""Codec throughput and size against a plain PyTorch implementation and against np.copy.

For each registered codec (default config) on a 10M-entry and a 100k-entry float32
update: encode and decode MB/s (of float32 input), bits per entry from the payload's
real length, encode+decode time as a multiple of one np.copy of the same array (the
memory-bandwidth floor), and beside it the *reference*: the straightforward PyTorch
implementation of the same math a user would write (`x.half()`, `torch.topk` and a
gather, sign and mean, QSGD with `torch.bernoulli`, rank-r PowerSGD with `torch.mm`,
error feedback where the codec has it), serialized to bytes (`tensor.numpy().tobytes()`)
and read back. flcomp and the reference run interleaved in the same loop, one thread
each (torch and OpenBLAS), on the same updates; times are medians over `--repeats`
steps after a warm-up (10× as many below 1M entries), each a fresh encoder step that
is committed, so stateful codecs run in steady state. Last, the fixed cost of a call:
one encode+decode of a 1-entry update, median of many. The floors of issue 18 close
the output, each marked met or NOT met.

    python benchmarks/codecs.py [--repeats 5] [--sizes 10000000 100000] [--codecs topk qsgd]
"""

from __future__ import annotations

import os

# One thread for NumPy's BLAS too: set before NumPy loads it.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from flcomp.codecs import Codec, ModelSpec, available, codec  # noqa: E402

# The bit floors (issue 18: bits per entry must not grow), on the 10M-entry update.
MAX_BITS = {codec("topk"): 0.45, codec("scaled_sign"): 1.01, codec("signxor"): 1.01}
FLOOR_ENTRIES = 10_000_000
SMALL_ENTRIES = 100_000
MAX_COPIES_SMALL = 25.0
"""Every codec's encode+decode at 100k entries, in multiples of np.copy."""
MAX_COPIES_CASTS = 6.0
"""fp16 and bf16 at 10M entries, in multiples of np.copy."""
MAX_FIXED_US = 50.0
"""One encode+decode of a 1-entry update, µs."""

Encode = Callable[[torch.Tensor], bytes]
Decode = Callable[[bytes], torch.Tensor]


def matrix_shape(n: int) -> tuple[int, int]:
    """A near-square matrix of n entries (PowerSGD needs a matrix)."""
    rows = int(np.sqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _floats(b: bytes, dtype: torch.dtype, offset: int = 0, count: int = -1) -> torch.Tensor:
    return torch.frombuffer(b, dtype=dtype, offset=offset, count=count)


def _sparse(values: Callable[[torch.Tensor, int], torch.Tensor], n: int, k: int, half: bool):
    """Top-k or random-k: int32 indices, then float32 (or float16) values."""
    vdtype = torch.float16 if half else torch.float32

    def compress(p: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        idx = values(p, k)
        v = p[idx].to(vdtype)
        dense = torch.zeros(n).index_put_((idx,), v.float())
        return idx.int().numpy().tobytes() + v.numpy().tobytes(), dense

    def decode(b: bytes) -> torch.Tensor:
        idx = _floats(b, torch.int32, 0, k).long()
        return torch.zeros(n).index_put_((idx,), _floats(b, vdtype, 4 * k, k).float())

    return compress, decode


def _qsgd(n: int, s: int, bucket: int):
    pad = -n % bucket

    def compress(p: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        v = torch.nn.functional.pad(p, (0, pad)).view(-1, bucket)
        norms = v.norm(dim=1, keepdim=True)
        scaled = v.abs() * (s / norms.clamp_min(1e-30))
        floor = scaled.floor()
        levels = (floor + torch.bernoulli(scaled - floor)) * v.sign()
        wire = levels.to(torch.int8)
        decoded = (norms / s * wire).view(-1)[:n]
        return norms.numpy().tobytes() + wire.numpy().tobytes(), decoded

    def decode(b: bytes) -> torch.Tensor:
        nb = (n + pad) // bucket
        norms = _floats(b, torch.float32, 0, nb).view(-1, 1)
        wire = _floats(b, torch.int8, 4 * nb).view(nb, bucket)
        return (norms / s * wire).view(-1)[:n]

    return compress, decode


def _scaled_sign(n: int):
    def compress(p: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        alpha = p.abs().mean()
        negative = p < 0
        decoded = torch.where(negative, -alpha, alpha)
        return struct.pack("<f", float(alpha)) + negative.numpy().tobytes(), decoded

    def decode(b: bytes) -> torch.Tensor:
        alpha = struct.unpack_from("<f", b)[0]
        negative = _floats(b, torch.bool, 4, n)
        return torch.where(negative, -alpha, alpha)

    return compress, decode


def _powersgd(shape: tuple[int, int], rank: int):
    rows, cols = shape
    q = torch.randn(cols, rank, generator=torch.Generator().manual_seed(0))

    def compress(p: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        nonlocal q
        m = p.view(rows, cols)
        pm = torch.linalg.qr(torch.mm(m, q)).Q
        qm = torch.mm(m.T, pm)
        q = torch.linalg.qr(qm).Q
        return pm.numpy().tobytes() + qm.numpy().tobytes(), torch.mm(pm, qm.T).view(-1)

    def decode(b: bytes) -> torch.Tensor:
        pm = _floats(b, torch.float32, 0, rows * rank).view(rows, rank)
        qm = _floats(b, torch.float32, 4 * rows * rank).view(cols, rank)
        return torch.mm(pm, qm.T).view(-1)

    return compress, decode


def _casts(dtype: torch.dtype, wire: torch.dtype):
    def compress(p: torch.Tensor) -> tuple[bytes, Callable[[], torch.Tensor]]:
        low = p.to(dtype)
        return low.view(wire).numpy().tobytes(), low.float

    def decode(b: bytes) -> torch.Tensor:
        return _floats(b, wire).view(dtype).float()

    return compress, decode


def reference(c: Codec, shape: tuple[int, int]) -> tuple[Encode, Decode] | None:
    """The plain PyTorch encode (update → bytes) and decode (bytes → update) of codec `c`,
    with its error feedback; None for a codec without one here (SignXOR, LAG, ...).

    Each `compress` returns the payload and the reconstruction, or for the casts a
    function computing it, which only error feedback calls."""
    n, cfg = shape[0] * shape[1], c.config
    if c.name == "fp32":
        compress, decode = (lambda p: (p.numpy().tobytes(), p)), (lambda b: _floats(b, torch.float32).clone())
    elif c.name in ("fp16", "bf16"):
        compress, decode = _casts(torch.float16 if c.name == "fp16" else torch.bfloat16, torch.int16)
    elif c.name in ("topk", "randomk"):
        k = min(n, max(1, math.ceil(cfg.ratio * n)))
        if c.name == "topk":
            pick = lambda p, k: torch.topk(p.abs(), k, sorted=False).indices  # noqa: E731
        else:
            pick = lambda p, k: torch.randperm(len(p))[:k]  # noqa: E731
        compress, decode = _sparse(pick, n, k, cfg.value_dtype == "float16")
    elif c.name == "qsgd":
        compress, decode = _qsgd(n, cfg.levels, cfg.bucket_size)
    elif c.name == "scaled_sign":
        compress, decode = _scaled_sign(n)
    elif c.name == "powersgd" and min(shape) > cfg.rank:
        compress, decode = _powersgd(shape, cfg.rank)
    else:
        return None
    if not c.error_feedback:
        return (lambda x: compress(x)[0]), decode
    memory = torch.zeros(n)

    def encode(x: torch.Tensor) -> bytes:
        nonlocal memory
        p = x + memory
        payload, decoded = compress(p)
        memory = p - (decoded() if callable(decoded) else decoded)
        return payload

    return encode, decode


def label(c: Codec) -> str:
    """The codec's name and the parameters that differ from its defaults."""
    default = codec(c.name)
    params = [
        f"{f.name}={getattr(c.config, f.name)}"
        for f in dataclasses.fields(c.config)
        if getattr(c.config, f.name) != getattr(default.config, f.name)
    ]
    params += [f"error_feedback={c.error_feedback}"] if c.error_feedback != default.error_feedback else []
    params += [f"momentum={c.momentum}"] if c.momentum else []
    return c.name + (":" + ",".join(params) if params else "")


def bench(c: Codec, n: int, repeats: int, copy_s: float) -> dict:
    shape = matrix_shape(n)
    spec = ModelSpec.of([np.zeros(shape, np.float32)])
    rng = np.random.default_rng(0)
    updates = [rng.standard_normal(shape, dtype=np.float32) for _ in range(repeats + 1)]
    enc, dec = c.encoder(spec, seed=0), c.decoder(spec)
    ref = reference(c, shape)
    enc_t, dec_t, ref_t, bits, ref_bits = [], [], [], [], []
    for update in updates:
        t0 = time.perf_counter()
        payload = enc.encode([update])
        t1 = time.perf_counter()
        dec.decode(payload)
        t2 = time.perf_counter()
        dec.commit()
        enc.sync(dec.fingerprint)
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        bits.append(8 * len(payload) / n)
        if ref is not None:
            x = torch.from_numpy(update).view(-1)
            t3 = time.perf_counter()
            ref_payload = ref[0](x)
            ref[1](ref_payload)
            ref_t.append(time.perf_counter() - t3)
            ref_bits.append(8 * len(ref_payload) / n)
    enc_s, dec_s = statistics.median(enc_t[1:]), statistics.median(dec_t[1:])
    ref_s = statistics.median(ref_t[1:]) if ref_t else math.nan
    mb = 4 * n / 1e6
    return {
        "codec": label(c),
        "entries": n,
        "enc MB/s": mb / enc_s,
        "dec MB/s": mb / dec_s,
        "bits/entry": statistics.median(bits[1:]),
        "x np.copy": (enc_s + dec_s) / copy_s,
        "ms": 1e3 * (enc_s + dec_s),
        "torch ms": 1e3 * ref_s,
        "/ torch": (enc_s + dec_s) / ref_s,
        "torch bits": statistics.median(ref_bits[1:]) if ref_bits else math.nan,
    }


def fixed_cost_us(c: Codec, repeats: int = 400) -> float:
    """Median µs of one encode+decode of a 1-entry update (the per-call overhead)."""
    spec = ModelSpec.flat(1)
    enc, dec = c.encoder(spec, seed=0), c.decoder(spec)
    update = [np.ones(1, np.float32)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dec.decode(enc.encode(update))
        times.append(time.perf_counter() - t0)
        dec.commit()
        enc.sync(dec.fingerprint)
    return 1e6 * statistics.median(times[repeats // 10 :])


def check_floors(rows: list[dict], fixed: dict[str, float]) -> list[tuple[str, bool]]:
    """Each floor of issue 18 that the measured rows cover, with whether it is met."""
    floors = []
    for r in rows:
        name, n = r["codec"], r["entries"]
        if n in (FLOOR_ENTRIES, SMALL_ENTRIES) and not math.isnan(r["/ torch"]):
            floors.append(
                (f"{name} @ {n:,}: {r['/ torch']:.2f}x its PyTorch reference <= 1", r["/ torch"] <= 1)
            )
        if n == SMALL_ENTRIES:
            ok = r["x np.copy"] <= MAX_COPIES_SMALL
            floors.append((f"{name} @ {n:,}: {r['x np.copy']:.1f}x np.copy <= {MAX_COPIES_SMALL:g}", ok))
        if n == FLOOR_ENTRIES and name.split(":")[0] in ("fp16", "bf16"):
            ok = r["x np.copy"] <= MAX_COPIES_CASTS
            floors.append((f"{name} @ {n:,}: {r['x np.copy']:.1f}x np.copy <= {MAX_COPIES_CASTS:g}", ok))
        bits = {label(c): b for c, b in MAX_BITS.items()}.get(name)
        if n == FLOOR_ENTRIES and bits is not None:
            floors.append(
                (f"{name} @ {n:,}: {r['bits/entry']:.3f} bits/entry <= {bits}", r["bits/entry"] <= bits)
            )
    for name, us in fixed.items():
        floors.append((f"{name}: fixed cost {us:.1f} µs <= {MAX_FIXED_US:g}", us <= MAX_FIXED_US))
    return floors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[FLOOR_ENTRIES, SMALL_ENTRIES])
    ap.add_argument("--codecs", nargs="+", default=None, help="codec strings, e.g. topk:ratio=0.001")
    args = ap.parse_args()
    torch.set_num_threads(1)
    # torch.frombuffer on the (read-only) payload bytes warns once; the reference only reads them.
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    codecs = [Codec.parse(s) for s in args.codecs] if args.codecs else [codec(n) for n in available()]
    codecs += [] if args.codecs else [codec("qsgd", coding="range"), codec("topk", value_dtype="float16")]

    rows = []
    for n in args.sizes:
        x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
        copy_s = median_seconds(lambda x=x: np.copy(x), max(args.repeats, 20))
        print(f"np.copy of {n:,} float32: {copy_s * 1e3:.3f} ms")
        # Small updates take microseconds: more steps for the same confidence in the median.
        repeats = args.repeats if n >= 1_000_000 else 10 * args.repeats
        rows += [bench(c, n, repeats, copy_s) for c in codecs]
    fixed = {label(c): fixed_cost_us(c) for c in codecs}
    print_table(rows)
    print("\nFixed cost of one encode+decode of a 1-entry update (µs):")
    print_table([{"codec": name, "µs": us} for name, us in fixed.items()], {"µs": "{:.1f}"})
    floors = check_floors(rows, fixed)
    print(f"\nFloors (issue 18): {sum(ok for _, ok in floors)} of {len(floors)} met")
    for text, ok in floors:
        print(f"  {'met    ' if ok else 'NOT met'}  {text}")


FORMATS = {
    "codec": "{}",
    "entries": "{:,}",
    "enc MB/s": "{:.0f}",
    "dec MB/s": "{:.0f}",
    "bits/entry": "{:.4f}",
    "x np.copy": "{:.1f}",
    "ms": "{:.3f}",
    "torch ms": "{:.3f}",
    "/ torch": "{:.2f}",
    "torch bits": "{:.2f}",
}


def print_table(rows: list[dict], formats: dict[str, str] = FORMATS) -> None:
    """A Markdown table, one row per dict, columns in the order of `formats` (codec first)."""
    columns = ["codec", *(c for c in formats if c != "codec")]
    fmt = {"codec": "{}", **formats}
    cells = [
        [("—" if isinstance(r[c], float) and math.isnan(r[c]) else fmt[c].format(r[c])) for c in columns]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print()
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(
            "| "
            + " | ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])])
            + " |"
        )


if __name__ == "__main__":
    main()
