"""Slice selection, display orientation, the subject-level split and the memmap dataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainlatent.cli import main
from brainlatent.config import load_config
from brainlatent.slices import SliceDataset, choose_slices, load_slices, subject_split, to_display


def test_choose_slices_band_and_brain_fraction():
    mask = np.zeros((10, 10, 40), bool)
    mask[1:9, 1:9, 10:30] = True  # brain spans z 10..29
    mask[4:6, 4:6, 28:30] = True
    mask[:, :, 28:30] = False
    mask[4:6, 4:6, 28:30] = True  # tiny top slices: 4% brain
    chosen = choose_slices(mask, (0.5, 1.0), per_scan=20, min_brain_fraction=0.2)
    assert chosen == list(range(19, 28))  # band starts at 10 + 0.5*19, small top slices excluded
    assert choose_slices(mask, (0.0, 1.0), 3, 0.2) == [10, 18, 27]
    assert choose_slices(np.zeros((4, 4, 4), bool), (0, 1), 3, 0.1) == []


def test_to_display_is_radiological():
    sl = np.zeros((5, 7))  # X (left->right) x Y (posterior->anterior), RAS
    sl[4, 6] = 1  # patient's right, anterior
    disp = to_display(sl)
    assert disp.shape == (7, 5)
    assert disp[0, 0] == 1  # anterior at the top, patient's right on the image's left


@pytest.fixture(scope="module")
def attributes():
    return load_config({})["attributes"]


def _subjects(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "subject": [f"s{i:03d}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n, p=[0.7, 0.3]),
            "ms_type": rng.choice(["HC", "RRMS", "SPMS", "PPMS"], n),
            "age": rng.uniform(20, 70, n),
            "edss": rng.uniform(0, 8, n),
        }
    )


@pytest.mark.parametrize("n", [3, 10, 57, 200])
def test_split_property(attributes, n):
    subjects = _subjects(n)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    split = subject_split(subjects, fractions, ["sex", "ms_type"], attributes, seed=5)
    assert split.index.tolist() == subjects["subject"].tolist()  # one split per subject
    assert set(split) <= {"train", "val", "test"}
    assert set(split) == {"train", "val", "test"}  # no split empty
    again = subject_split(subjects, fractions, ["sex", "ms_type"], attributes, seed=5)
    assert split.equals(again)
    if n >= 200:
        share = split.value_counts(normalize=True)
        assert abs(share["train"] - 0.7) < 0.05 and abs(share["test"] - 0.15) < 0.05
        # stratified: the female share is similar in every split
        female = subjects.set_index("subject")["sex"].eq("F").groupby(split).mean()
        assert female.max() - female.min() < 0.1
    other = subject_split(subjects, fractions, ["sex", "ms_type"], attributes, seed=6)
    if n >= 10:
        assert not split.equals(other)


def _preprocessed(root, scans):
    """Fake preprocessed RAS volumes: a box 'brain' whose width encodes the subject's age."""
    for i, scan in enumerate(scans):
        vol = np.zeros((20, 24, 18), np.float32)
        mask = np.zeros(vol.shape, np.uint8)
        mask[4:16, 3:21, 3:15] = 1
        vol[mask > 0] = 0.5
        vol[4:6, 18:21, 3:15] = 1.0  # bright marker: patient's left (low X), anterior
        for kind, data in (("images", vol), ("masks", mask)):
            (root / kind).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1])), str(root / kind / f"{scan}.nii.gz"))


def test_build_dataset_and_torch_dataset(tmp_path):
    cfg = load_config({"slices": {"resolution": 32, "per_scan": 3, "split": {"stratify": ["sex"]}}, "seed": 3})
    rows = []
    for i in range(8):
        for ses in ("ses-01", "ses-02"):
            rows.append({"scan": f"sub-{i}_{ses}", "subject": f"sub-{i}", "session": ses, "image": "", "mask": "",
                         "age": 30 + i, "edss": 1.0, "ms_type": "RRMS", "sex": "F" if i % 2 else "M"})
    scans = pd.DataFrame(rows)
    scans.to_csv(tmp_path / "scans.tsv", sep="\t", index=False)
    _preprocessed(tmp_path / "pre", scans["scan"])
    code = main(["slice", "--config", json.dumps(cfg), "--scans", str(tmp_path / "scans.tsv"),
                 "--preprocessed", str(tmp_path / "pre"), "--out", str(tmp_path / "slices")])
    assert code == 0
    images, manifest = load_slices(tmp_path / "slices")
    assert images.shape == (16 * 3, 1, 32, 32) and images.dtype == np.float32
    assert images.min() == -1.0 and images.max() <= 1.0
    assert manifest.groupby("subject")["split"].nunique().max() == 1  # sessions of a subject stay together
    assert {"index", "scan", "subject", "session", "slice", "split", "age", "sex"} <= set(manifest.columns)
    # marker (patient's left, anterior) lands top-right in radiological display
    img = images[0, 0]
    assert img[:10, 20:].max() == 1.0 and img[:10, :12].max() < 1.0
    train = SliceDataset(tmp_path / "slices", split="train", attributes=cfg["attributes"])
    image, targets = train[0]
    assert image.shape == (1, 32, 32) and targets.shape == (4,)
    assert len(train) == (manifest["split"] == "train").sum()
