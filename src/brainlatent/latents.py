"""Seeded sampling from any generator family: latents, labels, noise, images.

Every metric and picture draws through here, so an image is a function of (network, seed, batch
layout) alone. Any family's network follows the protocol of :mod:`brainlatent.models.families`:
``z_dim``, ``c_dim`` (0 = unconditional), ``has_mapping``, ``mapping(z)`` or ``mapping(z, c)``,
``synthesis(w, noise)``, ``noise_shapes()`` and, for conditional families, ``sample_labels(n, rng)``
(labels drawn from the training table's joint distribution). A family whose prior is not N(0, I)
(the learned mixture of ``gmmgan``) has ``sample_z(n, rng) -> n x z_dim``; :func:`sample_z` uses it.

Example:
    >>> from brainlatent.models.stylegan import Generator
    >>> G = Generator(8, resolution=8, channels_base=64, channels_max=8)
    >>> s = sample(G, 3, seed=1)
    >>> s.images.shape, sorted(s.latents)
    (torch.Size([3, 1, 8, 8]), ['w', 'z'])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from brainlatent.progress import progress


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation ``a + (b - a) * t``.

    Args:
        a, b: ``N x ...`` endpoints (e.g. ``N x w_dim`` or ``N x L x w_dim``).
        t: ``N`` interpolation positions (broadcast over the trailing axes).

    Example:
        >>> lerp(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.0, 0.5]))[:, 0].tolist()
        [0.0, 0.5]
    """
    t = t.reshape(-1, *([1] * (a.ndim - 1))).to(a.dtype)
    return a + (b - a) * t


def _normalise(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the *normalised* endpoints (NVlabs' definition).

    The result has unit norm: ``normalise(a cos(t*theta) + c sin(t*theta))`` with
    ``theta = acos(a . b)`` and ``c`` the unit component of ``b`` orthogonal to ``a``.

    Args:
        a, b: ``N x d`` endpoints (any norm; they are normalised first).
        t: ``N`` interpolation positions.

    Example:
        >>> s = slerp(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([0.5]))
        >>> [round(v, 4) for v in s[0].tolist()]
        [0.7071, 0.7071]
    """
    a = _normalise(a)
    b = _normalise(b)
    t = t.reshape(-1, 1).to(a.dtype)
    d = (a * b).sum(dim=-1, keepdim=True)
    p = t * torch.acos(d.clamp(-1.0, 1.0))
    c = _normalise(b - d * a)
    return _normalise(a * torch.cos(p) + c * torch.sin(p))


def sample_noise(generator, n: int, rng: torch.Generator) -> list[torch.Tensor]:
    """Independent per-image noise, ``n x 1 x H x W`` per noise layer, drawn from ``rng`` ([] without noise)."""
    return [torch.randn((n, *tuple(shape[1:])), generator=rng) for shape in generator.noise_shapes()]


def sample_z(generator, n: int, rng: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n x z_dim`` latents from the family's prior: ``generator.sample_z(n, rng)`` when it has one, else N(0, I)."""
    own = getattr(generator, "sample_z", None)
    if own is not None:
        return own(n, rng).cpu().to(dtype)
    return torch.randn((n, generator.z_dim), generator=rng, dtype=dtype)


def sample_labels(generator, n: int, rng: torch.Generator) -> torch.Tensor | None:
    """``n x c_dim`` labels from the family's label distribution; ``None`` for an unconditional family."""
    if not getattr(generator, "c_dim", 0):
        return None
    return generator.sample_labels(n, rng)


def to_w(generator, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Z (and labels) → W: the mapping network, or the family's identity when it has none."""
    return generator.mapping(z) if c is None else generator.mapping(z, c)


@dataclass
class Batch:
    """One batch of a seeded draw: ``z`` (N x z_dim), ``c`` (labels or None), ``w``, ``noise``, ``images``."""

    z: torch.Tensor
    c: torch.Tensor | None
    w: torch.Tensor
    noise: list[torch.Tensor]
    images: torch.Tensor


def batches(
    generator,
    n: int,
    seed: int,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    labels: torch.Tensor | None = None,
    desc: str = "samples",
) -> Iterator[Batch]:
    """``n`` images in batches, z from the prior, random noise, labels drawn (or ``labels`` given), no truncation.

    Draw order per batch from one CPU generator seeded with ``seed``: z (:func:`sample_z`: N(0, I), or
    the family's own ``sample_z`` draws, e.g. the mixture's components then its normals), labels, noise.
    """
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    n_batches = math.ceil(n / batch_size)
    for b in progress(range(n_batches), n_batches, desc):
        m = min(batch_size, n - b * batch_size)
        z = sample_z(generator, m, rng)
        c = labels[b * batch_size: b * batch_size + m] if labels is not None else sample_labels(generator, m, rng)
        noise = [x.to(device) for x in sample_noise(generator, m, rng)]
        z, c = z.to(device), (c.to(device) if c is not None else None)
        w = to_w(generator, z, c)
        yield Batch(z, c, w, noise, generator.synthesis(w, noise=noise))


@dataclass
class Sample:
    """``images`` (N x 1 x R x R) with their ``latents`` in every space the family has, and ``labels``."""

    images: torch.Tensor
    latents: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None


@torch.no_grad()
def sample(generator, n: int, seed: int, labels: torch.Tensor | None = None, batch_size: int = 64,
           device: str | torch.device = "cpu") -> Sample:
    """The family-independent ``sample(n, seed, labels=None)``: images and latents in Z (and W)."""
    parts = list(batches(generator, n, seed, batch_size, device, labels))
    latents = {"z": torch.cat([p.z for p in parts]).cpu()}
    if generator.has_mapping:
        latents["w"] = torch.cat([p.w for p in parts]).cpu()
    c = torch.cat([p.c for p in parts]).cpu() if parts and parts[0].c is not None else None
    return Sample(torch.cat([p.images.float() for p in parts]).cpu(), latents, c)


def path_latents(generator, z0: torch.Tensor, z1: torch.Tensor, ts: torch.Tensor, space: str,
                 c: torch.Tensor | None = None) -> torch.Tensor:
    """The generator input (w) along a linear path between two z endpoints.

    Args:
        generator: any family's network.
        z0, z1: ``z_dim`` endpoint vectors (1-D).
        ts: ``S`` positions in ``[0, 1]``.
        space: ``"z"`` (lerp in Z, then map every point) or ``"w"`` (map the endpoints, then lerp).
        c: ``1 x c_dim`` label held fixed along the path (conditional families), else None.

    Returns:
        ``S x ...`` w vectors (whatever shape ``mapping`` returns per sample).
    """
    from brainlatent.errors import BrainlatentError

    s = ts.numel()
    ts = ts.to(z0.device, torch.float32)
    if space == "z":
        return to_w(generator, lerp(z0.expand(s, -1), z1.expand(s, -1), ts), None if c is None else c.expand(s, -1))
    if space == "w":
        if not generator.has_mapping:
            raise BrainlatentError(f"arch '{getattr(generator, 'arch', '?')}' has no mapping network, so no W space")
        w = to_w(generator, torch.stack([z0, z1]), None if c is None else c.expand(2, -1))
        return lerp(w[:1].expand(s, *w.shape[1:]), w[1:].expand(s, *w.shape[1:]), ts)
    raise BrainlatentError(f"latent path: space must be 'z' or 'w', got '{space}'")


@torch.no_grad()
def render_path(generator, z0: torch.Tensor, z1: torch.Tensor, steps: int, space: str, noise: list[torch.Tensor],
                batch_size: int = 64, c: torch.Tensor | None = None) -> torch.Tensor:
    """Images along a linear path, ``steps x 1 x R x R``, one noise draw (and label) shared by every step.

    Args:
        generator: any family's network.
        z0, z1: ``z_dim`` endpoints on the generator's device.
        steps: number of points, endpoints included.
        space: ``"z"`` or ``"w"`` (see :func:`path_latents`).
        noise: tensors ``1 x 1 x H x W`` (one per ``generator.noise_shapes()``), broadcast over steps.
        batch_size: images per synthesis call.
        c: ``1 x c_dim`` label for a conditional family.
    """
    ts = torch.linspace(0.0, 1.0, steps)
    w = path_latents(generator, z0, z1, ts, space, c)
    return torch.cat([generator.synthesis(chunk, noise=noise) for chunk in w.split(batch_size)])
