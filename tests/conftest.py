"""Shared fixtures: tiny real NIfTI files and configs written to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
OPEN_MS = REPO.parent / "shared" / "data" / "open_ms_sample"

os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_head(path: Path, shape=(24, 28, 20), zooms=(2.0, 2.0, 2.0), seed=0, dtype=np.float32) -> Path:
    """A small head-like volume: an ellipsoid 'brain' inside a thin 'skull' shell."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt(sum(((idx[i] - centre[i]) / (shape[i] * 0.35)) ** 2 for i in range(3)))
    data = np.where(r < 0.8, 100.0, 0.0) + np.where((r >= 0.9) & (r < 1.0), 60.0, 0.0)
    data = (data + rng.normal(0, 2, shape)).clip(0).astype(dtype)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -np.array(shape) * np.array(zooms) / 2
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run torch on one thread (reproducible timings on a shared 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def head_factory(tmp_path):
    def make(name="sub-01.nii.gz", **kwargs):
        return write_head(tmp_path / "images" / name, **kwargs)

    return make
