"""Codec throughput and size: one table, ratios against np.copy measured in the same run.

For each registered codec (default config) on a 10M-entry and a 100k-entry float32
update: encode and decode MB/s (of float32 input), bits per entry from the payload's
real length, and encode+decode time as a multiple of one np.copy of the same array
(the memory-bandwidth floor). Times are the median of `--repeats` runs, each a
fresh encoder step that is committed, so stateful codecs run in steady state.

    python benchmarks/codecs.py [--repeats 5] [--sizes 10000000 100000] [--codecs topk qsgd]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from flcomp.codecs import Codec, ModelSpec, available, codec

FLOORS = {
    # codec name: (max multiple of np.copy for encode+decode, max bits/entry), on 10M entries
    "topk": (25.0, 0.45),
    "scaled_sign": (25.0, 1.01),
    "fp16": (25.0, None),
    "qsgd": (25.0, None),
}


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


def bench(c: Codec, n: int, repeats: int, copy_s: float) -> dict:
    shape = matrix_shape(n)
    spec = ModelSpec.of([np.zeros(shape, np.float32)])
    rng = np.random.default_rng(0)
    updates = [[rng.standard_normal(shape, dtype=np.float32)] for _ in range(repeats + 1)]
    enc, dec = c.encoder(spec, seed=0), c.decoder(spec)
    enc_t, dec_t, bits = [], [], []
    for update in updates:
        t0 = time.perf_counter()
        payload = enc.encode(update)
        t1 = time.perf_counter()
        dec.decode(payload)
        t2 = time.perf_counter()
        dec.commit()
        enc.sync(dec.fingerprint)
        enc_t.append(t1 - t0)
        dec_t.append(t2 - t1)
        bits.append(8 * len(payload) / n)
    enc_s, dec_s = statistics.median(enc_t[1:]), statistics.median(dec_t[1:])
    mb = 4 * n / 1e6
    return {
        "codec": c.describe(),
        "entries": n,
        "enc MB/s": mb / enc_s,
        "dec MB/s": mb / dec_s,
        "bits/entry": statistics.median(bits[1:]),
        "x np.copy": (enc_s + dec_s) / copy_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000])
    ap.add_argument("--codecs", nargs="+", default=None, help="codec strings, e.g. topk:ratio=0.001")
    args = ap.parse_args()
    codecs = [Codec.parse(s) for s in args.codecs] if args.codecs else [codec(n) for n in available()]
    codecs += [] if args.codecs else [codec("qsgd", coding="range"), codec("topk", value_dtype="float16")]

    rows, failures = [], []
    for n in args.sizes:
        x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
        copy_s = median_seconds(lambda: np.copy(x), max(args.repeats, 20))
        print(f"np.copy of {n:,} float32: {copy_s * 1e3:.2f} ms")
        for c in codecs:
            row = bench(c, n, args.repeats, copy_s)
            rows.append(row)
            floor = FLOORS.get(c.describe().partition(":")[0]) if c in [codec(k) for k in FLOORS] else None
            if floor and n >= 10_000_000:
                max_copy, max_bits = floor
                if row["x np.copy"] > max_copy or (max_bits and row["bits/entry"] > max_bits):
                    failures.append(f"{row['codec']} @ {n:,}: {row['x np.copy']:.1f}x copy, {row['bits/entry']:.3f} bits/entry")

    header = f"| {'codec':<62} | {'entries':>10} | {'enc MB/s':>9} | {'dec MB/s':>9} | {'bits/entry':>10} | {'x np.copy':>9} |"
    print()
    print(header)
    print("|" + "|".join("-" * (len(col)) for col in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['codec']:<62} | {r['entries']:>10,} | {r['enc MB/s']:>9.0f} | {r['dec MB/s']:>9.0f} "
            f"| {r['bits/entry']:>10.4f} | {r['x np.copy']:>9.1f} |"
        )
    print()
    if failures:
        print("Over the floors of issue 2 (10M entries):", *failures, sep="\n  ")
    else:
        print("Floors on 10M entries (top-k, scaled sign, fp16, QSGD ≤ 25x np.copy; "
              "scaled sign ≤ 1.01, top-k 1% ≤ 0.45 bits/entry): all met.")


if __name__ == "__main__":
    main()
