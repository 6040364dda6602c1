"""LGC's autoencoder (docs/METHODS.md §2): the one torch user among the codecs.

Input: a client's n values on the index set, divided by their RMS scale, as one
channel of length n. Shapes with the defaults (k = 3, stride 2, padding 1):

    encoder   conv 1→64 → conv 64→128 → conv 128→256 → conv 256→64   (LeakyReLU after each;
              each halves the length, rounding up) → conv 64→4, kernel 1: the code z,
              4 × ⌈n/16⌉ values (no activation)
    decoder   conv-transpose 4→32 → 32→64 → 64→128 → 128→32 (LeakyReLU after each; each
              doubles the length) → the first n positions, concatenated with the client's
              innovation and its mask (2 channels) → conv 34→1 (kernel `output_kernel_size`)
              → the estimate, the innovation entries then set to their sent values

One encoder, one decoder per client and a shared one, all layer sizes from
`LGCConfig`. Loss per round of K clients, with one of their codes z_src drawn at
random feeding every decoder (docs/METHODS.md §2: the decoder input is one client's code
plus each client's own innovation):

    λ1 · Σ_k MSE(u_k, D_k(z_src, innovation_k))  +  λ2 · Σ_{i≠j} MSE(z_i, z_j)

where both the client's own decoder (if it has one) and the shared decoder
contribute to the first sum. Adam (β = 0.9, 0.999, ε = 1e-8, step `ae_lr`) updates
what received a gradient.

Determinism: parameters are drawn from `torch.Generator`s seeded from the run's
seed (PyTorch's default conv initialisation, U(±1/√fan_in)), never from torch's
global generator; everything runs on the CPU in float32 on one thread with
deterministic algorithms (then the caller's settings come back), so a seed gives
the same weights, codes and estimates on any run. Weights and Adam's moments are
plain arrays (`state_dict`), no pickle.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from flcomp.codecs.compressors.lgc.config import Group, LGCConfig

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

Params = dict[str, Tensor]


@contextmanager
def deterministic() -> Iterator[None]:
    """One thread, deterministic algorithms; the caller's settings are restored after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def encode(config: LGCConfig, p: Mapping[str, Tensor], u: Tensor) -> Tensor:
    """Codes z (B, latent_channels, L) of normalized values u (B, n)."""
    pad = (config.kernel_size - 1) // 2
    h = u[:, None]
    for i in range(len(config.encoder_layers)):
        h = F.conv1d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], stride=config.stride, padding=pad)
        h = F.leaky_relu(h, config.negative_slope)
    return F.conv1d(h, p["latent.weight"], p["latent.bias"])


def decode(config: LGCConfig, p: Mapping[str, Tensor], z: Tensor, innovation: Tensor, mask: Tensor) -> Tensor:
    """Estimates (B, n) from codes z (B, C, L) and innovations with their masks (B, n)."""
    pad = (config.kernel_size - 1) // 2
    h = z
    for i in range(len(config.decoder_layers)):
        h = F.conv_transpose1d(
            h,
            p[f"deconv{i}.weight"],
            p[f"deconv{i}.bias"],
            stride=config.stride,
            padding=pad,
            output_padding=config.stride - 1,
        )
        h = F.leaky_relu(h, config.negative_slope)
    n = innovation.shape[1]
    h = torch.cat([h[:, :, :n], innovation[:, None], mask[:, None]], dim=1)
    out = F.conv1d(h, p["out.weight"], p["out.bias"], padding=(config.output_kernel_size - 1) // 2)[:, 0]
    return torch.where(mask > 0, innovation, out)


def encode_with(config: LGCConfig, weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The code (float32, `config.code_size(n)`) of normalized values u (n) under the
    encoder's flat weights (what a leader computes)."""
    params = _unflatten(config.encoder_layout(), weights)
    with deterministic(), torch.no_grad():
        z = encode(config, params, torch.from_numpy(np.array(u, np.float32))[None])
    return z.reshape(-1).numpy().astype(np.float32)


class Autoencoder:
    """The server's autoencoder for n values: see the module docstring."""

    def __init__(self, config: LGCConfig, n: int, seed: int) -> None:
        self.config, self.n, self.seed = config, n, seed
        self.params: Params = {}
        """Every parameter: "encoder/<name>", "shared/<name>", "decoder/<client>/<name>"."""
        self._init("encoder/", config.encoder_layout())
        self._init("shared/", config.decoder_layout())
        self.clients: list[str] = []
        """Clients with their own decoder, in order of arrival."""
        self.moments: dict[str, tuple[Tensor, Tensor]] = {}
        """Adam's first and second moments per parameter (zeros until its first step)."""
        self.steps: dict[str, int] = {}
        """Adam steps per parameter."""

    def _init(self, prefix: str, layout: list[tuple[str, tuple[int, ...]]]) -> None:
        g = torch.Generator().manual_seed(_seed(self.seed, prefix))
        fan_in = 1
        for name, shape in layout:  # each weight, then its bias
            if name.endswith(".weight"):
                fan_in = shape[1] * math.prod(shape[2:])  # as PyTorch counts it, for the bias too
            value = (torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)
            self.params[prefix + name] = value.requires_grad_(True)

    def add_client(self, client: str) -> None:
        """Give `client` its own decoder (seeded from the run's seed and its id) if it has none."""
        if client not in self.clients:
            self._init(f"decoder/{client}/", self.config.decoder_layout())
            self.clients.append(client)

    def _part(self, prefix: str) -> Params:
        return {k[len(prefix) :]: v for k, v in self.params.items() if k.startswith(prefix)}

    def _decoder(self, client: str) -> Params:
        """`client`'s decoder, or the shared one."""
        if client in self.clients:
            return self._part(f"decoder/{client}/")
        return self._part("shared/")

    def encoder_weights(self) -> np.ndarray:
        """The encoder's flat float32 weights (`LGCConfig.encoder_layout` order)."""
        encoder = self._part("encoder/")
        parts = [encoder[name].detach().reshape(-1) for name, _ in self.config.encoder_layout()]
        return torch.cat(parts).numpy().astype(np.float32)

    def encode(self, u: np.ndarray) -> np.ndarray:
        """Flat codes (B, code_size) of normalized values u (B, n)."""
        with deterministic(), torch.no_grad():
            z = encode(self.config, self._part("encoder/"), torch.from_numpy(np.array(u, np.float32)))
        return z.reshape(len(u), -1).numpy().astype(np.float32)

    def decode(self, client: str, code: np.ndarray, innovation: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """`client`'s normalized estimate (n) from a flat code and its innovation and mask (n)."""
        z = torch.from_numpy(np.array(code, np.float32)).reshape(1, self.config.latent_channels, -1)
        with deterministic(), torch.no_grad():
            out = decode(
                self.config,
                self._decoder(client),
                z,
                torch.from_numpy(np.array(innovation, np.float32))[None],
                torch.from_numpy(np.array(mask, np.float32))[None],
            )
        return out[0].numpy().astype(np.float32)

    def train(self, groups: Sequence[Group], rng: np.random.Generator) -> float:
        """`config.ae_steps` Adam steps, each on `config.ae_batch` of `groups` drawn with
        `rng`; returns the last step's loss (nan without steps)."""
        loss = float("nan")
        with deterministic():
            for _ in range(self.config.ae_steps):
                chosen = rng.choice(len(groups), size=min(self.config.ae_batch, len(groups)), replace=False)
                value = self.loss([groups[i] for i in sorted(chosen)], rng)
                names = list(self.params)
                grads = torch.autograd.grad(value, [self.params[k] for k in names], allow_unused=True)
                self._adam({k: g for k, g in zip(names, grads) if g is not None})
                loss = float(value.detach())
        return loss

    def loss(self, groups: Sequence[Group], rng: np.random.Generator) -> Tensor:
        """λ1·(reconstruction) + λ2·(similarity), averaged over `groups`."""
        config = self.config
        batches: dict[str, list[tuple[Tensor, ...]]] = {}
        similarity = torch.zeros(())
        for g in groups:
            u, innovation, mask = (torch.from_numpy(a) for a in (g.u, g.innovation, g.mask))
            z = encode(config, self._part("encoder/"), u)
            source = z[int(rng.integers(len(g.clients)))].expand_as(z)
            batches.setdefault("shared/", []).append((source, innovation, mask, u))
            for k, c in enumerate(g.clients):
                if c in self.clients:
                    rows = slice(k, k + 1)
                    batches.setdefault(f"decoder/{c}/", []).append(
                        (source[rows], innovation[rows], mask[rows], u[rows])
                    )
            similarity = similarity + (z[:, None] - z[None]).square().mean(dim=(2, 3)).sum()
        reconstruction = torch.zeros(())
        for prefix, parts in batches.items():
            source, innovation, mask, u = (torch.cat(p) for p in zip(*parts))
            out = decode(config, self._part(prefix), source, innovation, mask)
            reconstruction = reconstruction + (out - u).square().mean(dim=1).sum()
        total = config.lambda_reconstruction * reconstruction + config.lambda_similarity * similarity
        return total / len(groups)

    def _adam(self, grads: Mapping[str, Tensor]) -> None:
        (b1, b2), lr = ADAM_BETAS, self.config.ae_lr
        with torch.no_grad():
            for name, g in grads.items():
                m, v = self.moments.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
                t = self.steps.get(name, 0) + 1
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g.square()
                step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + ADAM_EPS)
                self.params[name].sub_(lr * step)
                self.moments[name], self.steps[name] = (m, v), t

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Weights ("param/<name>") and Adam's state ("adam_m/", "adam_v/", "adam_t/"): arrays and ints."""
        d: dict[str, np.ndarray | int] = {}
        for name, p in self.params.items():
            d[f"param/{name}"] = p.detach().numpy().copy()
            if name in self.moments:
                m, v = self.moments[name]
                d |= {f"adam_m/{name}": m.numpy().copy(), f"adam_v/{name}": v.numpy().copy()}
                d[f"adam_t/{name}"] = self.steps[name]
        return d

    def load_state_dict(self, d: Mapping[str, np.ndarray | int]) -> None:
        """Restore from `state_dict()`; ValueError on missing or misshapen entries."""
        names = [k[len("param/") :] for k in d if k.startswith("param/")]
        clients = sorted({k[len("decoder/") :].rsplit("/", 1)[0] for k in names if k.startswith("decoder/")})
        for c in clients:
            self.add_client(c)
        if sorted(names) != sorted(self.params):
            raise ValueError("LGC autoencoder state: the parameters do not fit the architecture")
        moments, steps = {}, {}
        for name, p in self.params.items():
            value = np.asarray(d[f"param/{name}"])
            if value.shape != tuple(p.shape) or value.dtype != np.float32:
                raise ValueError(f"LGC autoencoder state: {name} is {value.dtype}{list(value.shape)}")
            with torch.no_grad():
                p.copy_(torch.from_numpy(value))
            if f"adam_t/{name}" in d:
                m, v = (torch.from_numpy(np.array(d[f"adam_{k}/{name}"], np.float32)) for k in "mv")
                if m.shape != p.shape or v.shape != p.shape:
                    raise ValueError(f"LGC autoencoder state: Adam's moments of {name} are misshapen")
                moments[name], steps[name] = (m, v), int(d[f"adam_t/{name}"])
        self.moments, self.steps = moments, steps


def _unflatten(layout: Sequence[tuple[str, tuple[int, ...]]], flat: np.ndarray) -> Params:
    params, start = {}, 0
    flat = torch.from_numpy(np.array(flat, np.float32))
    for name, shape in layout:
        size = math.prod(shape)
        params[name] = flat[start : start + size].reshape(shape)
        start += size
    if start != len(flat):
        raise ValueError(f"{len(flat)} encoder weights, the architecture has {start}")
    return params


def _seed(seed: int, name: str) -> int:
    """A 63-bit seed for the generator of `name` (a prefix), from the run's seed."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
