"""Linear separability of binary attributes in Z and W (NVlabs StyleGAN 1 definition).

Per binary attribute and repeat: N generated samples (``z ~ N(0, I)``, ``w = mapping(z)``, random
noise), two class probabilities per sample from the attribute classifier, the most confident half
kept (stable sort by max probability, descending), labels = argmax, ``sklearn.svm.LinearSVC()``
fitted on the kept latents and predicting the same samples. Reported: H(Y|X) in bits from the
2 x 2 table (prediction x label), SVM accuracy (agreement with the labels on those samples), and as
an extra a held-out accuracy (fit on a random half of the kept samples, score the other half).
R repeats give mean ± std; the combined score per space is ``2 ** sum_attributes(H)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.latents import batches

ProbsFn = Callable[[torch.Tensor], dict]


# --------------------------------------------------------------------------------------------
# Pure functions


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits of a probability vector (zeros contribute 0)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def conditional_entropy_bits(labels: np.ndarray, preds: np.ndarray) -> float:
    """H(Y|X) in bits from the empirical 2 x 2 table of predictions X and labels Y.

    Computed as H(Y) - I(X;Y) and clipped at 0 (NVlabs' form).

    Args:
        labels: ``N`` binary labels Y (0/1).
        preds: ``N`` binary predictions X (0/1).

    Example:
        >>> conditional_entropy_bits(np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]))
        0.0
        >>> conditional_entropy_bits(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]))
        1.0
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    preds = np.asarray(preds).astype(np.int64).ravel()
    if labels.shape != preds.shape or labels.size == 0:
        raise BrainlatentError(f"conditional entropy: labels and predictions must be non-empty and of equal length, got {labels.size}, {preds.size}")
    if not (np.isin(labels, (0, 1)).all() and np.isin(preds, (0, 1)).all()):
        raise BrainlatentError("conditional entropy: labels and predictions must be 0 or 1")
    table = np.zeros((2, 2))
    np.add.at(table, (preds, labels), 1.0)
    p_xy = table / table.sum()
    p_x, p_y = p_xy.sum(axis=1), p_xy.sum(axis=0)
    nz = p_xy > 0
    mutual = float((p_xy[nz] * np.log2(p_xy[nz] / np.outer(p_x, p_y)[nz])).sum())
    return max(0.0, entropy_bits(p_y) - mutual)


def binary_probabilities(attr: dict, probs: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Two-class probabilities ``N x 2`` from one classifier head, with the class names.

    * categorical head with two levels, no threshold: the head's probabilities as they are;
    * numeric (binned) head with a threshold: ``[P(value < thr), P(value >= thr)]`` where
      ``P(value >= thr)`` is the sum of the probabilities of the bins whose lower edge is
      ``>= thr``. The threshold must be an inner bin edge (``bins[1:-1]``).

    Args:
        attr: the attribute spec (``name``, ``kind``, ``bins`` | ``levels``).
        probs: ``N x K`` probabilities of the head.
        threshold: the binarising threshold for a numeric head.
    """
    probs = np.asarray(probs, dtype=np.float64)
    name = attr["name"]
    if attr["kind"] == "categorical":
        if threshold is not None:
            raise BrainlatentError(f"separability: binarise.{name}: thresholds apply to numeric attributes; '{name}' is categorical")
        if len(attr["levels"]) != 2:
            raise BrainlatentError(
                f"separability: attribute '{name}' has {len(attr['levels'])} levels {attr['levels']}; "
                "expected a binary head (2 levels)"
            )
        if probs.ndim != 2 or probs.shape[1] != 2:
            raise BrainlatentError(f"separability: head '{name}' gave probabilities of shape {probs.shape}; expected N x 2")
        return probs, [str(v) for v in attr["levels"]]
    edges = np.asarray(attr["bins"], dtype=np.float64)
    k = threshold_bin(attr, threshold)
    if probs.ndim != 2 or probs.shape[1] != edges.size - 1:
        raise BrainlatentError(f"separability: head '{name}' gave probabilities of shape {probs.shape}; expected N x {edges.size - 1}")
    upper = probs[:, k:].sum(axis=1)
    return np.stack([1.0 - upper, upper], axis=1), [f"<{threshold:g}", f">={threshold:g}"]


def threshold_bin(attr: dict, threshold: float | None) -> int:
    """Index of the first bin at or above ``threshold``, which must be an inner bin edge of a numeric head.

    Example:
        >>> threshold_bin({"name": "age", "bins": [18, 30, 40, 80]}, 40)
        2
    """
    name, edges = attr["name"], np.asarray(attr["bins"], dtype=np.float64)
    if threshold is None:
        raise BrainlatentError(
            f"separability: numeric attribute '{name}' needs a threshold in evaluate.separability.binarise "
            f"(one of its inner bin edges {edges[1:-1].tolist()})"
        )
    inner = np.flatnonzero(np.isclose(edges[1:-1], threshold)) + 1
    if inner.size != 1:
        raise BrainlatentError(
            f"separability: binarise.{name}: threshold {threshold:g} is not an inner bin edge of '{name}'; "
            f"expected one of {edges[1:-1].tolist()}"
        )
    return int(inner[0])


def most_confident(probs: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the ``keep`` most confident samples (stable sort by max probability, descending)."""
    conf = np.asarray(probs, dtype=np.float64).max(axis=1)
    return np.argsort(-conf, kind="stable")[:keep]


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """``LinearSVC()`` (defaults; random_state only fixes the dual solver's shuffling) -> predictions.

    Returns the predictions and the number of convergence warnings raised.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm = LinearSVC(random_state=seed)
        svm.fit(x_fit, y_fit)
        pred = svm.predict(x_pred)
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return pred.astype(np.int64), n_warn


def separability_from_latents(latents: np.ndarray, probs: np.ndarray, seed: int = 0, keep_fraction: float = 0.5) -> dict:
    """Separability of one binary attribute in one latent space (one repeat).

    Args:
        latents: ``N x d`` latent vectors (z, or w of the last style layer).
        probs: ``N x 2`` class probabilities from the classifier.
        seed: seed of the held-out split (and of the SVM's dual-solver shuffling).
        keep_fraction: share of the most confident samples kept (NVlabs: 0.5).

    Returns:
        ``{"entropy_bits", "accuracy", "heldout_accuracy", "heldout_entropy_bits", "n_kept",
        "class_counts", "convergence_warnings", "notes"}``.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(400, 4))
        >>> p1 = 1 / (1 + np.exp(-5 * x[:, 0]))
        >>> r = separability_from_latents(x, np.stack([1 - p1, p1], 1))
        >>> r["entropy_bits"], r["accuracy"]
        (0.0, 1.0)
    """
    latents = np.asarray(latents, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if latents.ndim != 2 or probs.ndim != 2 or probs.shape[1] != 2 or len(latents) != len(probs):
        raise BrainlatentError(f"separability: expected latents N x d and probabilities N x 2, got {latents.shape} and {probs.shape}")
    keep = max(2, int(len(latents) * keep_fraction))
    idx = most_confident(probs, keep)
    x, y = latents[idx], probs[idx].argmax(axis=1).astype(np.int64)
    notes, n_warn = [], 0
    counts = np.bincount(y, minlength=2)
    if (counts > 0).sum() < 2:
        pred = y.copy()
        notes.append(f"only class {int(y[0])} among the {keep} kept samples: predictions set equal to the labels (NVlabs StyleGAN 1 fallback)")
    else:
        pred, w = _fit_predict(x, y, x, seed)
        n_warn += w
    # held-out extra: fit on a random half of the kept samples, score the other half
    perm = np.random.default_rng(seed).permutation(keep)
    tr, te = perm[: keep // 2], perm[keep // 2 :]
    if np.unique(y[tr]).size < 2:
        ho_pred = np.full(te.size, y[tr][0], dtype=np.int64)
        notes.append("held-out split: one class in the fitting half; it predicts that class for every held-out sample")
    else:
        ho_pred, w = _fit_predict(x[tr], y[tr], x[te], seed)
        n_warn += w
    if n_warn:
        notes.append(f"LinearSVC did not converge in {n_warn} fit(s) (default max_iter=1000)")
    return {
        "entropy_bits": conditional_entropy_bits(y, pred),
        "accuracy": float((pred == y).mean()),
        "heldout_accuracy": float((ho_pred == y[te]).mean()),
        "heldout_entropy_bits": conditional_entropy_bits(y[te], ho_pred),
        "n_kept": int(keep),
        "class_counts": counts.tolist(),
        "convergence_warnings": int(n_warn),
        "notes": notes,
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean over independent repeats, ``std (ddof=1) / sqrt(R)``; None for R < 2."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None


def combine_repeats(per_repeat: list[dict[str, dict[str, dict]]], spaces: Sequence[str], names: Sequence[str]) -> dict:
    """Mean ± std over repeats per ``space/attribute``, and the combined score per space.

    ``per_repeat[r][space][name]`` is a :func:`separability_from_latents` result. The combined score
    of a repeat is ``2 ** sum_attributes(entropy_bits)``; it is reported as mean ± std over repeats,
    with ``score_of_mean_entropy = 2 ** sum_attributes(mean entropy)`` beside it. Every mean has its
    standard error over the repeats (``_se`` keys, ``std / sqrt(R)``; None with one repeat). With Z and
    W, ``z_minus_w`` holds the per-repeat paired difference of H(Y|X) and its standard error (both
    spaces are fitted on the same generated samples in a repeat).
    """
    out: dict[str, dict] = {}
    for space in spaces:
        for name in names:
            runs = [r[space][name] for r in per_repeat]
            entry: dict = {"space": space, "attribute": name}
            for key in ("entropy_bits", "accuracy", "heldout_accuracy", "heldout_entropy_bits"):
                values = [x[key] for x in runs]
                entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(values)
                entry[f"{key}_se"] = _standard_error(values)
                entry[f"{key}_per_repeat"] = values
            entry["n_kept"] = runs[0]["n_kept"]
            entry["class_counts_per_repeat"] = [x["class_counts"] for x in runs]
            entry["convergence_warnings"] = int(sum(x["convergence_warnings"] for x in runs))
            entry["notes"] = sorted({n for x in runs for n in x["notes"]})
            out[f"{space}/{name}"] = entry
        scores = [2.0 ** sum(r[space][n]["entropy_bits"] for n in names) for r in per_repeat]
        mean, std = _mean_std(scores)
        out[f"{space}/combined"] = {
            "space": space,
            "attributes": list(names),
            "score_mean": mean,
            "score_std": std,
            "score_se": _standard_error(scores),
            "score_per_repeat": scores,
            "score_of_mean_entropy": 2.0 ** sum(out[f"{space}/{n}"]["entropy_bits_mean"] for n in names),
        }
    if "z" in spaces and "w" in spaces:
        for name in names:
            diffs = [r["z"][name]["entropy_bits"] - r["w"][name]["entropy_bits"] for r in per_repeat]
            out[f"z/{name}"]["z_minus_w_entropy_bits_mean"] = float(np.mean(diffs))
            out[f"z/{name}"]["z_minus_w_entropy_bits_se"] = _standard_error(diffs)
    return out


# --------------------------------------------------------------------------------------------
# Is the classifier's label worth separating?


def _binarised_scores(head: dict, k: int) -> tuple[float, float, int]:
    """Accuracy and majority-baseline accuracy of a binned head after splitting its bins at bin ``k``.

    Both come from the head's confusion matrix (rows: true bin, columns: predicted bin) and its
    majority train class: the baseline predicts that class's side of the split for every row.
    """
    cm = np.asarray(head["confusion_matrix"], dtype=np.float64)
    n = cm.sum()
    if n == 0:
        raise KeyError("confusion_matrix is empty")
    correct = cm[:k, :k].sum() + cm[k:, k:].sum()
    majority_high = head["class_names"].index(head["majority_class"]) >= k
    baseline = (cm[k:, :] if majority_high else cm[:k, :]).sum()
    return float(correct / n), float(baseline / n), int(n)


def classifier_check(metrics: dict | None, spec: dict, threshold: float | None, model: str = "best", split: str = "test") -> dict:
    """Whether the classifier's labels for one tested attribute beat always guessing the majority class.

    A separability result is interpretable only when the classifier that labels the generated
    images scores above its majority baseline on the held-out test split; otherwise its labels carry
    no information beyond the class frequencies, and "separating" them measures nothing.

    * two-level categorical head: ``accuracy`` vs ``majority_baseline_accuracy`` as stored;
    * binarised numeric head: both recomputed from the confusion matrix for the two sides of the
      threshold (see :func:`_binarised_scores`).

    Args:
        metrics: the classifier's ``metrics.json`` (``<model>.<split>.heads.<name>``), or None.
        spec: the attribute spec; threshold: the binarising threshold of a numeric head.
        model, split: which scores to use (the model used downstream is ``best``).

    Returns:
        ``{"model", "split", "score", "baseline", "n", "measure", "interpretable"}``; with no usable
        scores, ``interpretable`` is None and ``reason`` says why.
    """
    name = spec["name"]
    out: dict = {"model": model, "split": split}
    head = (((metrics or {}).get(model) or {}).get(split) or {}).get("heads", {}).get(name)
    try:
        if head is None:
            raise KeyError(f"no {model}.{split}.heads.{name}")
        if threshold is None:
            score, baseline, n = head["accuracy"], head["majority_baseline_accuracy"], head["n"]
            measure = "accuracy"
        else:
            score, baseline, n = _binarised_scores(head, threshold_bin(spec, threshold))
            measure = f"accuracy of the binarised label (>= {threshold:g})"
        if score is None or baseline is None:
            raise KeyError("accuracy or majority baseline is null")
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        reason = "no classifier metrics" if metrics is None else f"classifier metrics unusable for '{name}': {exc}"
        return {**out, "interpretable": None, "reason": reason}
    return {**out, "score": float(score), "baseline": float(baseline), "n": int(n), "measure": measure,
            "interpretable": bool(score > baseline)}


def flag_interpretability(results: dict, checks: dict[str, dict], spaces: Sequence[str], names: Sequence[str]) -> None:
    """Add ``interpretable`` (True / False / None = unknown) to every ``space/attribute`` and combined entry.

    A combined score is interpretable when every attribute in it is, not interpretable when any is not.
    """
    for space in spaces:
        flags = [checks[n]["interpretable"] for n in names]
        for name, flag in zip(names, flags):
            results[f"{space}/{name}"]["interpretable"] = flag
        results[f"{space}/combined"]["interpretable"] = False if False in flags else (None if None in flags else True)


# --------------------------------------------------------------------------------------------
# With a generator and a classifier


def attribute_plan(specs: Sequence[dict], attributes: Sequence[str], binarise: dict[str, float]) -> list[tuple[dict, float | None]]:
    """The (spec, threshold) list to test: ``attributes`` in order, then ``binarise`` keys not yet listed.

    With both empty (the default), every two-level categorical head is tested.
    """
    by_name = {a["name"]: a for a in specs}
    names = list(attributes) + [n for n in binarise if n not in attributes]
    if not names:
        names = [a["name"] for a in specs if a["kind"] == "categorical" and len(a["levels"]) == 2]
    plan = []
    for name in names:
        if name not in by_name:
            raise BrainlatentError(f"separability: attribute '{name}' is not a head of the classifier; heads: {list(by_name)}")
        plan.append((by_name[name], binarise.get(name)))
    if not plan:
        raise BrainlatentError(
            "separability: no attribute to test (evaluate.separability.attributes and binarise are empty, and no "
            "classifier head is a two-level categorical attribute); list one, or a numeric one under binarise"
        )
    return plan


@torch.no_grad()
def generate_labelled(
    generator, probs_fn: ProbsFn, num_samples: int, batch_size: int, seed: int, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """Generate ``num_samples`` images and their classifier probabilities.

    Returns:
        ``(z N x z_dim, w N x w_dim or None without a mapping network, {head: N x K})``; for a
        layer-wise ``w`` (``N x L x w_dim``) the last layer is kept (all layers are equal).
    """
    zs, ws, probs = [], [], {}
    for batch in batches(generator, num_samples, seed, batch_size, device, desc="separability samples"):
        for name, p in probs_fn(batch.images).items():
            probs.setdefault(name, []).append(torch.as_tensor(p).detach().double().cpu().numpy())
        zs.append(batch.z.double().cpu().numpy())
        if generator.has_mapping:
            w_last = batch.w[:, -1] if batch.w.ndim == 3 else batch.w
            ws.append(w_last.detach().double().cpu().numpy())
    return (
        np.concatenate(zs),
        np.concatenate(ws) if ws else None,
        {k: np.concatenate(v) for k, v in probs.items()},
    )


def linear_separability(
    generator,
    probs_fn: ProbsFn,
    specs: Sequence[dict],
    attributes: Sequence[str] = ("sex",),
    binarise: dict[str, float] | None = None,
    num_samples: int = 4000,
    repeats: int = 5,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    classifier_metrics: dict | None = None,
) -> dict:
    """Linear separability of every tested attribute, in Z (and W with a mapping network).

    Args:
        generator: see :mod:`brainlatent.models.stylegan` (``z_dim``, ``has_mapping``, ``mapping``,
            ``noise_shapes``, ``synthesis``).
        probs_fn: ``images -> {head name: N x K probabilities}`` (the classifier).
        specs: the classifier's attribute specs (name, kind, bins | levels).
        attributes: binary heads to test (categorical with two levels, or numeric in ``binarise``).
        binarise: ``{numeric attribute: threshold}``.
        num_samples: generated samples per repeat (the most confident half is kept).
        repeats: independent repeats (seeds ``seed + r``-derived).
        batch_size: images per generator call.
        seed: base seed.
        device: where the networks run.
        classifier_metrics: the classifier's ``metrics.json``; it decides each result's
            ``interpretable`` flag (:func:`classifier_check`; None = unknown without it).

    Returns:
        ``{"results": {"<space>/<attribute>": {...}, "<space>/combined": {...}},
        "attributes": [{name, threshold, classes}], "spaces": [...], "classifier_check": {name: {...}}}``.
    """
    from brainlatent.config import derive_seed

    binarise = dict(binarise or {})
    plan = attribute_plan(specs, attributes, binarise)
    spaces = ["z", "w"] if generator.has_mapping else ["z"]
    per_repeat, classes = [], {}
    for r in range(repeats):
        rseed = derive_seed(seed, "repeat", r)
        z, w, probs = generate_labelled(generator, probs_fn, num_samples, batch_size, rseed, device)
        latents = {"z": z, "w": w}
        run: dict[str, dict] = {s: {} for s in spaces}
        for spec, thr in plan:
            name = spec["name"]
            if name not in probs:
                raise BrainlatentError(f"separability: the classifier returned no head '{name}'; heads: {list(probs)}")
            p2, classes[name] = binary_probabilities(spec, probs[name], thr)
            for space in spaces:
                run[space][name] = separability_from_latents(latents[space], p2, seed=derive_seed(rseed, space, name))
        per_repeat.append(run)
    names = [spec["name"] for spec, _ in plan]
    results = combine_repeats(per_repeat, spaces, names)
    checks = {spec["name"]: classifier_check(classifier_metrics, spec, thr) for spec, thr in plan}
    flag_interpretability(results, checks, spaces, names)
    return {
        "results": results,
        "attributes": [{"name": spec["name"], "threshold": thr, "classes": classes[spec["name"]]} for spec, thr in plan],
        "spaces": spaces,
        "classifier_check": checks,
    }
