"""Two-way error feedback with sign compressors on a noisy quadratic: codecs only, no Flower.

K clients compute noisy gradients of f(w) = ½ Σ_i h_i (w_i − w*_i)² (curvatures h_i
log-normal, the largest about 26) at the model they hold; each uplink codec (with its
error feedback) compresses lr·g, the server averages the decoded steps, and the downlink
codec (with the server's own error memory) compresses that average before every client
applies it. These are the encoders and decoders `Compressed` drives, so the dynamics are
the codecs' alone.

What it shows (seed 0, 6,400 rounds): one-way scaled sign (either direction) and two-way
top-k converge at lr 0.05 and 0.01; two-way scaled sign with exact error feedback (and
SignXOR at λ = 0, the same reconstructions) diverges at both, later at the smaller step,
and so do SignXOR at λ = 1 and a server memory decayed by 0.99 a round. The mechanism:
the clients' signs disagree on the noisy coordinates, so the average the server
compresses is spread thin (its contraction δ = ‖p‖₁²/(d‖p‖₂²) stays near 0.15 where a
healthy run's is 0.3 to 0.6), scaled sign leaves most of it in the server's memory, and
the two memories wind up together on the stiffest coordinates. `ef_decay=0.9` on the
downlink (e ← 0.9·(p − C(p))) keeps the server's memory bounded, and two-way then
converges as one-way does.

Per run it prints ‖w − w*‖ / ‖w*‖ at a few rounds, the final distance (mean over the last
100 rounds), the median δ of the server's vector, and the round where the strategy's
warning (`flcomp.strategies.health.MemoryWatch`: the server's memory keeps growing)
would fire. The floor: with `ef_decay=0.9` on the downlink, two-way scaled sign's final
distance is within 1.5× of one-way's (uplink only) at every step size.

    python examples/two_way_stability.py [--rounds 6400] [--lr 0.05 0.01] [--seed 0] [--docs docs]
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from flcomp.codecs import Codec, ModelSpec
from flcomp.codecs.wrappers.error_feedback import ErrorFeedback
from flcomp.sim import experiment
from flcomp.strategies import health

RUNS = [
    ("fp32", "fp32"),
    ("scaled_sign", "fp32"),
    ("fp32", "scaled_sign"),
    ("topk:ratio=0.1", "topk:ratio=0.1"),
    ("scaled_sign", "scaled_sign"),
    ("scaled_sign", "scaled_sign:ef_decay=0.99"),
    ("scaled_sign", "scaled_sign:ef_decay=0.9"),
    ("signxor", "signxor"),
    ("signxor:lam=1", "signxor:lam=1"),
    ("signxor", "signxor:ef_decay=0.9"),
]
"""(uplink codec, downlink codec) pairs; fp32 is lossless (no compression that way)."""
ONE_WAY = ("scaled_sign", "fp32")
TWO_WAY = ("scaled_sign", "scaled_sign:ef_decay=0.9")
"""The floor's pair: two-way with the decayed server memory against one-way."""
FLOOR = 1.5
"""Two-way's final distance may be at most this many times one-way's."""
CLIENTS = 8
ENTRIES = 5_000
NOISE = 0.5
"""Standard deviation of each gradient entry's noise."""
TAIL = 100
"""Rounds the final distance is averaged over (the noise floor's level, not one round's draw)."""
DIVERGED = 1e3
"""A distance past which a run has diverged for good: it stops there (its later distances inf)."""


class Outcome(NamedTuple):
    distances: list[float]
    """‖w − w*‖ / ‖w*‖ after the reported rounds (inf once it diverged)."""
    final: float
    """The mean distance over the last `TAIL` rounds (inf if it diverged)."""
    server_contraction: float | None
    """The median δ of the vector the server compressed (None: its codec is lossless)."""
    warned: int | None
    """The round (1-based) where the memory warning fired, if it did."""


def run(uplink: str, downlink: str, lr: float, rounds: int, seed: int, report: list[int]) -> Outcome:
    """One run; distances after the rounds in `report` (0-based)."""
    rng = np.random.default_rng(seed)
    curvature = np.exp(rng.normal(size=ENTRIES)).astype(np.float32)
    optimum = rng.normal(size=ENTRIES).astype(np.float32)
    spec = ModelSpec.flat(ENTRIES)
    up, down = Codec.parse(uplink), Codec.parse(downlink)
    links = [(up.encoder(spec, seed=k), up.decoder(spec)) for k in range(CLIENTS)]
    server, clients = down.encoder(spec, seed=CLIENTS), down.decoder(spec)
    watch = health.MemoryWatch()
    w = np.zeros(ENTRIES, np.float32)
    distance = np.full(rounds, np.inf)
    contractions, warned = [], None
    for t in range(rounds):
        steps = []
        for encoder, decoder in links:
            g = curvature * (w - optimum) + NOISE * rng.normal(size=ENTRIES).astype(np.float32)
            steps.append(decoder.decode(encoder.encode([lr * g]))[0])
            decoder.commit()
            encoder.sync(decoder.fingerprint)
        change = -np.mean(steps, axis=0, dtype=np.float32)
        memory = ErrorFeedback.memory(server.compressor, server.local)
        if not down.compressor_class.lossless:
            contractions.append(health.contraction([change + memory[0]] if memory else [change]))
        payload = server.encode([change])
        server.commit()
        w = w + clients.decode(payload)[0]
        clients.commit()
        memory = ErrorFeedback.memory(server.compressor, server.local)
        if watch.observe(health.norm(memory) if memory else None):
            warned = t + 1
        distance[t] = np.linalg.norm((w - optimum).astype(np.float64)) / np.linalg.norm(optimum)
        if distance[t] > DIVERGED:
            distance[t:] = np.inf
            break
    known = [c for c in contractions if c is not None]
    return Outcome(
        [float(distance[t]) for t in report],
        float(np.mean(distance[-TAIL:])),
        float(np.median(known)) if known else None,
        warned,
    )


def main(argv: list[str] | None = None) -> str:
    # Plain NumPy: no simulations to keep, so no --out; a RESULTS section (--docs).
    parser = experiment.parser(__doc__, out=None, rounds=6400)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.05, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = sorted({0, args.rounds // 8, args.rounds // 4, args.rounds // 2, args.rounds - 1})
    lines = [
        "| lr | uplink | downlink | "
        + " | ".join(f"round {t + 1}" for t in report)
        + f" | final (last {TAIL}) | server δ | memory warning |",
        "|---:|---|---|" + "---:|" * (len(report) + 3),
    ]
    floors, started = [], time.perf_counter()
    for lr in args.lr:
        finals = {}
        for uplink, downlink in RUNS:
            o = run(uplink, downlink, lr, args.rounds, args.seed, report)
            finals[uplink, downlink] = o.final
            cells = [*(f"{d:.3g}" for d in o.distances), f"{o.final:.3g}"]
            cells += ["—" if o.server_contraction is None else f"{o.server_contraction:.2f}"]
            cells += ["—" if o.warned is None else f"round {o.warned}"]
            lines.append(f"| {lr:g} | `{uplink}` | `{downlink}` | " + " | ".join(cells) + " |")
        ratio = finals[TWO_WAY] / finals[ONE_WAY]
        verdict = "met" if ratio <= FLOOR else "NOT met"
        floors.append(f"- lr {lr:g}: {verdict} (two-way {ratio:.2f}× one-way's final distance)")
    minutes = (time.perf_counter() - started) / 60
    section = [
        "## Two-way error feedback with sign codecs (examples/two_way_stability.py)",
        "",
        f"{CLIENTS} clients, a noisy quadratic of {ENTRIES:,} entries (log-normal curvatures, "
        f"gradient noise σ = {NOISE}), {args.rounds:,} rounds, seed {args.seed}. Distance: "
        f"‖w − w*‖ / ‖w*‖ (inf: past {DIVERGED:g}, diverged: the run stopped); final: its mean "
        f"over the last {TAIL} rounds. Server δ: the median contraction ‖p‖₁²/(d‖p‖₂²) of the "
        "vector the server compressed (its change plus its memory). Memory warning: the round "
        "where `Compressed`'s warning (the server's error memory keeps growing) would fire.",
        "",
        f"Reproduce: `{experiment.command('two_way_stability.py', argv)}` ({minutes:.0f} minutes here)",
        "",
        *lines,
        "",
        f"Floor (`{TWO_WAY[1]}` on the downlink: two-way within {FLOOR}× of one-way `{ONE_WAY[0]}`):",
        "",
        *floors,
    ]
    return experiment.publish(args.docs, "two_way", "\n".join(section))


if __name__ == "__main__":
    main()
