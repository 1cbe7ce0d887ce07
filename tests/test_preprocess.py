"""Tests of ``brainlatent.preprocess``: orientation, resampling, dtypes, N4, masks, normalisation, errors.

The synthetic head is an analytic function of world coordinates (an ellipsoid "brain" with a
darker core, a CSF layer, a dark skull shell, a bright scalp shell and a bright marker blob), so the
same object can be sampled exactly on any grid: RAS, LPS, LAS, oblique or anisotropic.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainlatent import cli
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.preprocess import auto_brain_mask, n4_bias_correction, normalise, preprocess_scan, ras_grid

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_sample" / "raw"  # shared/ beside the checkout

BRAIN_AXES = np.array([60.0, 75.0, 55.0])  # brain tissue semi-axes (mm)
CSF_MM, SKULL_MM, SCALP_MM = 3.0, 7.0, 6.0
MARKER = np.array([25.0, 30.0, 15.0])  # world position (mm) of a bright blob in the right-anterior-superior brain



def stage_json(study: dict) -> str:
    """What the workflow passes the preprocess stage: its view of the completed study config."""
    from brainlatent.stage_keys import stage_view

    return json.dumps(stage_view(load_config(study), "preprocess"))

def head_phantom(world: np.ndarray, bias: bool = False) -> np.ndarray:
    """Intensity of the synthetic head at world points (..., 3) in RAS mm."""
    r = np.sqrt(((world / BRAIN_AXES) ** 2).sum(-1))  # 1 on the brain surface
    scale = BRAIN_AXES.mean()
    out = np.zeros(world.shape[:-1], np.float32)
    d = (r - 1.0) * scale  # approx. mm outside the brain surface
    out[d < CSF_MM + SKULL_MM + SCALP_MM] = 0.9  # scalp
    out[d < CSF_MM + SKULL_MM] = 0.04  # skull
    out[d < CSF_MM] = 0.12  # CSF
    out[d < 0] = 0.8  # grey-ish tissue
    out[r < 0.6] = 0.65  # white-ish core
    out[np.linalg.norm(world - MARKER, axis=-1) < 6.0] = 1.6
    if bias:
        out *= np.exp(0.35 * world[..., 0] / 100.0 + 0.2 * world[..., 2] / 100.0).astype(np.float32)
    return out


def sample(affine: np.ndarray, shape: tuple[int, int, int], bias: bool = False, seed: int = 0) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    data = head_phantom(world, bias=bias)
    rng = np.random.default_rng(seed)
    return np.abs(data + rng.normal(0.0, 0.01, data.shape)).astype(np.float32)


def grid_affine(spacing, codes: str = "RAS", tilt_deg: float = 0.0, extent_mm=(200.0, 230.0, 200.0)):
    """Affine and shape of a grid covering the head, centred on the world origin."""
    spacing = np.asarray(spacing, dtype=float)
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent_mm, spacing))
    flips = np.array([1.0 if c in "RAS" else -1.0 for c in codes])
    c, s = np.cos(np.deg2rad(tilt_deg)), np.sin(np.deg2rad(tilt_deg))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(flips * spacing)
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return aff, shape


def write(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32, slope: float | None = None) -> Path:
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


def config(**preprocess) -> dict:
    base = {"spacing_mm": [3.0, 3.0, 3.0], "field_of_view_mm": [180, 216, 180], "bias_correction": {"iterations": [20, 20]}}
    base.update(preprocess)
    return load_config({"preprocess": base})


def run_scan(tmp_path: Path, image: Path, cfg: dict, mask: Path | None = None, tag: str = "out") -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    out_img, out_mask, qc = tmp_path / f"{tag}.nii.gz", tmp_path / f"{tag}_mask.nii.gz", tmp_path / f"{tag}.png"
    summary = preprocess_scan(cfg, image, mask, out_img, out_mask, qc)
    assert qc.exists() and qc.stat().st_size > 1000
    return nib.load(str(out_img)), nib.load(str(out_mask)), summary


def marker_world(img: nib.Nifti1Image, mask: nib.Nifti1Image) -> np.ndarray:
    """World centroid of the brightest in-mask voxels (the marker blob)."""
    data = np.where(mask.get_fdata() > 0, img.get_fdata(), -np.inf).ravel()
    k = max(4, int(0.4 * (4 / 3 * np.pi * 6.0**3) / np.prod(img.header.get_zooms()[:3])))  # ~40 % of the blob
    hot = np.argsort(data)[-k:]
    ijk = np.array(np.unravel_index(hot, img.shape), dtype=float).mean(axis=1)
    return img.affine[:3, :3] @ ijk + img.affine[:3, 3]


@pytest.fixture(autouse=True)
def one_thread():
    import SimpleITK as sitk

    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


# --------------------------------------------------------------------------------------------


def test_ras_grid_is_the_same_for_flipped_axes():
    aff, shape = grid_affine([2.0, 2.0, 2.0], "RAS")
    aff_lps, _ = grid_affine([2.0, 2.0, 2.0], "LPS")
    assert ras_grid(aff, shape, (1.5, 1.5, 1.5))[1] == ras_grid(aff_lps, shape, (1.5, 1.5, 1.5))[1]
    np.testing.assert_allclose(ras_grid(aff, shape, (1.5, 1.5, 1.5))[0], ras_grid(aff_lps, shape, (1.5, 1.5, 1.5))[0])


ORIENT_CFG = {"normalise": {"method": "zscore"}}  # no clipping: the marker stays the brightest spot


@pytest.fixture(scope="module")
def ras_reference(tmp_path_factory):
    """The phantom written in RAS and preprocessed: what every other orientation must reproduce."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    tmp = tmp_path_factory.mktemp("ras")
    aff, shape = grid_affine([2.0, 2.0, 2.0], "RAS")
    img, mask, _ = run_scan(tmp, write(tmp / "ras.nii.gz", sample(aff, shape), aff), config(**ORIENT_CFG), tag="ras")
    return img, mask


@pytest.mark.parametrize("codes,tilt", [("LPS", 0.0), ("LAS", 0.0), ("RAS", 10.0)])
def test_orientations_agree(tmp_path, ras_reference, codes, tilt):
    cfg = config(**ORIENT_CFG)
    ref_img, ref_mask = ras_reference
    aff, shape = grid_affine([2.0, 2.0, 2.0], codes, tilt_deg=tilt)
    img, mask, summary = run_scan(tmp_path, write(tmp_path / "in.nii.gz", sample(aff, shape), aff), cfg)

    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") == nib.aff2axcodes(mask.affine)
    assert summary["input"]["orientation"] == "".join(nib.aff2axcodes(aff))
    assert summary["input"]["oblique"] == (tilt > 0)
    np.testing.assert_allclose(img.header.get_zooms()[:3], [3.0, 3.0, 3.0])
    assert img.shape == ref_img.shape == (60, 72, 60)
    # the marker lands at its true world position in both, within a voxel
    assert np.linalg.norm(marker_world(img, mask) - MARKER) < 3.0
    assert np.linalg.norm(marker_world(ref_img, ref_mask) - MARKER) < 3.0
    # same content voxel by voxel: identical for exact flips, close for a rotation
    a, b = img.get_fdata(), ref_img.get_fdata()
    ma, mb = mask.get_fdata() > 0, ref_mask.get_fdata() > 0
    dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
    if tilt == 0:
        np.testing.assert_allclose(img.affine, ref_img.affine)
        assert dice > 0.99
        assert np.abs(a - b).mean() < 0.02
    else:
        # the box is centred on the mask's centre of mass, which may round to a neighbouring voxel:
        # compare the two on their common world lattice
        shift = np.round((img.affine[:3, 3] - ref_img.affine[:3, 3]) / 3.0).astype(int)
        np.testing.assert_allclose(img.affine[:3, 3] - ref_img.affine[:3, 3], 3.0 * shift, atol=1e-6)
        assert np.all(np.abs(shift) <= 1)
        src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(shift, a.shape))
        dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(shift, a.shape))
        a, ma = a[src], ma[src]
        b, mb = b[dst], mb[dst]
        dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
        assert dice > 0.95
        from scipy import ndimage

        inner = ndimage.binary_erosion(ma & mb, iterations=2)  # away from the partial-volume rim
        assert np.corrcoef(a[inner], b[inner])[0, 1] > 0.95


def test_anisotropic_input_keeps_physical_size(tmp_path):
    aff, shape = grid_affine([0.7, 0.7, 4.0], "LPS")
    data = sample(aff, shape)
    path = write(tmp_path / "thick.nii.gz", np.round(data * 1000), aff, dtype=np.uint16)
    cfg = config(spacing_mm=[2.0, 2.0, 2.0], field_of_view_mm=[180, 216, 180])
    img, mask, summary = run_scan(tmp_path, path, cfg)
    np.testing.assert_allclose(img.header.get_zooms()[:3], [2.0, 2.0, 2.0])
    assert img.shape == (90, 108, 90)
    assert summary["input"]["spacing_mm"] == pytest.approx([0.7, 0.7, 4.0], abs=1e-3)
    # brain tissue (bright) extent along each world axis matches the phantom's 2 x semi-axes
    data = img.get_fdata()
    tissue = data > 0.3
    extent = np.array([(np.ptp(ix) + 1) * 2.0 for ix in np.nonzero(tissue)])
    assert np.all(np.abs(extent - 2 * BRAIN_AXES) <= np.array([4.0, 4.0, 8.0])), extent
    # mask volume ~ brain + CSF ellipsoid (the closing may add a little)
    expected_ml = 4 / 3 * np.pi * np.prod(BRAIN_AXES + CSF_MM) / 1000
    assert summary["brain_volume_ml"] == pytest.approx(expected_ml, rel=0.12)


def test_uint16_scl_slope_matches_float(tmp_path):
    aff, shape = grid_affine([2.5, 2.5, 2.5], "RAS")
    raw = np.round(sample(aff, shape) * 2000)  # integers: exact in uint16
    f32 = write(tmp_path / "f32.nii.gz", raw * 0.5, aff, dtype=np.float32)
    u16 = write(tmp_path / "u16.nii.gz", raw, aff, dtype=np.uint16, slope=0.5)
    assert nib.load(str(u16)).get_data_dtype() == np.uint16
    cfg = config()
    a, ma, sa = run_scan(tmp_path, f32, cfg, tag="a")
    b, mb, sb = run_scan(tmp_path, u16, cfg, tag="b")
    assert sb["input"]["dtype"] == "uint16"
    np.testing.assert_array_equal(ma.get_fdata(), mb.get_fdata())
    np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=1e-4)
    assert a.get_data_dtype() == np.float32 and ma.get_data_dtype() == np.uint8


def test_n4_reduces_planted_bias():
    aff, shape = grid_affine([3.0, 3.0, 3.0], "RAS")
    clean = sample(aff, shape)
    biased = sample(aff, shape, bias=True)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    r = np.sqrt(((idx / BRAIN_AXES) ** 2).sum(-1))
    uniform = (r > 0.65) & (r < 0.9) & (np.linalg.norm(idx - MARKER, axis=-1) > 9)  # the "grey" shell
    brain = r < 1.0
    cv = lambda x: float(x[uniform].std() / x[uniform].mean())  # noqa: E731
    corrected, bias = n4_bias_correction(biased, brain, np.array([3.0, 3.0, 3.0]), shrink_factor=2, iterations=[50, 40, 30])
    assert cv(biased) > 3 * cv(clean)  # the planted bias is what dominates the variation
    assert cv(corrected) < 0.5 * cv(biased)
    assert np.exp(np.mean(np.log(bias[brain]))) == pytest.approx(1.0, abs=1e-3)
    # the estimated field follows the planted one
    planted = np.exp(0.35 * idx[..., 0] / 100.0 + 0.2 * idx[..., 2] / 100.0)
    assert np.corrcoef(np.log(bias[brain]), np.log(planted[brain]))[0, 1] > 0.9


@pytest.mark.parametrize("method", ["percentile", "zscore"])
def test_normalisation(tmp_path, method):
    aff, shape = grid_affine([3.0, 3.0, 3.0], "RAS")
    path = write(tmp_path / "in.nii.gz", sample(aff, shape, bias=True), aff)
    cfg = config(normalise={"method": method, "lower_percentile": 2.0, "upper_percentile": 98.0})
    img, mask, summary = run_scan(tmp_path, path, cfg)
    data, m = img.get_fdata(), mask.get_fdata() > 0
    assert np.all(data[~m] == 0)
    if method == "percentile":
        assert data[m].min() >= 0.0 and data[m].max() <= 1.0
        assert data[m].max() == pytest.approx(1.0) and data[m].min() == pytest.approx(0.0)
        assert 0.015 < np.mean(data[m] >= 1.0 - 1e-6) < 0.05  # the top 2 % are clipped
    else:
        assert data[m].mean() == pytest.approx(0.0, abs=1e-3)
        assert data[m].std() == pytest.approx(1.0, abs=1e-3)
    assert summary["normalise"]["method"] == method


def test_normalise_function_errors_on_empty_mask():
    with pytest.raises(BrainlatentError, match="empty"):
        normalise(np.ones((4, 4, 4), np.float32), np.zeros((4, 4, 4), bool))


def test_auto_mask_excludes_skull_and_scalp():
    aff, shape = grid_affine([2.0, 2.0, 2.0], "RAS")
    data = sample(aff, shape)
    mask = auto_brain_mask(data, np.array([2.0, 2.0, 2.0]))
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    d = (np.sqrt(((idx / BRAIN_AXES) ** 2).sum(-1)) - 1.0) * BRAIN_AXES.mean()
    assert mask[d < -3].mean() > 0.99  # all brain tissue
    assert mask[d > CSF_MM + 1].mean() < 0.005  # no skull or scalp


def thin_gap_head(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A harder head: 1.5 mm of dark CSF, a grey (not dark) 3.5 mm skull, a bright scalp, a neck
    block touching the scalp from below and a left-right bias field; returns (image, true brain)."""
    r = np.sqrt(((world / BRAIN_AXES) ** 2).sum(-1))
    d = (r - 1.0) * BRAIN_AXES.mean()
    out = np.zeros(world.shape[:-1], np.float32)
    out[(np.abs(world[..., 0]) < 45) & (np.abs(world[..., 1] + 10) < 40) & (world[..., 2] < -30)] = 0.45  # neck
    out[d < 10.0] = 0.95  # scalp
    out[d < 5.0] = 0.5  # skull, as bright as partial-volume tissue
    out[d < 1.5] = 0.12  # a thin CSF gap
    out[d < 0] = 0.8
    out[r < 0.6] = 0.65
    out *= np.exp(0.4 * world[..., 0] / 100.0).astype(np.float32)
    return out, d < 0


def test_auto_mask_does_not_leak_through_a_thin_gap_or_into_the_neck():
    """The thin dark gap is the only barrier between brain and scalp, and the scalp touches a neck
    block: a mask that crosses the gap takes the scalp and the neck (about 1.5 x the brain)."""
    spacing = 1.5
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = [-105.0, -120.0, -130.0]
    shape = (140, 160, 150)
    world = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    data, brain = thin_gap_head(world)
    data = np.abs(data + np.random.default_rng(0).normal(0.0, 0.01, data.shape)).astype(np.float32)
    mask = auto_brain_mask(data, np.array([spacing] * 3))
    assert mask.sum() / brain.sum() == pytest.approx(1.0, abs=0.05)
    assert 2 * (mask & brain).sum() / (mask.sum() + brain.sum()) > 0.97
    assert not mask[world[..., 2] < -BRAIN_AXES[2] - 6.0].any()  # nothing in the neck


def test_auto_mask_keeps_the_dark_side_of_a_strong_bias_field():
    """The anterior half of the head is 4x darker (a very strong bias field, as at a 4 mm site):
    a global head threshold loses the dark scalp there, the head surface cuts into the brain and
    the brain mask lost about 10 % of the brain; the head threshold now follows the field."""
    spacing = 1.5
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = [-105.0, -120.0, -100.0]
    shape = (140, 160, 135)
    world = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    data = head_phantom(world)
    data[data == np.float32(0.9)] = 0.5  # a dimmer scalp
    data = data * 4.0 ** -np.clip((world[..., 1] + 40.0) / 40.0, 0.0, 1.0)  # 1 behind y = -40 mm, 1/4 in front of y = 0
    data = np.abs(data + np.random.default_rng(0).normal(0.0, 0.03, data.shape)).astype(np.float32)
    d = (np.sqrt(((world / BRAIN_AXES) ** 2).sum(-1)) - 1.0) * BRAIN_AXES.mean()
    brain = d < 0
    mask = auto_brain_mask(data, np.array([spacing] * 3))
    assert (mask & brain).sum() / brain.sum() >= 0.95  # was 0.90 with a global head threshold
    assert mask.sum() / brain.sum() < 1.05
    assert mask[d > CSF_MM + 1].mean() < 0.005  # no skull or scalp


def test_table_mask_is_used_and_resampled(tmp_path):
    aff, shape = grid_affine([2.0, 2.0, 2.0], "RAS")
    image = write(tmp_path / "in.nii.gz", sample(aff, shape), aff)
    # the table's mask: a box, written on a different (LPS, 1 mm) grid
    maff, mshape = grid_affine([1.5, 1.5, 1.5], "LPS")
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in mshape], indexing="ij"), axis=-1) @ maff[:3, :3].T + maff[:3, 3]
    box = np.all(np.abs(idx) <= np.array([40.0, 50.0, 30.0]), axis=-1)
    mask_path = write(tmp_path / "mask.nii.gz", box, maff, dtype=np.uint8)
    img, mask, summary = run_scan(tmp_path, image, config(mask={"source": "table"}), mask=mask_path)
    assert summary["mask_source"] == "table"
    assert summary["brain_volume_ml"] == pytest.approx(80 * 100 * 60 / 1000, rel=0.1)
    # with source auto the table's mask is ignored
    _, _, auto = run_scan(tmp_path, image, config(), mask=mask_path, tag="auto")
    assert auto["mask_source"] == "auto" and auto["brain_volume_ml"] > 1.5 * summary["brain_volume_ml"]


# --------------------------------------------------------------------------------------------
# bad input


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    aff, shape = grid_affine([4.0, 4.0, 4.0], "RAS")
    good = sample(aff, shape)
    nan = good.copy()
    nan[10, 10, 10] = np.nan
    files = {
        "nan": write(tmp_path / "nan.nii.gz", nan, aff),
        "zero": write(tmp_path / "zero.nii.gz", np.zeros(shape), aff),
        "4d": write(tmp_path / "fourd.nii.gz", np.stack([good, good], axis=-1), aff),
    }
    full = write(tmp_path / "full.nii.gz", good, aff).read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    files["truncated"] = tmp_path / "truncated.nii.gz"
    raw = gzip.decompress(full)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    files["short"] = tmp_path / "short.nii.gz"
    return files


def test_bad_inputs_raise_naming_the_file(tmp_path):
    cfg = config()
    for kind, path in _bad_files(tmp_path).items():
        out = tmp_path / f"o_{kind}"
        with pytest.raises(BrainlatentError) as err:
            preprocess_scan(cfg, path, None, out / "x.nii.gz", out / "m.nii.gz", out / "q.png")
        assert str(path) in str(err.value), kind
        assert not out.exists() or not any(out.iterdir()), kind


def test_cli_exit_code_and_no_outputs_on_bad_input(tmp_path, capsys):
    files = _bad_files(tmp_path)
    cfg = stage_json({"preprocess": {"spacing_mm": [3, 3, 3]}})
    for kind in ("nan", "truncated", "4d"):
        outs = [tmp_path / f"{kind}.out.nii.gz", tmp_path / f"{kind}.mask.nii.gz", tmp_path / f"{kind}.png", tmp_path / f"{kind}.json"]
        rc = cli.main(
            ["preprocess", "--config", cfg, "--image", str(files[kind]), "--out-image", str(outs[0]), "--out-mask", str(outs[1]),
             "--qc", str(outs[2]), "--summary", str(outs[3])]
        )  # fmt: skip
        assert rc == 2, kind
        err = capsys.readouterr().err
        assert str(files[kind]) in err and "Traceback" not in err
        assert not any(p.exists() for p in outs), kind
        assert not list(tmp_path.glob(f".{kind}*.tmp*")), kind


def test_cli_writes_outputs_and_summary(tmp_path):
    aff, shape = grid_affine([2.5, 2.5, 2.5], "LPS")
    image = write(tmp_path / "sub-01_ses-1.nii.gz", sample(aff, shape), aff)
    outs = [tmp_path / "p" / "sub-01_ses-1.nii.gz", tmp_path / "p" / "sub-01_ses-1_mask.nii.gz", tmp_path / "qc" / "sub-01_ses-1.png", tmp_path / "s.json"]
    cfg = stage_json({"preprocess": {"spacing_mm": [3, 3, 3], "bias_correction": {"enabled": False}}})
    rc = cli.main(
        ["preprocess", "--config", cfg, "--image", str(image), "--out-image", str(outs[0]), "--out-mask", str(outs[1]),
         "--qc", str(outs[2]), "--summary", str(outs[3])]
    )  # fmt: skip
    assert rc == 0
    assert all(p.exists() for p in outs)
    summary = json.loads(outs[3].read_text())
    assert summary["scan"] == "sub-01_ses-1"
    assert summary["output"]["orientation"] == "RAS" and summary["output"]["shape"] == [60, 72, 60]
    assert summary["bias_field_p1_p99"] == [1.0, 1.0]


# --------------------------------------------------------------------------------------------
# one real clinical scan


def _smallest_real_flair() -> Path | None:
    files = sorted(REAL_DIR.glob("patient*/study*_FLAIR.nii.gz"), key=lambda p: p.stat().st_size) if REAL_DIR.is_dir() else []
    return files[0] if files else None


@pytest.mark.skipif(_smallest_real_flair() is None, reason="open_ms_sample data not available")
def test_real_flair_scan(tmp_path):
    """A real thick-slice FLAIR (uint16, oblique LPS, 0.72 x 0.72 x 4 mm, skull and neck present).

    The automatic mask is brain plus the CSF inside the skull. Adult intracranial volume is about
    1.2-1.7 l; these acquisitions cover the whole cerebrum but their lowest slices may cut the
    cerebellum, and the mask may keep a little tissue at the skull base, so 900-1900 ml is accepted:
    a mask that took the scalp or the neck would exceed 2000 ml (the head is about 2100 ml), one
    that lost a hemisphere would fall under 900 ml.
    """
    path = _smallest_real_flair()
    cfg = config(spacing_mm=[1.5, 1.5, 1.5], bias_correction={"iterations": [50, 40, 30]})
    img, mask, summary = run_scan(tmp_path, path, cfg)
    assert summary["input"]["orientation"] == "LPS" and summary["input"]["dtype"] == "uint16"
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms()[:3], [1.5, 1.5, 1.5])
    assert img.shape == (120, 144, 120)
    assert 900 <= summary["brain_volume_ml"] <= 1900
    assert summary["brain_volume_ml"] < 0.75 * summary["head_volume_ml"]
    assert summary["mask_fraction_in_fov"] > 0.98
    # the mask is one compact blob around the image centre (not a shell of scalp)
    m = mask.get_fdata() > 0
    centre = np.array([np.mean(ix) for ix in np.nonzero(m)])
    assert m[tuple(np.round(centre).astype(int))]
    assert np.all(np.abs(centre - (np.array(m.shape) - 1) / 2) <= 1.0)


# --------------------------------------------------------------------------------------------
# every real scan, a brain-extracted version of one, the inferior cut, loud QC

REAL_SCANS = sorted(REAL_DIR.glob("patient*/study*.nii.gz")) if REAL_DIR.is_dir() else []
REAL_CFG = {"spacing_mm": [1.5, 1.5, 1.5], "bias_correction": {"shrink_factor": 6, "iterations": [50, 40, 30]}}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.skipif(not REAL_SCANS, reason="open_ms_sample data not available")
@pytest.mark.parametrize("path", REAL_SCANS, ids=lambda p: f"{p.parent.name}-{p.name.split('.')[0]}")
def test_every_real_scan_gets_a_plausible_mask_and_passes_qc(tmp_path, path):
    """FLAIR, T1w and T2w of the open_ms_sample scans (Lesjak et al., Neuroinformatics 2016):
    raw (skull, scalp, neck, scanner-zeroed air) so the classical mask is used, cut below the
    cerebellum, within the plausible volume range and passing every QC check."""
    cfg = config(**REAL_CFG)
    img, mask, summary = run_scan(tmp_path, path, cfg)
    assert summary["mask_method"] == "classical"  # the zeroed air does not make it "brain-extracted"
    lo, hi = cfg["preprocess"]["qc"]["brain_volume_ml"]
    assert lo <= summary["brain_volume_ml"] <= hi
    assert summary["brain_volume_ml"] < 0.75 * summary["head_volume_ml"]
    assert summary["qc"]["passed"], summary["qc"]["failures"]
    assert summary["qc"]["measures"]["components"] == 1


@pytest.mark.skipif(not REAL_SCANS, reason="open_ms_sample data not available")
def test_brain_extracted_real_scan_uses_its_nonzero_region(tmp_path):
    """A brain-extracted version of a real T1w (the raw image x its own computed mask, in the raw
    scan's space and dtype) gets the non-zero region as its mask: Dice >= 0.97 with the known brain
    region. The classical mask on the same input loses a rim (it looks for scalp and skull)."""
    from nibabel.processing import resample_from_to

    from brainlatent.preprocess import resample_to_grid

    path = next(p for p in REAL_SCANS if p.name == "study1_T1W.nii.gz")
    cfg = config(**REAL_CFG)
    _, raw_mask, raw = run_scan(tmp_path, path, cfg, tag="raw")
    src = nib.load(str(path))
    brain_in = resample_to_grid(np.asarray(raw_mask.dataobj), raw_mask.affine, src.affine, src.shape[:3], order=0) > 0
    extracted = np.where(brain_in, np.asarray(src.dataobj), 0).astype(np.uint16)
    be_path = write(tmp_path / "extracted.nii.gz", extracted, src.affine, dtype=np.uint16)
    truth_img = nib.Nifti1Image(brain_in.astype(np.uint8), src.affine)

    _, mask, summary = run_scan(tmp_path, be_path, cfg, tag="be")
    assert summary["mask_method"] == "nonzero"
    truth = np.asarray(resample_from_to(truth_img, mask, order=0).dataobj) > 0
    got = np.asarray(mask.dataobj) > 0
    assert _dice(got, truth) >= 0.97, _dice(got, truth)
    lo, hi = cfg["preprocess"]["qc"]["brain_volume_ml"]
    assert lo <= summary["brain_volume_ml"] <= hi
    assert summary["qc"]["passed"], summary["qc"]["failures"]

    _, classical_mask, classical = run_scan(tmp_path, be_path, config(**REAL_CFG, mask={"source": "classical"}), tag="classical")
    assert classical["mask_method"] == "classical"
    assert _dice(np.asarray(classical_mask.dataobj) > 0, np.asarray(resample_from_to(truth_img, classical_mask, order=0).dataobj) > 0) < _dice(got, truth)


@pytest.mark.skipif(not REAL_SCANS, reason="open_ms_sample data not available")
def test_inferior_cut_removes_a_brainstem_and_neck_that_run_to_the_scan_edge(tmp_path):
    """A real FLAIR's mask with a brainstem (3 x 2.5 cm) and then a neck (8 x 6 cm) added below it,
    down to the grid's edge, as a raw scan reaching the neck gives: the cut removes them again, so
    the mask's inferior end (and the slice band) is where it was without them."""
    from brainlatent.preprocess import cut_inferior

    path = _smallest_real_flair()
    _, mask_img, _ = run_scan(tmp_path, path, config(**REAL_CFG))
    mask = np.asarray(mask_img.dataobj) > 0
    sp = np.array([1.5, 1.5, 1.5])
    bottom = int(np.flatnonzero(mask.any(axis=(0, 1)))[0])
    grown = np.pad(mask, ((0, 0), (0, 0), (80, 0)))  # 120 mm more below
    cx, cy = (int(round(np.mean(ix))) for ix in np.nonzero(mask[:, :, bottom + 8]))
    zb = bottom + 80
    grown[cx - 10 : cx + 10, cy - 8 : cy + 8, zb - 30 : zb + 10] = True  # brainstem, 45 mm
    grown[cx - 27 : cx + 27, cy - 20 : cy + 20, : zb - 30] = True  # neck, to the edge
    again, info = cut_inferior(grown, sp)
    assert info["by"] == "area" and info["removed_ml"] > 100  # the area drops to the brainstem's below the cerebellum
    kept = again[:, :, 80:]
    assert np.abs(int(np.flatnonzero(kept.any(axis=(0, 1)))[0]) - bottom) <= 8  # within 12 mm of the real mask's end
    assert not again[:, :, :80].any()
    assert _dice(kept, mask) > 0.98
    # a neck leak straight below the cerebellum never drops in area: the length rule cuts it
    leak = np.pad(mask, ((0, 0), (0, 0), (80, 0)))
    leak[cx - 27 : cx + 27, cy - 20 : cy + 20, : zb + 4] = True
    again, info = cut_inferior(leak, sp)
    assert info["by"] == "length" and info["removed_ml"] > 200
    kept = again[:, :, 80:]
    assert np.abs(int(np.flatnonzero(kept.any(axis=(0, 1)))[0]) - bottom) <= 12  # within 18 mm
    assert not again[:, :, :70].any()
    assert _dice(kept, mask) > 0.97
    # a mask that already ends at the cerebellum is left (nearly) as it is
    same, info = cut_inferior(mask, sp)
    assert (mask.sum() - same.sum()) * 1.5**3 / 1000 < 5.0


def _qc_study(tmp_path: Path, bad: str | None) -> tuple[Path, Path, dict]:
    """Three phantom scans preprocessed with table masks; ``bad`` gets a 30 ml mask (a broken one)."""
    import pandas as pd

    aff, shape = grid_affine([3.0, 3.0, 3.0], "RAS")
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1) @ aff[:3, :3].T + aff[:3, 3]
    d = (np.sqrt(((idx / BRAIN_AXES) ** 2).sum(-1)) - 1.0) * BRAIN_AXES.mean()
    study = tmp_path / "study"
    pre = study / "preprocessed"
    cfg = config(mask={"source": "table"})
    rows = []
    for i, scan in enumerate(["sub-1_ses-1", "sub-2_ses-1", "sub-3_ses-1"]):
        image = write(tmp_path / f"{scan}.nii.gz", sample(aff, shape, seed=i), aff)
        brain = d < CSF_MM if scan != bad else np.linalg.norm(idx - MARKER, axis=-1) < 19.0  # ~29 ml
        mask = write(tmp_path / f"{scan}_mask.nii.gz", brain, aff, dtype=np.uint8)
        out = {k: pre / k / f"{scan}{ext}" for k, ext in (("images", ".nii.gz"), ("masks", ".nii.gz"), ("summaries", ".json"))}
        for p in out.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        rc = cli.main(["preprocess", "--config", json.dumps(cfg), "--image", str(image), "--mask", str(mask),
                       "--out-image", str(out["images"]), "--out-mask", str(out["masks"]), "--qc", str(study / "qc" / f"{scan}.png"),
                       "--summary", str(out["summaries"])])  # fmt: skip
        assert rc == 0
        rows.append({"scan": scan, "subject": scan.split("_")[0], "session": "ses-1", "image": str(image), "mask": str(mask),
                     "age": 30 + i, "edss": 1.0, "ms_type": "RRMS", "sex": "F" if i % 2 else "M"})
    pd.DataFrame(rows).to_csv(study / "scans.tsv", sep="\t", index=False)
    return study, study / "scans.tsv", cfg


def _slice(study: Path, table: Path, cfg: dict, on_fail: str) -> int:
    cfg = dict(cfg, qc={"on_fail": on_fail}, slices={**cfg["slices"], "resolution": 32, "per_scan": 3, "split": {"train": 0.34, "val": 0.33, "test": 0.33, "stratify": []}})
    return cli.main(["slice", "--config", json.dumps(cfg), "--scans", str(table), "--preprocessed", str(study / "preprocessed"),
                     "--out", str(study / "slices" / "32")])  # fmt: skip


def test_a_scan_failing_qc_stops_the_study_or_is_excluded_and_reported(tmp_path, capsys, caplog):
    import pandas as pd

    from brainlatent.slices import load_slices

    study, table, cfg = _qc_study(tmp_path, bad="sub-2_ses-1")
    summary = json.loads((study / "preprocessed" / "summaries" / "sub-2_ses-1.json").read_text())
    assert not summary["qc"]["passed"] and summary["qc"]["checks"]["brain_volume"]["ok"] is False
    assert json.loads((study / "preprocessed" / "summaries" / "sub-1_ses-1.json").read_text())["qc"]["passed"]
    # the preprocess job says so too (log records: the CLI's stderr handler belongs to whichever test ran it first)
    assert any(r.levelname == "WARNING" and "sub-2_ses-1: QC failed: brain_volume" in r.getMessage() for r in caplog.records)
    caplog.clear()

    # default qc.on_fail: stop -> exit 2, the scan and its reason named, no dataset written
    assert _slice(study, table, cfg, "stop") == 2
    err = capsys.readouterr().err
    assert "1 of 3 scans failed quality control" in err and "sub-2_ses-1: brain_volume: mask volume" in err and "outside the plausible 800-2300 ml" in err
    assert "sub-1_ses-1" not in err.split("quality control")[1]
    assert not (study / "slices" / "32").exists()

    # qc.on_fail: exclude -> completes without the scan, lists it on the console, in excluded.tsv and in the report
    assert _slice(study, table, cfg, "exclude") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("sub-2_ses-1 (subject sub-2) excluded: brain_volume") for w in warnings), warnings
    assert "subject sub-2: all its scans were excluded; the subject is not in the dataset" in warnings
    _, manifest = load_slices(study / "slices" / "32")
    assert set(manifest["scan"]) == {"sub-1_ses-1", "sub-3_ses-1"}
    excluded = pd.read_csv(study / "slices" / "32" / "excluded.tsv", sep="\t")
    assert excluded["scan"].tolist() == ["sub-2_ses-1"] and excluded["reason"].str.startswith("brain_volume: mask volume").all()
    report_cfg = dict(cfg, study="study", results_dir=str(tmp_path), qc={"on_fail": "exclude"}, slices={**cfg["slices"], "resolution": 32})
    out = study / "report" / "index.html"
    assert cli.main(["report", "--config", json.dumps(report_cfg), "--study-dir", str(study), "--out", str(out)]) == 0
    html_text = out.read_text()
    assert "table-qc-excluded" in html_text and "sub-2_ses-1" in html_text.split("table-qc-excluded")[1]
    qc_table = html_text.split('id="table-qc"')[1].split("</table>")[0]
    assert "failed: brain_volume: mask volume" in qc_table and qc_table.count(">ok<") == 2


def test_every_scan_passing_qc_writes_an_empty_exclusion_list(tmp_path):
    import pandas as pd

    study, table, cfg = _qc_study(tmp_path, bad=None)
    assert _slice(study, table, cfg, "stop") == 0
    assert pd.read_csv(study / "slices" / "32" / "excluded.tsv", sep="\t").empty


def _has_deepbet() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepbet") is not None


@pytest.mark.skipif(_has_deepbet(), reason="deepbet is installed (the missing-package error cannot be shown)")
def test_deepbet_source_without_the_package_is_a_clear_error(tmp_path):
    aff, shape = grid_affine([4.0, 4.0, 4.0], "RAS")
    image = write(tmp_path / "in.nii.gz", sample(aff, shape), aff)
    with pytest.raises(BrainlatentError, match="pip install deepbet"):
        run_scan(tmp_path, image, config(mask={"source": "deepbet"}))
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.skipif(not (_has_deepbet() and REAL_SCANS), reason="deepbet or the open_ms_sample data not available")
def test_deepbet_source_on_a_real_t1w_agrees_with_the_classical_mask(tmp_path):
    path = next(p for p in REAL_SCANS if p.name == "study1_T1W.nii.gz")
    _, classical, _ = run_scan(tmp_path, path, config(**REAL_CFG), tag="classical")
    _, learned, summary = run_scan(tmp_path, path, config(**REAL_CFG, mask={"source": "deepbet"}), tag="deepbet")
    assert summary["mask_method"] == "deepbet" and summary["qc"]["passed"], summary["qc"]["failures"]
    from nibabel.processing import resample_from_to

    ref = np.asarray(resample_from_to(classical, learned, order=0).dataobj) > 0
    assert _dice(np.asarray(learned.dataobj) > 0, ref) > 0.9
