"""Preprocess one NIfTI scan: RAS grid, resampling, N4 bias correction, brain mask, normalisation.

One job per scan (:func:`preprocess_scan`, CLI ``brainlatent preprocess``):

1. **Load** with :func:`brainlatent.io.load_nifti` (unreadable, truncated, 2D/4D, NaN, all-zero and
   singular-affine files raise :class:`~brainlatent.errors.BrainlatentError` naming the file);
   ``scl_slope``/``scl_inter`` are applied and any stored dtype is read as float32.
2. **Reorient and resample in one step** to an axis-aligned RAS grid with ``preprocess.spacing_mm``
   voxels (:func:`ras_grid`, :func:`resample_to_grid`). The grid covers the input's world bounding
   box and sits on a lattice of whole voxels from the world origin, so the same head written as RAS,
   LPS, LAS or with an oblique affine lands on the same grid. Works on the full NIfTI affine (shear
   included) through :func:`scipy.ndimage.affine_transform`: trilinear for images (with a Gaussian
   anti-aliasing pre-filter along axes that are down-sampled), nearest neighbour for masks.
3. **Brain mask**: the scans table's mask (``mask.source: table``, nearest-neighbour resampled) or an
   automatic one. ``auto``: a brain-extracted input (:func:`nonzero_region`: exact-zero background
   around one brain-sized region) uses its non-zero region (holes filled); any other input the
   classical mask (:func:`auto_brain_mask`, see its limits below), computed inside an Otsu head mask
   (:func:`head_mask`) on the uncorrected image (its thresholds are relative to the head's own
   intensity mode, so a smooth bias of a few tens of percent does not move it; on the 12 real scans
   it agrees with a mask computed after N4 at Dice >= 0.98). ``classical``/``nonzero`` force one of
   the two, ``deepbet`` runs the optional learned skull stripper (:func:`deepbet_mask`). Automatic
   masks are cut below the cerebellum (:func:`cut_inferior`, ``mask.cut_inferior``).
4. **Crop/pad** to ``preprocess.field_of_view_mm``, a box centred on the mask's centre of mass
   (the summary reports which share of the mask the box keeps).
5. **N4 bias-field correction** (SimpleITK ``N4BiasFieldCorrectionImageFilter``) fitted inside the
   brain mask on the box shrunk by ``bias_correction.shrink_factor`` with ``iterations`` per
   fitting level; the estimated log bias field is evaluated on the shrunk grid, interpolated
   linearly to the full-resolution box and divided out.
6. **Normalisation** inside the mask: ``percentile`` (clip to the in-mask ``[lower, upper]``
   percentiles and scale to [0, 1]) or ``zscore`` (in-mask mean 0, std 1). Outside the mask = 0.
7. **QC checks** (:mod:`brainlatent.qc`, limits in ``preprocess.qc``): mask volume, connected
   components, contact with the field of view's edge, normalised intensities; recorded in the
   summary (``qc``), a WARNING per failed check; the slice stage stops or excludes failing scans.
8. **Write** the float32 image and the uint8 mask (RAS affine, configured spacing) atomically, a QC
   picture (:mod:`brainlatent.qc`: the bias-corrected head with the mask outline and the QC
   verdict) and, from the CLI, a JSON summary.

Automatic brain mask (classical thresholds and morphology, not a deep-learning skull stripper).
The barrier between brain and scalp is the dark ring of CSF and skull, found as a *relative* valley
(:func:`valley_ratio`: the image divided by its grey closing over ``RING_MM`` = 10 mm is below
``RING_RATIO`` = 0.6), so it holds where a bias field brightens the gap above any global threshold
and where skull and partial volume are grey rather than dark. On the output grid: the head mask
(Otsu, holes filled, largest component, closed) and the ring; on blocks of about 3 mm: tissue
candidates = head voxels above a lower threshold (the lower of the first two-level Otsu threshold
inside the head and half the head's intensity mode, which drops air, bone and, on T1/FLAIR, CSF)
lying at least ``MIN_DEPTH_MM`` below the head's surface (the edge of the acquired volume is not a
surface); core candidates = candidates outside the ring (blocks with >= 25 % ring voxels) and, on
T1/FLAIR-like contrast where bright voxels are rare deep in the head, below 1.6 x mode (fat,
marrow); an erosion by ``ERODE_MM`` detaches the brain from scalp, eyes, muscles and the neck; the
component with most voxels near the deepest point of the head is the brain; it is dilated back by
the same distance into the candidates, closed by 3 mm and its holes (ventricles) filled; back on the
output grid it grows up to ``EDGE_MM`` = 3 mm through voxels above half the local closing (the
block edge stops short of the ring). The head threshold follows a strong bias field
(:func:`head_field`, below ``HEAD_FIELD_SHARE`` = 0.7 of the head's bright part; weaker fields,
including those of the 12 real scans, leave the head mask as a plain Otsu threshold). On the 200
synthetic scans of ``demo200`` (four sites: 1 mm RAS, 0.9 x 0.9 x 3 mm LPS, 1 x 1 x 4 mm LAS,
1.2 x 1 x 1 mm ASL; 1.5 mm grid) the Dice with the true mask has a median of 0.98 (minimum
0.977-0.979 at three sites, 0.96 at the 4 mm site) and the volume ratio is 0.965-1.04 on every
scan (with a global head threshold the 4 mm site had Dice down to 0.76 and ratios down to 0.63,
where a 3-5x bias field cut the head surface into the brain; before the ring: 20-87 % of the
scans per site were above 1.15, up to 1.68). Known limits:

* the ring must be a dark valley narrower than ``RING_MM`` on at least about half a block; where
  the gap is missing altogether (strong partial-volume bridges, motion, very thick slices at the
  vertex) pieces of scalp may stay, and at the skull base it may keep part of the clivus and the
  brainstem-neck junction or miss the lowest temporal poles;
* the head threshold follows only a smooth field (Gaussian sigma ``HEAD_FIELD_MM`` = 30 mm) and
  only where it is below 0.7 of the head's bright part (a global lower, hysteresis, threshold let
  real FLAIR masks creep into the scalp); a sharper or weaker bias leaves the global threshold.
  The brain's own thresholds stay relative to the head's intensity mode: where brain tissue over a
  large region is about 4x darker than the mode (a steep field across the brain rather than a
  dark half of the head) it can still be missed there;
* on T2-weighted scans the bright CSF around the brain is included (the mask is "brain + CSF",
  about 15-20 % larger than on T1/FLAIR of the same head);
* with thick slices (3-4 mm) the mask is smooth along z and the top/bottom slices are imprecise;
* scans that do not contain the whole brain give a mask of the covered part only;
* it is tuned for adult heads at 1-4 mm; check the QC pictures of every new data source.

Performance (one thread, process start included, 1.5 mm, 180 x 216 x 180 mm box): about 2.2-3 s
and 300 MB per scan; N4 is the largest share and scales with the number of fit points, so
``shrink_factor`` 6 (9 mm fit voxels, a field within about 1 % of shrink 4) is 2-3x faster than 4.
The head mask takes about 0.2-0.25 s (0.03-0.05 s of it the bias-field estimate) and the brain mask about 0.35 s (0.15 s of it the full-resolution
ring), 0.13 s more than without the ring. Measured again on a 2-core machine under a load of 5-15
(README, Benchmarks): 4.5-7 CPU-seconds per scan with start-up, 5.1 for a 1 mm 182 x 218 x 182 head;
the QC checks add about 0.2 s. ``benchmarks/bench_preprocess.py`` measures the job,
``benchmarks/bench_mask.py`` the mask's accuracy on the synthetic cohort.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from brainlatent import io
from brainlatent.errors import BrainlatentError

log = logging.getLogger(__name__)

#: erosion/dilation distance (mm) that detaches the brain from the scalp in the automatic mask
ERODE_MM = 6.0
#: minimum depth (mm) of brain voxels below the head's surface (scalp + skull are thicker)
MIN_DEPTH_MM = 6.0
#: voxel size (mm) the mask morphology runs at (blocks of the output grid), for speed
WORKING_MM = 3.0
#: widest dark valley (mm) between brain and scalp that :func:`valley_ratio` detects
RING_MM = 10.0
#: the dark ring (CSF/skull) between brain and scalp: image / grey closing below this
RING_RATIO = 0.6
#: share of a working block in the dark ring that makes the block a barrier
RING_BLOCK_SHARE = 0.25
#: at full resolution the coarse mask grows up to this far (mm) until it meets the dark ring
EDGE_MM = 3.0
#: ... through voxels whose image / grey closing is at least this (about half-way down the edge)
EDGE_RATIO = 0.5
#: the head threshold follows the bias field where :func:`head_field` is below this share
HEAD_FIELD_SHARE = 0.7
#: width (mm, Gaussian sigma) of the smooth field the head threshold follows
HEAD_FIELD_MM = 30.0
#: a brain-extracted input: its non-zero region (holes filled) is at most this large (a head with
#: scalp and skull is larger: 2600-3500 ml on the 12 open_ms_sample scans)
BRAIN_EXTRACTED_MAX_ML = 2200.0
#: ... and at least this large (smaller: a few slices or a cut-out, not a brain)
BRAIN_EXTRACTED_MIN_ML = 300.0
#: ... and at least this share of the non-zero voxels lies in its largest connected component
BRAIN_EXTRACTED_COMPONENT_SHARE = 0.99
#: ... and at least this share of the acquired volume is exactly 0 (the removed background)
BRAIN_EXTRACTED_ZERO_SHARE = 0.1
#: inferior cut: below the cerebellum the axial mask area drops under this share of its maximum
CUT_AREA_SHARE = 0.06
#: inferior cut: nothing further than this many brain lengths (anterior-posterior extent at the
#: level of the largest axial section) below the top of the mask is brain worth slicing (vertex to
#: the lowest cerebellum is about 0.8 brain lengths in MNI152; 0.85 leaves room for taller heads)
CUT_LENGTH_FACTOR = 0.85


# --------------------------------------------------------------------------------------------
# geometry


def ras_grid(affine: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An axis-aligned RAS grid with ``spacing`` covering the world bounding box of a volume.

    The grid's corner sits on whole multiples of ``spacing`` in world millimetres, so volumes with
    the same world extent get the same grid whatever their voxel order or obliquity.

    Args:
        affine: 4 x 4 voxel-to-world (RAS mm) matrix of the input.
        shape: the input's shape (first three axes are used).
        spacing: output voxel size in mm along R, A, S.

    Returns:
        ``(out_affine, out_shape)``.

    Example:
        >>> aff, shp = ras_grid(np.diag([-2.0, -2.0, 2.0, 1.0]), (10, 10, 10), (1.0, 1.0, 1.0))
        >>> shp, float(aff[0, 0]), float(aff[0, 3])
        ((21, 21, 21), 1.0, -19.0)
    """
    sp = np.asarray(spacing, dtype=float)
    n = np.asarray(shape[:3], dtype=float) - 1.0
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    world = (affine @ corners.T).T[:, :3]
    lo = np.floor(world.min(axis=0) / sp - 1e-6) * sp
    hi = np.ceil(world.max(axis=0) / sp + 1e-6) * sp
    out_shape = tuple(int(v) for v in np.round((hi - lo) / sp).astype(int) + 1)
    out_affine = np.eye(4)
    out_affine[:3, :3] = np.diag(sp)
    out_affine[:3, 3] = lo
    return out_affine, out_shape


def resample_to_grid(
    data: np.ndarray,
    in_affine: np.ndarray,
    out_affine: np.ndarray,
    out_shape: tuple[int, int, int],
    order: int = 1,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``data`` (voxel-to-world ``in_affine``) onto the grid ``(out_affine, out_shape)``.

    Args:
        data: X x Y x Z input array.
        in_affine: its 4 x 4 voxel-to-world matrix.
        out_affine: 4 x 4 voxel-to-world matrix of the output grid.
        out_shape: the output grid's shape.
        order: 1 = trilinear (images), 0 = nearest neighbour (masks, labels).
        antialias: Gaussian pre-filter along input axes whose voxels are smaller than the output's
            (sigma = (factor - 1) / 2 input voxels), only for ``order > 0``.

    Returns:
        float32 (``order > 0``) or ``data.dtype`` (``order == 0``) array of ``out_shape``; points
        outside the input are 0.

    Example:
        >>> x = np.ones((4, 4, 4), np.float32)
        >>> resample_to_grid(x, np.eye(4), np.diag([2.0, 2, 2, 1]), (2, 2, 2)).shape
        (2, 2, 2)
    """
    from scipy import ndimage

    mapping = np.linalg.inv(in_affine) @ out_affine  # output voxel -> input voxel
    if np.allclose(mapping[:3, :3], np.diag(np.diag(mapping[:3, :3])), atol=1e-9):
        # axis-aligned: SciPy's much faster separable path (zoom and shift)
        matrix, offset = np.diag(mapping[:3, :3]).copy(), mapping[:3, 3].copy()
    else:
        matrix, offset = mapping, 0.0
    if order > 0:
        data = np.asarray(data, dtype=np.float32)
        if antialias:
            in_sp = np.linalg.norm(in_affine[:3, :3], axis=0)
            # output voxel size measured along each input axis' world direction
            dirs = in_affine[:3, :3] / in_sp
            out_sp = np.sqrt(((np.diag(out_affine)[:3, None] * dirs) ** 2).sum(axis=0))
            sigma = np.maximum(0.0, (out_sp / in_sp - 1.0) / 2.0)
            if np.any(sigma > 0.05):
                data = ndimage.gaussian_filter(data, sigma=sigma, mode="nearest", truncate=3.0)
        out = ndimage.affine_transform(data, matrix, offset=offset, output_shape=out_shape, order=order, mode="constant", cval=0.0, prefilter=False)
        return out.astype(np.float32, copy=False)
    return ndimage.affine_transform(data, matrix, offset=offset, output_shape=out_shape, order=0, mode="constant", cval=0)


def field_of_view_mask(in_affine: np.ndarray, in_shape: tuple[int, ...], out_affine: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Where the grid ``(out_affine, out_shape)`` lies inside the acquired volume (bool array).

    Example:
        >>> field_of_view_mask(np.eye(4), (4, 4, 4), np.eye(4), (6, 4, 4))[:, 0, 0].tolist()
        [True, True, True, True, False, False]
    """
    mapping = np.linalg.inv(in_affine) @ out_affine
    idx = np.ogrid[tuple(slice(0, int(n)) for n in out_shape)]
    inside = np.ones(tuple(int(n) for n in out_shape), bool)
    for a in range(3):
        coord = mapping[a, 0] * idx[0] + mapping[a, 1] * idx[1] + mapping[a, 2] * idx[2] + mapping[a, 3]
        inside &= (coord > -0.5) & (coord < in_shape[a] - 0.5)
    return inside


def crop_or_pad(arrays: list[np.ndarray], affine: np.ndarray, centre: np.ndarray, out_shape: tuple[int, int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut a box of ``out_shape`` voxels centred on voxel ``centre`` from each array (0-padded).

    Args:
        arrays: volumes of the same shape X x Y x Z.
        affine: their shared voxel-to-world matrix.
        centre: voxel coordinates (3,) of the box centre.
        out_shape: the box's shape.

    Returns:
        ``(boxes, box_affine)``; the box keeps the world position of every voxel.

    Example:
        >>> (b,), aff = crop_or_pad([np.ones((4, 4, 4))], np.eye(4), np.array([1.5, 1.5, 1.5]), (6, 2, 4))
        >>> b.shape, float(b.sum()), aff[:3, 3].tolist()
        ((6, 2, 4), 32.0, [-1.0, 1.0, 0.0])
    """
    start = np.round(np.asarray(centre, dtype=float) - (np.asarray(out_shape) - 1) / 2.0).astype(int)
    shape = np.asarray(arrays[0].shape[:3])
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + np.asarray(out_shape), shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + np.maximum(src_hi - src_lo, 0)
    boxes = []
    for arr in arrays:
        box = np.zeros(out_shape, dtype=arr.dtype)
        if np.all(src_hi > src_lo):
            box[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = arr[
                src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]
            ]
        boxes.append(box)
    box_affine = affine.copy()
    box_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return boxes, box_affine


# --------------------------------------------------------------------------------------------
# masks


def _otsu_thresholds(values: np.ndarray, n_thresholds: int = 1, bins: int = 128) -> list[float]:
    """Otsu threshold(s) of a 1D sample (SimpleITK's multi-level Otsu), high tail clipped at p99.5."""
    import SimpleITK as sitk

    values = np.asarray(values, dtype=np.float32)
    hi = float(np.percentile(values, 99.5))
    values = np.minimum(values, hi)
    filt = sitk.OtsuMultipleThresholdsImageFilter()
    filt.SetNumberOfThresholds(n_thresholds)
    filt.SetNumberOfHistogramBins(bins)
    filt.Execute(sitk.GetImageFromArray(values.reshape(1, -1)))
    return [float(t) for t in filt.GetThresholds()]


def _mode(values: np.ndarray, bins: int = 200) -> float:
    """Peak of a smoothed histogram (the dominant tissue's intensity inside the head)."""
    from scipy import ndimage

    hist, edges = np.histogram(values, bins=bins, range=(0.0, float(np.percentile(values, 99.5))))
    k = int(np.argmax(ndimage.gaussian_filter1d(hist.astype(float), 3.0)))
    return float(0.5 * (edges[k] + edges[k + 1]))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _erode(mask: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    """Erosion by a ball of ``mm`` (exact, through the Euclidean distance transform)."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=spacing) > mm


def _dilate(mask: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    """Dilation by a ball of ``mm``."""
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """3D hole filling, then per axial slice (holes open only through the top/bottom slice)."""
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(mask)
    for z in range(mask.shape[2]):
        if mask[:, :, z].any():
            mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    return mask


def _coarse_factors(spacing: np.ndarray, working_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(working_mm / float(s)))) for s in spacing)


def block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels (edge-padded to whole blocks).

    Example:
        >>> block_mean(np.arange(8.0).reshape(2, 2, 2), (2, 2, 2)).tolist()
        [[[3.5]]]
    """
    if all(f == 1 for f in factors):
        return np.asarray(array, dtype=np.float32)
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors)]
    a = np.pad(np.asarray(array, dtype=np.float32), pad, mode="edge")
    nx, ny, nz = (n // f for n, f in zip(a.shape, factors))
    fx, fy, fz = factors
    return a.reshape(nx, fx, ny, fy, nz, fz).mean(axis=(1, 3, 5))


def upsample_mask(mask: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`block_mean` for a mask: trilinear interpolation of the blocks, > 0.5.

    Only the mask's bounding box (plus one block) is interpolated.

    Example:
        >>> m = np.zeros((4, 4, 4), bool); m[1:3, 1:3, 1:3] = True
        >>> up = upsample_mask(m, (2, 2, 2), (8, 8, 8))
        >>> up.shape, int(up.sum()), bool(up[4, 4, 4]), bool(up[0, 0, 0])  # the 8 corners round off
        ((8, 8, 8), 56, True, False)
    """
    from scipy import ndimage

    shape = tuple(int(n) for n in shape)
    if all(f == 1 for f in factors):
        return mask.astype(bool)[: shape[0], : shape[1], : shape[2]]
    out = np.zeros(shape, bool)
    if not mask.any():
        return out
    f = np.asarray(factors, dtype=float)
    nz = np.nonzero(mask)
    lo_c = np.maximum(np.array([ix.min() for ix in nz]) - 1, 0)
    hi_c = np.array([ix.max() for ix in nz]) + 2
    lo = (lo_c * f).astype(int)
    hi = np.minimum((hi_c * f).astype(int), shape)
    if np.any(hi <= lo):
        return out
    # fine voxel i lies at block coordinate (i - (f - 1) / 2) / f
    offset = (lo - (f - 1.0) / 2.0) / f
    up = ndimage.affine_transform(mask.astype(np.float32), 1.0 / f, offset=offset, output_shape=tuple(hi - lo), order=1, mode="nearest")
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = up > 0.5
    return out


def head_field(image: np.ndarray, spacing: np.ndarray, sigma_mm: float = HEAD_FIELD_MM, fraction: float = 0.1) -> np.ndarray:
    """Smooth intensity field of the foreground, 1 at the bright part of the head.

    A normalised convolution ``G * (image . m) / G * (m)`` with a Gaussian of ``sigma_mm`` over a
    rough foreground ``m = image > fraction x p99`` (on blocks of 2 voxels, for speed), divided by
    its 95th percentile inside ``m``. Far from any foreground (Gaussian weight of ``m`` below 5 %)
    it is 1. A smooth bias field shows as values well below 1 on the dark side of the head.

    Args:
        image: X x Y x Z non-negative intensities.
        spacing: voxel size in mm (3,).
        sigma_mm: width of the Gaussian (much wider than the scalp and skull).
        fraction: the rough foreground's threshold, a share of the 99th percentile.

    Returns:
        float32 X x Y x Z field (> 0).

    Example:
        >>> x = np.zeros((40, 20, 20), np.float32); x[5:35, 5:15, 5:15] = 1.0; x[5:20, 5:15, 5:15] = 0.25
        >>> f = head_field(x, np.array([3.0, 3.0, 3.0]), sigma_mm=15.0)
        >>> bool(f[8, 10, 10] < 0.5), bool(f[32, 10, 10] > 0.9)
        (True, True)
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    positive = image[image > 0]
    if positive.size == 0:
        return np.ones(image.shape, np.float32)
    m = (image > fraction * float(np.percentile(positive, 99.0))).astype(np.float32)
    factors = (2, 2, 2)
    sigma = sigma_mm / (spacing * 2.0)
    num = ndimage.gaussian_filter(block_mean(image * m, factors), sigma, mode="constant")
    den = ndimage.gaussian_filter(block_mean(m, factors), sigma, mode="constant")
    covered = den > 0.05
    crop = tuple(slice(0, n) for n in image.shape)
    field = ndimage.zoom(np.where(covered, num / np.maximum(den, 1e-6), 0.0), 2, order=1)[crop]
    valid = ndimage.zoom(covered.astype(np.float32), 2, order=0)[crop] > 0
    ref = float(np.percentile(field[(m > 0) & valid], 95)) if np.any((m > 0) & valid) else 0.0
    if ref <= 0:
        return np.ones(image.shape, np.float32)
    return np.where(valid, np.maximum(field / ref, 1e-3), 1.0).astype(np.float32)


def head_mask(image: np.ndarray, spacing: np.ndarray, working_mm: float = WORKING_MM) -> np.ndarray:
    """Foreground (head) mask: Otsu threshold, largest component, closing, hole filling.

    Computed on blocks of about ``working_mm`` and interpolated back to the input grid. Where a
    strong bias field darkens part of the head (:func:`head_field` below ``HEAD_FIELD_SHARE`` of the
    head's bright part) the image is divided by ``field / HEAD_FIELD_SHARE`` before the threshold,
    so the threshold follows the field there; elsewhere (all of a head with a bias field weaker
    than about 1.4x) the image is used as it is.

    Args:
        image: X x Y x Z intensities on an RAS grid.
        spacing: voxel size in mm (3,).
        working_mm: voxel size the morphology runs at (speed).

    Returns:
        bool X x Y x Z mask.
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    factors = _coarse_factors(spacing, working_mm)
    if any(f > 1 for f in factors):
        coarse = head_mask(block_mean(image, factors), spacing * factors, working_mm=0.0)
        return upsample_mask(coarse, factors, image.shape)
    smooth = ndimage.gaussian_filter(image, sigma=1.0 / np.asarray(spacing) * 1.5)
    values = smooth[smooth > 0]
    if values.size < 10:
        return np.zeros(image.shape, bool)
    # flatten only a strong bias field: the dark side's scalp would fall below a global threshold
    smooth = smooth / np.minimum(1.0, head_field(np.maximum(smooth, 0.0), spacing) / HEAD_FIELD_SHARE)
    (t,) = _otsu_thresholds(smooth[smooth > 0], 1)
    # fill first: a scalp enclosing a dark skull must take the skull and brain with it
    mask = _largest_component(_fill_holes(smooth > 0.5 * t))
    mask = _erode(_dilate(mask, spacing, 4.0), spacing, 4.0)  # closing
    return _fill_holes(mask)


def valley_ratio(image: np.ndarray, spacing: np.ndarray, width_mm: float = RING_MM) -> np.ndarray:
    """Image / its grey closing over about ``width_mm``: low in dark valleys, about 1 elsewhere.

    The grey closing (separable min/max filters over a box of about ``width_mm``) fills every dark
    structure narrower than ``width_mm`` with the level of the brighter tissue on both sides, so the
    ratio is low in the CSF/skull gap between brain and scalp however bright the two sides are (a
    smooth bias field cancels) and about 1 in uniform tissue. Sulci and ventricles are valleys too.

    Args:
        image: X x Y x Z intensities (lightly smoothed here, sigma 0.75 mm).
        spacing: voxel size in mm (3,).
        width_mm: widest valley detected (box side of the closing).

    Returns:
        float32 X x Y x Z ratio (0 where the closing is 0).

    Example:
        >>> x = np.full((20, 5, 5), 1.0, np.float32); x[9:11] = 0.2
        >>> (valley_ratio(x, np.array([1.0, 1.0, 1.0]), width_mm=5.0)[:, 2, 2] < 0.6).nonzero()[0].tolist()
        [9, 10]
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), sigma=0.75 / spacing)
    size = tuple(int(max(3, 2 * round(0.5 * width_mm / s) + 1)) for s in spacing)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(smooth, size=size, mode="nearest"), size=size, mode="nearest")
    return np.where(closed > 0, smooth / np.where(closed > 0, closed, 1.0), 0.0).astype(np.float32)


def auto_brain_mask(
    image: np.ndarray,
    spacing: np.ndarray,
    head: np.ndarray | None = None,
    field_of_view: np.ndarray | None = None,
    erode_mm: float = ERODE_MM,
    min_depth_mm: float = MIN_DEPTH_MM,
    working_mm: float = WORKING_MM,
) -> np.ndarray:
    """Automatic brain mask by thresholding and morphology (see the module docstring for limits).

    Steps: the dark CSF/skull ring between brain and scalp (:func:`valley_ratio` below
    ``RING_RATIO``, at the input resolution); on blocks of about ``working_mm``: tissue candidates =
    head voxels brighter than a lower threshold (the lower of the first two-level Otsu threshold and
    half the head's intensity mode) and at least ``min_depth_mm`` below the head's surface; core
    candidates = candidates outside the ring (and, when bright voxels are rare deep in the head,
    i.e. T1/FLAIR-like contrast, below 1.6 x mode); erosion by ``erode_mm``; the component with
    most voxels near the deepest point of the head; dilation back by ``erode_mm`` into the
    candidates; closing by 3 mm; hole filling; back at the input resolution, a geodesic growth of
    up to ``EDGE_MM`` through voxels at least ``EDGE_RATIO`` of their grey closing (the edge).

    Args:
        image: X x Y x Z intensities on an RAS grid (bias-corrected or not: the thresholds are
            relative to the head's intensity mode and the dark ring to the local tissue).
        spacing: voxel size in mm (3,).
        head: head mask (computed with :func:`head_mask` when not given).
        field_of_view: bool X x Y x Z, where the acquisition has data; a head cut by the edge of the
            acquired volume has no surface there. Default: everywhere.
        erode_mm: erosion/dilation distance that detaches brain from scalp.
        min_depth_mm: brain voxels lie at least this deep below the head's surface (scalp + skull).
        working_mm: voxel size the morphology runs at (blocks of the input grid; speed); the mask
            is interpolated back to the input grid.

    Returns:
        bool X x Y x Z mask (empty if no brain-like component was found).

    Example:
        >>> x = np.zeros((48, 48, 48), np.float32); g = np.indices(x.shape) - 23.5
        >>> r = np.sqrt((g ** 2).sum(0)); x[r < 22] = 1.0; x[r < 17] = 0.05; x[r < 14] = 0.8
        >>> m = auto_brain_mask(x, np.array([2.0, 2.0, 2.0]))
        >>> bool(m[24, 24, 24]), bool(m[24, 24, 44])
        (True, False)
    """
    spacing = np.asarray(spacing, dtype=float)
    if head is None:
        head = head_mask(image, spacing, working_mm)
    if not head.any():
        return head
    valley = valley_ratio(image, spacing)
    ring = head & (valley < RING_RATIO)  # the barrier between brain and scalp
    factors = _coarse_factors(spacing, working_mm)
    if all(f == 1 for f in factors):
        brain = _brain_from_candidates(image, spacing, head, field_of_view, ring, erode_mm, min_depth_mm)
    else:
        fov = None if field_of_view is None else block_mean(field_of_view, factors) > 0.5
        coarse_head = block_mean(head, factors) > 0.5
        coarse_ring = block_mean(ring, factors) > RING_BLOCK_SHARE
        coarse = _brain_from_candidates(block_mean(image, factors), spacing * factors, coarse_head, fov, coarse_ring, erode_mm, min_depth_mm)
        brain = upsample_mask(coarse, factors, image.shape) & head
    # the coarse edge stops short of the ring: grow up to EDGE_MM to the ring at full resolution
    return _grow_into(brain, head & (valley >= EDGE_RATIO), spacing, EDGE_MM)


def _grow_into(mask: np.ndarray, allowed: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    """Geodesic dilation of ``mask`` by about ``mm`` through ``allowed`` voxels (bounding box only)."""
    from scipy import ndimage

    if not mask.any() or mm <= 0:
        return mask
    steps = np.maximum(1, np.round(mm / np.asarray(spacing, dtype=float)).astype(int))
    nz = np.nonzero(mask)
    lo = np.maximum(np.array([ix.min() for ix in nz]) - steps, 0)
    hi = np.minimum(np.array([ix.max() for ix in nz]) + steps + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    m, ok = mask[box], allowed[box] | mask[box]
    grown = m.copy()
    for i in range(int(steps.max())):
        # one face-connected step, only along axes whose voxels are small enough for this step
        struct = np.zeros((3, 3, 3), bool)
        struct[1, 1, 1] = True
        for a in range(3):
            if i < steps[a]:
                idx = [1, 1, 1]
                for v in (0, 2):
                    idx[a] = v
                    struct[tuple(idx)] = True
        grown = ndimage.binary_dilation(grown, struct) & ok
    out = mask.copy()
    out[box] = grown
    return out


def nonzero_region(
    data: np.ndarray, in_affine: np.ndarray, grid_affine: np.ndarray, grid_shape: tuple[int, int, int], voxel_ml_in: float, force: bool = False
) -> tuple[np.ndarray | None, dict]:
    """The non-zero region of a brain-extracted input on the output grid, or ``None`` for raw input.

    An input counts as brain-extracted when at least ``BRAIN_EXTRACTED_ZERO_SHARE`` of its voxels
    are exactly 0, its non-zero voxels (resampled with trilinear weights, > 0.5) form one component
    holding at least ``BRAIN_EXTRACTED_COMPONENT_SHARE`` of them, and that component with its holes
    filled is brain-sized (``BRAIN_EXTRACTED_MIN_ML`` to ``BRAIN_EXTRACTED_MAX_ML``). A raw head
    whose air the scanner wrote as exact zeros is larger than that (scalp, skull, neck).

    Args:
        data: the input voxels (X x Y x Z).
        in_affine: its voxel-to-world matrix.
        grid_affine, grid_shape: the output grid.
        voxel_ml_in: the input's voxel volume (ml).
        force: return the region whatever the tests say (``mask.source: nonzero``).

    Returns:
        ``(region or None, info)``; ``info`` holds the measured shares and volume (for the summary).

    Example:
        >>> x = np.zeros((40, 40, 40), np.float32); g = np.indices(x.shape) - 19.5
        >>> x[(g ** 2).sum(0) < 15 ** 2] = 1.0
        >>> region, info = nonzero_region(x, np.diag([3.0, 3, 3, 1]), np.diag([3.0, 3, 3, 1]), (40, 40, 40), 0.027)
        >>> region is not None, round(info["volume_ml"] / (4 / 3 * np.pi * 45 ** 3 / 1000), 1)
        (True, 1.0)
    """
    from scipy import ndimage

    nonzero = data != 0
    n_nonzero = int(np.count_nonzero(nonzero))
    info: dict[str, Any] = {"zero_share": round(1.0 - n_nonzero / max(1, nonzero.size), 4), "nonzero_ml": round(n_nonzero * voxel_ml_in, 1)}
    # cheap tests on the input first: most raw scans stop here
    if not force and (info["zero_share"] < BRAIN_EXTRACTED_ZERO_SHARE or not BRAIN_EXTRACTED_MIN_ML <= info["nonzero_ml"] <= 1.2 * BRAIN_EXTRACTED_MAX_ML):
        return None, info
    region = resample_to_grid(nonzero.astype(np.float32), in_affine, grid_affine, grid_shape, order=1, antialias=False) > 0.5
    labels, n = ndimage.label(region)
    if n == 0:
        return None, info
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    info["largest_component_share"] = round(float(sizes.max()) / float(sizes.sum()), 4)
    region = _fill_holes(labels == int(np.argmax(sizes)))
    voxel_ml = float(abs(np.linalg.det(grid_affine[:3, :3]))) / 1000.0
    info["volume_ml"] = round(float(region.sum()) * voxel_ml, 1)
    ok = info["largest_component_share"] >= BRAIN_EXTRACTED_COMPONENT_SHARE and BRAIN_EXTRACTED_MIN_ML <= info["volume_ml"] <= BRAIN_EXTRACTED_MAX_ML
    return (region if ok or force else None), info


def deepbet_mask(img: Any, data: np.ndarray, grid_affine: np.ndarray, grid_shape: tuple[int, int, int]) -> np.ndarray:
    """Brain mask by deepbet (a learned skull stripper, optional dependency) on the output grid.

    deepbet (Fisch et al., Comput. Biol. Med. 2024; ``pip install deepbet``, MIT) ships its two
    TorchScript networks inside its wheel, so it runs offline; it was trained on T1-weighted scans of
    healthy adults. It runs on the input in its own space (on the CPU, one thread unless torch is
    told otherwise); the mask is resampled (nearest neighbour) onto the output grid.

    Raises:
        BrainlatentError: deepbet is not installed.
    """
    import nibabel as nib

    try:
        from deepbet import BrainExtraction
    except ImportError as exc:
        raise BrainlatentError(
            f"preprocess.mask.source is 'deepbet' but deepbet cannot be imported ({exc}); install it with "
            "'pip install deepbet' (it needs torch; its weights ship in the wheel), or use mask.source auto"
        ) from None
    bet = BrainExtraction(no_gpu=True)
    _, mask, _ = bet.run(nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine))
    mask_data = np.asarray(mask.dataobj) > 0
    return resample_to_grid(mask_data.astype(np.uint8), mask.affine.astype(float), grid_affine, grid_shape, order=0) > 0


def cut_inferior(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, dict]:
    """Cut a brain mask below the cerebellum, at a level derived from the mask's own anatomy.

    Automatic masks of raw scans run down the brainstem (and sometimes into the neck) to the scan's
    edge, so the mask's inferior end - and with it the slice band, a share of the mask's extent -
    depends on how far down the acquisition reached. Two levels, the higher one wins:

    * **area drop**: scanning down from 0.6 brain lengths below the top of the mask, the first axial
      slice whose mask area is below ``CUT_AREA_SHARE`` of the largest axial area (below the
      cerebellum only the medulla, or nothing, is left);
    * **length**: ``CUT_LENGTH_FACTOR`` brain lengths below the top (a mask that leaks into the neck
      never drops in area).

    The brain length is the anterior-posterior extent of the slice with the largest area. Only the
    largest component is kept afterwards.

    Args:
        mask: bool X x Y x Z on an RAS grid (axis 2 = inferior -> superior).
        spacing: voxel size in mm (3,).

    Returns:
        ``(mask, info)``: info holds ``level_mm`` (mm below the top of the mask, or ``None`` when
        nothing was cut), ``by`` (``area``, ``length`` or ``none``) and ``removed_ml``.

    Example:
        >>> m = np.zeros((40, 40, 60), bool); m[5:35, 5:35, 40:60] = True; m[18:22, 18:22, 0:40] = True
        >>> cut, info = cut_inferior(m, np.array([3.0, 3.0, 3.0]))
        >>> info["by"], int(np.flatnonzero(cut.any(axis=(0, 1)))[0]), info["level_mm"]
        ('area', 40, 60.0)
    """
    spacing = np.asarray(spacing, dtype=float)
    info: dict[str, Any] = {"by": "none", "level_mm": None, "removed_ml": 0.0}
    area = mask.sum(axis=(0, 1))
    nz = np.flatnonzero(area)
    if nz.size < 3:
        return mask, info
    top = int(nz[-1])
    zmax = int(np.argmax(area))
    ys = np.flatnonzero(mask[:, :, zmax].any(axis=0))
    length_mm = float((ys[-1] - ys[0] + 1) * spacing[1])
    per_mm = 1.0 / spacing[2]
    cut = -1  # highest slice removed
    start = top - int(round(0.6 * length_mm * per_mm))
    for z in range(min(start, top), -1, -1):
        if area[z] < CUT_AREA_SHARE * area[zmax]:
            cut, info["by"] = z, "area"
            break
    by_length = top - int(round(CUT_LENGTH_FACTOR * length_mm * per_mm))
    if by_length > cut:
        cut, info["by"] = by_length, "length"
    if cut < nz[0]:
        return mask, {"by": "none", "level_mm": None, "removed_ml": 0.0, "brain_length_mm": round(length_mm, 1)}
    out = mask.copy()
    out[:, :, : cut + 1] = False
    out = _largest_component(out)
    info.update(level_mm=round(float((top - cut) * spacing[2]), 1), removed_ml=round(float(mask.sum() - out.sum()) * float(np.prod(spacing)) / 1000.0, 1),
                brain_length_mm=round(length_mm, 1))
    return out, info


def _brain_from_candidates(
    image: np.ndarray, spacing: np.ndarray, head: np.ndarray, field_of_view: np.ndarray | None, ring: np.ndarray, erode_mm: float, min_depth_mm: float
) -> np.ndarray:
    """:func:`auto_brain_mask` on one grid (the working blocks), given the head and the dark ring."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(image, sigma=0.75 / spacing)
    values = smooth[head]
    mode = _mode(values)
    t_low = min(_otsu_thresholds(values, 2)[0], 0.5 * mode)
    # depth below the head's surface; the edge of the acquired volume is not a surface
    outside = ~head if field_of_view is None else ~head & field_of_view
    depth = ndimage.distance_transform_edt(~outside, sampling=spacing)
    depth[~head] = 0.0
    candidate = head & (smooth > t_low) & (depth > min_depth_mm)
    deep = depth > 0.5 * float(depth.max())
    bright_share = float(np.mean(smooth[deep] > 1.3 * mode))
    core_candidate = candidate & ~ring
    if bright_share < 0.02:
        core_candidate &= smooth < 1.6 * mode
    core = _erode(core_candidate, spacing, erode_mm)
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros(image.shape, bool)
    # the brain is the component with most voxels near the deepest point of the head
    centre = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape), dtype=float)
    radius = max(0.5 * float(depth.max()), 2.0 * erode_mm)
    grid = np.ogrid[tuple(slice(0, s) for s in image.shape)]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    score = np.bincount(labels[dist2 <= radius**2], minlength=n + 1).astype(float)
    score[0] = 0
    if score.max() <= 0:
        score = np.bincount(labels.ravel(), minlength=n + 1).astype(float)
        score[0] = 0
    brain = labels == int(np.argmax(score))
    brain = _dilate(brain, spacing, erode_mm) & candidate
    brain = _largest_component(brain)
    brain = _erode(_dilate(brain, spacing, 3.0), spacing, 3.0)  # closing: sulcal CSF, smooth edge
    return _fill_holes(brain)


# --------------------------------------------------------------------------------------------
# intensities


def n4_bias_correction(
    image: np.ndarray, mask: np.ndarray, spacing: np.ndarray, shrink_factor: int = 4, iterations: list[int] | tuple[int, ...] = (50, 40, 30)
) -> tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction fitted on a shrunk copy, applied at full resolution.

    Args:
        image: X x Y x Z positive intensities.
        mask: bool X x Y x Z region the field is fitted in (the brain mask); voxels <= 0 are left out.
        spacing: voxel size in mm (3,).
        shrink_factor: fit on an image shrunk by this factor per axis.
        iterations: maximum iterations per fitting level (one entry per level).

    Returns:
        ``(corrected, bias)``: float32 arrays, ``corrected = image / bias``; the bias field's
        geometric mean inside the mask is 1.
    """
    import SimpleITK as sitk

    fit_mask = mask & (image > 0)
    if fit_mask.sum() < 100:
        return image.astype(np.float32), np.ones(image.shape, np.float32)
    # numpy (x, y, z) -> SimpleITK index (x, y, z): transpose because GetImageFromArray reads z, y, x
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.T, dtype=np.float32))
    img.SetSpacing([float(s) for s in spacing])
    msk = sitk.GetImageFromArray(np.ascontiguousarray(fit_mask.T, dtype=np.uint8))
    msk.CopyInformation(img)
    factor = [int(max(1, min(shrink_factor, n // 8 if n >= 16 else 1))) for n in image.shape]
    small = sitk.Shrink(img, factor)
    small_mask = sitk.Shrink(msk, factor)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    # the field is smooth (B-spline control points tens of mm apart): evaluate it on the shrunk grid
    # and interpolate linearly to full resolution (log field within 0.002 of the full evaluation
    # inside the brain; 0.06 instead of 0.15 CPU-seconds on a 1.5 mm box)
    resample = sitk.ResampleImageFilter()
    resample.SetReferenceImage(img)
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetUseNearestNeighborExtrapolator(True)
    log_bias = sitk.GetArrayFromImage(resample.Execute(n4.GetLogBiasFieldAsImage(small))).T
    log_bias -= float(log_bias[fit_mask].mean())  # geometric mean 1 inside the mask: keeps the scale
    bias = np.exp(log_bias).astype(np.float32)
    return (image / bias).astype(np.float32), bias


def normalise(image: np.ndarray, mask: np.ndarray, method: str = "percentile", lower: float = 1.0, upper: float = 99.0) -> tuple[np.ndarray, dict]:
    """Normalise intensities inside ``mask``; voxels outside it become 0.

    Args:
        image: X x Y x Z intensities.
        mask: bool X x Y x Z.
        method: ``percentile`` (clip to the in-mask [lower, upper] percentiles, scale to [0, 1]) or
            ``zscore`` (in-mask mean 0, std 1).
        lower, upper: percentiles for ``percentile``.

    Returns:
        ``(normalised float32, parameters)``.

    Example:
        >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2); m = x > 0
        >>> y, p = normalise(x, m, "percentile", 0, 100)
        >>> float(y.min()), float(y.max()), float(y[0, 0, 0])
        (0.0, 1.0, 0.0)
    """
    values = image[mask].astype(np.float64)
    if values.size == 0:
        raise BrainlatentError("brain mask is empty; cannot normalise intensities")
    out = np.zeros(image.shape, np.float32)
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
        scale = hi - lo if hi > lo else 1.0
        out[mask] = np.clip((values - lo) / scale, 0.0, 1.0)
        return out, {"method": method, "lower_value": lo, "upper_value": hi}
    if method == "zscore":
        mean, std = float(values.mean()), float(values.std())
        out[mask] = (values - mean) / (std if std > 0 else 1.0)
        return out, {"method": method, "mean": mean, "std": std}
    raise BrainlatentError(f"preprocess.normalise.method: unknown method '{method}'; expected percentile or zscore")


# --------------------------------------------------------------------------------------------
# the job


def _load_mask(path: str | os.PathLike) -> tuple[Any, np.ndarray]:
    import nibabel as nib

    problems = io.check_nifti_header(path)
    if problems:
        raise BrainlatentError(problems[0].replace(": image", ": mask image"))
    img = nib.load(str(path))
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - truncated gzip raises EOFError/OSError/zlib.error
        raise BrainlatentError(f"{path}: mask voxel data cannot be read, file truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4:
        data = data[..., 0]
    data = np.nan_to_num(np.asarray(data, dtype=np.float32)) > 0.5
    if not data.any():
        raise BrainlatentError(f"{path}: mask is empty; expected a brain mask with voxels > 0")
    return img, data.astype(np.uint8)


def _write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with io.atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def scan_name(path: str | os.PathLike) -> str:
    """File name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def preprocess_scan(
    cfg: dict,
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike | None,
    out_image: str | os.PathLike,
    out_mask: str | os.PathLike,
    out_qc_png: str | os.PathLike | None,
    box_affine: np.ndarray | None = None,
) -> dict:
    """Preprocess one scan and write its image, mask and QC picture.

    Args:
        cfg: study config (after :func:`brainlatent.config.load_config`); uses ``cfg["preprocess"]``.
        image_path: input NIfTI (3D, or 4D with one volume).
        mask_path: the scans table's brain mask, used when ``preprocess.mask.source == "table"``.
        out_image: output float32 NIfTI (RAS, ``spacing_mm``, ``field_of_view_mm`` / spacing voxels),
            e.g. 120 x 144 x 120 for 1.5 mm and a 180 x 216 x 180 mm box.
        out_mask: output uint8 brain mask on the same grid.
        out_qc_png: QC picture (three views with the mask outline); ``None`` to skip.
        box_affine: place the output box here (the 4 x 4 affine of an earlier output) instead of
            centring it on the brain mask; the box then depends on the input's grid alone (a
            counterfactual twin is preprocessed into its source's box, so slice indices correspond).

    Returns:
        A JSON-able summary: input shape/spacing/orientation/dtype, output shape/spacing, brain volume
        (ml), share of the mask inside the box, bias-field range, normalisation parameters, timings.

    Raises:
        BrainlatentError: unreadable or invalid input, or no brain found; no output is left behind.
    """
    import nibabel as nib

    pp = cfg["preprocess"]
    spacing = np.asarray(pp["spacing_mm"], dtype=float)
    fov_shape = tuple(int(v) for v in np.maximum(1, np.round(np.asarray(pp["field_of_view_mm"], dtype=float) / spacing)).astype(int))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[step] = round(now - t0, 3)
        t0 = now

    img, data = io.load_nifti(image_path)
    in_affine = img.affine.astype(float)
    lap("load")

    grid_affine, grid_shape = ras_grid(in_affine, data.shape, spacing)
    image = resample_to_grid(data, in_affine, grid_affine, grid_shape, order=1)
    image = np.maximum(image, 0.0) if data.min() >= 0 else image
    lap("resample")

    source = pp["mask"]["source"]
    use_table = source == "table" and mask_path is not None
    if source == "table" and mask_path is None:
        log.warning("%s: preprocess.mask.source is 'table' but the scan has no mask; using the automatic mask", image_path)
    region, extracted = None, None
    if not use_table and source in ("auto", "table", "nonzero"):
        # brain-extracted input (exact-zero background around one brain-sized region): that region is the mask
        voxel_ml_in = float(abs(np.linalg.det(in_affine[:3, :3]))) / 1000.0
        region, extracted = nonzero_region(data, in_affine, grid_affine, grid_shape, voxel_ml_in, force=source == "nonzero")
        if region is None and source == "nonzero":
            raise BrainlatentError(f"{image_path}: preprocess.mask.source is 'nonzero' but the image has no non-zero region")
    head = region if region is not None else head_mask(image, spacing)
    if not head.any():
        raise BrainlatentError(f"{image_path}: no head found (the image has no foreground above the Otsu threshold)")
    # work inside the head's bounding box from here on (the masks cost per voxel)
    lo = np.maximum(np.array([ix.min() for ix in np.nonzero(head)]) - 2, 0)
    hi = np.minimum(np.array([ix.max() for ix in np.nonzero(head)]) + 3, grid_shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    image, head = image[box], head[box]
    grid_affine[:3, 3] = grid_affine[:3, :3] @ lo + grid_affine[:3, 3]
    grid_shape = image.shape
    voxel_ml = float(np.prod(spacing)) / 1000.0
    head_ml = float(head.sum()) * voxel_ml
    lap("head_mask")

    cut_info: dict[str, Any] = {"by": "none", "level_mm": None, "removed_ml": 0.0}
    if use_table:
        mimg, mdata = _load_mask(mask_path)
        brain = resample_to_grid(mdata, mimg.affine.astype(float), grid_affine, grid_shape, order=0) > 0
        if not brain.any():
            raise BrainlatentError(f"{mask_path}: mask does not overlap image {image_path} in world coordinates")
        mask_kind = "table"
    else:
        if region is not None:
            brain, mask_kind = head.copy(), "nonzero"
        elif source == "deepbet":
            brain, mask_kind = deepbet_mask(img, data, grid_affine, grid_shape), "deepbet"
            if not brain.any():
                raise BrainlatentError(f"{image_path}: deepbet found no brain")
        else:
            field_of_view = field_of_view_mask(in_affine, data.shape, grid_affine, grid_shape)
            brain, mask_kind = auto_brain_mask(image, spacing, head, field_of_view), "classical"
            if not brain.any():
                raise BrainlatentError(f"{image_path}: automatic brain mask found no brain")
        if pp["mask"]["cut_inferior"]:
            brain, cut_info = cut_inferior(brain, spacing)
    brain_ml = float(brain.sum()) * voxel_ml
    lap("brain_mask")

    # the output box, centred on the brain's centre of mass
    if box_affine is None:
        centre = np.array([np.mean(ix) for ix in np.nonzero(brain)])
    else:
        box_affine = np.asarray(box_affine, dtype=float)
        if not np.allclose(box_affine[:3, :3], grid_affine[:3, :3], atol=1e-4):
            raise BrainlatentError(f"{image_path}: the given output box has voxel axes {np.diag(box_affine)[:3].tolist()}; expected the RAS grid of preprocess.spacing_mm {spacing.tolist()}")
        start = np.linalg.solve(grid_affine, box_affine[:, 3])[:3]  # the box's first voxel on the working grid
        centre = start + (np.asarray(fov_shape) - 1) / 2.0
    (image, out_msk, head), out_affine = crop_or_pad([image, brain.astype(np.uint8), head], grid_affine, centre, fov_shape)
    brain = out_msk.astype(bool)
    kept = float(brain.sum()) * voxel_ml / brain_ml
    if not brain.any():
        raise BrainlatentError(f"{image_path}: the brain mask lies outside the field of view {pp['field_of_view_mm']} mm")
    lap("crop")

    bc = pp["bias_correction"]
    bias_range = [1.0, 1.0]
    if bc["enabled"]:
        # fitted inside the brain; the field is evaluated on the whole box
        shifted = image - min(0.0, float(image[brain].min()))
        image, bias = n4_bias_correction(shifted, brain, spacing, bc["shrink_factor"], bc["iterations"])
        bias_range = [float(v) for v in np.percentile(bias[brain], [1, 99])]
        lap("n4")

    norm = pp["normalise"]
    out_img, norm_params = normalise(image, brain, norm["method"], norm["lower_percentile"], norm["upper_percentile"])
    qc_img = image * head
    lap("normalise")

    from brainlatent.qc import evaluate_checks, measure_mask

    in_view = field_of_view_mask(in_affine, data.shape, out_affine, fov_shape)
    measures = measure_mask(brain, in_view, spacing, out_img, norm["method"])
    checks = evaluate_checks(measures, pp["qc"], norm["method"])
    lap("qc")

    name = scan_name(out_image)
    written = [out_image, out_mask] + ([out_qc_png] if out_qc_png is not None else [])
    try:
        _write_nifti(out_image, out_img.astype(np.float32), out_affine)
        _write_nifti(out_mask, out_msk.astype(np.uint8), out_affine)
        if out_qc_png is not None:
            from brainlatent.qc import save_qc_png

            verdict = "QC ok" if checks["passed"] else "QC FAILED: " + "; ".join(checks["failures"])
            title = f"{name}  brain {out_msk.sum() * voxel_ml:.0f} ml  ({mask_kind} mask)  {verdict}"
            save_qc_png(out_qc_png, qc_img, brain, spacing, title)
    except BaseException:
        for path in written:  # never leave a partial set of outputs
            Path(path).unlink(missing_ok=True)
        raise
    lap("write")

    return {
        "scan": name,
        "input": {
            "path": str(image_path),
            "shape": list(data.shape),
            "dtype": str(img.get_data_dtype()),
            "spacing_mm": [round(float(v), 4) for v in img.header.get_zooms()[:3]],
            "orientation": "".join(nib.aff2axcodes(in_affine)),
            "oblique": bool(np.any(np.abs(in_affine[:3, :3] / np.linalg.norm(in_affine[:3, :3], axis=0)).max(axis=0) < 1.0 - 1e-3)),
        },
        "output": {
            "image": str(out_image),
            "mask": str(out_mask),
            "shape": list(out_img.shape),
            "spacing_mm": spacing.tolist(),
            "orientation": "".join(nib.aff2axcodes(out_affine)),
        },
        "mask_source": "table" if use_table else ("auto" if source == "table" else source),
        "mask_method": mask_kind,
        "brain_extracted_test": extracted,
        "inferior_cut": cut_info,
        "brain_volume_ml": round(brain_ml, 1),
        "mask_fraction_in_fov": round(kept, 4),
        "head_volume_ml": round(head_ml, 1),
        "bias_field_p1_p99": [round(v, 4) for v in bias_range],
        "normalise": norm_params,
        "qc": {**checks, "measures": measures},
        "seconds": timings,
    }


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config: a YAML path or an inline JSON string")
    parser.add_argument("--image", required=True, help="input NIfTI image")
    parser.add_argument("--mask", default=None, help="brain mask from the scans table (used when preprocess.mask.source is 'table')")
    parser.add_argument("--out-image", required=True, help="output preprocessed image (.nii.gz)")
    parser.add_argument("--out-mask", required=True, help="output brain mask (.nii.gz)")
    parser.add_argument("--qc", required=True, help="output QC picture (.png)")
    parser.add_argument("--summary", default=None, help="optional JSON summary of the job")
    parser.add_argument("--threads", type=int, default=1, help="threads for SimpleITK (default 1)")


def run(args: argparse.Namespace) -> None:
    import SimpleITK as sitk

    from brainlatent.config import load_stage_config

    cfg = load_stage_config(args.config, "preprocess")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(args.threads)))
    outputs = [args.out_image, args.out_mask, args.qc] + ([args.summary] if args.summary else [])
    try:
        summary = preprocess_scan(cfg, args.image, args.mask or None, args.out_image, args.out_mask, args.qc)
        if args.summary:
            io.write_json(args.summary, summary)
    except BaseException:
        for path in outputs:  # no partial set of outputs left behind
            Path(path).unlink(missing_ok=True)
        raise
    for reason in summary["qc"]["failures"]:
        log.warning("%s: QC failed: %s", summary["scan"], reason)
    log.info(
        "%s: %s %s -> %s, brain %.0f ml, %.2f s",
        summary["scan"],
        summary["input"]["orientation"],
        "x".join(map(str, summary["input"]["shape"])),
        "x".join(map(str, summary["output"]["shape"])),
        summary["brain_volume_ml"],
        sum(summary["seconds"].values()),
    )
