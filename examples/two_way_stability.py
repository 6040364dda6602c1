"""Two-way error feedback with sign compressors on a noisy quadratic: codecs only, no Flower.

K clients compute noisy gradients of f(w) = ½ Σ_i h_i (w_i − w*_i)² (curvatures h_i
log-normal, the largest about 26) at the model they hold; each uplink codec (with its
error feedback) compresses lr·g, the server averages the decoded steps, and the downlink
codec (with the server's own error memory) compresses that average before every client
applies it. These are the encoders and decoders `Compressed` drives, so the dynamics are
the codecs' alone.

It prints ‖w − w*‖ / ‖w*‖ at a few rounds. Seen on seed 0 (1600 rounds): one-way scaled
sign (either direction) and two-way top-k converge at lr 0.05 and 0.01; two-way scaled
sign, and SignXOR at λ = 0 (the same reconstructions), diverge at both, later at the
smaller step; SignXOR at λ = 1 both ways stays between 0.1 and 0.2 over these rounds.
Why error feedback on both ends with sign compressors loses stability here is not
established: this script is the reproducer.

    python examples/two_way_stability.py [--rounds 1600] [--lr 0.05 0.01] [--seed 0]
"""

from __future__ import annotations

import numpy as np

from flcomp.codecs import Codec, ModelSpec
from flcomp.sim import experiment

RUNS = [
    ("fp32", "fp32"),
    ("scaled_sign", "fp32"),
    ("fp32", "scaled_sign"),
    ("topk:ratio=0.1", "topk:ratio=0.1"),
    ("scaled_sign", "scaled_sign"),
    ("signxor", "signxor"),
    ("signxor:lam=1", "signxor:lam=1"),
]
"""(uplink codec, downlink codec) pairs; fp32 is lossless (no compression that way)."""
CLIENTS = 8
ENTRIES = 5_000
NOISE = 0.5
"""Standard deviation of each gradient entry's noise."""


def run(uplink: str, downlink: str, lr: float, rounds: int, seed: int, report: list[int]) -> list[float]:
    """Relative distances ‖w − w*‖ / ‖w*‖ after the rounds in `report` (0-based)."""
    rng = np.random.default_rng(seed)
    curvature = np.exp(rng.normal(size=ENTRIES)).astype(np.float32)
    optimum = rng.normal(size=ENTRIES).astype(np.float32)
    spec = ModelSpec.flat(ENTRIES)
    up, down = Codec.parse(uplink), Codec.parse(downlink)
    links = [(up.encoder(spec, seed=k), up.decoder(spec)) for k in range(CLIENTS)]
    server, clients = down.encoder(spec, seed=CLIENTS), down.decoder(spec)
    w = np.zeros(ENTRIES, np.float32)
    distances = []
    for t in range(rounds):
        steps = []
        for encoder, decoder in links:
            g = curvature * (w - optimum) + NOISE * rng.normal(size=ENTRIES).astype(np.float32)
            steps.append(decoder.decode(encoder.encode([lr * g]))[0])
            decoder.commit()
            encoder.sync(decoder.fingerprint)
        payload = server.encode([-np.mean(steps, axis=0, dtype=np.float32)])
        server.commit()
        w = w + clients.decode(payload)[0]
        clients.commit()
        if t in report:
            distances.append(float(np.linalg.norm(w - optimum) / np.linalg.norm(optimum)))
    return distances


def main(argv: list[str] | None = None) -> str:
    # Plain NumPy: no runs to keep and no RESULTS section, so --rounds is its one common flag.
    parser = experiment.parser(__doc__, out=None, rounds=1600, docs=False)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = sorted({0, args.rounds // 8, args.rounds // 4, args.rounds // 2, args.rounds - 1})
    lines = [
        "| lr | uplink | downlink | " + " | ".join(f"round {t + 1}" for t in report) + " |",
        "|---:|---|---|" + "---:|" * len(report),
    ]
    for lr in args.lr:
        for uplink, downlink in RUNS:
            distances = run(uplink, downlink, lr, args.rounds, args.seed, report)
            lines.append(
                f"| {lr:g} | `{uplink}` | `{downlink}` | " + " | ".join(f"{d:.3f}" for d in distances) + " |"
            )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
