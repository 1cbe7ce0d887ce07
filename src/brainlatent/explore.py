"""Visual latent-space exploration: linear interpolations as animated GIFs and PNG strips.

One interpolation per space between two seeded endpoints (lerp in Z then map, or lerp of the
mapped endpoints in W), one noise draw shared by every frame, the same paths as the path profile
(:mod:`brainlatent.metrics.path_profile`). Images in ``[-1, 1]`` become ``uint8`` via
``(x + 1) * 127.5``, clipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainlatent.images import save_gif, save_strip, to_uint8
from brainlatent.latents import render_path, sample_labels, sample_noise, sample_z


@torch.no_grad()
def interpolation_frames(
    generator, space: str, steps: int = 60, seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 64
) -> np.ndarray:
    """``steps x R x R`` uint8 frames of one linear interpolation in ``space`` ("z" or "w").

    A generator without a mapping network has W = Z, so its "w" interpolation is the "z" one.
    """
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    z = sample_z(generator, 2, rng).to(device)
    noise = [n.to(device) for n in sample_noise(generator, 1, rng)]
    c = sample_labels(generator, 1, rng)
    if space == "w" and not generator.has_mapping:
        space = "z"
    return to_uint8(render_path(generator, z[0], z[1], steps, space, noise, batch_size, None if c is None else c.to(device)))


def write_interpolations(
    generator,
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 60,
    strip_frames: int = 10,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> dict[str, str]:
    """Write ``interp_{z,w}.gif`` and ``interp_{z,w}.png`` into ``out_dir``; returns name -> path.

    Both spaces are always written so the set of files is the same for every architecture; for a
    generator without a mapping network the W files show the Z interpolation (W = Z there).
    """
    out_dir = Path(out_dir)
    written = {}
    for space in ("z", "w"):
        frames = interpolation_frames(generator, space, steps, seed, device, batch_size)
        gif, png = out_dir / f"interp_{space}.gif", out_dir / f"interp_{space}.png"
        save_gif(frames, gif)
        save_strip(frames, png, n=strip_frames)
        written[f"interp_{space}.gif"], written[f"interp_{space}.png"] = str(gif), str(png)
    return written
