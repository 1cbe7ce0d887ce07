"""The growing models' latent prior and the coordinate groups their walks and metrics vary.

Seed 003 (latent-space growing, §3.3): draw ``u ~ N(0, I_P)`` (P = 256), normalise it to unit
length and feed its first ``m`` coordinates. brainlatent's network protocol samples Z as
``N(0, I)``; the growing networks therefore take ``z = √P · u[:m]`` (each coordinate ≈ N(0, 1))
and divide by ``√P`` before their first layer, so the weights see exactly the seed's inputs
(for P = 256 the factor is 16, a power of two: the round trip is exact in floating point).

Seed units vs protocol units: a seed coordinate walk over ``±0.125`` is ``±0.125·√P = ±2`` here.

Groups (1-based, inclusive in the seed): {1–8, 9–16, 17–32, 33–64, 65–128, 129–256}; here
0-based half-open ``(0, 8), (8, 16), ...`` cut at the latent size.
"""

from __future__ import annotations

import math

import torch

#: the seed's prior dimensionality
PRIOR_DIM = 256
#: the seed's groups as 0-based half-open ranges
GROUPS = ((0, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 256))


def groups_for(z_dim: int) -> list[tuple[int, int]]:
    """The seed's groups that fit in ``z_dim`` (the last one cut at ``z_dim``; extra doubling groups above 256).

    Example:
        >>> groups_for(64)
        [(0, 8), (8, 16), (16, 32), (32, 64)]
        >>> groups_for(12)
        [(0, 8), (8, 12)]
    """
    out = []
    lo, hi = 0, 8
    while lo < z_dim:
        out.append((lo, min(hi, z_dim)))
        lo, hi = hi, hi * 2
    return out


def group_label(group: tuple[int, int]) -> str:
    """``(8, 16)`` → ``"9-16"`` (the seed's 1-based naming)."""
    return f"{group[0] + 1}-{group[1]}"


def prior_units(n: int, rng: torch.Generator, prior_dim: int = PRIOR_DIM) -> torch.Tensor:
    """``n × prior_dim`` unit-norm Gaussian vectors in the seed's units (float32, CPU)."""
    u = torch.randn((n, prior_dim), generator=rng, dtype=torch.float64)
    return (u / u.norm(dim=1, keepdim=True)).float()


def to_protocol(u: torch.Tensor, z_dim: int, prior_dim: int = PRIOR_DIM) -> torch.Tensor:
    """Seed-unit vectors (``N × ≥z_dim``) → the first ``z_dim`` coordinates in protocol units (``× √P``)."""
    return u[:, :z_dim] * math.sqrt(prior_dim)


def sample_prior(n: int, z_dim: int, rng: torch.Generator, prior_dim: int = PRIOR_DIM) -> torch.Tensor:
    """``n × z_dim`` latents from the seed's prior, in protocol units (``√P · u[:z_dim]``)."""
    return to_protocol(prior_units(n, rng, prior_dim), z_dim, prior_dim)


def resample_group(reference: torch.Tensor, group: tuple[int, int], k: int, rng: torch.Generator,
                   prior_dim: int = PRIOR_DIM) -> torch.Tensor:
    """``k`` copies of one reference whose group coordinates come from fresh prior draws.

    Seed choice (§3.8 #5): a fresh ``prior_dim``-d normalised vector per copy; its group coordinates
    are copied into the reference without renormalising.

    Args:
        reference: one latent, ``z_dim`` (protocol units).
        group: 0-based half-open coordinate range.
        k: number of copies.
        rng: CPU generator.

    Returns:
        ``k × z_dim`` latents that differ from ``reference`` only inside ``group``.
    """
    lo, hi = group
    fresh = to_protocol(prior_units(k, rng, prior_dim), reference.shape[-1], prior_dim)
    out = reference.detach().cpu().reshape(1, -1).repeat(k, 1)
    out[:, lo:hi] = fresh[:, lo:hi]
    return out
