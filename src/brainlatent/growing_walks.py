"""Seed 003's walks: group-restricted walks, coordinate walks, and group style transfer (PNG strips, GIFs).

* **Group walk** (seed §3.6): a reference prior draw; the group's coordinates are redrawn 4 times
  (fresh unit-norm prior vectors, copied in without renormalising), giving 5 codes that differ only
  in the group; consecutive codes are joined by linear interpolation.
* **Coordinate walk**: one coordinate set to evenly spaced values over ``±0.125`` in the seed's
  units (about ±2 standard deviations of one coordinate; ``±0.125·√P`` in protocol units,
  :mod:`brainlatent.latent_groups`), the rest of the reference kept.
* **Style transfer** (seed §9): the group's coordinates copied from a source code into a reference code.

Example:
    >>> from brainlatent.models.growing import GrowingGenerator
    >>> from brainlatent.models.growing_plan import GrowthPlan
    >>> G = GrowingGenerator(GrowthPlan("bgan", 8, 16), 1)
    >>> group_walk_frames(G, (0, 8), seed=0, steps=3).shape
    (13, 8, 8)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from brainlatent.images import image_grid, save_gif, save_png, save_strip, to_uint8
from brainlatent.latent_groups import (
    PRIOR_DIM,
    group_label,
    groups_for,
    resample_group,
    sample_prior,
)

#: the seed's coordinate range, in seed units
COORD_RANGE = 0.125


def _prior_dim(generator) -> int:
    return int(getattr(getattr(generator, "plan", None), "prior_dim", PRIOR_DIM))


@torch.no_grad()
def _images(generator, z: torch.Tensor, device="cpu") -> torch.Tensor:
    return generator.synthesis(generator.mapping(z.to(device)), noise=None).float().cpu()


def group_walk_latents(generator, group: tuple[int, int], seed: int, points: int = 5, steps: int = 8) -> torch.Tensor:
    """``(points − 1)·steps + 1 × z_dim`` codes: the reference, its group redrawn ``points − 1`` times, joined linearly."""
    rng = torch.Generator().manual_seed(int(seed))
    pdim = _prior_dim(generator)
    ref = sample_prior(1, generator.z_dim, rng, pdim)[0]
    keys = torch.cat([ref[None], resample_group(ref, group, points - 1, rng, pdim)])
    t = torch.linspace(0, 1, steps + 1)[:-1, None]
    path = [keys[i] + t * (keys[i + 1] - keys[i]) for i in range(points - 1)]
    return torch.cat(path + [keys[-1:]])


def group_walk_frames(generator, group: tuple[int, int], seed: int, points: int = 5, steps: int = 8, device="cpu") -> np.ndarray:
    """uint8 frames ``T × R × R`` of one group walk."""
    return to_uint8(_images(generator, group_walk_latents(generator, group, seed, points, steps), device))


def coordinate_walk_latents(generator, dim: int, seed: int, steps: int = 9, half_range: float = COORD_RANGE) -> torch.Tensor:
    """``steps × z_dim``: coordinate ``dim`` of one reference over ``±half_range`` (seed units)."""
    pdim = _prior_dim(generator)
    ref = sample_prior(1, generator.z_dim, torch.Generator().manual_seed(int(seed)), pdim)[0]
    z = ref.repeat(steps, 1)
    z[:, dim] = torch.linspace(-half_range, half_range, steps) * math.sqrt(pdim)
    return z


def style_transfer(source: torch.Tensor, reference: torch.Tensor, group: tuple[int, int]) -> torch.Tensor:
    """``reference`` with the coordinates of ``group`` taken from ``source`` (both ``N × z_dim``, or 1-D)."""
    out = reference.clone()
    out[..., group[0]:group[1]] = source[..., group[0]:group[1]]
    return out


def write_walks(generator, out_dir: str | Path, seed: int = 0, dims: list[int] | None = None, device="cpu") -> dict[str, str]:
    """Write group walks, coordinate walks and a style-transfer grid; returns name -> path.

    Files: ``group_<first>-<last>.{png,gif}`` per group, ``coord_<d>.{png,gif}`` per dimension
    (1-based names; default dims 1, 2, 5 and the last), ``style_transfer.png`` (rows: per group the
    reference with that group copied from the source; first row source, second row reference; 4
    source/reference pairs as columns).
    """
    out_dir = Path(out_dir)
    z_dim = generator.z_dim
    dims = dims if dims is not None else sorted({d for d in (0, 1, 4, z_dim - 1) if d < z_dim})
    written = {}
    for g in groups_for(z_dim):
        frames = group_walk_frames(generator, g, seed, device=device)
        name = f"group_{group_label(g)}"
        save_gif(frames, out_dir / f"{name}.gif")
        save_strip(frames, out_dir / f"{name}.png", n=5 * 2 - 1)
        written[f"{name}.gif"], written[f"{name}.png"] = str(out_dir / f"{name}.gif"), str(out_dir / f"{name}.png")
    for d in dims:
        frames = to_uint8(_images(generator, coordinate_walk_latents(generator, d, seed), device))
        name = f"coord_{d + 1}"
        save_gif(frames, out_dir / f"{name}.gif")
        save_strip(frames, out_dir / f"{name}.png", n=len(frames))
        written[f"{name}.gif"], written[f"{name}.png"] = str(out_dir / f"{name}.gif"), str(out_dir / f"{name}.png")
    rng = torch.Generator().manual_seed(int(seed) + 1)
    src, ref = (sample_prior(4, z_dim, rng, _prior_dim(generator)) for _ in range(2))
    rows = [src, ref] + [style_transfer(src, ref, g) for g in groups_for(z_dim)]
    save_png(image_grid(_images(generator, torch.cat(rows), device), ncols=4, pad=1), out_dir / "style_transfer.png")
    written["style_transfer.png"] = str(out_dir / "style_transfer.png")
    return written
