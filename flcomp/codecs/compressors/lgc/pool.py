"""The server side of LGC: round plans, joint decoding and the autoencoder's training.

`LGCPool` is the `DecoderPool` of the "lgc" codec (`flcomp.codecs.compressors.lgc.codec`); a driver
such as `flcomp.strategies.Compressed` calls, each round t,

    side = pool.plan_round(t, clients)     # client → side information, sent with its instruction
    result = pool.decode_round(payloads)   # joint decoding (stage 3), training (stage 2)
    pool.commit(client) / pool.rollback(client)

Plans. The leader is drawn among the round's clients from the run's seed and the
round (`np.random.default_rng((seed, t))` over their sorted ids), so partial
participation just draws among those sampled. In stage 3 a leader whose decoder
state (shared with its encoder) does not hold the frozen encoder's tag gets the
encoder's weights with its plan; since that state changes only with committed
steps, a leader whose instruction or payload was lost gets them again. A client
met for the first time (a late joiner) starts from the initial state like any.

Joint decoding (stage 3). Each client's estimate of its values on I_t is decoded
from the leader's code with its own decoder, or with the shared decoder when it
has none (it took no part in stage 2, or `per_client_decoders=False`). A leader
that lacked the encoder sends its values instead: the server encodes them itself.
Without the leader's payload (lost, late, malformed) the round degrades to what
each payload holds on its own, the innovations. Each payload is parsed once: the
client's `Decoder` checks it and runs the loss-safe protocol, and the message its
decode parsed (`ParsingLGC`) is what the joint decode reads.

Training (stage 2). Each round's values (all clients that delivered, each with its
RMS scale and innovation, as stage 3 would see them) join a window of the newest
`ae_window` rounds; `ae_steps` Adam steps then run on batches of `ae_batch` rounds
drawn with `np.random.default_rng((seed, t, 2))`. Before that step the round's
values measure the autoencoder as stage 3 would use it (`RoundStats`). At the first
stage-3 round the encoder and decoders freeze.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flcomp.codecs.coding.sparse import top_k_positions
from flcomp.codecs.compressor import State
from flcomp.codecs.compressors.lgc.codec import LGC
from flcomp.codecs.compressors.lgc.config import (
    INNOVATION,
    LATENT,
    MODE_NAMES,
    PLAIN,
    TOPK,
    VALUES,
    Group,
    Message,
    Plan,
    encoder_tag,
)
from flcomp.codecs.endpoints import Decoder, DecoderPool, RoundDecoding
from flcomp.codecs.errors import PayloadError
from flcomp.codecs.wire import PayloadReader

if TYPE_CHECKING:
    from flcomp.codecs.compressors.lgc.autoencoder import Autoencoder


class ParsingLGC(LGC):
    """LGC as the pool's decoders run it: it decodes exactly as `LGC` and keeps the message
    it parsed last (`parsed`), so that the joint decode reads each payload once. The
    pool's own scratch space, read right after each `Decoder.decode` that succeeded."""

    def __init__(self, lgc: LGC) -> None:
        super().__init__(lgc.spec, lgc.config)
        self.parsed: Message | None = None

    def decode(self, body: PayloadReader, shared: State) -> tuple[list[np.ndarray], State]:
        self.parsed, flat, new_shared = self.decode_message(body, shared)
        return flat, new_shared


@dataclass
class RoundStats:
    """What the pool did in one round (diagnostics; errors are relative:
    Σ_k ‖v̂_k − v_k‖² / Σ_k ‖v_k‖² over the round's clients)."""

    round: int
    stage: int
    leader: str | None
    side_bytes: int = 0
    """Side information planned for the round's clients."""
    encoder_bytes: int = 0
    """Of side_bytes: encoder weights shipped to leaders."""
    modes: dict[str, int] = field(default_factory=dict)
    """Decoded payloads by mode name."""
    joint: int = 0
    """Clients decoded jointly from the leader's code (stage 3)."""
    ae_seconds: float = 0.0
    """Wall seconds of the autoencoder's training this round (stage 2)."""
    ae_loss: float | None = None
    """Training loss of the round's last Adam step."""
    heldout_error: float | None = None
    """Stage 2: the autoencoder's error on this round's values before training on
    them, decoding every client from the leader's code as stage 3 would."""
    copy_error: float | None = None
    """Stage 2: the error of the identity estimate (leader's values, own innovation)."""
    innovation_error: float | None = None
    """Stage 2: the error of the innovations alone."""


class LGCPool(DecoderPool):
    """LGC's server side: see the module docstring. `seed` draws the leaders and the
    autoencoder's initial weights and training batches.

    Called as the registry calls a pool, `LGCPool(lgc, seed)`; its decoders are
    `Decoder(ParsingLGC(lgc))`: LGC's decoding (a wrapper around LGC forwards decoding
    and shared state unchanged) with each payload's parse kept for the joint decode."""

    def __init__(self, lgc: LGC, seed: int = 0) -> None:
        self.parsing = ParsingLGC(lgc)
        super().__init__(lambda: Decoder(self.parsing))
        self.lgc = lgc
        self.config = lgc.config
        self.seed = seed
        self.round = 0
        """The last planned round."""
        self.index: tuple[np.ndarray, ...] | None = None
        """The index set the next round will use (the last proposal delivered)."""
        self.tag = 0
        """The frozen encoder's tag (0 before stage 3)."""
        self.leader: str | None = None
        self.plans: dict[str, Plan] = {}
        self.buffer: deque[Group] = deque(maxlen=self.config.ae_window)
        self.history: list[RoundStats] = []
        self.estimates: dict[str, np.ndarray] = {}
        """The last round's joint estimates of each client's values on I_t."""
        self._autoencoder: Autoencoder | None = None
        self._weights: np.ndarray | None = None

    def stage(self, server_round: int) -> int:
        """The stage (1, 2, 3) of a server round."""
        t1, t2 = self.config.stage1_rounds, self.config.stage2_rounds
        return 1 if server_round <= t1 else 2 if server_round <= t1 + t2 else 3

    @property
    def autoencoder(self) -> Autoencoder:
        """The conv autoencoder, created (seeded) on first use."""
        if self._autoencoder is None:
            from flcomp.codecs.compressors.lgc.autoencoder import (
                Autoencoder,  # torch, only on the server's demand
            )

            self._autoencoder = Autoencoder(self.config, self.lgc.n, self.seed)
        return self._autoencoder

    # --- plans ----------------------------------------------------------------------

    def plan_round(self, server_round: int, clients: Sequence[str]) -> dict[str, bytes]:
        self.round, stage = server_round, self.stage(server_round)
        clients = sorted(clients)
        rng = np.random.default_rng((self.seed, server_round))
        self.leader = clients[int(rng.integers(len(clients)))] if clients else None
        if stage == 3 and self.lgc.conv and not self.tag:
            self._weights = self.autoencoder.encoder_weights()  # frozen from now on
            self.tag = encoder_tag(self._weights)
        propose = self.stage(server_round + 1) >= 2
        stats = RoundStats(server_round, stage, self.leader)
        self.plans, self.side = {}, {}
        for c in clients:
            mode = self._mode(stage, c)
            weights = None
            if mode == LATENT and self.lgc.conv and int(self.decoder(c).shared["encoder_tag"]) != self.tag:
                weights = self._weights
                stats.encoder_bytes += weights.nbytes
            plan = Plan(
                mode,
                propose and c == self.leader,
                self.tag if mode == LATENT else 0,
                self.index if mode >= VALUES else None,
                weights,
            )
            self.plans[c] = plan
            self.side[c] = self.lgc.side_information(plan)
            stats.side_bytes += len(self.side[c])
        self.history.append(stats)
        return self.side

    def _mode(self, stage: int, client: str) -> int:
        if stage == 1:
            return PLAIN if self.config.warmup == "plain" else TOPK
        if self.index is None:
            return TOPK  # no index set yet: each client's own top-k, the leader proposes one
        if stage == 2:
            return VALUES
        return LATENT if client == self.leader else INNOVATION

    # --- decoding -------------------------------------------------------------------

    def decode_round(self, payloads: Mapping[str, bytes]) -> RoundDecoding:
        result = RoundDecoding()
        messages: dict[str, Message] = {}
        for client, payload in payloads.items():
            self.parsing.parsed = None
            try:
                result.updates[client] = self.decoder(client).decode(payload, self.side.get(client, b""))
            except PayloadError as e:
                result.errors[client] = e
                continue
            messages[client] = self.parsing.parsed
        stats = self.history[-1] if self.history and self.history[-1].round == self.round else None
        leader = messages.get(self.leader)
        if leader is not None and leader.proposal is not None:
            self.index = leader.proposal
        code = self._leader_code(leader)
        self.estimates = {}
        for client, message in messages.items():
            if message.mode in (LATENT, INNOVATION) and code is not None:
                estimate = self._estimate(client, code, message)
                if np.isfinite(estimate).all():
                    flat = self.lgc.scatter(self.plans[client].index, estimate)
                    result.updates[client] = self.lgc.spec.restore(flat)
                    self.estimates[client] = estimate
        if stats is not None:
            for message in messages.values():
                name = MODE_NAMES[message.mode]
                stats.modes[name] = stats.modes.get(name, 0) + 1
            stats.joint = len(self.estimates)
        values = {c: m.values for c, m in messages.items() if m.mode == VALUES}
        if values and self.stage(self.round) == 2:
            self._learn(values, stats)
        return result

    def _leader_code(self, leader: Message | None) -> np.ndarray | None:
        """The leader's code: read, or encoded here from its values when it lacked the encoder."""
        if leader is None or self.stage(self.round) != 3:
            return None
        if leader.mode == LATENT:
            return leader.code
        if leader.mode != VALUES:
            return None
        if not self.lgc.conv:
            return leader.values
        if not self.lgc.n:
            return np.zeros(0, np.float32)
        s = self.lgc.scale(leader.values)
        return self.autoencoder.encode((leader.values / s if s > 0 else leader.values)[None])[0]

    def _estimate(self, client: str, code: np.ndarray, message: Message) -> np.ndarray:
        """A client's values on I_t from the leader's code and its innovation (float32, n)."""
        if not self.lgc.conv:
            estimate = code.copy()
        elif not self.lgc.n:
            return np.zeros(0, np.float32)
        else:
            s = np.float32(message.scale)
            mask = np.zeros(self.lgc.n, np.float32)
            mask[message.innovation] = 1.0
            innovation = self.lgc.innovation_dense(message) / s if s > 0 else np.zeros(self.lgc.n, np.float32)
            estimate = s * self.autoencoder.decode(client, code, innovation, mask)
        estimate[message.innovation] = message.innovation_values
        return estimate

    # --- training -------------------------------------------------------------------

    def group(self, values: Mapping[str, np.ndarray]) -> Group:
        """A round's values (client → n values on I_t) as the autoencoder sees them."""
        clients = tuple(sorted(values))
        n, m = self.lgc.n, self.lgc.m
        v = np.stack([values[c] for c in clients]).astype(np.float32).reshape(len(clients), n)
        scale = np.array([self.lgc.scale(vk) for vk in v], np.float32)
        u = np.divide(v, scale[:, None], out=np.zeros_like(v), where=scale[:, None] > 0)
        mask = np.zeros_like(u)
        for k, uk in enumerate(u):
            if m:
                mask[k, top_k_positions(np.abs(uk), m)] = 1.0
        leader = clients.index(self.leader) if self.leader in values else -1
        return Group(clients, u, u * mask, mask, scale, leader)

    def errors(self, group: Group) -> dict[str, float]:
        """Relative errors on `group` of the estimates stage 3 would make from its leader's
        code: "heldout" (the autoencoder; conv only), "copy" (the leader's values with
        each client's innovation), "innovation" (the innovations alone). Empty without
        a leader or values."""
        v = group.u * group.scale[:, None]
        total = float(np.sum(np.square(v, dtype=np.float64)))
        if group.leader < 0 or total == 0:
            return {}
        innovation = group.innovation * group.scale[:, None]
        copy = np.where(group.mask > 0, innovation, v[group.leader])
        errors = {"copy": copy, "innovation": innovation}
        if self.lgc.conv:
            code = self.autoencoder.encode(group.u[group.leader][None])[0]
            decoded = [
                self.autoencoder.decode(c, code, group.innovation[k], group.mask[k])
                for k, c in enumerate(group.clients)
            ]
            errors["heldout"] = group.scale[:, None] * np.stack(decoded)
        return {k: float(np.sum(np.square(e - v, dtype=np.float64))) / total for k, e in errors.items()}

    def _learn(self, values: Mapping[str, np.ndarray], stats: RoundStats | None) -> None:
        """Measure the autoencoder on a stage-2 round's values, then train on the window."""
        group = self.group(values)
        errors = self.errors(group)
        if stats is not None:
            stats.heldout_error = errors.get("heldout")
            stats.copy_error, stats.innovation_error = errors.get("copy"), errors.get("innovation")
        if not self.lgc.conv or not self.lgc.n:
            return
        start = time.perf_counter()
        if self.config.per_client_decoders:
            for c in group.clients:
                self.autoencoder.add_client(c)
        self.buffer.append(group)
        rng = np.random.default_rng((self.seed, self.round, 2))
        loss = self.autoencoder.train(list(self.buffer), rng)
        if stats is not None:
            stats.ae_loss, stats.ae_seconds = loss, time.perf_counter() - start

    # --- state ----------------------------------------------------------------------

    def state_bytes(self) -> dict[str, int]:
        """Each client's decoder state, plus its own autoencoder decoder (weights and Adam's
        moments) and its last joint estimate. The training window, the shared autoencoder and
        the round's plans are the pool's, bounded by the config, not per client held."""
        out = super().state_bytes()
        for client, estimate in self.estimates.items():
            out[client] = out.get(client, 0) + estimate.nbytes
        if self._autoencoder is not None:
            ae = self._autoencoder
            for client in ae.clients:
                for name in [n for n in ae.params if n.startswith(f"decoder/{client}/")]:
                    moments = ae.moments.get(name, ())
                    held = ae.params[name].nbytes + sum(m.nbytes for m in moments)
                    out[client] = out.get(client, 0) + held
        return out

    def evict(self, client: str) -> None:
        """Forget `client` as `DecoderPool.evict` does, its own autoencoder decoder and estimate
        too: if it returns, stage 3 decodes it with the shared decoder (stage 2 seeds it a new one)."""
        super().evict(client)
        self.estimates.pop(client, None)
        self.plans.pop(client, None)
        if self._autoencoder is not None and client in self._autoencoder.clients:
            ae = self._autoencoder
            for name in [n for n in ae.params if n.startswith(f"decoder/{client}/")]:
                del ae.params[name]
                ae.moments.pop(name, None)
                ae.steps.pop(name, None)
            ae.clients.remove(client)

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """The decoders' states ("link/..."), the round, index set, tag, training window
        and autoencoder ("lgc/..."): arrays and ints only. Save between rounds."""
        d: dict[str, np.ndarray | int] = {f"link/{k}": v for k, v in super().state_dict().items()}
        d |= {"lgc/round": self.round, "lgc/tag": self.tag, "lgc/has_index": int(self.index is not None)}
        for i, positions in enumerate(self.index or ()):
            d[f"lgc/index/{i}"] = positions
        d["lgc/buffer"] = len(self.buffer)
        for j, g in enumerate(self.buffer):
            names = np.frombuffer("\n".join(g.clients).encode(), np.uint8)
            d |= {f"lgc/buffer/{j}/clients": names, f"lgc/buffer/{j}/leader": g.leader + 1}
            d |= {f"lgc/buffer/{j}/{k}": getattr(g, k) for k in ("u", "innovation", "mask", "scale")}
        if self._autoencoder is not None:
            d |= {f"lgc/ae/{k}": v for k, v in self._autoencoder.state_dict().items()}
        return d

    def load_state_dict(self, d: Mapping[str, np.ndarray | int]) -> None:
        """Restore from `state_dict()`; ValueError on missing or misshapen entries."""
        try:
            super().load_state_dict({k[5:]: v for k, v in d.items() if k.startswith("link/")})
            self.round, self.tag = int(d["lgc/round"]), int(d["lgc/tag"])
            index = None
            if int(d["lgc/has_index"]):
                index = tuple(np.asarray(d[f"lgc/index/{i}"], np.int64) for i in range(len(self.lgc.spec)))
                if [len(p) for p in index] != self.lgc.k:
                    raise ValueError("LGC state: the index set does not fit the model")
            self.index = index
            self.buffer.clear()
            for j in range(int(d["lgc/buffer"])):
                arrays = {k: np.array(d[f"lgc/buffer/{j}/{k}"]) for k in ("u", "innovation", "mask", "scale")}
                clients = tuple(
                    bytes(np.asarray(d[f"lgc/buffer/{j}/clients"], np.uint8)).decode().split("\n")
                )
                shape = (len(clients), self.lgc.n)
                if any(arrays[k].shape != shape for k in ("u", "innovation", "mask")):
                    raise ValueError("LGC state: a training round does not fit the model")
                self.buffer.append(Group(clients, leader=int(d[f"lgc/buffer/{j}/leader"]) - 1, **arrays))
        except KeyError as e:
            raise ValueError(f"LGC state entry {e} is missing") from None
        ae = {k[7:]: v for k, v in d.items() if k.startswith("lgc/ae/")}
        self._autoencoder = None
        if ae:
            self.autoencoder.load_state_dict(ae)
        self._weights = self.autoencoder.encoder_weights() if self.tag else None
        self.plans, self.side, self.leader = {}, {}, None
