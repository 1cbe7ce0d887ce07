"""The reference study's interpolation-path profile (Kriz §3.5), a separate output from PPL.

For K endpoint pairs ``z0, z1 ~ N(0, I)``: ``steps`` points (150) interpolated **linearly** in Z
(then mapped) and in W (lerp of the mapped endpoints); one noise draw per pair, shared by every
step. Each image is embedded with the classifier's penultimate layer and the Euclidean distance
of every step from the first image is recorded. Per space the output holds the mean curve, a band
across pairs (std, and the 10 %/90 % quantiles; the plot shades the 10-90 % band) and a linearity
summary: the R² of a least-squares line of distance vs. step, per pair, then mean ± std.
A generator without a mapping network has only Z (its W equals Z).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.latents import render_path, sample_labels, sample_noise, sample_z
from brainlatent.progress import progress

EmbedFn = Callable[[torch.Tensor], torch.Tensor | np.ndarray]


def linearity_r2(curve: np.ndarray) -> float:
    """R² of a least-squares line through ``(step, curve[step])``; NaN for a constant curve.

    Example:
        >>> linearity_r2(np.arange(5.0) * 3 + 1)
        1.0
    """
    y = np.asarray(curve, dtype=np.float64)
    x = np.arange(y.size, dtype=np.float64)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot <= 0.0:
        return float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    return 1.0 - ss_res / ss_tot


def summarise_curves(curves: np.ndarray) -> dict:
    """Statistics across pairs of a ``K x steps`` array of distance-from-first curves."""
    r2 = np.array([linearity_r2(c) for c in curves])
    finite = r2[np.isfinite(r2)]
    ddof = 1 if len(curves) > 1 else 0
    return {
        "curve_mean": curves.mean(axis=0),
        "curve_std": curves.std(axis=0, ddof=ddof),
        "curve_q10": np.quantile(curves, 0.10, axis=0),
        "curve_median": np.quantile(curves, 0.50, axis=0),
        "curve_q90": np.quantile(curves, 0.90, axis=0),
        "endpoint_distance_mean": float(curves[:, -1].mean()),
        "endpoint_distance_std": float(curves[:, -1].std(ddof=ddof)),
        "r2_per_pair": r2,
        "r2_mean": float(finite.mean()) if finite.size else float("nan"),
        "r2_std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "r2_n": int(finite.size),
    }


@torch.no_grad()
def path_profile(
    generator,
    embed_fn: EmbedFn,
    pairs: int = 16,
    steps: int = 150,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """The distance-from-first-image profile of linear paths in Z and W.

    Args:
        generator: any family's network (see :func:`brainlatent.latents.render_path`).
        embed_fn: ``images (S x 1 x R x R) -> S x D`` embedding (the classifier's penultimate layer).
        pairs: number of endpoint pairs K.
        steps: points per path, endpoints included.
        batch_size: images per synthesis call.
        seed: seed of the endpoints and noise (a CPU ``torch.Generator``).
        device: where the generator runs.

    Returns:
        ``{"spaces": [...], "z": {...}, "w": {...}, "settings": {...}}`` where each space holds
        ``curves`` (K x steps) and the statistics of :func:`summarise_curves`.
    """
    if pairs < 1 or steps < 2:
        raise BrainlatentError(f"path profile: needs pairs >= 1 and steps >= 2, got {pairs}, {steps}")
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    spaces = ["z", "w"] if generator.has_mapping else ["z"]
    curves = {s: np.zeros((pairs, steps)) for s in spaces}
    for k in progress(range(pairs), pairs, "path profile"):
        z = sample_z(generator, 2, rng).to(device)
        noise = [n.to(device) for n in sample_noise(generator, 1, rng)]
        c = sample_labels(generator, 1, rng)
        c = c.to(device) if c is not None else None
        for space in spaces:
            images = render_path(generator, z[0], z[1], steps, space, noise, batch_size, c)
            emb = torch.as_tensor(np.asarray(_to_numpy(embed_fn(images))), dtype=torch.float64)
            curves[space][k] = (emb - emb[:1]).norm(dim=1).numpy()
    out: dict = {"spaces": spaces}
    for space in spaces:
        out[space] = {"curves": curves[space], **summarise_curves(curves[space])}
    out["settings"] = {
        "pairs": int(pairs),
        "steps": int(steps),
        "seed": int(seed),
        "interpolation": "lerp in Z then map; lerp of mapped endpoints in W",
        "distance": "Euclidean distance from the first step's penultimate-layer embedding",
        "band": "plot shades the 10-90 % quantiles across pairs; curve_std is the std across pairs (ddof=1)",
        "linearity": "R^2 of a least-squares line of distance vs step, per pair, then mean and std (ddof=1)",
    }
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def plot_path_profile(result: dict, path: str | Path, title: str = "") -> None:
    """PNG of the mean distance-from-first curve per space with the 10-90 % band across pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brainlatent.io import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    colours = {"z": "tab:orange", "w": "tab:blue"}
    for space in result["spaces"]:
        r = result[space]
        mean = np.asarray(r["curve_mean"])
        x = np.arange(mean.size)
        ax.plot(x, mean, color=colours[space], label=f"{space.upper()} (mean; R² {r['r2_mean']:.3f} ± {r['r2_std']:.3f})")
        ax.fill_between(x, r["curve_q10"], r["curve_q90"], color=colours[space], alpha=0.2, label=f"{space.upper()} 10-90 % of pairs")
    ax.set_xlabel("interpolation step")
    ax.set_ylabel("distance from first image (penultimate features)")
    ax.set_title(title or "interpolation path profile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
