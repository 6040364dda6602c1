"""The `flcomp` command line.

    flcomp codecs [--entries N] [--rounds T] [CODEC ...]

compresses an embedded update stream with every registered codec (or the given
codec strings, e.g. "topk:ratio=0.001") and prints bits per entry, measured from
the payloads' real bytes, and the reconstruction error.
"""

from __future__ import annotations

import argparse

import numpy as np

from flcomp.codecs import Codec, ModelSpec, available, codec


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


def cmd_codecs(args: argparse.Namespace) -> None:
    codecs = [Codec.parse(s) for s in args.codec] or [codec(n) for n in available()]
    stream = update_stream(args.entries, args.rounds)
    print(
        f"{args.rounds} updates of {args.entries:,} entries; bits from payload bytes, "
        "error = ‖decoded − update‖/‖update‖ in the last round, "
        "sum error = the same for the sum over all rounds.\n"
    )
    width = max(len(c.describe()) for c in codecs)
    print(f"{'codec':<{width}}  {'bits/entry':>10}  {'vs fp32':>8}  {'error':>7}  {'sum error':>9}")
    for c in codecs:
        m = measure(c, stream)
        print(
            f"{c.describe():<{width}}  {m['bits/entry']:>10.4f}  {32 / m['bits/entry']:>7.1f}x"
            f"  {m['error']:>7.4f}  {m['sum error']:>9.4f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flcomp", description="Communication-efficient federated learning on Flower."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("codecs", help="compare every codec on an embedded update stream")
    p.add_argument(
        "codec", nargs="*", default=[], help='codec strings, e.g. "topk:ratio=0.001" (default: all)'
    )
    p.add_argument("--entries", type=int, default=1_000_000, help="entries per update (default 1,000,000)")
    p.add_argument("--rounds", type=int, default=10, help="updates in the stream (default 10)")
    p.set_defaults(run=cmd_codecs)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
