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

# The floors on the 10M-entry update, for the default configs:
# codec -> (max encode+decode time in multiples of np.copy, max bits/entry or None).
FLOORS = {
    codec("topk"): (25.0, 0.45),
    codec("scaled_sign"): (25.0, 1.01),
    codec("fp16"): (25.0, None),
    codec("qsgd"): (25.0, None),
    codec("signxor"): (30.0, 1.01),  # its range coder: a looser time floor
}
FLOOR_ENTRIES = 10_000_000


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
        copy_s = median_seconds(lambda x=x: np.copy(x), max(args.repeats, 20))
        print(f"np.copy of {n:,} float32: {copy_s * 1e3:.2f} ms")
        for c in codecs:
            row = bench(c, n, args.repeats, copy_s)
            rows.append(row)
            if n == FLOOR_ENTRIES and c in FLOORS:
                max_copy, max_bits = FLOORS[c]
                if row["x np.copy"] > max_copy or (max_bits and row["bits/entry"] > max_bits):
                    failures.append(
                        f"{row['codec']}: {row['x np.copy']:.1f}x np.copy, {row['bits/entry']:.3f} bits"
                    )
    print_table(rows)
    if failures:
        print("\nOver the floors (10M entries):", *failures, sep="\n  ")
    elif any(r["entries"] == FLOOR_ENTRIES for r in rows):
        print(
            "\nFloors on 10M entries (top-k 1%, scaled sign, fp16, QSGD <= 25x np.copy; SignXOR <= 30x; "
            "scaled sign and SignXOR <= 1.01, top-k <= 0.45 bits/entry): all met."
        )


def print_table(rows: list[dict]) -> None:
    """A Markdown table, one row per (codec, size)."""
    columns = ["codec", "entries", "enc MB/s", "dec MB/s", "bits/entry", "x np.copy"]
    formats = ["{}", "{:,}", "{:.0f}", "{:.0f}", "{:.4f}", "{:.1f}"]
    cells = [[f.format(r[c]) for c, f in zip(columns, formats)] for r in rows]
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
