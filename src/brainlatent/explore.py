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

from brainlatent.io import atomic_path
from brainlatent.metrics.path_profile import render_path
from brainlatent.metrics.ppl import sample_noise


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``N x 1 x R x R`` images in ``[-1, 1]`` -> ``N x R x R`` uint8 (values outside are clipped).

    Example:
        >>> to_uint8(np.array([[[[-1.0, 0.0, 1.0]]]])).tolist()
        [[[0, 128, 255]]]
    """
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = np.clip((x.astype(np.float64) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8)[:, 0]


def save_gif(frames: np.ndarray, path: str | Path, fps: float = 15.0, bounce: bool = True) -> None:
    """Animated GIF of ``N x R x R`` uint8 frames (forth and back when ``bounce``), written atomically."""
    import imageio.v2 as imageio

    seq = list(frames) + (list(frames[-2:0:-1]) if bounce and len(frames) > 2 else [])
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, seq, format="GIF", duration=1000.0 / fps, loop=0)  # milliseconds per frame


def save_strip(frames: np.ndarray, path: str | Path, n: int = 10, gap: int = 2) -> None:
    """PNG strip of ``n`` evenly spaced frames (first and last included), separated by ``gap`` pixels."""
    import imageio.v2 as imageio

    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    h, w = frames.shape[1:]
    strip = np.full((h, len(idx) * (w + gap) - gap), 255, dtype=np.uint8)
    for j, i in enumerate(idx):
        strip[:, j * (w + gap) : j * (w + gap) + w] = frames[i]
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, strip, format="PNG")


@torch.no_grad()
def interpolation_frames(
    generator, space: str, steps: int = 60, seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 64
) -> np.ndarray:
    """``steps x R x R`` uint8 frames of one linear interpolation in ``space`` ("z" or "w").

    A generator without a mapping network has W = Z, so its "w" interpolation is the "z" one.
    """
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn((2, generator.z_dim), generator=rng).to(device)
    noise = [n.to(device) for n in sample_noise(generator, 1, rng)]
    if space == "w" and not generator.has_mapping:
        space = "z"
    return to_uint8(render_path(generator, z[0], z[1], steps, space, noise, batch_size))


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
