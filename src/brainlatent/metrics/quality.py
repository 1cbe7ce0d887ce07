"""Image quality on the study classifier's penultimate features: FID, KID, precision/recall.

The features are the attribute classifier's (domain features), not Inception's. Every value is
reported beside a real-vs-real floor: the same metric between two disjoint random halves of the
real test slices, i.e. what a perfect generator would score at that sample size.

* FID = |mu_a - mu_b|² + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), covariances with ddof=1, real part.
* KID: ``num_subsets`` subsets of ``m = min(n_a, n_b, max_subset_size)`` rows drawn without
  replacement from each set, kernel ``(a.b/d + 1)**3``, unbiased MMD² per subset; mean and std
  (ddof=0) over subsets.
* Precision/recall (Kynkäänniemi et al., k = 3): a sample's radius is the distance to its k-th
  nearest *other* sample of its own set; precision = share of generated samples within the
  radius of at least one real sample; recall = the same with the sets swapped.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import scipy.linalg
import torch

from brainlatent.errors import BrainlatentError

log = logging.getLogger(__name__)


def _as_features(x, name: str) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise BrainlatentError(f"{name}: expected an N x D feature array with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise BrainlatentError(f"{name}: features contain NaN or infinite values")
    return x


def fid(feat_a, feat_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        feat_a, feat_b: ``N x D`` and ``M x D`` features.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(500, 4))
        >>> round(fid(x, x + [1.0, 0, 0, 0]), 6)
        1.0
    """
    a, b = _as_features(feat_a, "FID set a"), _as_features(feat_b, "FID set b")
    if a.shape[1] != b.shape[1]:
        raise BrainlatentError(f"FID: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    product = cov_a @ cov_b
    with warnings.catch_warnings():  # singular products are expected when D >= n; the error is checked below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(product)
    scale = np.linalg.norm(product)
    if scale > 0 and np.linalg.norm(root @ root - product) / scale > 1e-3:
        log.warning("FID: the matrix square root is inaccurate (singular covariances? %d samples, %d features)", min(len(a), len(b)), a.shape[1])
    value = float(((mu_a - mu_b) ** 2).sum()) + float(np.trace(cov_a + cov_b - 2.0 * root).real)
    return value


def kid(feat_a, feat_b, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel distance (unbiased MMD² with the cubic polynomial kernel), mean and std over subsets.

    Args:
        feat_a: ``N x D`` features of the first set (generated, as ADA's ``x``).
        feat_b: ``M x D`` features of the second set (real).
        num_subsets: number of random subsets.
        max_subset_size: upper bound of the subset size ``m = min(N, M, max_subset_size)``.
        seed: seed of the subset draws (``numpy.random.default_rng``).

    Returns:
        ``(mean, std)`` of the per-subset MMD² (std with ddof=0).
    """
    a, b = _as_features(feat_a, "KID set a"), _as_features(feat_b, "KID set b")
    if a.shape[1] != b.shape[1]:
        raise BrainlatentError(f"KID: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    d = a.shape[1]
    m = min(len(a), len(b), int(max_subset_size))
    if m < 2:
        raise BrainlatentError(f"KID: subsets need at least 2 samples, got m = {m}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std(ddof=0))


def _kth_radius(feats: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the (k+1)-th smallest, self included)."""
    out = []
    for rows in feats.split(batch):
        dist = torch.cdist(rows, feats, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for rows in probes.split(batch):
        dist = torch.cdist(rows, manifold, compute_mode="donot_use_mm_for_euclid_dist")
        out.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(out)


@torch.no_grad()
def precision_recall(real, gen, k: int = 3, batch_size: int = 4096, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN radii.

    Args:
        real: ``N x D`` real features.
        gen: ``M x D`` generated features.
        k: neighbourhood size (NVlabs: 3).
        batch_size: rows per distance block.
        device: where the distances are computed (float64, exact Euclidean distances).

    Returns:
        ``(precision, recall)``.
    """
    r = torch.as_tensor(_as_features(real, "precision/recall real set"), device=device)
    g = torch.as_tensor(_as_features(gen, "precision/recall generated set"), device=device)
    if r.shape[1] != g.shape[1]:
        raise BrainlatentError(f"precision/recall: feature dimensions differ ({r.shape[1]} vs {g.shape[1]})")
    if min(len(r), len(g)) <= k:
        raise BrainlatentError(f"precision/recall: each set needs more than k={k} samples, got {len(r)} real and {len(g)} generated")
    precision = _covered(g, r, _kth_radius(r, k, batch_size), batch_size).double().mean().item()
    recall = _covered(r, g, _kth_radius(g, k, batch_size), batch_size).double().mean().item()
    return float(precision), float(recall)


def _all_metrics(a: np.ndarray, b: np.ndarray, kid_subsets: int, kid_subset_size: int, pr_k: int, seed: int, device) -> dict:
    """Every metric of set ``a`` (generated role) against ``b`` (real role)."""
    kid_mean, kid_std = kid(a, b, kid_subsets, kid_subset_size, seed)
    precision, recall = precision_recall(b, a, pr_k, device=device)
    return {"fid": fid(a, b), "kid_mean": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall}


def quality_report(
    real_feats,
    gen_feats,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """FID, KID and precision/recall of generated vs. real features, with the real-vs-real floor.

    Three comparisons per metric:

    * ``generated_vs_real``: all generated vs. all real features;
    * ``real_vs_real``: real half A vs. real half B (disjoint random halves) — the floor;
    * ``generated_vs_real_matched``: a random subset of the generated features of the size of
      half A vs. half B, directly comparable with the floor (same sizes, same reference set).

    Args:
        real_feats: ``N x D`` features of the real test slices.
        gen_feats: ``M x D`` features of generated images.
        kid_subsets, kid_subset_size, pr_k: see :func:`kid` and :func:`precision_recall`.
        seed: seed of the halves, the matched subset and the KID subsets.
        device: where the precision/recall distances run.

    Returns:
        ``{"fid": {comparison: value}, "kid": {comparison: {"mean", "std"}}, "precision": {...},
        "recall": {...}, "sizes": {...}, "notes": [...]}``.
    """
    real = _as_features(real_feats, "real features")
    gen = _as_features(gen_feats, "generated features")
    if len(real) < 2 * (pr_k + 1):
        raise BrainlatentError(f"quality: the real set has {len(real)} samples; the real-vs-real floor needs at least {2 * (pr_k + 1)}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(real))
    half_a, half_b = real[perm[: len(real) // 2]], real[perm[len(real) // 2 :]]
    notes = []
    if len(gen) != len(real):
        notes.append(f"generated set ({len(gen)}) and real set ({len(real)}) differ in size; FID/KID/PR depend on sample size, compare with the matched values")
    n_match = min(len(half_a), len(gen))
    if n_match < len(half_a):
        notes.append(f"fewer generated samples ({len(gen)}) than a real half ({len(half_a)}): the matched comparison uses {n_match}")
    matched = gen[rng.choice(len(gen), n_match, replace=False)]
    sub_seeds = rng.integers(0, 2**31 - 1, size=3)
    comparisons = {
        "generated_vs_real": _all_metrics(gen, real, kid_subsets, kid_subset_size, pr_k, int(sub_seeds[0]), device),
        "generated_vs_real_matched": _all_metrics(matched, half_b, kid_subsets, kid_subset_size, pr_k, int(sub_seeds[1]), device),
        "real_vs_real": _all_metrics(half_a, half_b, kid_subsets, kid_subset_size, pr_k, int(sub_seeds[2]), device),
    }
    if real.shape[1] >= min(len(half_a), len(half_b)):
        notes.append(
            f"feature dimension {real.shape[1]} >= samples per real half ({min(len(half_a), len(half_b))}): "
            "covariances are singular and FID is dominated by sample-size bias"
        )
    out: dict = {
        "fid": {c: v["fid"] for c, v in comparisons.items()},
        "kid": {c: {"mean": v["kid_mean"], "std": v["kid_std"]} for c, v in comparisons.items()},
        "precision": {c: v["precision"] for c, v in comparisons.items()},
        "recall": {c: v["recall"] for c, v in comparisons.items()},
        "sizes": {
            "real": len(real),
            "generated": len(gen),
            "real_half_a": len(half_a),
            "real_half_b": len(half_b),
            "generated_matched": n_match,
            "feature_dim": int(real.shape[1]),
            "kid_subset_size": {c: min(len(x), len(y), kid_subset_size) for c, (x, y) in
                                {"generated_vs_real": (gen, real), "generated_vs_real_matched": (matched, half_b),
                                 "real_vs_real": (half_a, half_b)}.items()},
        },
        "notes": notes,
    }
    return out
