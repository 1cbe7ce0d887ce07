"""Atomic file writes and safe reading of NIfTI images and tables.

Every writer here writes to a temporary name beside the target and renames it into place
(``os.replace``), so a killed job never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from brainlatent.errors import BrainlatentError

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``.

    The temporary name keeps the target's suffix (``.nii.gz``, ``.png``...) so libraries that
    choose a format from the extension still work. On any exception the temporary file is removed
    and the target is left untouched.

    Example:
        >>> with atomic_path("out/metrics.json") as tmp:
        ...     tmp.write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        name = target.name
        suffix = "".join(target.suffixes[-2:]) if name.endswith(".nii.gz") else target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs follow the umask
    try:
        yield tmp
        if tmp.is_dir() or tmp.exists():
            os.replace(tmp, target)
        else:  # the writer did not create the file
            raise BrainlatentError(f"{target}: writer produced no output")
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; on success it replaces ``target`` whole."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: PathLike, text: str) -> None:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(target: PathLike, data: Any) -> None:
    """Write JSON atomically (numpy scalars and arrays are converted)."""
    write_text(target, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file with a clear error when it is missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BrainlatentError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise BrainlatentError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_table(target: PathLike, df: Any) -> None:
    """Write a pandas DataFrame atomically; the format follows the suffix (.parquet, .csv, .tsv)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if target.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif target.suffix == ".tsv":
            df.to_csv(tmp, sep="\t", index=False)
        else:
            df.to_csv(tmp, index=False)


def save_torch(target: PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints, networks)."""
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def load_torch(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` with a clear error for missing or corrupt files."""
    import torch

    path = Path(path)
    if not path.exists():
        raise BrainlatentError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise BrainlatentError(f"{path}: not a readable weights-only checkpoint ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# NIfTI


#: Header sanity limits, checked before any voxel is read, so a corrupt or hostile header cannot make
#: a job allocate gigabytes. A head MRI volume has 2..2048 voxels per axis (2048 is four times a
#: 0.5 mm whole-head matrix), at most 1e9 voxels in all (4 GB as float32) and voxels of more than
#: 0 and at most 20 mm (a 2 cm voxel no longer resolves brain anatomy).
MIN_DIM = 2
MAX_DIM = 2048
MAX_VOXELS = 1_000_000_000
MAX_ZOOM_MM = 20.0


def check_nifti_header(path: PathLike) -> list[str]:
    """Problems found in a NIfTI file's header (cheap: no voxel data is read).

    Checks: the file exists and parses, the image is 3D (a 4D image with one volume is accepted),
    its dimensions, voxel count and voxel sizes are plausible (:data:`MIN_DIM`, :data:`MAX_DIM`,
    :data:`MAX_VOXELS`, :data:`MAX_ZOOM_MM`), and the affine is finite and invertible. Returns a
    list of one-line problems (empty if fine).
    """
    import nibabel as nib

    path = Path(path)
    try:
        if not path.exists():
            return [f"{path}: image file not found"]
        img = nib.load(str(path))  # lazy: parses the header only
        zooms = _stored_zooms(img)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for unreadable files
        return [f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"]
    problems = _geometry_problems(path, tuple(img.header.get_data_shape()), zooms)
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        problems.append(f"{path}: affine has non-finite values; expected a finite voxel-to-world matrix")
    else:
        det = float(np.linalg.det(affine[:3, :3]))
        if abs(det) < 1e-8:
            problems.append(f"{path}: affine is singular (det={det:.3g}); expected an invertible voxel-to-world matrix")
    return problems


def _stored_zooms(img) -> tuple[float, ...]:
    """The voxel sizes as stored in the file's header (no voxel data is read).

    ``nib.load`` silently replaces a zero voxel size by 1 mm and a negative one by its absolute
    value, so the header is parsed again here without those fixes.
    """
    holder = img.file_map.get("header", img.file_map["image"])  # a single .nii starts with its header
    with holder.get_prepare_fileobj("rb") as fileobj:
        stored = type(img.header).from_fileobj(fileobj, check=False)
    return tuple(float(z) for z in stored.get_zooms())


def _geometry_problems(path: Path, shape: tuple[int, ...], zooms: tuple[float, ...]) -> list[str]:
    """Problems with the header's dimensions and voxel sizes (see :data:`MAX_DIM` and friends)."""
    spatial = shape[:3] if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1) else None
    if spatial is None:
        return [f"{path}: image has shape {shape}; expected a 3D volume"]
    problems = []
    if min(spatial) < MIN_DIM:
        problems.append(f"{path}: image has shape {shape}; expected a 3D volume (a 2D image was given)")
    elif max(spatial) > MAX_DIM:
        problems.append(f"{path}: header dimensions {shape} are absurd; expected {MIN_DIM} to {MAX_DIM} voxels along each axis")
    elif int(np.prod(spatial, dtype=np.int64)) > MAX_VOXELS:
        problems.append(f"{path}: header dimensions {shape} make {int(np.prod(spatial, dtype=np.int64)):,} voxels; expected at most {MAX_VOXELS:,}")
    sizes = tuple(float(z) for z in zooms[:3])
    if not all(np.isfinite(z) and 0 < z <= MAX_ZOOM_MM for z in sizes):
        problems.append(f"{path}: header voxel sizes {sizes} mm are absurd; expected each above 0 and at most {MAX_ZOOM_MM:g} mm")
    return problems


def load_nifti(path: PathLike):
    """Load a NIfTI image and check its voxels; returns ``(nibabel image, float32 data)``.

    Raises :class:`BrainlatentError` naming the file for an unreadable or truncated file, a wrong
    dimensionality, a bad affine, non-finite voxels or an all-zero volume. ``scl_slope`` and
    ``scl_inter`` are applied (``get_fdata``).
    """
    import nibabel as nib

    problems = check_nifti_header(path)
    if problems:
        raise BrainlatentError(problems[0])
    img = nib.load(str(path))
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - truncated gzip raises EOFError/OSError/zlib.error
        raise BrainlatentError(f"{path}: voxel data cannot be read, file truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4:
        data = data[..., 0]
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise BrainlatentError(f"{path}: {n_bad} voxels are NaN or infinite; expected finite intensities")
    if not np.any(data):
        raise BrainlatentError(f"{path}: all voxels are zero; expected an image of a head")
    return img, data
