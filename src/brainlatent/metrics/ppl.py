"""Perceptual path length (PPL), the NVlabs StyleGAN sampled estimator.

Four variants: ``z_full``, ``w_full``, ``z_end``, ``w_end`` (a generator without a mapping network
has only the Z variants). Per pair of latents ``z1, z2 ~ N(0, I)`` and one ``t`` (``U(0, 1)`` for
*full*, ``0`` for *end*):

* **Z**: slerp between the normalised endpoints at ``t`` and ``t + eps``, then map. When the
  generator does not normalise z itself (``normalizes_z`` is False, the mapping-free GAN), the
  unit-norm slerp point is scaled by the linearly interpolated norm ``(1 - t)|z1| + t|z2|``: a
  path of (nearly) constant norm, so its PPL measures the same angular motion as StyleGAN's Z.
* **W**: map both endpoints (no truncation), lerp at ``t`` and ``t + eps``.

Both images of a pair see identical noise. Nothing is cropped. The per-pair value is
``distance(img_t, img_{t+eps}) / eps**2``; values outside ``[P1 (method "lower"), P99 (method
"higher")]`` are dropped and the mean, std and count of the rest are reported, with the bootstrap
standard error and 95 % interval of that filtered mean. See ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.latents import lerp, sample_labels, sample_z, slerp, to_w
from brainlatent.progress import progress

log = logging.getLogger(__name__)

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SPACES = ("z", "w")
SAMPLINGS = ("full", "end")
#: bootstrap resamples behind every PPL standard error and 95 % interval
BOOTSTRAP_RESAMPLES = 1000
#: the path note written into every rescaled Z result
Z_RESCALE_NOTE = (
    "generator takes raw z (no normalising mapping network): the unit-norm slerp point is scaled by "
    "the linearly interpolated norm (1 - t)|z1| + t|z2|"
)


def variants_for(generator) -> list[str]:
    """PPL variant names a generator supports: all four with a mapping network, else the Z pair."""
    spaces = SPACES if generator.has_mapping else ("z",)
    return [f"{s}_{m}" for m in SAMPLINGS for s in spaces]


def z_path_point(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, rescale: bool) -> torch.Tensor:
    """The Z-space PPL path point: slerp, optionally scaled by the linearly interpolated norm.

    Args:
        z0, z1: ``N x z_dim`` endpoints.
        t: ``N`` positions.
        rescale: multiply the unit-norm slerp output by ``(1 - t)|z0| + t|z1|``; used for a synthesis
            network that takes raw z (no mapping network normalising it). The path runs from ``z0``
            to ``z1`` at the slerp's angular speed, and its norm changes only by ``|z1| - |z0|``
            (``O(1)`` for Gaussian z), unlike ``|lerp(z0, z1, t)|``, which dips to about
            ``sqrt(d / 2)`` mid-path and adds a radial speed of about ``sqrt(d)`` at the ends.

    Example:
        >>> p = z_path_point(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 5.0]]), torch.tensor([0.5]), True)
        >>> round(float(p.norm()), 4)
        4.0
    """
    s = slerp(z0, z1, t)
    if rescale:
        norms = lerp(z0.norm(dim=-1, keepdim=True), z1.norm(dim=-1, keepdim=True), t)
        s = s * norms
    return s


def pair_noise(generator, n_pairs: int, rng: torch.Generator) -> list[torch.Tensor]:
    """One noise draw per pair, repeated for both images: tensors of shape ``2n x 1 x H x W``.

    Rows ``2i`` and ``2i + 1`` are identical, matching the interleaved pair layout used here.
    """
    out = []
    for shape in generator.noise_shapes():
        tail = tuple(shape[1:])
        noise = torch.randn((n_pairs, *tail), generator=rng)
        out.append(noise.repeat_interleave(2, dim=0))
    return out


def percentile_filter(values: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> tuple[np.ndarray, float, float]:
    """The NVlabs outlier filter: keep ``lo <= v <= hi``.

    ``lo = np.percentile(v, lower, method="lower")`` and ``hi = np.percentile(v, upper,
    method="higher")`` (SG1/ADA wrote ``interpolation=``, which numpy 2 rejects).

    Returns:
        ``(mask, lo, hi)`` with ``mask`` a boolean array like ``values``.

    Example:
        >>> mask, lo, hi = percentile_filter(np.arange(200.0))
        >>> int(mask.sum()), lo, hi
        (198, 1.0, 198.0)
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise BrainlatentError("percentile_filter: no values to filter")
    lo = float(np.percentile(values, lower, method="lower"))
    hi = float(np.percentile(values, upper, method="higher"))
    return (values >= lo) & (values <= hi), lo, hi


def _check_variant(generator, space: str, sampling: str) -> None:
    if space not in SPACES:
        raise BrainlatentError(f"PPL: space must be one of {SPACES}, got '{space}'")
    if sampling not in SAMPLINGS:
        raise BrainlatentError(f"PPL: sampling must be one of {SAMPLINGS}, got '{sampling}'")
    if space == "w" and not generator.has_mapping:
        raise BrainlatentError(
            f"PPL: W space needs a mapping network; arch '{getattr(generator, 'arch', '?')}' has none (use space 'z')"
        )


@torch.no_grad()
def ppl_distances(
    generator,
    distance_fn: DistanceFn,
    space: str,
    sampling: str,
    num_samples: int,
    epsilon: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The ``num_samples`` raw per-pair values ``distance / eps**2`` (before the percentile filter).

    Every random number (latents, ``t``, noise) comes from one CPU ``torch.Generator`` seeded with
    ``seed``, so the draws do not depend on the device.

    Args:
        generator: any family's network (the protocol of :mod:`brainlatent.models.families`).
        distance_fn: ``(img_a, img_b) -> N`` distance between two image batches ``N x 1 x R x R``.
        space: ``"z"`` or ``"w"``.
        sampling: ``"full"`` (t ~ U(0, 1)) or ``"end"`` (t = 0).
        num_samples: number of pairs.
        epsilon: step between the two images of a pair.
        batch_size: pairs per batch (2 x batch_size images go through the generator at once).
        seed: seed of the random draws.
        device: where the generator and distance run.

    Returns:
        float64 array of shape ``(num_samples,)``.
    """
    _check_variant(generator, space, sampling)
    if num_samples < 1 or batch_size < 1:
        raise BrainlatentError(f"PPL: num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    rng = torch.Generator(device="cpu").manual_seed(int(seed))
    rescale = space == "z" and not generator.normalizes_z
    dists: list[np.ndarray] = []
    n_batches = math.ceil(num_samples / batch_size)
    for b in progress(range(n_batches), n_batches, f"ppl {space}_{sampling}"):
        n = min(batch_size, num_samples - b * batch_size)
        z = sample_z(generator, 2 * n, rng, dtype=torch.float64)  # the family's prior (N(0, I) unless it has its own)
        t = torch.rand((n,), generator=rng, dtype=torch.float64) * (1.0 if sampling == "full" else 0.0)
        noise = [x.to(device) for x in pair_noise(generator, n, rng)]
        c = sample_labels(generator, n, rng)  # conditional families: one label per pair, shared by its images
        c = c.repeat_interleave(2, dim=0).to(device) if c is not None else None
        z0, z1 = z[0::2], z[1::2]
        if space == "z":
            za = z_path_point(z0, z1, t, rescale)
            zb = z_path_point(z0, z1, t + epsilon, rescale)
            latent = torch.stack([za, zb], dim=1).reshape(2 * n, -1).to(torch.float32).to(device)
            w = to_w(generator, latent, c)
        else:
            w01 = to_w(generator, torch.stack([z0, z1], dim=1).reshape(2 * n, -1).to(torch.float32).to(device), c)
            w0, w1 = w01[0::2].double(), w01[1::2].double()
            t_dev = t.to(device)
            wa, wb = lerp(w0, w1, t_dev), lerp(w0, w1, t_dev + epsilon)
            w = torch.stack([wa, wb], dim=1).reshape(2 * n, *w0.shape[1:]).to(w01.dtype)
        images = generator.synthesis(w, noise=noise)
        d = distance_fn(images[0::2], images[1::2])
        dists.append(d.detach().double().cpu().numpy().reshape(-1) / epsilon**2)
    return np.concatenate(dists)[:num_samples]


def _filtered_means(values: np.ndarray) -> np.ndarray:
    """Row-wise :func:`percentile_filter` means of a ``B x n`` array (each row filtered on its own)."""
    lo = np.percentile(values, 1.0, axis=1, method="lower", keepdims=True)
    hi = np.percentile(values, 99.0, axis=1, method="higher", keepdims=True)
    keep = (values >= lo) & (values <= hi)
    return np.where(keep, values, 0.0).sum(axis=1) / keep.sum(axis=1)


def bootstrap_filtered_means(
    samples: Sequence[np.ndarray], seed: int, resamples: int = BOOTSTRAP_RESAMPLES, max_block: int = 4_000_000
) -> np.ndarray:
    """Bootstrap distribution of the filtered mean of one or more *paired* samples.

    Every resample draws ``n`` indices with replacement (the same indices for every sample, so
    paired samples stay paired), re-applies the 1 %/99 % filter to the resample and takes the mean.

    Args:
        samples: arrays of equal length ``n`` (e.g. the per-pair values of several PPL variants
            drawn with common random numbers).
        seed: seed of the resampling (``numpy.random.default_rng``).
        resamples: number of bootstrap resamples ``B``.
        max_block: at most this many values are resampled at once (bounds the memory).

    Returns:
        ``len(samples) x B`` array of filtered means.
    """
    arrays = [np.asarray(x, dtype=np.float64).ravel() for x in samples]
    n = arrays[0].size
    if n == 0 or any(a.size != n for a in arrays):
        raise BrainlatentError(f"bootstrap: expected non-empty samples of equal length, got {[a.size for a in arrays]}")
    rng = np.random.default_rng(int(seed))
    rows = max(1, max_block // n)
    out = np.empty((len(arrays), resamples))
    for start in range(0, resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        for k, a in enumerate(arrays):
            out[k, start : start + len(idx)] = _filtered_means(a[idx])
    return out


def bootstrap_interval(means: np.ndarray, level: float = 0.95) -> dict:
    """``se`` (std of the bootstrap means, ddof=1) and the percentile interval ``ci_low``/``ci_high``."""
    means = np.asarray(means, dtype=np.float64)
    tail = 100.0 * (1.0 - level) / 2.0
    return {
        "se": float(means.std(ddof=1)) if means.size > 1 else 0.0,
        "ci_low": float(np.percentile(means, tail)),
        "ci_high": float(np.percentile(means, 100.0 - tail)),
    }


def summarise(distances: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Mean, std (ddof=1), kept count and bounds after the 1 %/99 % filter, with the bootstrap
    standard error ``se`` and 95 % interval ``ci_low``/``ci_high`` of that filtered mean."""
    distances = np.asarray(distances, dtype=np.float64)
    mask, lo, hi = percentile_filter(distances)
    kept = distances[mask]
    out = {
        "mean": float(kept.mean()),
        "std": float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
        "n_kept": int(kept.size),
        "n_total": int(distances.size),
        "lo": lo,
        "hi": hi,
    }
    out.update(bootstrap_interval(bootstrap_filtered_means([distances], seed, resamples)[0]))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Filtered mean of ``a`` minus that of ``b`` for paired samples, with its bootstrap ``se`` and interval.

    The pairs are resampled together (same indices), so the common random numbers of the PPL
    variants (same z pairs and t) lower the error of the difference, as they should.
    """
    diff = _filtered_means(np.stack([np.asarray(a, np.float64), np.asarray(b, np.float64)]))
    boot = bootstrap_filtered_means([a, b], seed, resamples)
    return {"difference": float(diff[0] - diff[1]), **bootstrap_interval(boot[0] - boot[1])}


def bootstrap_seed(seed: int) -> int:
    """The bootstrap's seed for a PPL run seeded with ``seed`` (the same for every variant: paired)."""
    from brainlatent.config import derive_seed

    return derive_seed(seed, "bootstrap")


def describe_variant(
    distances: np.ndarray,
    generator,
    space: str,
    sampling: str,
    epsilon: float,
    batch_size: int,
    seed: int,
) -> dict:
    """The result of one PPL variant from its raw per-pair values (see :func:`perceptual_path_length`)."""
    distances = np.asarray(distances, dtype=np.float64)
    n_bad = int(np.count_nonzero(~np.isfinite(distances)))
    if n_bad:
        raise BrainlatentError(f"PPL {space}_{sampling}: {n_bad} of {distances.size} distances are not finite")
    rescale = space == "z" and not generator.normalizes_z
    out = {"variant": f"{space}_{sampling}", "space": space, "sampling": sampling}
    out.update(summarise(distances, bootstrap_seed(seed)))
    out.update(
        {
            "epsilon": float(epsilon),
            "num_samples": int(distances.size),
            "batch_size": int(batch_size),
            "seed": int(seed),
            "interpolation": "slerp" if space == "z" else "lerp",
            "z_rescaled": bool(rescale),
            "notes": [Z_RESCALE_NOTE] if rescale else [],
        }
    )
    return out


def perceptual_path_length(
    generator,
    distance_fn: DistanceFn,
    space: str,
    sampling: str,
    num_samples: int,
    epsilon: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """One PPL variant: NVlabs' sampled estimator, without the face crop.

    Args: as :func:`ppl_distances`; the bootstrap behind ``se``/``ci_*`` is seeded from ``seed``.

    Returns:
        ``{"variant", "space", "sampling", "mean", "std", "n_kept", "n_total", "lo", "hi", "se",
        "ci_low", "ci_high", "epsilon", "num_samples", "batch_size", "seed", "interpolation",
        "z_rescaled", "notes"}``.

    Example:
        >>> r = perceptual_path_length(G, feats.distance, "w", "end", 2000)  # doctest: +SKIP
        >>> r["mean"], r["se"], r["n_kept"]  # doctest: +SKIP
    """
    distances = ppl_distances(generator, distance_fn, space, sampling, num_samples, epsilon, batch_size, seed, device)
    return describe_variant(distances, generator, space, sampling, epsilon, batch_size, seed)


#: the paired gaps reported beside the variants: Z against W, at the same sampling
COMPARISONS = (("z_full", "w_full"), ("z_end", "w_end"))


def compare_variants(distances: dict[str, np.ndarray], seed: int) -> dict[str, dict]:
    """Paired Z - W differences of the filtered means, with bootstrap errors (:func:`paired_difference`).

    ``se_below_quarter_gap`` says whether the sample-count rule of ``docs/metrics.md`` holds:
    the standard error of the difference is at most a quarter of the difference itself.

    Args:
        distances: ``{variant: raw per-pair values}``, all drawn with the same seed (paired).
        seed: the bootstrap's seed.
    """
    out = {}
    for a, b in COMPARISONS:
        if a in distances and b in distances:
            d = paired_difference(distances[a], distances[b], seed)
            d["se_below_quarter_gap"] = bool(d["se"] <= abs(d["difference"]) / 4.0)
            out[f"{a}-{b}"] = d
    return out


def all_variants(
    generator,
    distance_fn: DistanceFn,
    num_samples: int,
    epsilon: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    variants: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Every PPL variant the generator supports (the same ``seed`` for each: common random numbers)."""
    out = {}
    for name in variants or variants_for(generator):
        space, sampling = name.split("_")
        out[name] = perceptual_path_length(
            generator, distance_fn, space, sampling, num_samples, epsilon, batch_size, seed, device
        )
    return out
