"""Quality-control pictures: three orthogonal views of a volume with the brain mask's outline.

Views go through the mask's centre of mass of an RAS volume and are drawn in neurological
convention (the patient's right on the picture's right, marked R/L): axial (anterior up), coronal
and sagittal (superior up; sagittal anterior right, marked A/P). Rendering uses matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

import os

import numpy as np

from brainlatent import io


def _views(volume: np.ndarray, centre: np.ndarray) -> list[tuple[str, np.ndarray, int, int]]:
    """(name, 2D slice indexed [row=vertical, col=horizontal], horizontal axis, vertical axis)."""
    x, y, z = (int(round(c)) for c in centre)
    return [
        ("axial", volume[:, :, z].T, 0, 1),
        ("coronal", volume[:, y, :].T, 0, 2),
        ("sagittal", volume[x, :, :].T, 1, 2),
    ]


def save_qc_png(
    path: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float] | np.ndarray,
    title: str,
    centre: np.ndarray | None = None,
    dpi: int = 80,
) -> None:
    """Write a PNG with axial, coronal and sagittal views and the mask outline (atomically).

    Args:
        path: output ``.png``.
        image: X x Y x Z volume on an RAS grid (e.g. the bias-corrected head before masking).
        mask: bool X x Y x Z brain mask on the same grid.
        spacing: voxel size in mm (3,), sets the aspect ratio of each view.
        title: picture title (the scan's name and a few numbers).
        centre: voxel the three views pass through; default the mask's centre of mass.
        dpi: resolution of the saved picture.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> v = np.random.rand(20, 24, 20).astype(np.float32); m = v > 0.5
        >>> save_qc_png(Path(tempfile.mkdtemp()) / "qc.png", v, m, (1, 1, 1), "example")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spacing = np.asarray(spacing, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if centre is None:
        centre = np.array([np.mean(ix) for ix in np.nonzero(mask)]) if mask.any() else (np.asarray(image.shape) - 1) / 2.0
    finite = image[np.isfinite(image)]
    ref = image[mask] if mask.any() else finite
    vmin, vmax = (float(v) for v in np.percentile(ref, [0.5, 99.5])) if ref.size else (0.0, 1.0)
    vmin = min(vmin, 0.0) if finite.size and finite.min() >= 0 else vmin
    if vmax <= vmin:
        vmax = vmin + 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, (name, sl, h, v), (_, msl, _, _) in zip(axes, _views(image, centre), _views(mask.astype(np.float32), centre)):
        ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=spacing[v] / spacing[h], interpolation="nearest")
        if msl.any() and not msl.all():
            ax.contour(msl, levels=[0.5], colors=["#ff3b3b"], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        right, left = ("R", "L") if name != "sagittal" else ("A", "P")
        for x, letter in ((0.99, right), (0.01, left)):
            ax.text(x, 0.5, letter, transform=ax.transAxes, color="#ffd84d", fontsize=9, ha="right" if x > 0.5 else "left", va="center")
        ax.set_axis_off()
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, facecolor=fig.get_facecolor(), format="png")
    finally:
        plt.close(fig)
