"""The true counterfactual error: an edited slice against its synthetic twin, beside two baselines.

The synthetic cohort re-renders a test subject with one attribute changed (``brainlatent twins``);
the twin's slice is the *true* counterfactual of the source slice. For every twin the editor's
output for the source slice is compared with the twin inside the brain (the union of both brain
masks):

* **L1** (0-255 scale), **SSIM** (map averaged over the brain), and the **lesion-load error**:
  ``|lesion pixels(edited) - lesion pixels(twin)|`` with lesions found by the same threshold in
  both (:func:`brainlatent.counterfactual.measures.lesion_map`).
* Baselines: the **unedited** slice (the source itself: "do nothing"), and the **population-average
  change**: the source plus the mean twin-minus-source difference of the same intervention over the
  *other* subjects (leave one subject out), clipped to [-1, 1].
* The editor beats a baseline when the subject-level paired difference (editor minus baseline,
  averaged per subject first) has a 95 % interval wholly on the better side (normal interval, SE over
  subjects).

**Minimality** uses the twin too: a pixel is *changed* when ``|edited - source| > tau``; it is
*expected* to change where the twin differs from its source by more than ``tau`` (dilated by one
pixel). The score is the share of changed pixels that lie outside the expected region, and the
mean L1 outside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from brainlatent.counterfactual.axioms import mean_se
from brainlatent.counterfactual.measures import brain_mask, l1_255, lesion_load, ssim
from brainlatent.errors import BrainlatentError

Z95 = 1.959963984540054


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float().cpu()


def errors_to_twin(candidate, twin, source, lesion_threshold: float) -> dict[str, np.ndarray]:
    """Per image ``l1``, ``ssim`` and ``lesion_error`` (pixels) of ``candidate`` against the true ``twin``."""
    candidate, twin, source = _t(candidate), _t(twin), _t(source)
    if not (candidate.shape == twin.shape == source.shape):
        raise BrainlatentError(f"true counterfactual error: shapes differ: {tuple(candidate.shape)}, {tuple(twin.shape)}, {tuple(source.shape)}")
    mask = brain_mask(twin, source)
    return {
        "l1": l1_255(candidate, twin, mask),
        "ssim": ssim(candidate, twin, mask),
        "lesion_error": np.abs(lesion_load(candidate, lesion_threshold) - lesion_load(twin, lesion_threshold)),
    }


def population_change(source, twin, subjects: np.ndarray, groups: np.ndarray) -> torch.Tensor:
    """Source plus the mean (twin - source) of the same ``groups`` value over the other subjects, clipped.

    A row with no other subject in its group gets the source itself (and is counted as such).
    """
    source, twin = _t(source), _t(twin)
    subjects, groups = np.asarray(subjects), np.asarray(groups)
    delta = twin - source
    out = source.clone()
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        for s in np.unique(subjects[rows]):
            mine = rows[subjects[rows] == s]
            others = rows[subjects[rows] != s]
            if others.size:
                out[mine] = (source[mine] + delta[others].mean(0, keepdim=True)).clamp(-1.0, 1.0)
    return out


def _subject_means(values: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    df = pd.DataFrame({"v": values, "s": subjects}).dropna()
    return df.groupby("s", sort=True)["v"].mean().to_numpy(dtype=np.float64)


def paired(editor: np.ndarray, baseline: np.ndarray, subjects: np.ndarray, higher_better: bool) -> dict:
    """Editor minus baseline, per subject then averaged; 95 % normal interval; ``better`` if it excludes 0 on the good side."""
    diff = _subject_means(np.asarray(editor) - np.asarray(baseline), np.asarray(subjects))
    if diff.size == 0:
        return {"mean": None, "ci": None, "n_subjects": 0, "better": None, "worse": None}
    m = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("inf")
    lo, hi = m - Z95 * se, m + Z95 * se
    better = lo > 0 if higher_better else hi < 0
    worse = hi < 0 if higher_better else lo > 0
    return {"mean": m, "ci": [lo, hi], "n_subjects": int(diff.size), "better": bool(better), "worse": bool(worse)}


def true_counterfactual_error(edited, twin, source, subjects, groups, lesion_threshold: float) -> dict:
    """The editor's error to the true twins beside the unedited and population-average baselines.

    Args:
        edited: the editor's output for the source slices.
        twin, source: the true twin slices and their sources (aligned rows).
        subjects: subject id per row (the unit of the paired comparison and of leave-one-out).
        groups: intervention id per row (e.g. ``edss=0/single``); the population change averages within it.
        lesion_threshold: intensity above which a brain pixel is lesion.

    Returns:
        ``{"editor"|"unedited"|"population": {measure: mean_se}, "vs_unedited"|"vs_population":
        {measure: paired}, "per_image": {...}}``.
    """
    source_t = _t(source)
    candidates = {
        "editor": _t(edited),
        "unedited": source_t,
        "population": population_change(source_t, twin, subjects, groups),
    }
    errs = {k: errors_to_twin(v, twin, source_t, lesion_threshold) for k, v in candidates.items()}
    out = {k: {m: mean_se(v) for m, v in e.items()} for k, e in errs.items()}
    for base in ("unedited", "population"):
        out[f"vs_{base}"] = {
            m: paired(errs["editor"][m], errs[base][m], subjects, higher_better=(m == "ssim")) for m in errs["editor"]
        }
    out["per_image"] = {k: {m: v.tolist() for m, v in e.items()} for k, e in errs.items()}
    return out


def minimality(edited, source, twin, tau: float = 0.1, dilate: int = 1) -> dict:
    """Share of changed pixels (``|edited - source| > tau``) outside where the twin changed (dilated); L1 there."""
    edited, source, twin = _t(edited), _t(source), _t(twin)
    brain = brain_mask(source, twin)
    expected = ((twin - source).abs() > tau) & brain
    if dilate > 0:
        structure = np.zeros((1, 1, 3, 3), bool)
        structure[0, 0] = True
        expected = torch.from_numpy(ndi.binary_dilation(expected.numpy(), structure=structure, iterations=dilate))
    changed = ((edited - source).abs() > tau) & brain
    outside = changed & ~expected
    n_changed = changed.flatten(1).sum(1).double()
    share = (outside.flatten(1).sum(1).double() / n_changed.clamp_min(1)).numpy()
    share[n_changed.numpy() == 0] = float("nan")
    return {
        "outside_share": mean_se(share),
        "changed_fraction": mean_se((n_changed / brain.flatten(1).sum(1).clamp_min(1)).numpy()),
        "expected_fraction": mean_se((expected & brain).flatten(1).sum(1).double().numpy() / brain.flatten(1).sum(1).clamp_min(1).numpy()),
        "l1_outside": mean_se(l1_255(edited, source, brain & ~expected)),
        "tau": tau,
    }
