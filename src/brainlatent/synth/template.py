"""The anatomical template every synthetic head is built from.

nilearn ships the MNI152 2009 (symmetric, nonlinear) T1 template and its grey- and white-matter
probability maps (``load_mni152_template`` & co., no download). The T1 template is brain
extracted, so this module adds what a real head scan has around the brain: a layer of
subarachnoid CSF, a skull (inner table, marrow-filled diploe, outer table), scalp fat and skin,
and a neck below the skull base. It also precomputes what the per-subject anatomy needs: the
lateral ventricles, a displacement field that widens them, the CSF-facing cortex that thins with
atrophy, and the white-matter voxels where lesions may sit.

Everything lives on the template's voxel grid, padded so that a larger (male) head still fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

#: padding (mm) added on every side of the template grid
PAD_MM = 12.0
#: mean layer thicknesses (mm): subarachnoid CSF, inner table, diploe, outer table, fat, skin
MEAN_THICKNESS_MM: dict[str, float] = {
    "csf": 2.0, "inner_table": 1.8, "diploe": 2.6, "outer_table": 1.8, "fat": 4.0, "skin": 2.5,
}


@dataclass(frozen=True)
class Template:
    """Tissue maps of the padded MNI152 2009 grid (all arrays ``X x Y x Z`` float32 unless noted).

    Args:
        resolution_mm: isotropic voxel size.
        affine: 4 x 4 voxel-to-world (RAS+, mm) matrix of the padded grid.
        gm, wm: grey/white matter probabilities.
        csf: CSF inside the brain mask (``brain - gm - wm``).
        brain: the brain mask (parenchyma + ventricles + sulci), soft [0, 1].
        ventricles: CSF of the lateral ventricles (subset of ``csf``).
        ventricle_pull: ``3 x X x Y x Z`` displacement (voxels) towards the ventricles, max norm 1;
            sampling the template at ``x + s * pull(x)`` widens the ventricles by about ``s`` voxels.
        sulcal_csf: how much CSF touches each voxel's cortex, [0, 1] (where cortex thins).
        ventricle_distance: distance (mm) to the nearest ventricle voxel.
        outer_depth: distance (mm) outward from the smooth intracranial surface (0 inside).
        shell_index: flat indices of the voxels outside that surface that may hold a head layer
            (skull, scalp, neck); int64.
        shell_neck: for each of ``shell_index``, whether it belongs to the neck (bool).
        lesion_sites: ``K x 3`` int voxel indices of deep white matter (lesion centre candidates).
        lesion_weights: ``K`` float64 sampling weights, larger next to the ventricles.
        centre: ``3`` voxel coordinates of the brain's centre (rotation/scaling origin).
    """

    resolution_mm: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    ventricle_pull: np.ndarray
    sulcal_csf: np.ndarray
    ventricle_distance: np.ndarray
    outer_depth: np.ndarray
    shell_index: np.ndarray
    shell_neck: np.ndarray
    lesion_sites: np.ndarray
    lesion_weights: np.ndarray
    centre: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gm.shape)

    @property
    def voxel_ml(self) -> float:
        return self.resolution_mm**3 / 1000.0


def _load_nilearn(resolution_mm: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, GM, WM arrays and the affine of nilearn's MNI152 2009 templates (no download)."""
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=resolution_mm)
    gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(dtype=np.float32)
    return t1_img.get_fdata(dtype=np.float32), gm, wm, np.asarray(t1_img.affine, dtype=np.float64)


def _lateral_ventricles(csf: np.ndarray, brain: np.ndarray, voxel_ml: float) -> np.ndarray:
    """CSF compartments enclosed by brain tissue (not connected to the outside): the ventricles."""
    region = (csf > 0.5) | ~brain
    labels, _ = ndi.label(region)
    outside = labels[0, 0, -1]
    enclosed = (labels != outside) & (labels > 0)
    labels, n = ndi.label(enclosed)
    if n == 0:
        return enclosed
    sizes = ndi.sum_labels(enclosed, labels, index=np.arange(1, n + 1)) * voxel_ml
    keep = np.flatnonzero(sizes >= 1.0) + 1  # >= 1 ml: the lateral ventricles, not sulcal pockets
    return np.isin(labels, keep)


@lru_cache(maxsize=2)
def load_template(resolution_mm: int = 2) -> Template:
    """Build (once per process) the padded template with head layers and precomputed fields.

    Args:
        resolution_mm: 1 or 2, which nilearn MNI152 2009 template to use.

    Example:
        >>> tpl = load_template(2)
        >>> tpl.gm.shape  # (99, 117, 95) padded by 12 mm (6 voxels) on every side
        (111, 129, 107)
    """
    t1, gm, wm, affine = _load_nilearn(resolution_mm)
    r = float(resolution_mm)
    pad = int(round(PAD_MM / r))
    t1, gm, wm = (np.pad(a, pad) for a in (t1, gm, wm))
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)

    brain_bin = ndi.binary_fill_holes((t1 > 0.05) | (gm + wm > 0.5))
    brain = np.clip(ndi.gaussian_filter(brain_bin.astype(np.float32), 0.5), 0.0, 1.0)
    brain = np.maximum(brain, np.clip(gm + wm, 0.0, 1.0))
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    voxel_ml = r**3 / 1000.0

    vent_bin = _lateral_ventricles(csf, brain_bin, voxel_ml)
    vent_region = ndi.binary_dilation(vent_bin, iterations=1)
    ventricles = (csf * vent_region).astype(np.float32)
    ventricle_distance = ndi.distance_transform_edt(~vent_bin, sampling=r).astype(np.float32)

    # displacement towards the ventricles: gradient of the smoothed ventricle mask, max norm 1
    phi = ndi.gaussian_filter(vent_bin.astype(np.float32), sigma=12.0 / r)
    pull = np.stack(np.gradient(phi)).astype(np.float32)
    pull /= max(float(np.sqrt((pull**2).sum(0)).max()), 1e-6)

    outer_csf = csf * ~vent_region
    sulcal = np.clip(ndi.gaussian_filter(outer_csf, sigma=1.0) * 2.5, 0.0, 1.0).astype(np.float32)

    # smooth intracranial surface (fills the sulcal notches), distance outward in mm
    envelope = ndi.gaussian_filter(brain_bin.astype(np.float32), sigma=3.0 / r) > 0.35
    envelope = ndi.binary_fill_holes(envelope | brain_bin)
    outer_depth = ndi.distance_transform_edt(~envelope, sampling=r).astype(np.float32)

    # neck: below the lowest cerebrum slice, extend the head's cross-section (tapering)
    z_vox = np.nonzero(brain_bin.any(axis=(0, 1)))[0]
    cerebrum = brain_bin.sum(axis=(0, 1))
    z_ref = int(z_vox[0] + np.argmax(cerebrum[z_vox] > 0.6 * cerebrum.max()))
    head_total = sum(MEAN_THICKNESS_MM.values())
    ref = ndi.binary_erosion(outer_depth[:, :, z_ref] < head_total, iterations=int(round(6.0 / r)))
    neck = np.zeros_like(brain_bin)
    for z in range(z_ref):
        shrink = int(round((z_ref - z) * 0.45))  # the neck narrows below the skull base
        neck[:, :, z] = ndi.binary_erosion(ref, iterations=shrink) if shrink else ref
    neck &= outer_depth > 0
    shell = ((outer_depth > 0) & (outer_depth < 2.0 * head_total)) | neck
    shell_index = np.flatnonzero(shell)

    # lesion centres: confident white matter, weighted towards the ventricles (periventricular)
    deep = (wm > 0.9) & (ventricle_distance > r)
    sites = np.argwhere(deep).astype(np.int32)
    dist = ventricle_distance[deep].astype(np.float64)
    weights = 0.35 + np.exp(-dist / 6.0)
    weights /= weights.sum()

    centre = np.asarray(ndi.center_of_mass(brain_bin), dtype=np.float64)
    return Template(
        resolution_mm=r,
        affine=affine,
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        csf=csf.astype(np.float32),
        brain=brain.astype(np.float32),
        ventricles=ventricles,
        ventricle_pull=pull,
        sulcal_csf=sulcal,
        ventricle_distance=ventricle_distance,
        outer_depth=outer_depth,
        shell_index=shell_index,
        shell_neck=neck.ravel()[shell_index],
        lesion_sites=sites,
        lesion_weights=weights,
        centre=centre,
    )
