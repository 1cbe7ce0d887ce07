"""Images in, pictures out: ``[-1, 1]`` tensors to uint8, grids, strips, PNG and GIF files.

Every picture the project writes (training snapshots, sample grids, interpolation strips and GIFs,
report figures of generated slices) goes through these functions. Values in ``[-1, 1]`` become
``uint8`` via ``(x + 1) * 127.5``, rounded, clipped; files are written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from brainlatent.io import atomic_path


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """``N x 1 x H x W`` images in ``[-1, 1]`` -> ``N x H x W`` uint8 (values outside are clipped).

    Example:
        >>> to_uint8(np.array([[[[-1.0, 0.0, 1.0]]]])).tolist()
        [[[0, 128, 255]]]
    """
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W images, got {tuple(x.shape)}")
    x = np.clip((x.astype(np.float64) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8)[:, 0]


def image_grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, pad: int = 0) -> np.ndarray:
    """Tile ``N x 1 x H x W`` images row-major into one uint8 picture (``ncols`` default ⌈√N⌉)."""
    tiles = to_uint8(images)
    n, h, w = tiles.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) - pad, ncols * (w + pad) - pad), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tile
    return grid


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write a 2D uint8 array as a greyscale PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(tmp, format="PNG")


def save_strip(frames: np.ndarray, path: str | Path, n: int = 10, gap: int = 2) -> None:
    """PNG strip of ``n`` evenly spaced ``H x W`` uint8 frames (first and last included), ``gap`` white pixels apart."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    h, w = frames.shape[1:]
    strip = np.full((h, len(idx) * (w + gap) - gap), 255, dtype=np.uint8)
    for j, i in enumerate(idx):
        strip[:, j * (w + gap) : j * (w + gap) + w] = frames[i]
    save_png(strip, path)


def save_gif(frames: np.ndarray, path: str | Path, fps: float = 15.0, bounce: bool = True) -> None:
    """Animated GIF of ``N x H x W`` uint8 frames (forth and back when ``bounce``), written atomically."""
    import imageio.v2 as imageio

    seq = list(frames) + (list(frames[-2:0:-1]) if bounce and len(frames) > 2 else [])
    with atomic_path(path) as tmp:
        imageio.mimsave(tmp, seq, format="GIF", duration=1000.0 / fps, loop=0)  # milliseconds per frame
