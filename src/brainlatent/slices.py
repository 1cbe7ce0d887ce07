"""The 2D slice dataset: axial slices of every preprocessed scan, a manifest and a subject-level split.

On disk (one folder per resolution, ``slices/<R>/``)::

    images.npy        float32, N x 1 x R x R, memory-mapped; intensities in [-1, 1], background -1
    manifest.parquet  one row per slice: index, scan, subject, session, slice, split, <attributes>
    excluded.tsv      scans left out by quality control (qc.on_fail: exclude): scan, subject, session, reason

Slices are taken from a band of the brain's inferior-superior extent (``slices.band``, fractions of
the brain mask's extent), ``slices.per_scan`` evenly spaced slices per scan among those whose brain
area is at least ``slices.min_brain_fraction`` of the slice. Each slice is shown in radiological
display orientation (anterior up, the patient's right on the image's left, see :func:`to_display`),
padded to a square and resized with area averaging.

The split is by **subject**: every scan (and slice) of a subject lands in the same split, and the
subjects are stratified on ``slices.split.stratify`` attributes (numeric ones by their bins).

Quality control is gathered here (:mod:`brainlatent.qc`): the preprocessing checks recorded in each
scan's ``summaries/<scan>.json`` plus the slice band check (:func:`band_problems`). Any failing scan
stops the stage with every failing scan and reason listed (exit 2), unless ``qc.on_fail`` is
``exclude``: then the scan is left out, named in a WARNING line and in ``excluded.tsv`` (``scan,
subject, session, reason``; always written, header only when nothing was excluded), and a subject
that loses all its scans is named too. No scan or subject leaves the dataset without a line saying so.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from brainlatent import io
from brainlatent.attributes import encode
from brainlatent.config import derive_seed, load_stage_config
from brainlatent.errors import BrainlatentError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def choose_slices(mask: np.ndarray, band: tuple[float, float], per_scan: int, min_brain_fraction: float) -> list[int]:
    """Axial slice indices (last axis, RAS volume) chosen from the brain's band.

    Args:
        mask: brain mask, X x Y x Z (RAS).
        band: lower/upper fraction of the brain's inferior-superior extent.
        per_scan: how many slices (fewer if fewer qualify).
        min_brain_fraction: minimum share of brain voxels in the slice.

    Example:
        >>> m = np.zeros((10, 10, 20), bool); m[2:8, 2:8, 5:15] = True
        >>> choose_slices(m, (0.0, 1.0), 3, 0.1)
        [5, 9, 14]
    """
    area = mask.reshape(-1, mask.shape[2]).sum(axis=0)
    nz = np.flatnonzero(area)
    if nz.size == 0:
        return []
    lo, hi = nz[0], nz[-1]
    extent = hi - lo
    z0 = int(np.floor(lo + band[0] * extent))
    z1 = int(np.ceil(lo + band[1] * extent))
    frac = area / float(mask.shape[0] * mask.shape[1])
    candidates = [z for z in range(z0, z1 + 1) if frac[z] >= min_brain_fraction]
    if not candidates:
        return []
    if len(candidates) <= per_scan:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, per_scan).round().astype(int)
    return [candidates[i] for i in np.unique(picks)]


def band_problems(mask: np.ndarray, chosen: list[int], band: tuple[float, float], min_brain_fraction: float, min_area_share: float) -> list[str]:
    """Why the chosen slices of a scan are not inside the brain (empty list: they are).

    Every chosen slice must hold at least ``min_area_share`` of the scan's largest axial brain area
    (a band that slid into the skull base or the vertex does not), and at least one slice must
    qualify.

    Example:
        >>> m = np.zeros((10, 10, 20), bool); m[2:8, 2:8, 5:15] = True; m[4:6, 4:6, 0:5] = True
        >>> band_problems(m, [2, 10], (0.0, 1.0), 0.0, 0.5)
        ['band: slice 2 has 11 % of the largest axial brain area (< 50 %)']
    """
    if not chosen:
        return [f"band: no slice in the band {list(band)} of the mask's extent has a brain fraction >= {min_brain_fraction:g}"]
    area = mask.reshape(-1, mask.shape[2]).sum(axis=0).astype(float)
    peak = float(area.max())
    return [f"band: slice {z} has {100 * area[z] / peak:.0f} % of the largest axial brain area (< {100 * min_area_share:.0f} %)"
            for z in chosen if area[z] < min_area_share * peak]


def to_display(slice_xy: np.ndarray) -> np.ndarray:
    """RAS axial slice (X=right, Y=anterior) → image rows (anterior at the top) x columns.

    Columns run from the patient's right to left (radiological convention), as a radiologist reads
    an axial MR slice.
    """
    return slice_xy.T[::-1, ::-1]


def resize_square(image: np.ndarray, resolution: int, background: float) -> np.ndarray:
    """Pad a 2D image to a square with ``background``, then resize to ``resolution`` (area averaging)."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape
    size = max(h, w)
    padded = np.full((size, size), background, dtype=np.float32)
    top, left = (size - h) // 2, (size - w) // 2
    padded[top : top + h, left : left + w] = image
    t = torch.from_numpy(padded)[None, None]
    mode = "area" if size >= resolution else "bilinear"
    out = F.interpolate(t, size=(resolution, resolution), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out[0, 0].numpy()


def scale_intensities(values: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Map preprocessed intensities to [-1, 1] with background -1.

    ``percentile`` output is in [0, 1] inside the mask → ``2x - 1``; ``zscore`` output is divided by
    3 and clipped (±3 SD → ±1).
    """
    if method == "percentile":
        out = 2.0 * values - 1.0
    else:
        out = values / 3.0
    out = np.clip(out, -1.0, 1.0)
    out[~mask] = -1.0
    return out.astype(np.float32)


def subject_split(subjects: pd.DataFrame, fractions: dict, stratify: list[str], attributes: list[dict], seed: int) -> pd.Series:
    """Assign each subject to train/val/test, stratified, deterministic from ``seed``.

    Args:
        subjects: one row per subject with a ``subject`` column and attribute columns.
        fractions: ``{"train": .7, "val": .15, "test": .15}``.
        stratify: attribute names to stratify on (numeric ones by their bins).
        attributes: the config's attribute specs.
        seed: random seed.

    Returns:
        A Series of split names indexed by subject ID.

    Within each stratum the subjects are shuffled and split at the cumulative fractions, with a
    random offset per stratum so that small strata don't all fall into the first split. If a split
    ends up empty (tiny cohorts), a subject is moved into it from the largest split.
    """
    rng = np.random.default_rng(seed)
    specs = {a["name"]: a for a in attributes}
    keys = [encode(specs[name], subjects[name].tolist()) for name in stratify]
    strata = list(zip(*keys)) if keys else [()] * len(subjects)
    bounds = np.cumsum([fractions[s] for s in SPLITS])
    assignment: dict[str, str] = {}
    ids = subjects["subject"].tolist()
    order = rng.permutation(len(ids))
    by_stratum: dict[tuple, list[str]] = {}
    for i in order:
        by_stratum.setdefault(tuple(strata[i]), []).append(ids[i])
    for key in sorted(by_stratum, key=str):
        members = by_stratum[key]
        offset = rng.random()
        for j, subject in enumerate(members):
            pos = (j + offset) / len(members)
            assignment[subject] = SPLITS[int(np.searchsorted(bounds, pos, side="right"))] if pos < bounds[-1] else SPLITS[-1]
    split = pd.Series(assignment)
    for name in SPLITS:
        if fractions[name] > 0 and not (split == name).any() and len(split) >= len(SPLITS):
            largest = split.value_counts().idxmax()
            donor = sorted(split[split == largest].index)[int(rng.integers((split == largest).sum()))]
            split[donor] = name
    return split.reindex(ids)


def build_slice_dataset(cfg: dict, scans_table: str | Path, preprocessed_dir: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Extract the configured slices of every preprocessed scan into ``out_dir``.

    Args:
        cfg: the study config (``slices``, ``attributes``, ``preprocess.normalise``, ``seed``).
        scans_table: the normalised scans table (``validate_inputs`` output).
        preprocessed_dir: folder with ``images/<scan>.nii.gz`` and ``masks/<scan>.nii.gz``.
        out_dir: the dataset folder to write (replaced atomically as a whole).

    Returns:
        The manifest.
    """
    import nibabel as nib

    from brainlatent.inputs import read_scans

    sc = cfg["slices"]
    res = sc["resolution"]
    scans = read_scans(scans_table)
    preprocessed_dir = Path(preprocessed_dir)
    images: list[np.ndarray] = []
    rows = []
    limits = cfg["preprocess"]["qc"]
    on_fail = cfg["qc"]["on_fail"]
    failed: list[dict] = []
    for scan in scans.to_dict("records"):
        img_path = preprocessed_dir / "images" / f"{scan['scan']}.nii.gz"
        mask_path = preprocessed_dir / "masks" / f"{scan['scan']}.nii.gz"
        for p in (img_path, mask_path):
            if not p.exists():
                raise BrainlatentError(f"{p}: preprocessed file missing for scan {scan['scan']}; run the preprocess rule first")
        summary_path = preprocessed_dir / "summaries" / f"{scan['scan']}.json"
        reasons: list[str] = []
        if summary_path.exists():
            reasons += list(((io.read_json(summary_path) or {}).get("qc") or {}).get("failures") or [])
        else:
            log.warning("%s: no preprocessing summary %s; its preprocessing QC checks are not known", scan["scan"], summary_path)
        vol = np.asarray(nib.load(str(img_path)).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        chosen = choose_slices(mask, tuple(sc["band"]), sc["per_scan"], sc["min_brain_fraction"])
        reasons += band_problems(mask, chosen, tuple(sc["band"]), sc["min_brain_fraction"], limits["min_band_area_share"])
        if reasons:
            failed.append({"scan": scan["scan"], "subject": scan["subject"], "session": scan["session"], "reason": "; ".join(reasons)})
            continue
        for z in chosen:
            scaled = scale_intensities(vol[:, :, z], mask[:, :, z], cfg["preprocess"]["normalise"]["method"])
            images.append(resize_square(to_display(scaled), res, background=-1.0))
            row = {"scan": scan["scan"], "subject": scan["subject"], "session": scan["session"], "slice": int(z)}
            row.update({a["name"]: scan.get(a["name"]) for a in cfg["attributes"]})
            rows.append(row)
    if failed and on_fail == "stop":
        raise BrainlatentError(
            f"{scans_table}: {len(failed)} of {len(scans)} scans failed quality control; the study stops "
            "(fix them, or set qc.on_fail: exclude to leave them out)",
            [f"{f['scan']}: {f['reason']}" for f in failed],
        )
    for f in failed:
        log.warning("%s (subject %s) excluded: %s", f["scan"], f["subject"], f["reason"])
    kept_subjects = {r["subject"] for r in rows}
    for subject in sorted(set(scans["subject"]) - kept_subjects):
        log.warning("subject %s: all its scans were excluded; the subject is not in the dataset", subject)
    excluded = pd.DataFrame(failed, columns=["scan", "subject", "session", "reason"])
    if not rows:
        raise BrainlatentError(f"{scans_table}: no slices could be extracted from any scan (check slices.band and min_brain_fraction)",
                               [f"{f['scan']}: {f['reason']}" for f in failed])
    manifest = pd.DataFrame(rows)
    manifest.insert(0, "index", np.arange(len(manifest)))
    first = manifest.drop_duplicates("subject")[["subject"] + [a["name"] for a in cfg["attributes"]]]
    split = subject_split(first, sc["split"], sc["split"]["stratify"], cfg["attributes"], derive_seed(cfg["seed"], "split"))
    manifest["split"] = manifest["subject"].map(split)
    unsplit = sorted(manifest.loc[manifest["split"].isna(), "subject"].unique())
    if unsplit:
        raise BrainlatentError(f"{scans_table}: subjects without a split: {', '.join(unsplit)}")
    for attr in cfg["attributes"]:
        if attr["kind"] == "numeric":
            manifest[attr["name"]] = pd.to_numeric(manifest[attr["name"]], errors="coerce")
    with io.atomic_dir(out_dir) as tmp:
        arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.float32, shape=(len(images), 1, res, res))
        for i, im in enumerate(images):
            arr[i, 0] = im
        arr.flush()
        del arr
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        excluded.to_csv(tmp / "excluded.tsv", sep="\t", index=False)
    counts = manifest.groupby("split")["subject"].nunique().to_dict()
    log.info("%d slices from %d scans; subjects per split %s", len(manifest), manifest["scan"].nunique(), counts)
    if failed:
        log.warning("%d scans excluded by quality control (qc.on_fail: exclude), listed in %s", len(failed), Path(out_dir) / "excluded.tsv")
    return manifest


def load_slices(slices_dir: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """``(images memmap N x 1 x R x R, manifest)`` of a slice dataset folder."""
    slices_dir = Path(slices_dir)
    images_path, manifest_path = slices_dir / "images.npy", slices_dir / "manifest.parquet"
    for p in (images_path, manifest_path):
        if not p.exists():
            raise BrainlatentError(f"{p}: slice dataset file missing; run the slice_dataset rule first")
    images = np.load(images_path, mmap_mode="r")
    manifest = pd.read_parquet(manifest_path)
    if len(images) != len(manifest):
        raise BrainlatentError(f"{slices_dir}: images.npy has {len(images)} slices but manifest.parquet has {len(manifest)} rows")
    return images, manifest


def dataset_identity(slices_dir: str | Path) -> dict:
    """What identifies a slice dataset's content: resolution, slice count and content hashes.

    Part of every trainer's checkpoint fingerprint, so that a checkpoint made on other slices (a
    changed preprocessing, band or cohort) is never resumed. The manifest is hashed as canonical
    CSV (independent of the parquet writer), the images as the raw ``images.npy`` bytes.
    """
    import hashlib

    images, manifest = load_slices(slices_dir)
    manifest_csv = manifest.sort_index(axis=1).to_csv(index=False, float_format="%.9g").encode()
    with open(Path(slices_dir) / "images.npy", "rb") as fh:
        images_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    return {
        "resolution": int(images.shape[-1]),
        "n_slices": int(len(manifest)),
        "manifest_sha256": hashlib.sha256(manifest_csv).hexdigest(),
        "images_sha256": images_sha,
    }


class SliceDataset:
    """A torch ``Dataset`` over the slice memmap, optionally restricted to one split.

    Args:
        slices_dir: the dataset folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for all slices.
        attributes: config attribute specs; when given, items are ``(image, targets)`` with
            ``targets`` an int64 tensor of class indices (-1 = missing), else just ``image``.

    Example:
        >>> ds = SliceDataset("results/demo/slices/64", split="train")  # doctest: +SKIP
        >>> ds[0].shape
        torch.Size([1, 64, 64])
    """

    def __init__(self, slices_dir: str | Path, split: str | None = None, attributes: list[dict] | None = None) -> None:
        from brainlatent.attributes import encode_all

        self.images, manifest = load_slices(slices_dir)
        if split is not None:
            if split not in SPLITS:
                raise BrainlatentError(f"split {split!r}: expected one of {SPLITS}")
            manifest = manifest[manifest["split"] == split]
        self.manifest = manifest.reset_index(drop=True)
        self.rows = self.manifest["index"].to_numpy()
        self.targets = encode_all(attributes, self.manifest) if attributes else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        image = torch.from_numpy(np.array(self.images[self.rows[i]], dtype=np.float32))
        if self.targets is None:
            return image
        return image, torch.from_numpy(self.targets[i])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--scans", required=True, help="normalised scans table (validate-inputs output)")
    parser.add_argument("--preprocessed", required=True, help="folder with images/, masks/ and summaries/ (<scan>.nii.gz, <scan>.json)")
    parser.add_argument("--out", required=True, help="dataset folder to write (images.npy, manifest.parquet)")


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, "slice")
    build_slice_dataset(cfg, args.scans, args.preprocessed, args.out)
