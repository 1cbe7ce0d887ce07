"""Quality-control pictures: three orthogonal views of a volume with the brain mask's outline.

Views go through the mask's centre of mass of an RAS volume and are drawn in neurological
convention (the patient's right on the picture's right): axial (anterior up), coronal and sagittal
(superior up, anterior right). Rendering uses matplotlib's Agg backend (no display needed).
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
        >>> v = np.random.rand(20, 24, 20).astype(np.float32); m = v > 0.5
        >>> save_qc_png("/tmp/qc_example.png", v, m, (1, 1, 1), "example")
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
    for ax, (name, sl, h, v) in zip(axes, _views(image, centre)):
        msl = _views(mask.astype(np.float32), centre)[["axial", "coronal", "sagittal"].index(name)][1]
        ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=spacing[v] / spacing[h], interpolation="nearest")
        if msl.any() and not msl.all():
            ax.contour(msl, levels=[0.5], colors=["#ff3b3b"], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        ax.set_axis_off()
    fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, facecolor=fig.get_facecolor(), format="png")
    plt.close(fig)
