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
from brainlatent.metrics.ppl import lerp, progress, sample_noise

EmbedFn = Callable[[torch.Tensor], torch.Tensor | np.ndarray]


def path_latents(generator, z0: torch.Tensor, z1: torch.Tensor, ts: torch.Tensor, space: str) -> torch.Tensor:
    """The generator input (w) along a linear path between two z endpoints.

    Args:
        generator: exposes ``mapping(z)`` and ``has_mapping``.
        z0, z1: ``z_dim`` endpoint vectors (1-D).
        ts: ``S`` positions in ``[0, 1]``.
        space: ``"z"`` (lerp in Z, then map every point) or ``"w"`` (map the endpoints, then lerp).

    Returns:
        ``S x ...`` w vectors (whatever shape ``mapping`` returns per sample).
    """
    s = ts.numel()
    ts = ts.to(z0.device, torch.float32)
    if space == "z":
        return generator.mapping(lerp(z0.expand(s, -1), z1.expand(s, -1), ts))
    if space == "w":
        if not generator.has_mapping:
            raise BrainlatentError(f"path profile: arch '{getattr(generator, 'arch', '?')}' has no mapping network, so no W space")
        w = generator.mapping(torch.stack([z0, z1]))
        return lerp(w[:1].expand(s, *w.shape[1:]), w[1:].expand(s, *w.shape[1:]), ts)
    raise BrainlatentError(f"path profile: space must be 'z' or 'w', got '{space}'")


@torch.no_grad()
def render_path(
    generator,
    z0: torch.Tensor,
    z1: torch.Tensor,
    steps: int,
    space: str,
    noise: list[torch.Tensor],
    batch_size: int = 64,
) -> torch.Tensor:
    """Images along a linear path, ``steps x 1 x R x R``, one noise draw shared by every step.

    Args:
        generator: the network (``mapping``, ``synthesis``).
        z0, z1: ``z_dim`` endpoints on the generator's device.
        steps: number of points, endpoints included.
        space: ``"z"`` or ``"w"`` (see :func:`path_latents`).
        noise: tensors ``1 x 1 x H x W`` (one per ``generator.noise_shapes()``), broadcast over steps.
        batch_size: images per synthesis call.
    """
    ts = torch.linspace(0.0, 1.0, steps)
    w = path_latents(generator, z0, z1, ts, space)
    return torch.cat([generator.synthesis(chunk, noise=noise) for chunk in w.split(batch_size)])


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
        generator: see :func:`render_path`.
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
        z = torch.randn((2, generator.z_dim), generator=rng).to(device)
        noise = [n.to(device) for n in sample_noise(generator, 1, rng)]
        for space in spaces:
            images = render_path(generator, z[0], z[1], steps, space, noise, batch_size)
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
