"""Seed 002's operations on a trained mixture-prior GAN (:class:`brainlatent.models.gmm.GMMGANNetwork`).

* :func:`component_grid`: one row per component, one column per shared noise draw ``e``
  (``z = μ_k + A_k e``, seed Figure 2).
* :func:`interpolate_pair`: the straight line from ``μ_j + A_j e`` to ``μ_k + A_k e``, ``e`` fixed.
* :func:`interpolate_three`: barycentric blends of three components' latents on a triangular grid
  (seed Figure 3): ``z = Σ_c w_c (μ_c + A_c e)``, ``w`` on the simplex.
* :func:`segment`: ``argmax_k C(x)`` and the responsibilities ``C(x)`` of real images.

Every function takes a seed (or the draws) so its pictures are reproducible; none trains anything.
"""

from __future__ import annotations

import torch

from brainlatent.errors import BrainlatentError


def _check(net) -> None:
    if not hasattr(net, "prior") or not hasattr(net, "responsibilities"):
        raise BrainlatentError(f"network '{getattr(net, 'arch', type(net).__name__)}' has no mixture prior and classifier (not a gmmgan)")


def shared_normals(net, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` shared draws ``(e, e2)`` (``n × z_dim``; ``e2`` only when the prior has ε > 0), seeded."""
    _check(net)
    rng = torch.Generator().manual_seed(int(seed))
    return net.prior.draw_normals(n, rng)


def _to(x: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if x is None else x.to(device)


@torch.no_grad()
def component_latents(net, e: torch.Tensor, e2: torch.Tensor | None = None) -> torch.Tensor:
    """``K × n × z_dim``: every component's latent for each shared draw."""
    _check(net)
    dev = net.prior.mu.device
    e, e2 = e.to(dev), _to(e2, dev)
    return torch.stack([net.component_z(k, e, e2) for k in range(net.components)])


@torch.no_grad()
def component_grid(net, n: int, seed: int) -> torch.Tensor:
    """Per-component samples with shared noise: ``K × n × 1 × R × R`` (row k = component k)."""
    e, e2 = shared_normals(net, n, seed)
    z = component_latents(net, e, e2)
    return net.synthesis(z.flatten(0, 1)).view(net.components, n, *net.synthesis(z[0, :1]).shape[1:])


@torch.no_grad()
def interpolate_pair(net, j: int, k: int, e: torch.Tensor, steps: int, e2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lerp from component ``j`` to ``k`` with the noise held fixed.

    Args:
        net: a gmmgan network.
        j, k: component indices.
        e: ``n × z_dim`` shared draws (``e2`` likewise when ε > 0).
        steps: points per path, ``t = linspace(0, 1, steps)``.

    Returns:
        ``(latents n × steps × z_dim, images n × steps × 1 × R × R)``.
    """
    z = component_latents(net, e, e2)
    t = torch.linspace(0, 1, steps, device=z.device).view(1, steps, 1)
    path = z[j].unsqueeze(1) * (1 - t) + z[k].unsqueeze(1) * t
    imgs = net.synthesis(path.flatten(0, 1))
    return path, imgs.view(len(e), steps, *imgs.shape[1:])


def barycentric_weights(steps: int) -> torch.Tensor:
    """Every ``(a, b, c)`` with ``a + b + c = 1`` on a grid of ``steps`` points per edge: ``M × 3``.

    Example:
        >>> barycentric_weights(2).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    n = steps - 1
    rows = [(n - i - j, i, j) for i in range(n + 1) for j in range(n + 1 - i)]
    rows.sort(key=lambda r: (-r[0], -r[1]))
    return torch.tensor(rows, dtype=torch.float32) / max(n, 1)


@torch.no_grad()
def interpolate_three(net, comps: tuple[int, int, int], e: torch.Tensor, steps: int, e2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Three-component blends for one shared draw ``e`` (``1 × z_dim``).

    Returns:
        ``(weights M × 3, images M × 1 × R × R)`` for the barycentric grid of :func:`barycentric_weights`.
    """
    if len(set(comps)) != 3:
        raise BrainlatentError(f"interpolate_three: expected three different components, got {comps}")
    z = component_latents(net, e[:1], None if e2 is None else e2[:1])[list(comps), 0]  # 3 × D
    w = barycentric_weights(steps).to(z.device)
    return w, net.synthesis(w @ z)


@torch.no_grad()
def segment(net, images, batch_size: int = 64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmax_k C(x)`` and ``C(x)`` of real images ``N × 1 × R × R`` → ``(N labels, N × K responsibilities)``."""
    _check(net)
    device = device or net.prior.mu.device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.as_tensor(images[i:i + batch_size], dtype=torch.float32).to(device)
        out.append(net.responsibilities(x).cpu())
    resp = torch.cat(out) if out else torch.zeros(0, net.components)
    return resp.argmax(dim=1), resp
