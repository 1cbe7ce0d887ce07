"""Figures of the study report, each returned as PNG bytes (matplotlib Agg, no display, no pyplot).

Every function takes plain numbers (already read from the study's files) and draws nothing it was
not given, so the report's pictures and tables show the same values.
"""

from __future__ import annotations

import base64
import io as _io
from collections.abc import Mapping, Sequence

import numpy as np

#: one colour per split / space / model family, used everywhere in the report
SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868", "all": "#8C8C8C"}
SERIES_COLOURS = {"stylegan/w": "#1f77b4", "stylegan/z": "#ff7f0e", "gan/z": "#2ca02c"}
SERIES_LABELS = {"stylegan/w": "StyleGAN, W", "stylegan/z": "StyleGAN, Z", "gan/z": "GAN (no mapping), Z"}
DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` for an inline ``<img src=...>``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def mime_of(data: bytes) -> str:
    """The image MIME type from the file's magic bytes (PNG, GIF or JPEG; PNG otherwise)."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return "image/png"


def thumbnail(data: bytes, max_width: int = 420, max_height: int = 420) -> bytes:
    """A downsized PNG copy of an image (aspect kept; never upscaled)."""
    from PIL import Image

    with Image.open(_io.BytesIO(data)) as img:
        img = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
        img.thumbnail((max_width, max_height), Image.Resampling.LANCZOS)
        buf = _io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def attribute_distributions(shares: Mapping[str, Mapping[str, Sequence[float]]], classes: Mapping[str, Sequence[str]]) -> bytes:
    """Grouped bar charts: per attribute, the share of scans in each class, one bar per split.

    Args:
        shares: ``attribute -> split -> share per class`` (fractions of the split's scans, in the
            order of ``classes[attribute]``).
        classes: ``attribute -> class labels`` (bins or levels, plus ``missing`` if any).

    Example:
        >>> png = attribute_distributions({"sex": {"train": [0.6, 0.4]}}, {"sex": ["F", "M"]})
        >>> png[:4] == b"\\x89PNG"
        True
    """
    names = list(shares)
    ncols = min(4, max(1, len(names)))
    nrows = int(np.ceil(len(names) / ncols)) or 1
    fig = _figure(3.4 * ncols, 2.9 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, name in zip(axes, names):
        labels = list(classes[name])
        splits = list(shares[name])
        width = 0.8 / max(1, len(splits))
        x = np.arange(len(labels))
        for i, split in enumerate(splits):
            ax.bar(x + (i - (len(splits) - 1) / 2) * width, np.asarray(shares[name][split]) * 100, width,
                   label=split, color=SPLIT_COLOURS.get(split))
        ax.set_xticks(x, labels, rotation=30 if max(map(len, labels), default=0) > 4 else 0, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("% of scans in split", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, legend_labels, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return to_png(fig)


def correlation_heatmap(names: Sequence[str], matrix: np.ndarray, title: str) -> bytes:
    """Heatmap of a symmetric correlation matrix in [-1, 1] with the values written in the cells."""
    k = len(names)
    size = 1.2 + 0.9 * k
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    m = np.asarray(matrix, dtype=float)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    for i in range(k):
        for j in range(k):
            text = "n/a" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if abs(np.nan_to_num(m[i, j])) > 0.6 else "black")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return to_png(fig)


def gan_training_curves(log: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Three panels against kimg: critic and generator losses, the Wasserstein estimate, the gradient penalty.

    Args:
        log: columns of ``gan/<model>/log.csv`` (``kimg``, ``loss_d``, ``loss_g``, ``wasserstein``, ``gp``).
        title: the model's name.
    """
    fig = _figure(10, 2.8)
    axes = fig.subplots(1, 3)
    x = np.asarray(log["kimg"], dtype=float)
    panels = [
        (axes[0], [("loss_d", "critic (D)"), ("loss_g", "generator (G)")], "loss"),
        (axes[1], [("wasserstein", "E[D(real)] - E[D(fake)]")], "Wasserstein estimate"),
        (axes[2], [("gp", "gradient penalty")], "gradient penalty"),
    ]
    for ax, series, name in panels:
        for key, label in series:
            if key in log:
                ax.plot(x, np.asarray(log[key], dtype=float), label=label, marker="." if len(x) < 30 else None)
        ax.set_xlabel("kimg (thousands of real images shown)", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if ax.get_legend_handles_labels()[0]:  # a family that logs none of this panel's columns
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def path_profiles(
    panels: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, Sequence[float]]]]]],
    normalise: bool = False,
    title: str = "",
) -> bytes:
    """Distance-from-first-image curves, one panel per group (e.g. latent size), several series each.

    Args:
        panels: ``[(panel title, [(series label, stats), ...]), ...]`` where ``stats`` holds
            ``curve_mean`` and optionally ``curve_q10`` / ``curve_q90`` (the band across pairs) and
            ``endpoint_distance_mean``. Series labels such as ``"stylegan/w"`` pick the colour.
        normalise: divide each series by its mean endpoint distance and draw the straight line a
            perfectly linear path would follow (compares shapes of models whose feature scales differ).
        title: figure title.
    """
    n = max(1, len(panels))
    fig = _figure(min(max(4.2 * n, 7.0), 16), 3.4 if n > 1 else 4.0)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False).ravel())
    for ax, (panel_title, series) in zip(axes, panels):
        for label, stats in series:
            mean = np.asarray(stats["curve_mean"], dtype=float)
            x = np.linspace(0, 1, mean.size)
            scale = 1.0
            if normalise:
                end = float(stats.get("endpoint_distance_mean") or mean[-1] or 1.0)
                scale = end if end else 1.0
            colour = SERIES_COLOURS.get(label)
            ax.plot(x, mean / scale, label=SERIES_LABELS.get(label, label), color=colour)
            if "curve_q10" in stats and "curve_q90" in stats:
                ax.fill_between(x, np.asarray(stats["curve_q10"], dtype=float) / scale,
                                np.asarray(stats["curve_q90"], dtype=float) / scale, color=colour, alpha=0.15)
        if normalise:
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="linear")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("position along the path (0 = first image)", fontsize=8)
        ax.set_ylabel("distance / endpoint distance" if normalise else "distance from first image", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def line_plot(x: Sequence[float], series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str, title: str) -> bytes:
    """One panel: every series against ``x`` (e.g. each mixture weight against kimg)."""
    fig = _figure(6, 2.8)
    ax = fig.subplots(1, 1)
    for label, values in series.items():
        ax.plot(np.asarray(x, dtype=float), np.asarray(values, dtype=float), label=label)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
