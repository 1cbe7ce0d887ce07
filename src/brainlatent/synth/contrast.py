"""MR contrasts and the acquisition sites that make every scanner's images a little different.

A contrast is a weighted sum of tissue fractions (FLAIR: lesions bright, CSF dark; T1w: lesions
dark, white matter bright; T2w: CSF and lesions bright). A site then acquires the subject-space
image the way its scanner would: a smooth multiplicative bias field, a slice profile and voxel
size (1 mm isotropic or thick 2D slices), a field of view around the head, Rician noise, the
array's axis order on disk (RAS, LPS, LAS or a permuted sagittal layout, with the affine set so
world coordinates stay right) and a datatype (float32, int16, or uint16 with ``scl_slope != 1``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage as ndi

from brainlatent.synth.anatomy import basis_shape, gaussian_basis, smooth_field

#: relative intensity of each tissue per modality (white matter of FLAIR/T1w ~ the reference)
INTENSITY: dict[str, dict[str, float]] = {
    "flair": {"gm": 0.80, "wm": 0.62, "lesion": 1.30, "csf": 0.07, "csf_outer": 0.07,
              "bone": 0.03, "marrow": 0.45, "fat": 0.85, "soft": 0.35},
    "t1w": {"gm": 0.55, "wm": 0.85, "lesion": 0.42, "csf": 0.12, "csf_outer": 0.12,
            "bone": 0.03, "marrow": 0.75, "fat": 1.00, "soft": 0.38},
    "t2w": {"gm": 0.55, "wm": 0.40, "lesion": 0.85, "csf": 1.00, "csf_outer": 1.00,
            "bone": 0.03, "marrow": 0.40, "fat": 0.70, "soft": 0.30},
}
MODALITIES: tuple[str, ...] = tuple(INTENSITY)


@dataclass(frozen=True)
class Site:
    """How one scanner acquires and stores an image.

    Args:
        name: site label written to the tables.
        voxel_mm: voxel size along world x, y, z (R, A, S), mm.
        orientation: axis codes of the stored array (``nibabel.aff2axcodes`` of the affine).
        dtype: ``float32``, ``int16`` or ``uint16``.
        scl_slope: NIfTI scaling slope (stored value x slope = intensity); 1 for no scaling.
        noise: Rician noise sigma relative to white-matter intensity.
        bias: standard deviation of the log bias field.
        gain: intensity scale of the stored image.
    """

    name: str
    voxel_mm: tuple[float, float, float]
    orientation: str
    dtype: str
    scl_slope: float
    noise: float
    bias: float
    gain: float

    def as_dict(self) -> dict:
        return asdict(self)


#: the cohort's sites: modern 3D isotropic, 2D axial thick slices, a sagittal 3D with permuted axes
SITES: tuple[Site, ...] = (
    Site("site-A", (1.0, 1.0, 1.0), "RAS", "float32", 1.0, 0.020, 0.15, 1.0),
    Site("site-B", (0.9, 0.9, 3.0), "LPS", "int16", 1.0, 0.035, 0.25, 1000.0),
    Site("site-C", (1.0, 1.0, 4.0), "LAS", "uint16", 0.05, 0.045, 0.35, 800.0),
    Site("site-D", (1.2, 1.0, 1.0), "ASL", "int16", 1.0, 0.030, 0.20, 1500.0),
)


def render_contrast(
    fractions: dict[str, np.ndarray], modality: str, jitter: np.ndarray, texture: np.ndarray
) -> np.ndarray:
    """Noise-free image of one modality: tissue fractions weighted by their intensities.

    Args:
        fractions: tissue name -> fraction array (see :func:`anatomy.tissue_fractions`).
        modality: ``flair``, ``t1w`` or ``t2w``.
        jitter: relative grey/white matter intensity offsets of this subject, shape ``2``.
        texture: multiplicative smooth texture (``X x Y x Z``, around 0).
    """
    table = dict(INTENSITY[modality])
    table["gm"] *= 1.0 + float(jitter[0])
    table["wm"] *= 1.0 + float(jitter[1])
    image = np.zeros_like(fractions["gm"])
    for tissue, value in table.items():
        image += np.float32(value) * fractions[tissue]
    image *= 1.0 + texture
    return image


def bias_field(
    rng: np.random.Generator, shape: tuple[int, int, int], resolution_mm: float, strength: float
) -> np.ndarray:
    """Smooth multiplicative bias field ``exp(f)``, ``f`` a sum of wide Gaussian bumps (sd ``strength``)."""
    coeffs = rng.normal(0.0, strength, size=basis_shape(shape, resolution_mm, 60.0)).astype(np.float32)
    bases = tuple(gaussian_basis(n, resolution_mm, 60.0, 45.0) for n in shape)
    field = smooth_field(coeffs, bases)
    field -= field.mean()
    return np.exp(field)


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS+ output grid: ``shape`` voxels of ``voxel_mm`` starting at ``origin_mm``."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    origin_mm: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.voxel_mm, 1.0])
        aff[:3, 3] = self.origin_mm
        return aff


def field_of_view(
    head: np.ndarray, affine: np.ndarray, voxel_mm: tuple[float, float, float], margin_mm: np.ndarray
) -> Grid:
    """Output grid covering the head's bounding box plus a margin (what a technician would plan).

    Args:
        head: boolean head mask on the subject grid.
        affine: the subject grid's (diagonal, RAS+) affine.
        voxel_mm: the site's voxel size.
        margin_mm: margin on every side, per axis, shape ``3``.
    """
    idx = [np.flatnonzero(head.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    lo = np.array([i[0] for i in idx], dtype=np.float64)
    hi = np.array([i[-1] for i in idx], dtype=np.float64)
    spacing = np.diag(affine)[:3]
    lo_mm = affine[:3, 3] + lo * spacing - margin_mm
    hi_mm = affine[:3, 3] + hi * spacing + margin_mm
    vox = np.asarray(voxel_mm, dtype=np.float64)
    shape = tuple(int(n) for n in np.ceil((hi_mm - lo_mm) / vox).astype(int) + 1)
    centre = (lo_mm + hi_mm) / 2.0
    origin = centre - vox * (np.asarray(shape) - 1) / 2.0
    return Grid(shape, tuple(float(v) for v in vox), origin)


def _resample_axis(volume: np.ndarray, axis: int, start: float, step: float, n_out: int) -> np.ndarray:
    """Linear interpolation along one axis at ``start + step * j`` (input voxel units), 0 outside."""
    n_in = volume.shape[axis]
    x = start + step * np.arange(n_out)
    i0 = np.floor(x).astype(np.intp)
    f = (x - i0).astype(np.float32)
    w0 = np.where((i0 >= 0) & (i0 < n_in), 1.0 - f, 0.0).astype(np.float32)
    w1 = np.where((i0 + 1 >= 0) & (i0 + 1 < n_in), f, 0.0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = n_out
    out = np.take(volume, np.clip(i0, 0, n_in - 1), axis=axis)
    out *= w0.reshape(shape)
    out += np.take(volume, np.clip(i0 + 1, 0, n_in - 1), axis=axis) * w1.reshape(shape)
    return out


def resample(volume: np.ndarray, affine: np.ndarray, grid: Grid) -> np.ndarray:
    """Resample a subject-grid volume onto an axis-aligned output grid (separable, linear).

    Axes whose output voxel is coarser than the input are first smoothed with a Gaussian slice
    profile (FWHM = output voxel), as a thick 2D slice integrates over its thickness.

    Args:
        volume: ``X x Y x Z`` float32 on the subject grid.
        affine: the subject grid's diagonal RAS+ affine.
        grid: the output grid.

    Returns:
        ``grid.shape`` float32 array in RAS+ axis order.
    """
    spacing = np.diag(affine)[:3]
    out = volume
    for axis in range(3):
        ratio = grid.voxel_mm[axis] / spacing[axis]
        if ratio > 1.2:
            sigma = np.sqrt(ratio**2 - 1.0) / 2.3548
            out = ndi.gaussian_filter1d(out, sigma, axis=axis, mode="constant", truncate=3.0)
    start = (grid.origin_mm - affine[:3, 3]) / spacing
    step = np.asarray(grid.voxel_mm) / spacing
    # shrink first: the axis with the largest step is resampled first
    for axis in np.argsort(-step, kind="stable"):
        out = _resample_axis(out, int(axis), float(start[axis]), float(step[axis]), grid.shape[axis])
    return np.ascontiguousarray(out, dtype=np.float32)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of standard deviation ``sigma``."""
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= sigma
    real += image
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= sigma
    return np.hypot(real, imag, out=real)


def reorient(data: np.ndarray, affine: np.ndarray, orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip a RAS-ordered array to the axis codes ``orientation`` and adjust the affine."""
    transform = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.axcodes2ornt(tuple(orientation)))
    out = ornt.apply_orientation(data, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def to_nifti(data: np.ndarray, affine: np.ndarray, dtype: str, scl_slope: float = 1.0) -> nib.Nifti1Image:
    """A NIfTI image with qform = sform = ``affine`` (scanner), stored as ``dtype``.

    Args:
        data: intensities (float) or a label array (uint8 dtype passes through).
        affine: voxel-to-world matrix.
        dtype: ``float32``, ``int16``, ``uint16`` or ``uint8``.
        scl_slope: for integer types, intensity = stored value x ``scl_slope``.
    """
    if dtype == "float32":
        arr = data.astype(np.float32)
    else:
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(data / scl_slope), info.min, info.max).astype(dtype)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if scl_slope != 1.0:
        img.header.set_slope_inter(scl_slope, 0.0)
    return img
