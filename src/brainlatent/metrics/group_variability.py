"""Seed 003's group variability profile and attribute saliency: how much each coordinate group moves.

Protocol (seed §3.9, made exact): draw ``references`` latents from the seed's prior; for each
reference and each coordinate group ``g`` (:func:`brainlatent.latent_groups.groups_for`) make
``images_per_group`` copies whose group coordinates are redrawn (:func:`resample_group`), so the
images vary only through ``g``. Per (reference, group):

* **variability** ``V_g``: the per-pixel standard deviation over those images (ddof = 1), averaged
  over the brain (pixels where the mean of the reference images is above ``mask_threshold``);
* **saliency** of an attribute: the standard deviation (ddof = 1) of the classifier's prediction
  over those images: expected value (bin centres) for a numeric head, P(second level) for a
  two-level head, and for a head with more levels the mean over levels of each level's std.

Reported per group: mean over references, ``V_g / |g|`` (per dimension) and bootstrap 95 %
percentile intervals over references; plus the Spearman ρ of the per-group and per-dimension means
against the group order (seed's claim: clearly negative per dimension for clgGAN and cgGAN, flat
for bGAN and lgGAN), with a bootstrap interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from brainlatent.latent_groups import (
    PRIOR_DIM,
    group_label,
    groups_for,
    resample_group,
    sample_prior,
)
from brainlatent.progress import progress


def _prior_dim(generator) -> int:
    plan = getattr(generator, "plan", None)
    return int(getattr(plan, "prior_dim", PRIOR_DIM))


@torch.no_grad()
def _render(generator, z: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    out = []
    for i in range(0, len(z), batch_size):
        w = generator.mapping(z[i:i + batch_size].to(device))
        out.append(generator.synthesis(w, noise=None).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def group_statistics(
    generator,
    statistic: Callable[[torch.Tensor], np.ndarray],
    references: int,
    images_per_group: int,
    seed: int,
    batch_size: int = 64,
    device="cpu",
    groups: list[tuple[int, int]] | None = None,
    desc: str = "group walks",
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``statistic(images)`` for every (reference, group): images that vary only in that group.

    Args:
        generator: any family's network (``z_dim``, ``mapping``, ``synthesis``).
        statistic: ``k × 1 × R × R`` images → a length-``Q`` array.
        references, images_per_group: the protocol's sizes.
        seed: one seed for the references and the redraws.
        groups: default :func:`groups_for` ``(generator.z_dim)``.

    Returns:
        ``(values, groups)`` with values ``references × G × Q``.
    """
    groups = groups or groups_for(generator.z_dim)
    rng = torch.Generator().manual_seed(int(seed))
    pdim = _prior_dim(generator)
    refs = sample_prior(references, generator.z_dim, rng, pdim)
    values = []
    for r in progress(range(references), references, desc):
        per_group = []
        for g in groups:
            z = resample_group(refs[r], g, images_per_group, rng, pdim)
            per_group.append(np.asarray(statistic(_render(generator, z, batch_size, device)), dtype=np.float64))
        values.append(per_group)
    return np.asarray(values), groups


def brain_mask(generator, references: int, seed: int, threshold: float, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """``R × R`` bool: pixels where the mean of ``references`` prior draws is above ``threshold``."""
    rng = torch.Generator().manual_seed(int(seed))
    images = _render(generator, sample_prior(references, generator.z_dim, rng, _prior_dim(generator)), batch_size, device)
    return images.mean(0)[0] > threshold


def bootstrap_ci(values: np.ndarray, n_boot: int, seed: int, fn: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval of ``fn(values[resampled rows])`` (default the mean over rows)."""
    fn = fn or (lambda v: v.mean(0))
    rng = np.random.default_rng(seed)
    n = len(values)
    stats = np.stack([fn(values[rng.integers(0, n, n)]) for _ in range(n_boot)])
    with warnings.catch_warnings():  # an all-NaN column (e.g. ρ of a constant profile) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(stats, 2.5, axis=0), np.nanpercentile(stats, 97.5, axis=0)


def spearman_over_groups(profile: np.ndarray) -> float:
    """Spearman ρ of a per-group profile against the group order 1..G (NaN for a constant profile)."""
    from scipy.stats import spearmanr

    if len(profile) < 2 or np.allclose(profile, profile[0]):
        return float("nan")
    return float(spearmanr(np.arange(len(profile)), profile).statistic)


def summarise(values: np.ndarray, groups: list[tuple[int, int]], n_boot: int, seed: int) -> dict:
    """Per-group means, per-dimension means, CIs and Spearman ρ of ``references × G`` values."""
    sizes = np.array([hi - lo for lo, hi in groups], dtype=np.float64)
    per_dim = values / sizes
    lo_g, hi_g = bootstrap_ci(values, n_boot, seed)
    lo_d, hi_d = bootstrap_ci(per_dim, n_boot, seed)
    rho_fn = lambda v: np.array([spearman_over_groups(v.mean(0))])
    rho_lo, rho_hi = bootstrap_ci(per_dim, n_boot, seed + 1, rho_fn)
    rho_g_lo, rho_g_hi = bootstrap_ci(values, n_boot, seed + 1, rho_fn)
    return {
        "groups": [group_label(g) for g in groups],
        "group_sizes": sizes.astype(int).tolist(),
        "per_group": values.mean(0).tolist(), "per_group_ci95": [lo_g.tolist(), hi_g.tolist()],
        "per_dimension": per_dim.mean(0).tolist(), "per_dimension_ci95": [lo_d.tolist(), hi_d.tolist()],
        "spearman_per_dimension": spearman_over_groups(per_dim.mean(0)),
        "spearman_per_dimension_ci95": [float(rho_lo[0]), float(rho_hi[0])],
        "spearman_per_group": spearman_over_groups(values.mean(0)),
        "spearman_per_group_ci95": [float(rho_g_lo[0]), float(rho_g_hi[0])],
    }


def variability_profile(generator, references: int = 200, images_per_group: int = 32, seed: int = 0,
                        mask_threshold: float = -0.95, bootstrap: int = 1000, batch_size: int = 64, device="cpu") -> dict:
    """The group variability profile (see the module docstring); ``brain_pixels`` says how big the mask was."""
    mask = brain_mask(generator, references, seed + 7, mask_threshold, batch_size, device)
    if not mask.any():
        mask = torch.ones_like(mask)
    stat = lambda imgs: np.array([float(imgs[:, 0].std(0, unbiased=True)[mask].mean())])
    values, groups = group_statistics(generator, stat, references, images_per_group, seed, batch_size, device,
                                      desc="variability profile")
    out = summarise(values[:, :, 0], groups, bootstrap, seed)
    out["brain_pixels"] = int(mask.sum())
    return out


def prediction_quantities(probs: dict[str, torch.Tensor], specs: list[dict]) -> dict[str, np.ndarray]:
    """Per head, the predicted quantity per image: ``N`` (numeric, two levels) or ``N × L`` (more levels)."""
    from brainlatent.attributes import bin_centres

    out = {}
    for spec in specs:
        p = probs[spec["name"]].double().numpy()
        if spec["kind"] == "numeric":
            out[spec["name"]] = p @ bin_centres(spec)
        elif p.shape[1] == 2:
            out[spec["name"]] = p[:, 1]
        else:
            out[spec["name"]] = p
    return out


def attribute_saliency(generator, predict_proba: Callable, specs: list[dict], references: int = 200,
                       images_per_group: int = 32, seed: int = 0, bootstrap: int = 1000, batch_size: int = 64,
                       device="cpu") -> dict:
    """Per attribute, the saliency profile over groups (std of the classifier's prediction)."""
    names = [s["name"] for s in specs]

    def stat(images: torch.Tensor) -> np.ndarray:
        q = prediction_quantities(predict_proba(images), specs)
        return np.array([float(np.std(q[n], axis=0, ddof=1).mean()) for n in names])

    values, groups = group_statistics(generator, stat, references, images_per_group, seed, batch_size, device,
                                      desc="attribute saliency")
    return {name: summarise(values[:, :, i], groups, bootstrap, seed) for i, name in enumerate(names)}
