"""Accuracy of the automatic brain mask against the synthetic cohort's true masks.

For every scan of a synthetic study that has been preprocessed, the true brain mask (written by
the cohort generator in the scan's own space) is resampled (nearest neighbour) onto the
preprocessed grid and compared with the automatic mask: Dice, volume ratio (auto / true). Prints
one row per site (Dice median/min, volume ratio median/min/max and the share of scans above 1.15,
i.e. leaking into scalp or neck) and the overall median. The study must have been preprocessed with
``preprocess.mask.source: auto``.

    python benchmarks/bench_mask.py results/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    args = parser.parse_args()
    study = args.study_dir
    truth = pd.read_csv(study / "cohort" / "truth.tsv", sep="\t")
    rows = []
    for rec in truth.to_dict("records"):
        auto_path = study / "preprocessed" / "masks" / f"{rec['scan']}.nii.gz"
        true_path = study / "cohort" / "masks" / f"{rec['scan']}_brainmask.nii.gz"
        if not (auto_path.exists() and true_path.exists()):
            continue
        auto = nib.load(str(auto_path))
        true = resample_from_to(nib.load(str(true_path)), auto, order=0)
        a, t = np.asarray(auto.dataobj) > 0, np.asarray(true.dataobj) > 0
        rows.append({"scan": rec["scan"], "site": rec["site"], "dice": dice(a, t), "volume_ratio": a.sum() / max(t.sum(), 1)})
    if not rows:
        print(f"{study}: no preprocessed synthetic scans found", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    table = df.groupby("site").agg(scans=("dice", "size"), dice_median=("dice", "median"), dice_min=("dice", "min"),
                                   volume_ratio_median=("volume_ratio", "median"), volume_ratio_min=("volume_ratio", "min"),
                                   volume_ratio_max=("volume_ratio", "max"),
                                   share_over_1_15=("volume_ratio", lambda r: float((r > 1.15).mean())))
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"all {len(df)} scans: Dice median {df['dice'].median():.3f}, 5th percentile {df['dice'].quantile(0.05):.3f}, "
          f"volume ratio median {df['volume_ratio'].median():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
