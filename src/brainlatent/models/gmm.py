"""Seed 002: a GAN with a learned Gaussian-mixture latent prior and a responsibility classifier.

Networks (``docs/metrics.md`` and ``shared/reference/seed-systems.md`` §2):

* :class:`MixturePrior`: ``p(z) = Σ_k π_k N(μ_k, Σ_k)``, ``Σ_k = A_k A_kᵀ + εI``, sampled by
  reparameterisation ``z = μ_k + A_k e (+ √ε e')``. ``covariance="cholesky"`` (default, a
  deviation from the seed) keeps ``A_k`` lower-triangular with a softplus diagonal, so Σ_k is
  positive definite for any parameter values; ``"full"`` is the seed's unconstrained ``A_k`` and
  needs ``ε > 0``. ``π`` is a buffer (the trainer's running mean of the responsibilities).
* :class:`DCGANGenerator`, :class:`DCGANDiscriminator` (seed Tables 2–3; 32², 64², one more
  stride-2 stage per doubling above 64²), :class:`SharedClassifier` (D's encoder + a linear head)
  and :class:`StandaloneClassifier` (seed Table 1).
* :class:`DCGANNetwork` (the plain GAN, family ``dcgan``) and :class:`GMMGANNetwork` (families
  ``gmmgan``/``gmmgan<K>``): the network protocol of :mod:`brainlatent.models.families`
  (no mapping network, no noise inputs); ``GMMGANNetwork`` adds ``sample_z(n, rng)`` (latents from
  the learned mixture), ``responsibilities(x)`` (C) and ``component_z(k, e)``.

Example:
    >>> net = GMMGANNetwork(z_dim=4, components=2, resolution=32, width=0.125)
    >>> rng = torch.Generator().manual_seed(0)
    >>> z = net.sample_z(3, rng); net.synthesis(z).shape, net.responsibilities(net.synthesis(z)).shape
    (torch.Size([3, 1, 32, 32]), torch.Size([3, 2]))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from brainlatent.errors import BrainlatentError

#: softplus⁻¹(1): the raw diagonal that makes A_k = I at initialisation
_SOFTPLUS_INV_1 = math.log(math.e - 1.0)
COVARIANCES = ("cholesky", "full")
CLASSIFIERS = ("shared", "standalone")


# --------------------------------------------------------------------------------------------
# The prior


class MixturePrior(nn.Module):
    """A K-component Gaussian mixture over ``z_dim`` with learnable means and covariance factors.

    Args:
        components: K (≥ 1).
        z_dim: latent size D.
        covariance: ``"cholesky"`` (lower-triangular A, softplus diagonal: Σ PD by construction) or
            ``"full"`` (the seed's unconstrained A; ``eps > 0`` keeps Σ PD).
        eps: ε of ``Σ_k = A_k A_kᵀ + εI`` (sampling adds ``√ε e'`` when ε > 0).
        mean_std: μ_k ~ N(0, mean_std² I) at initialisation (seed gap §2.7 #6: 1).

    Shapes: ``mu`` K×D, ``A()`` K×D×D, ``pi`` K.
    """

    def __init__(self, components: int, z_dim: int, covariance: str = "cholesky", eps: float = 0.0, mean_std: float = 1.0) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if covariance == "full" and eps <= 0:
            raise ValueError("covariance 'full' (unconstrained A) needs eps > 0 to keep Σ positive definite")
        if components < 1 or z_dim < 1:
            raise ValueError(f"components and z_dim must be >= 1, got {components}, {z_dim}")
        self.components, self.z_dim, self.covariance, self.eps = int(components), int(z_dim), covariance, float(eps)
        self.mu = nn.Parameter(torch.randn(components, z_dim) * mean_std)
        if covariance == "cholesky":
            self.a_off = nn.Parameter(torch.zeros(components, z_dim, z_dim))
            self.a_diag = nn.Parameter(torch.full((components, z_dim), _SOFTPLUS_INV_1))
        else:
            self.a_full = nn.Parameter(torch.eye(z_dim).repeat(components, 1, 1))
        self.register_buffer("pi", torch.full((components,), 1.0 / components))

    def A(self) -> torch.Tensor:
        """The factors ``A_k``, K×D×D."""
        if self.covariance == "full":
            return self.a_full
        return torch.tril(self.a_off, diagonal=-1) + torch.diag_embed(F.softplus(self.a_diag))

    def covariance_matrices(self) -> torch.Tensor:
        """``Σ_k = A_k A_kᵀ + εI``, K×D×D."""
        a = self.A()
        eye = torch.eye(self.z_dim, device=a.device, dtype=a.dtype)
        return a @ a.transpose(1, 2) + self.eps * eye

    def transform(self, k: torch.Tensor, e: torch.Tensor, e2: torch.Tensor | None = None) -> torch.Tensor:
        """``z = μ_k + A_k e (+ √ε e2)``: component indices ``k`` (N) and standard normals ``e`` (N×D) → N×D.

        Differentiable in μ and A (the reparameterisation). ``e2`` is needed when ε > 0.
        """
        z = self.mu[k] + torch.einsum("nij,nj->ni", self.A()[k], e)
        if self.eps > 0:
            if e2 is None:
                raise ValueError("MixturePrior.transform: eps > 0 needs the second normal draw e2")
            z = z + math.sqrt(self.eps) * e2
        return z

    def draw_normals(self, n: int, rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The standard normals one batch of ``n`` latents needs: ``e`` (n×D) then, when ε > 0, ``e2``."""
        e = torch.randn((n, self.z_dim), generator=rng)
        e2 = torch.randn((n, self.z_dim), generator=rng) if self.eps > 0 else None
        return e, e2

    def sample(self, n: int, rng: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` latents from the mixture: ``(z n×D, k n)``.

        Draw order from ``rng`` (CPU): the components ``k ~ Categorical(π)`` (``torch.multinomial``),
        then ``e`` and, when ε > 0, ``e2`` (:meth:`draw_normals`).
        """
        k = torch.multinomial(self.pi.detach().float().cpu(), n, replacement=True, generator=rng)
        e, e2 = self.draw_normals(n, rng)
        dev = self.mu.device
        return self.transform(k.to(dev), e.to(dev), None if e2 is None else e2.to(dev)), k

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under the mixture with weights π; N×D → N."""
        if self.covariance == "cholesky" and self.eps == 0:
            tril = self.A()  # Σ = A Aᵀ with A lower-triangular, positive diagonal: A is its Cholesky factor
        else:
            tril = torch.linalg.cholesky(self.covariance_matrices().double()).to(self.mu.dtype)
        mvn = torch.distributions.MultivariateNormal(self.mu, scale_tril=tril)
        comp = mvn.log_prob(z.unsqueeze(1))  # N×K
        return torch.logsumexp(comp + torch.log(self.pi.clamp_min(1e-12)), dim=1)


# --------------------------------------------------------------------------------------------
# DCGAN generator, discriminator, classifiers (seed Tables 1-3)


def _stages(resolution: int) -> int:
    """Stride-2 stages: 2 up to 64², one more per doubling above (start map D/4, at most 16²)."""
    if resolution < 16 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 16, got {resolution}")
    return 2 + max(0, int(math.log2(resolution)) - 6)


def _ch(n: int, width: float) -> int:
    return max(1, round(n * width))


class DCGANGenerator(nn.Module):
    """Seed Table 2: Linear → (R/4)²·256 (+BN, LeakyReLU); ConvT k5 s1 → 128; ConvT k5 s2 stages → 1, tanh.

    Above 64² one ConvT k5 s2 stage per doubling (channels halving), from a 16² start map.

    Args:
        z_dim: latent size.
        resolution: image side R (power of two ≥ 16).
        width: channel multiplier (1 = the seed's 256/128/64).
        img_channels: output channels.

    Shapes: ``N × z_dim`` → ``N × img_channels × R × R`` in [-1, 1].
    """

    def __init__(self, z_dim: int, resolution: int, width: float = 1.0, img_channels: int = 1) -> None:
        super().__init__()
        n = _stages(resolution)
        self.start = resolution // 2 ** n
        c0, c1 = _ch(256, width), _ch(128, width)
        self.fc = nn.Sequential(nn.Linear(z_dim, self.start ** 2 * c0, bias=False), nn.BatchNorm1d(self.start ** 2 * c0), nn.LeakyReLU(0.2))
        layers: list[nn.Module] = [nn.ConvTranspose2d(c0, c1, 5, 1, 2, bias=False), nn.BatchNorm2d(c1), nn.LeakyReLU(0.2)]
        c = c1
        for i in range(n):
            last = i == n - 1
            out = img_channels if last else _ch(128 // 2 ** (i + 1), width)
            layers.append(nn.ConvTranspose2d(c, out, 5, 2, 2, output_padding=1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        self.body = nn.Sequential(*layers)
        self.c0 = c0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.c0, self.start, self.start)
        return self.body(x)


class Encoder(nn.Module):
    """Seed Table 3 without its last layer: Conv k5 s2 → 64 (LeakyReLU), Conv k4 s2 → 128 (+BN), one
    more Conv k4 s2 (channels doubling) per doubling above 64²; flattened. ``N×C×R×R`` → ``N × out_features``."""

    def __init__(self, resolution: int, width: float = 1.0, img_channels: int = 1) -> None:
        super().__init__()
        n = _stages(resolution)
        c = _ch(64, width)
        layers: list[nn.Module] = [nn.Conv2d(img_channels, c, 5, 2, 2), nn.LeakyReLU(0.2)]
        for i in range(1, n):
            out = _ch(64 * 2 ** i, width)
            layers += [nn.Conv2d(c, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            c = out
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.out_features = c * (resolution // 2 ** n) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DCGANDiscriminator(nn.Module):
    """Seed Table 3: :class:`Encoder` + Linear → 1 (a logit). ``N×C×R×R`` → ``N``."""

    def __init__(self, resolution: int, width: float = 1.0, img_channels: int = 1) -> None:
        super().__init__()
        self.encoder = Encoder(resolution, width, img_channels)
        self.head = nn.Linear(self.encoder.out_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(1)


class SharedClassifier(nn.Module):
    """C sharing D's encoder (seed Table 1, shared variant): ``encoder`` + Linear → K logits.

    ``forward(x, detach_encoder=True)`` stops the gradient at the head (the adversarial term's
    gradient into C, seed gap §2.7 #5). Shapes: ``N×C×R×R`` → ``N × K`` logits.
    """

    def __init__(self, encoder: Encoder, components: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_features, components)

    def forward(self, x: torch.Tensor, detach_encoder: bool = False) -> torch.Tensor:
        h = self.encoder(x)
        return self.head(h.detach() if detach_encoder else h)

    def own_parameters(self) -> list[nn.Parameter]:
        """The parameters C adds to D (its head)."""
        return list(self.head.parameters())


class StandaloneClassifier(nn.Module):
    """Seed Table 1, stand-alone: Conv k5 s1 → 32, ReLU, MaxPool 2, Conv k5 s2 → 16, ReLU, flatten,
    Linear → 1024, ReLU, Linear → K (the table's max-pool input typo read as the 32-channel map).
    Channels scale with ``width``. Shapes: ``N×C×R×R`` → ``N × K`` logits."""

    def __init__(self, resolution: int, components: int, width: float = 1.0, img_channels: int = 1) -> None:
        super().__init__()
        c1, c2, hidden = _ch(32, width), _ch(16, width), _ch(1024, width)
        self.body = nn.Sequential(
            nn.Conv2d(img_channels, c1, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, 2, 2), nn.ReLU(), nn.Flatten(),
            nn.Linear(c2 * (resolution // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, components),
        )

    def forward(self, x: torch.Tensor, detach_encoder: bool = False) -> torch.Tensor:
        return self.body(x)

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())


# --------------------------------------------------------------------------------------------
# The networks that later stages load (family protocol)


class DCGANNetwork(nn.Module):
    """The plain GAN of seed 002's networks (family ``dcgan``): z ~ N(0, I) → G(z).

    Protocol of :mod:`brainlatent.models.families`: ``arch``, ``z_dim``, ``w_dim`` (= z_dim),
    ``c_dim`` 0, ``resolution``, ``has_mapping`` False, ``normalizes_z`` False, ``mapping(z)`` (the
    identity), ``synthesis(w, noise=None)``, ``noise_shapes()`` ([]).

    Args:
        z_dim: latent size; resolution: image side; width: channel multiplier; arch: the family name.
    """

    has_mapping = False
    normalizes_z = False
    c_dim = 0

    def __init__(self, z_dim: int, resolution: int = 64, width: float = 1.0, arch: str = "dcgan", img_channels: int = 1) -> None:
        super().__init__()
        self.config: dict[str, Any] = {"z_dim": z_dim, "resolution": resolution, "width": width, "arch": arch, "img_channels": img_channels}
        self.arch, self.z_dim, self.w_dim, self.resolution = arch, int(z_dim), int(z_dim), int(resolution)
        self.G = DCGANGenerator(z_dim, resolution, width, img_channels)

    def mapping(self, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Z → W is the identity (no mapping network)."""
        return z

    def synthesis(self, w: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``N × z_dim`` → ``N × 1 × R × R`` (no noise inputs)."""
        return self.G(w)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        return []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z)


class GMMGANNetwork(DCGANNetwork):
    """Seed 002's generator with its learned prior and responsibility classifier C.

    Adds to :class:`DCGANNetwork`: ``components`` (K), ``prior`` (:class:`MixturePrior`),
    ``classifier`` (C, shared-encoder or stand-alone; for the shared variant the saved network holds
    a copy of D's encoder), ``sample_z(n, rng)``, ``component_z(k, e, e2)`` and ``responsibilities(x)``.

    Args:
        z_dim, resolution, width, img_channels: as :class:`DCGANNetwork`.
        components: K.
        classifier: ``"shared"`` or ``"standalone"``.
        covariance, eps, mean_std: see :class:`MixturePrior`.
        arch: the family name (``gmmgan`` or ``gmmgan<K>``).
    """

    def __init__(
        self,
        z_dim: int,
        components: int,
        resolution: int = 64,
        width: float = 1.0,
        classifier: str = "shared",
        covariance: str = "cholesky",
        eps: float = 0.0,
        mean_std: float = 1.0,
        arch: str = "gmmgan",
        img_channels: int = 1,
    ) -> None:
        super().__init__(z_dim, resolution, width, arch, img_channels)
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.config.update(components=components, classifier=classifier, covariance=covariance, eps=eps, mean_std=mean_std)
        self.components = int(components)
        self.prior = MixturePrior(components, z_dim, covariance, eps, mean_std)
        if classifier == "shared":
            self.classifier = SharedClassifier(Encoder(resolution, width, img_channels), components)
        else:
            self.classifier = StandaloneClassifier(resolution, components, width, img_channels)

    def sample_z(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``n × z_dim`` latents from the learned mixture (weights π); draw order: see :meth:`MixturePrior.sample`."""
        return self.prior.sample(n, rng)[0]

    def component_z(self, k: int | torch.Tensor, e: torch.Tensor, e2: torch.Tensor | None = None) -> torch.Tensor:
        """``μ_k + A_k e (+ √ε e2)`` for one component (int) or per-row components (N); ``e`` N×D."""
        k = torch.full((len(e),), int(k), dtype=torch.long, device=e.device) if isinstance(k, int) else k
        return self.prior.transform(k, e, e2)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """``α = softmax(C(x))``: ``N×1×R×R`` → ``N × K``."""
        return torch.softmax(self.classifier(x).float(), dim=1)


# --------------------------------------------------------------------------------------------
# Weights-only storage


def network_dict(net: DCGANNetwork, kimg: float, seed: int, fingerprint: str | None = None) -> dict[str, Any]:
    """What ``network.pt`` holds: ``arch``, constructor arguments, weights (G, prior with π, C), provenance."""
    return {
        "arch": net.arch,
        "z_dim": net.z_dim,
        "network_class": type(net).__name__,
        "network_config": dict(net.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "kimg": float(kimg),
        "seed": int(seed),
        "fingerprint": fingerprint,
    }


def save_network(path: str | Path, net: DCGANNetwork, kimg: float, seed: int, fingerprint: str | None = None) -> None:
    """Write ``network.pt`` atomically (see :func:`network_dict`)."""
    from brainlatent.io import save_torch

    save_torch(path, network_dict(net, kimg, seed, fingerprint))


def build_network(network_class: str, config: dict) -> DCGANNetwork:
    """A fresh :class:`DCGANNetwork` or :class:`GMMGANNetwork` from its constructor arguments."""
    classes = {"DCGANNetwork": DCGANNetwork, "GMMGANNetwork": GMMGANNetwork}
    if network_class not in classes:
        raise BrainlatentError(f"network class {network_class!r}: expected one of {list(classes)}")
    return classes[network_class](**config)


def load_network(path: str | Path, device: str | torch.device = "cpu") -> DCGANNetwork:
    """Rebuild a ``dcgan``/``gmmgan`` network from ``network.pt`` (weights only), in eval mode, frozen."""
    from brainlatent.io import load_torch

    data = load_torch(path, map_location="cpu")
    missing = [k for k in ("network_class", "network_config", "state_dict") if not isinstance(data, dict) or k not in data]
    if missing:
        raise BrainlatentError(f"{path}: not a dcgan/gmmgan network file; missing keys {missing}")
    try:
        net = build_network(data["network_class"], data["network_config"])
        net.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BrainlatentError(f"{path}: network weights do not match its network_config ({exc})") from None
    return net.to(device).eval().requires_grad_(False)
