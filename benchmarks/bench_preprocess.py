"""Speed and memory of ``brainlatent preprocess``, one process per scan (start-up included).

Usage::

    python benchmarks/bench_preprocess.py [NIFTI ...] [--n 6] [--real] [--config config/config.yaml] [--threads 1]

Without files it generates ``--n`` synthetic FLAIR-like heads (nilearn's 2 mm MNI152 grey/white
matter maps plus CSF, skull and scalp shells, a smooth multiplicative bias and Rician-like noise)
at voxel sizes like the demo cohort's sites (2 mm iso, 1 mm iso, 1 x 1 x 3 mm, 0.9 x 0.9 x 4 mm
oblique) and two on the 1 mm 182 x 218 x 182 MNI grid (raw, and brain-extracted: the head times
its brain); ``--real`` adds the open_ms_sample scans (Lesjak et al., Neuroinformatics 2016; thick
clinical FLAIR/T1w/T2w). Prints one row per scan: input shape/spacing, wall and CPU seconds, peak
RSS (MB), brain volume (ml), the mask method, and per group (1 mm / thick, synthetic / real) the
median seconds and the largest peak RSS. CPU seconds are the one-core cost (wall seconds grow with
whatever else runs on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "open_ms_sample" / "raw"  # shared/ beside the checkout
#: (name, voxel size, tilt, fixed output shape or None, brain-extracted)
SITES = [
    ("iso2", (2.0, 2.0, 2.0), 0.0, None, False),
    ("iso1", (1.0, 1.0, 1.0), 0.0, None, False),
    ("thick3", (1.0, 1.0, 3.0), 0.0, None, False),
    ("thick4-oblique", (0.9, 0.9, 4.0), 8.0, None, False),
    ("mni1", (1.0, 1.0, 1.0), 0.0, (182, 218, 182), False),
    ("mni1-extracted", (1.0, 1.0, 1.0), 0.0, (182, 218, 182), True),
]


def synthetic_head(spacing: tuple[float, float, float], tilt_deg: float = 0.0, seed: int = 0, shape=None, extracted: bool = False):
    """A FLAIR-like head (nibabel image) built from the 2 mm MNI152 tissue maps.

    Args:
        spacing: voxel size of the written image (mm).
        tilt_deg: rotation about the left-right axis (an oblique acquisition).
        seed: noise and bias seed.
        shape: output grid shape (centred on the head); default: the head's whole extent.
        extracted: zero everything outside the brain (+ CSF), as a brain-extracted scan.
    """
    import nibabel as nib
    from nilearn import datasets
    from scipy import ndimage

    from brainlatent.preprocess import resample_to_grid

    rng = np.random.default_rng(seed)
    gm_img = datasets.load_mni152_gm_template(resolution=2)
    gm = gm_img.get_fdata().astype(np.float32)
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata().astype(np.float32)
    sp = np.array(gm_img.header.get_zooms()[:3], dtype=float)
    pad = 12  # room for skull and scalp
    gm, wm = (np.pad(a, pad) for a in (gm, wm))
    affine = gm_img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    tissue = gm + wm
    brain = ndimage.binary_fill_holes(tissue > 0.3)
    outside = ndimage.distance_transform_edt(~brain, sampling=sp)
    envelope = ndimage.binary_closing(brain, iterations=4)
    depth_out = ndimage.distance_transform_edt(~envelope, sampling=sp)
    image = 0.15 * np.ones_like(gm)  # CSF (dark on FLAIR)
    image = np.where(tissue > 0.05, 0.15 * (1 - tissue) + 0.95 * gm + 0.75 * wm, image)
    image[(outside > 0) & (depth_out > 2)] = 0.05  # skull
    image[(depth_out > 8) & (depth_out <= 13)] = 0.9  # scalp
    image[depth_out > 13] = 0.0  # air
    if extracted:
        image[~ndimage.binary_dilation(envelope, iterations=1)] = 0.0
    grid = np.indices(image.shape, dtype=np.float32) / np.array(image.shape, dtype=np.float32)[:, None, None, None]
    bias = np.exp(0.25 * np.sin(2.5 * grid[0] + rng.uniform(0, 3)) + 0.2 * (grid[2] - 0.5))
    image = image * bias
    # the acquisition: a (tilted) grid of the requested voxel size
    c = np.cos(np.deg2rad(tilt_deg))
    s = np.sin(np.deg2rad(tilt_deg))
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    ext = (np.array(image.shape) - 1) * sp
    centre = affine[:3, :3] @ ((np.array(image.shape) - 1) / 2.0) + affine[:3, 3]
    out_shape = tuple(int(v) for v in np.ceil(ext / np.asarray(spacing)).astype(int) + 1) if shape is None else tuple(shape)
    out_aff = np.eye(4)
    out_aff[:3, :3] = rot @ np.diag(spacing)
    out_aff[:3, 3] = centre - out_aff[:3, :3] @ ((np.array(out_shape) - 1) / 2.0)
    out = resample_to_grid(image, affine, out_aff, out_shape, order=1)
    noise = 0.03 * float(out.max())
    inside = out > 0
    out = np.sqrt((out + rng.normal(0, noise, out.shape)) ** 2 + rng.normal(0, noise, out.shape) ** 2)
    if extracted:
        out[~inside] = 0.0
    scaled = np.clip(out / out.max() * 3000, 0, 65535).astype(np.uint16)
    img = nib.Nifti1Image(scaled, out_aff)
    img.set_qform(out_aff, code=1)
    img.set_sform(out_aff, code=1)
    return img


def scan_names(images: list[Path]) -> list[str]:
    """File names without extension, prefixed by the parent folder where names repeat."""
    stems = [p.name.replace(".nii.gz", "").replace(".nii", "") for p in images]
    return [f"{p.parent.name}_{s}" if stems.count(s) > 1 else s for p, s in zip(images, stems)]


def run_one(image: Path, name: str, out_dir: Path, config: str, threads: int) -> dict:
    """Run ``brainlatent preprocess`` in a child process; wall seconds and its peak RSS."""
    summary = out_dir / f"{name}.json"
    cmd = [
        sys.executable, "-m", "brainlatent", "preprocess", "--config", config, "--image", str(image),
        "--out-image", str(out_dir / f"{name}.nii.gz"), "--out-mask", str(out_dir / f"{name}_mask.nii.gz"),
        "--qc", str(out_dir / f"{name}.png"), "--summary", str(summary), "--threads", str(threads),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"scan": name, "error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    info = json.loads(summary.read_text())
    return {
        "scan": name,
        "shape": "x".join(map(str, info["input"]["shape"])),
        "spacing": "x".join(f"{v:g}" for v in info["input"]["spacing_mm"]),
        "orient": info["input"]["orientation"] + ("*" if info["input"]["oblique"] else ""),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024.0,
        "brain_ml": info["brain_volume_ml"],
        "method": info.get("mask_method", info.get("mask_source", "?")),
        "qc": "ok" if (info.get("qc") or {}).get("passed", True) else "FAIL",
        "group": ("1 mm" if max(info["input"]["spacing_mm"]) <= 1.3 else "thick" if max(info["input"]["spacing_mm"]) >= 2.5 else "other")
        + (" real" if str(image).startswith(str(REAL_DIR)) else " synthetic"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="NIfTI files (default: generated synthetic heads)")
    parser.add_argument("--n", type=int, default=len(SITES), help="synthetic heads to generate (one per site in turn; 0 for none)")
    parser.add_argument("--real", action="store_true", help=f"add the open_ms_sample scans ({REAL_DIR})")
    parser.add_argument("--config", default="config/config.yaml", help="study config (its preprocess section is used)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", default=None, help="keep outputs in this folder")
    parser.add_argument("--generate-into", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_into:
        import nibabel as nib

        for i in range(args.n):
            site, spacing, tilt, shape, extracted = SITES[i % len(SITES)]
            img = synthetic_head(spacing, tilt, seed=i, shape=shape, extracted=extracted)
            nib.save(img, str(Path(args.generate_into) / f"synth{i:02d}_{site}.nii.gz"))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        out_dir = Path(args.keep) if args.keep else tmp_dir / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        images = [Path(p) for p in args.images]
        if not images and args.n > 0:
            # generated in a child process: a child's peak RSS starts from its parent's at fork
            subprocess.run([sys.executable, __file__, "--generate-into", str(tmp_dir), "--n", str(args.n)], check=True)
            images = sorted(tmp_dir.glob("synth*.nii.gz"))
        if args.real:
            images += sorted(REAL_DIR.glob("patient*/study*.nii.gz"))
        rows = [run_one(p, name, out_dir, args.config, args.threads) for p, name in zip(images, scan_names(images))]

    header = (f"{'scan':<30} {'input shape':>13} {'spacing mm':>14} {'orient':>6} {'wall s':>7} {'cpu s':>6} {'RSS MB':>7} {'brain ml':>8}"
              f" {'mask':>9} {'QC':>4}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['scan']:<30} ERROR {r['error']}")
            continue
        print(
            f"{r['scan']:<30} {r['shape']:>13} {r['spacing']:>14} {r['orient']:>6} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {r['rss_mb']:7.0f} {r['brain_ml']:8.0f}"
            f" {r['method']:>9} {r['qc']:>4}"
        )
    ok = [r for r in rows if "error" not in r]
    if ok:
        print(f"mean wall {np.mean([r['wall_s'] for r in ok]):.2f} s, max RSS {max(r['rss_mb'] for r in ok):.0f} MB over {len(ok)} scans")
        for group in sorted({r["group"] for r in ok}):
            g = [r for r in ok if r["group"] == group]
            print(f"{group:<16} {len(g):3d} scans: median {np.median([r['wall_s'] for r in g]):.2f} s wall, "
                  f"{np.median([r['cpu_s'] for r in g]):.2f} s CPU per scan, peak RSS {max(r['rss_mb'] for r in g):.0f} MB")


if __name__ == "__main__":
    main()
