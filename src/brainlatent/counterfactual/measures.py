"""Pixel-level measures for counterfactual slices: L1, PSNR and SSIM inside the brain, lesion maps.

Every function takes ``N x 1 x R x R`` tensors in [-1, 1] (background -1) and returns one value per
image (a float64 numpy array), so callers can average, bootstrap or pair them.

* **L1** follows Monteiro et al. (ICLR 2023, the axiomatic counterfactual tests): the mean absolute
  pixel difference after mapping [-1, 1] to [0, 255], i.e. ``127.5 * mean|a - b|``; here over the
  brain mask when one is given (over all pixels otherwise).
* **PSNR** with data range 2 (the [-1, 1] range), over the brain mask.
* **SSIM** (Wang et al. 2004; MONAI's ``compute_ssim_and_cs``: Gaussian window 11, sigma 1.5,
  K1 0.01, K2 0.03, data range 2): the SSIM *map* averaged over the brain-mask pixels at which the
  window is fully inside the image.
* **Lesion map**: FLAIR lesions are hyperintense, so a pixel inside the brain whose intensity is
  above a threshold counts as lesion; :func:`calibrate_lesion_threshold` picks the threshold that
  best matches true lesion masks (Dice), which the synthetic cohort provides.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from brainlatent.errors import BrainlatentError

#: a pixel belongs to the brain when it is above this (the slices' background is exactly -1)
BRAIN_THRESHOLD = -0.95
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5


def _as_tensor(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float().cpu()
    if t.ndim != 4 or t.shape[1] != 1:
        raise BrainlatentError(f"{what}: expected N x 1 x R x R images, got shape {tuple(t.shape)}")
    return t


def _pair(a, b, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_tensor(a, what), _as_tensor(b, what)
    if a.shape != b.shape:
        raise BrainlatentError(f"{what}: image shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def brain_mask(*images, threshold: float = BRAIN_THRESHOLD) -> torch.Tensor:
    """Union of the brain masks (pixels above background) of every image set given, bool, on the first set's device.

    Example:
        >>> brain_mask(torch.tensor([[[[-1.0, -0.5]]]])).tolist()
        [[[[False, True]]]]
    """
    if not images:
        raise BrainlatentError("brain_mask: no images given")
    out = torch.as_tensor(images[0]) > threshold  # stays on the images' device (the projector's masks)
    for im in images[1:]:
        out = out | (torch.as_tensor(im).to(out.device) > threshold)
    return out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    values = values.double().flatten(1)
    if mask is None:
        return values.mean(1).numpy()
    m = mask.flatten(1).double()
    area = m.sum(1)
    out = (values * m).sum(1) / area.clamp_min(1.0)
    out[area == 0] = float("nan")
    return out.numpy()


def l1_255(a, b, mask: torch.Tensor | None = None) -> np.ndarray:
    """Per image ``127.5 * mean |a - b|`` (over ``mask`` when given): the L1 of the axiomatic tests, 0-255 scale.

    Example:
        >>> l1_255(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.2)).round(2).tolist()
        [25.5]
    """
    a, b = _pair(a, b, "l1_255")
    return 127.5 * _masked_mean((a - b).abs(), mask)


def psnr(a, b, mask: torch.Tensor | None = None, data_range: float = 2.0) -> np.ndarray:
    """Per image PSNR (dB) over ``mask``; ``inf`` for identical images.

    Example:
        >>> float(psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.02))[0]).__round__(1)
        40.0
    """
    a, b = _pair(a, b, "psnr")
    mse = _masked_mean((a - b) ** 2, mask)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def ssim(a, b, mask: torch.Tensor | None = None, data_range: float = 2.0) -> np.ndarray:
    """Per image SSIM map (MONAI, Gaussian 11 / 1.5) averaged over the mask pixels the window fits around.

    Example:
        >>> x = torch.rand(2, 1, 32, 32) * 2 - 1
        >>> ssim(x, x).round(6).tolist()
        [1.0, 1.0]
    """
    from monai.metrics.regression import compute_ssim_and_cs

    a, b = _pair(a, b, "ssim")
    if min(a.shape[-2:]) < SSIM_KERNEL:
        raise BrainlatentError(f"ssim: images of {tuple(a.shape[-2:])} px are smaller than the {SSIM_KERNEL}-px window")
    full, _ = compute_ssim_and_cs(a, b, 2, [SSIM_KERNEL] * 2, [SSIM_SIGMA] * 2, data_range=data_range)
    h = SSIM_KERNEL // 2
    inner = None if mask is None else mask[..., h:-h, h:-h]
    return _masked_mean(full, inner)


def lesion_map(images, threshold: float, brain: torch.Tensor | None = None) -> torch.Tensor:
    """Hyperintense pixels inside the brain: ``image > threshold`` (bool, ``N x 1 x R x R``).

    The brain is the images' own mask (:func:`brain_mask`) eroded by one pixel, so the bright rim of
    partial-volume pixels at the brain's edge never counts as lesion.
    """
    x = _as_tensor(images, "lesion_map")
    if brain is None:
        brain = brain_mask(x)
    core = torch.from_numpy(ndi.binary_erosion(brain.numpy(), structure=np.ones((1, 1, 3, 3), bool)))
    return (x > threshold) & core


def lesion_load(images, threshold: float) -> np.ndarray:
    """Lesion pixels per image (:func:`lesion_map` summed), float64."""
    return lesion_map(images, threshold).flatten(1).sum(1).double().numpy()


def dice(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per image Dice of two boolean maps; NaN where both are empty.

    Example:
        >>> a = torch.zeros(1, 1, 4, 4, dtype=torch.bool); a[..., :2, :] = True
        >>> dice(a, a).tolist(), dice(a, ~a).tolist()
        ([1.0], [0.0])
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    inter, total = (a * b).sum(1), a.sum(1) + b.sum(1)
    out = (2 * inter / total.clamp_min(1e-12)).numpy()
    out[total.numpy() == 0] = float("nan")
    return out


def calibrate_lesion_threshold(images, truth, candidates: np.ndarray | None = None, min_fraction: float = 0.5) -> tuple[float, float]:
    """The intensity threshold whose :func:`lesion_map` best matches true lesion masks (pooled Dice).

    Args:
        images: slices ``N x 1 x R x R`` in [-1, 1].
        truth: true lesion fraction per pixel, same shape (a pixel with at least ``min_fraction``
            lesion is a lesion pixel).
        candidates: thresholds to try (default -0.5 to 0.99 in steps of 0.01).

    Returns:
        ``(threshold, pooled Dice)``.
    """
    x = _as_tensor(images, "calibrate_lesion_threshold")
    t = _as_tensor(truth, "calibrate_lesion_threshold (truth)") >= min_fraction
    if x.shape != t.shape:
        raise BrainlatentError(f"calibrate_lesion_threshold: images {tuple(x.shape)} and lesion masks {tuple(t.shape)} differ")
    if not bool(t.any()):
        raise BrainlatentError("calibrate_lesion_threshold: the true lesion masks are empty; set counterfactual.lesion_threshold to a number")
    candidates = np.arange(-0.5, 0.995, 0.01) if candidates is None else np.asarray(candidates, dtype=np.float64)
    brain = brain_mask(x)
    best = (float(candidates[0]), -1.0)
    for thr in candidates:
        m = lesion_map(x, float(thr), brain)
        inter = float((m & t).sum())
        d = 2 * inter / max(float(m.sum() + t.sum()), 1e-12)
        if d > best[1]:
            best = (float(thr), d)
    return best
