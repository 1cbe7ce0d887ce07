"""The axiomatic counterfactual tests (Monteiro et al., ICLR 2023) plus realism, on any editor.

An **editor** is a callable ``editor(images, parents, new_parents) -> images``: ``images`` are
``N x 1 x R x R`` slices in [-1, 1]; ``parents`` and ``new_parents`` are tables with one row per
image and one column per attribute (raw values: age in years, EDSS, levels), the attributes the
image has and the ones it should have (Monteiro's ``f(x, pa, pa*)``). The null intervention is
``new_parents = parents``. Nothing here knows how an editor works, so an identity editor, a lookup of
true twins and a latent-space editor are scored by the same code.

An **oracle** is the study's attribute classifier seen through
:class:`brainlatent.metrics.features.PerceptualFeatures`: ``predict_proba`` (one head per
attribute; numeric attributes are binned), ``distance`` (the classifier-feature "domain" distance)
and ``embed`` (features for FID/KID).

Tests (every value is a mean over images with its standard error; per-image arrays are returned
where a caller pairs them):

* **composition**: L1 (0-255 scale, inside the brain) and domain distance between ``x`` and the null
  intervention applied ``i`` times, ``i = 1 .. cycles`` (headline: 1 and 10). 0 for a perfect editor.
* **reversibility**: do(pa*), then do(pa) back; L1 and domain distance to ``x``.
* **effectiveness**: the oracle on the edited images. The intervened attribute: share classified
  in the target class (a numeric target's bin) and, for a numeric one, the mean absolute error of
  the oracle's expected value to the target; beside the same numbers for the *unedited* images (what
  doing nothing scores). Every other attribute: how far its prediction moved (share of changed
  classes, or mean absolute change of the expected value) against the oracle's own error on real
  test slices; ``kept`` when it moved less (an attribute a causal intervention changes too is scored
  against its new value and not expected to stay).
* **commutativity**: do(a) then do(b) against do(b) then do(a); L1 between the two.
* **realism**: FID and KID between the classifier features of edited slices and of real slices,
  beside the same for the unedited inputs (the floor a perfect editor can reach).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from brainlatent.attributes import bin_centres, encode
from brainlatent.counterfactual.measures import brain_mask, l1_255
from brainlatent.errors import BrainlatentError

Editor = Callable[[torch.Tensor, pd.DataFrame, pd.DataFrame], torch.Tensor]


def mean_se(values) -> dict:
    """``{"mean", "se", "n"}`` of the finite values (SE = sd / sqrt(n), ddof 1; None with n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": int(v.size)}


def _distance(oracle, a: torch.Tensor, b: torch.Tensor) -> np.ndarray | None:
    return None if oracle is None else oracle.distance(a, b).double().numpy()


def _apply(editor: Editor, images: torch.Tensor, parents: pd.DataFrame, new_parents: pd.DataFrame) -> torch.Tensor:
    out = editor(images, parents.reset_index(drop=True), new_parents.reset_index(drop=True))
    out = torch.as_tensor(out).float().cpu()
    if out.shape != images.shape:
        raise BrainlatentError(f"editor returned images of shape {tuple(out.shape)}; expected {tuple(images.shape)}")
    return out


def composition(editor: Editor, images: torch.Tensor, parents: pd.DataFrame, cycles: int = 10, oracle=None) -> dict:
    """Null intervention applied 1 .. ``cycles`` times; L1 and domain distance to the input per cycle.

    Returns ``{"cycles": n, "l1": {"1": mean_se, ...}, "domain": {"1": mean_se, ...} | None,
    "l1_per_image": {cycle: array}}`` (per-image arrays for cycles 1 and ``cycles``; keys are strings
    so the report can address every value by a dot path).
    """
    if cycles < 1:
        raise BrainlatentError(f"composition: cycles must be at least 1, got {cycles}")
    x0 = torch.as_tensor(images).float().cpu()
    mask = brain_mask(x0)
    x = x0
    l1s, doms, per_image = {}, {}, {}
    for i in range(1, cycles + 1):
        x = _apply(editor, x, parents, parents)
        d = l1_255(x0, x, mask)
        l1s[str(i)] = mean_se(d)
        dom = _distance(oracle, x0, x)
        if dom is not None:
            doms[str(i)] = mean_se(dom)
        if i in (1, cycles):
            per_image[i] = d
    return {"cycles": cycles, "l1": l1s, "domain": doms if oracle is not None else None, "l1_per_image": per_image}


def reversibility(editor: Editor, images: torch.Tensor, parents: pd.DataFrame, new_parents: pd.DataFrame,
                  oracle=None, edited: torch.Tensor | None = None) -> dict:
    """do(new_parents) then do(parents) back; L1 / domain distance to the input (``edited`` reuses a forward edit)."""
    x0 = torch.as_tensor(images).float().cpu()
    forward = _apply(editor, x0, parents, new_parents) if edited is None else edited
    back = _apply(editor, forward, new_parents, parents)
    dom = _distance(oracle, x0, back)
    return {"l1": mean_se(l1_255(x0, back, brain_mask(x0))), "domain": mean_se(dom) if dom is not None else None}


def commutativity(editor: Editor, images: torch.Tensor, parents: pd.DataFrame, after_a: pd.DataFrame,
                  after_b: pd.DataFrame, a: str, b: str) -> dict:
    """L1 between do(a)∘do(b) and do(b)∘do(a).

    ``after_a`` / ``after_b`` are ``parents`` with attribute ``a`` / ``b`` changed (per row, so shifts
    such as age +10 work); both orders end at the parents with both changed.
    """
    x0 = torch.as_tensor(images).float().cpu()
    both = after_a.copy()
    both[b] = after_b[b].to_numpy()
    ab = _apply(editor, _apply(editor, x0, parents, after_a), after_a, both)
    ba = _apply(editor, _apply(editor, x0, parents, after_b), after_b, both)
    return {"a": a, "b": b, "l1": mean_se(l1_255(ab, ba, brain_mask(ab, ba)))}


def expected_value(attr: dict, probs: np.ndarray) -> np.ndarray:
    """A numeric head's expected value in the attribute's units: ``sum_k p_k * centre_k``."""
    return np.asarray(probs, dtype=np.float64) @ bin_centres(attr)


def _probs(oracle, images: torch.Tensor) -> dict[str, np.ndarray]:
    return {k: v.double().numpy() for k, v in oracle.predict_proba(images).items()}


def real_test_error(oracle, images, labels: pd.DataFrame, attributes: Sequence[dict]) -> dict:
    """The oracle's own error on real slices with known labels, per attribute.

    ``{"kind": "flip", "error": 1 - accuracy}`` for a categorical attribute and
    ``{"kind": "mae", "error": mean |expected value - true value|}`` (attribute units) for a numeric one.
    """
    probs = _probs(oracle, torch.as_tensor(np.asarray(images)).float())
    out = {}
    for attr in attributes:
        name = attr["name"]
        if name not in probs or name not in labels.columns:
            continue
        truth = encode(attr, labels[name])
        known = truth >= 0
        if not known.any():
            continue
        if attr["kind"] == "numeric":
            values = pd.to_numeric(labels[name], errors="coerce").to_numpy(dtype=np.float64)
            err = np.abs(expected_value(attr, probs[name]) - values)[known]
            out[name] = {"kind": "mae", "error": float(np.nanmean(err)), "n": int(known.sum())}
        else:
            acc = (probs[name].argmax(1) == truth)[known]
            out[name] = {"kind": "flip", "error": float(1.0 - acc.mean()), "n": int(known.sum())}
    return out


def effectiveness(oracle, unedited: torch.Tensor, edited: torch.Tensor, parents: pd.DataFrame,
                  new_parents: pd.DataFrame, attributes: Sequence[dict], intervened: str,
                  real_error: dict | None = None) -> dict:
    """The oracle as pseudo-oracle: does the intervened attribute reach its target, do the others stay?

    Args:
        oracle: has ``predict_proba(images) -> {head: N x K}``.
        unedited, edited: the input slices and the editor's output, ``N x 1 x R x R``.
        parents, new_parents: attribute values before and after the intervention (one row per image).
        attributes: the study's attribute specs (bins for numeric ones).
        intervened: the attribute that was changed.
        real_error: :func:`real_test_error` on real test slices (sets each other attribute's tolerance).

    Returns:
        ``{"target": {...}, "others": {name: {...}}}``; an identity editor scores exactly its
        ``unedited_*`` values and moves nothing.
    """
    specs = {a["name"]: a for a in attributes}
    if intervened not in specs:
        raise BrainlatentError(f"effectiveness: '{intervened}' is not a study attribute ({sorted(specs)})")
    p0, p1 = _probs(oracle, unedited), _probs(oracle, edited)
    if intervened not in p1:
        raise BrainlatentError(f"effectiveness: the classifier has no head '{intervened}' (heads: {sorted(p1)})")
    attr = specs[intervened]
    goal = encode(attr, new_parents[intervened])
    known = goal >= 0
    target = {
        "accuracy": mean_se((p1[intervened].argmax(1) == goal)[known]),
        "unedited_accuracy": mean_se((p0[intervened].argmax(1) == goal)[known]),
        "probability": mean_se(p1[intervened][known, goal[known]]),
        "unedited_probability": mean_se(p0[intervened][known, goal[known]]),
    }
    if attr["kind"] == "numeric":
        value = pd.to_numeric(new_parents[intervened], errors="coerce").to_numpy(dtype=np.float64)
        target["mae"] = mean_se(np.abs(expected_value(attr, p1[intervened]) - value)[known])
        target["unedited_mae"] = mean_se(np.abs(expected_value(attr, p0[intervened]) - value)[known])
    others = {}
    for name, spec in specs.items():
        if name == intervened or name not in p1:
            continue
        tol = (real_error or {}).get(name)
        if spec["kind"] == "numeric":
            moved = np.abs(expected_value(spec, p1[name]) - expected_value(spec, p0[name]))
            entry = {"kind": "mae", "moved": mean_se(moved)}
        else:
            moved = (p1[name].argmax(1) != p0[name].argmax(1)).astype(np.float64)
            entry = {"kind": "flip", "moved": mean_se(moved)}
        # a causal intervention changes some other attributes too: they are scored against their new
        # values and are not expected to stay
        source = new_parents if name in new_parents.columns else parents
        truth = encode(spec, source[name]) if name in source.columns else np.full(len(moved), -1)
        changed = name in parents.columns and name in new_parents.columns and bool(
            (parents[name].astype(str).to_numpy() != new_parents[name].astype(str).to_numpy()).any())
        ok = truth >= 0
        entry["accuracy"] = mean_se((p1[name].argmax(1) == truth)[ok]) if ok.any() else mean_se([])
        entry["unedited_accuracy"] = mean_se((p0[name].argmax(1) == truth)[ok]) if ok.any() else mean_se([])
        entry["real_test_error"] = None if tol is None else tol["error"]
        entry["changed_by_intervention"] = changed
        entry["kept"] = None if tol is None or changed else bool(entry["moved"]["mean"] <= tol["error"])
        others[name] = entry
    return {"intervened": intervened, "target": target, "others": others}


def realism(oracle, edited: torch.Tensor, reference, unedited: torch.Tensor | None = None, seed: int = 0) -> dict:
    """FID and KID (classifier features) of edited slices against ``reference`` real slices.

    ``unedited`` (the editor's inputs) gives the floor: the same numbers for real slices of the
    same count. KID subsets are capped at the smaller set's size.
    """
    from brainlatent.metrics.quality import fid, kid

    ref = oracle.embed(reference).double().numpy()
    out = {}
    for key, imgs in (("edited", edited), ("unedited", unedited)):
        if imgs is None:
            continue
        feat = oracle.embed(imgs).double().numpy()
        if len(feat) < 2:
            raise BrainlatentError(f"realism: need at least 2 {key} slices, got {len(feat)}")
        k_mean, k_sd = kid(feat, ref, num_subsets=50, max_subset_size=min(len(feat), len(ref)), seed=seed)
        out[key] = {"fid": float(fid(feat, ref)), "kid": float(k_mean), "kid_sd": float(k_sd), "n": len(feat)}
    out["n_reference"] = len(ref)
    return out
