"""Editing with a conditional generator (``cwgan``, ``cstylegan``): swaps, interpolations, grids.

Seed 004's operations (seed-systems.md §4.5), for any network with ``c_dim > 0``:

* **attribute swap, z fixed** (:func:`swap_labels`): ``single`` sets one attribute and holds the
  others; ``consistent`` sets it and resamples the correlated others from p(others | new value) of
  the training table (the slice position is held in both);
* **y-interpolation, z fixed** (:func:`y_path`), **z-interpolation, y fixed** (:func:`z_path`);
* **four-corner grid** (:func:`four_corner`): four random (z, y) corners, z and y bilinear inside.

Images come from :func:`render` (the network's own noise held per z, so a row differs only by y) and
pictures are written by :func:`edit_pictures` through :mod:`brainlatent.images`.

Example:
    >>> G = load_network("results/conditional/gan/cwgan-z32/network.pt")   # doctest: +SKIP
    >>> z, c = torch.randn(4, G.z_dim), G.sample_labels(4, torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> before, after = render(G, z, c), render(G, z, swap_labels(G, c, "sex", "M"))            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.images import image_grid, save_png
from brainlatent.labels import SLICE

MODES = ("single", "consistent")


def check_conditional(G) -> None:
    if not getattr(G, "c_dim", 0):
        raise BrainlatentError(f"the '{getattr(G, 'arch', '?')}' network is unconditional: it takes no labels")


def fixed_noise(G, n: int, rng: torch.Generator) -> list[torch.Tensor]:
    """One noise map per image and noise layer (``n x 1 x H x W``; [] for a family without noise)."""
    return [torch.randn((n, *tuple(s[1:])), generator=rng) for s in G.noise_shapes()]


@torch.no_grad()
def render(G, z: torch.Tensor, c: torch.Tensor, noise: list[torch.Tensor] | None = None, batch_size: int = 64) -> torch.Tensor:
    """Images ``N x 1 x R x R`` (CPU float) of ``z`` (``N x z_dim``) under labels ``c`` (``N x c_dim``).

    ``noise`` (from :func:`fixed_noise`, ``N`` rows) is held; ``None`` = zero noise maps, so the
    image is a function of (z, c) alone.
    """
    check_conditional(G)
    if len(z) != len(c):
        raise BrainlatentError(f"render: {len(z)} latents but {len(c)} label vectors")
    device = next(iter(G.parameters()), torch.zeros(())).device
    if noise is None:
        noise = [torch.zeros((len(z), *tuple(s[1:]))) for s in G.noise_shapes()]
    out = []
    for s in range(0, len(z), batch_size):
        zb, cb = z[s:s + batch_size].to(device), c[s:s + batch_size].to(device)
        nb = [n[s:s + batch_size].to(device) for n in noise]
        out.append(G.synthesis(G.mapping(zb, cb), noise=nb or None).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1, G.resolution, G.resolution)


def swap_labels(G, c: torch.Tensor, name: str, value, mode: str = "single", rng: torch.Generator | None = None) -> torch.Tensor:
    """``c`` with attribute ``name`` set to raw ``value`` (``"single"``) or set with the others resampled
    from p(others | value) of the training table (``"consistent"``; ``rng`` draws the rows)."""
    check_conditional(G)
    if mode == "single":
        return G.labels.set_value(c, name, value)
    if mode == "consistent":
        if name == SLICE:
            raise BrainlatentError("a consistent swap of the slice position is not defined (it is a nuisance variable)")
        return G.table.consistent(c, name, value, rng or torch.Generator().manual_seed(0))
    raise BrainlatentError(f"swap mode {mode!r}: expected one of {MODES}")


def lerp_rows(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` rows from ``a`` to ``b`` (both ``d``), ends included: ``steps x d``."""
    t = torch.linspace(0, 1, steps).view(-1, 1)
    return a.view(1, -1) + t * (b - a).view(1, -1)


def y_path(G, z: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """z fixed (``z_dim``), y linear from ``c0`` to ``c1`` (``c_dim`` each): ``steps x 1 x R x R``."""
    return render(G, z.view(1, -1).expand(steps, -1), lerp_rows(c0, c1, steps))


def z_path(G, z0: torch.Tensor, z1: torch.Tensor, c: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """y fixed (``c_dim``), z linear from ``z0`` to ``z1``: ``steps x 1 x R x R``."""
    return render(G, lerp_rows(z0, z1, steps), c.view(1, -1).expand(steps, -1))


def four_corner(G, z: torch.Tensor, c: torch.Tensor, size: int = 6) -> torch.Tensor:
    """Corners ``(z[i], c[i])`` for i = 0..3 (top-left, top-right, bottom-left, bottom-right); z and y
    bilinear in between: ``size² x 1 x R x R``, row-major."""
    if len(z) != 4 or len(c) != 4:
        raise BrainlatentError(f"four-corner grid: expected 4 corners, got {len(z)} latents and {len(c)} labels")
    t = torch.linspace(0, 1, size)
    u, v = torch.meshgrid(t, t, indexing="ij")  # u down, v across
    wts = torch.stack([(1 - u) * (1 - v), (1 - u) * v, u * (1 - v), u * v], dim=-1).reshape(-1, 4)
    return render(G, wts @ z.float(), wts @ c.float())


def swap_values(G, name: str) -> list:
    """The values a swap grid shows: every level, or the training range's ends and middle."""
    if name == SLICE:
        return [0.0, 0.5, 1.0]
    a = G.labels.attribute(name)
    if a["kind"] == "categorical":
        return list(a["levels"])
    return [float(v) for v in np.linspace(a["min"], a["max"], 5).round(1)]


def edit_pictures(G, out_dir: str | Path, seed: int, rows: int = 6, steps: int = 8) -> list[Path]:
    """Write the seed-004 pictures for every label of ``G`` into ``out_dir``; returns the files.

    ``swap-<attr>-<mode>.png`` (rows: one z and base y each; columns: the values of
    :func:`swap_values`), ``ypath-<attr>.png`` (numeric attributes and slice: scaled 0 → 1, z
    fixed, one row per z), ``zpath.png`` (y fixed per row) and ``corners.png``.
    """
    check_conditional(G)
    out_dir = Path(out_dir)
    rng = torch.Generator().manual_seed(int(seed))
    z = torch.randn(rows, G.z_dim, generator=rng)
    c = G.sample_labels(rows, rng)
    written: list[Path] = []

    def save(images: torch.Tensor, name: str, ncols: int) -> None:
        save_png(image_grid(images, ncols=ncols, pad=1), out_dir / name)
        written.append(out_dir / name)

    for name in G.labels.names + [SLICE]:
        values = swap_values(G, name)
        for mode in MODES if name != SLICE else ("single",):
            if mode == "consistent":  # levels no training slice has have no p(others | level)
                values = [v for v in values if G.table.has(name, v)]
            grid = [render(G, z, swap_labels(G, c, name, v, mode, rng)) for v in values]
            save(torch.stack(grid, dim=1).reshape(-1, 1, G.resolution, G.resolution), f"swap-{name}-{mode}.png", len(values))
        if name == SLICE or G.labels.attribute(name)["kind"] == "numeric":
            strips = [y_path(G, z[i], G.labels.set_scaled(c[i:i + 1], name, 0.0)[0], G.labels.set_scaled(c[i:i + 1], name, 1.0)[0], steps)
                      for i in range(rows)]
            save(torch.cat(strips), f"ypath-{name}.png", steps)
    z2 = torch.randn(rows, G.z_dim, generator=rng)
    save(torch.cat([z_path(G, z[i], z2[i], c[i], steps) for i in range(rows)]), "zpath.png", steps)
    save(four_corner(G, torch.randn(4, G.z_dim, generator=rng), G.sample_labels(4, rng), steps), "corners.png", steps)
    return written
