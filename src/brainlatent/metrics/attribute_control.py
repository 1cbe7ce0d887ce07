"""Attribute control of a conditional generator, scored by the study classifier (seed 004's future work).

Every number compares what was *requested* (the label vector y given to ``G(z, y)``) with what the
study's classifier *sees* in the generated image. Only attributes that are both a label of the
network and a head of the classifier are scored. For a numeric head the prediction is the
expected value over its bins (``sum_k p_k · centre_k``, in the attribute's units) and its bin is the
most probable one; a requested number's bin follows :func:`brainlatent.attributes.encode`.

Results are keyed ``results[<attribute>][<measure>]`` (``aggregate``: variant = attribute).

* **control** (``accuracy``, ``balanced_accuracy`` or ``mae``, ``mae_bins``):
  ``num_labels`` label vectors from the test split's label table (the network's training table
  when no slices are given), ``z_per_label`` latents each. Beside each the same score of the
  classifier on the real test slices against their true labels (``real_...``: the ceiling) and
  ``vs_real`` (generated / real: accuracy ratio, or MAE ratio).
* **swap** (``swap_<mode>_hit``; numeric also ``swap_<mode>_mae``): ``swap_samples`` (z, y) held, attribute
  ``a`` set to a target (another level drawn uniformly among those the training table has; a numeric
  value to the training range's 10 % point if it was above the middle, else its 90 % point), ``mode``
  ``single`` (others held) or ``consistent`` (others resampled from p(others | target)).
  ``hit`` = the predicted class (bin) is the target's.
* **leakage** (single swaps of ``a``): ``leak_<h>`` = mean change of held head ``h``'s prediction
  (numeric: |Δ expected value|; categorical: share whose predicted class changed), and
  ``leak_<h>_ratio`` = that over the classifier's real-test MAE (or error rate) for ``h``:
  below 1 means the swap moves ``h`` less than the classifier's own error.
* **identity** (single swaps): ``identity_ratio`` = mean classifier-feature distance between
  the swapped and the original image over the mean distance between two images of random z with
  the same (swapped) y; ``identity_kept`` = share of pairs where the swap is the closer one.
* **monotonicity** (numeric labels): ``interpolation_z`` latents with labels from the table; the
  attribute's scaled value walks 0 → 1 in ``interpolation_steps`` steps (others held); Spearman ρ
  of the predicted value against the step, ``monotonic_rho`` = mean over z (a constant
  prediction counts ρ = 0), ``monotonic_share`` = share with ρ ≥ 0.9.

Noise maps (cstylegan) are held per z, so a swap or a path changes only y.
"""

from __future__ import annotations

import numpy as np
import torch

from brainlatent.attributes import bin_centres, encode
from brainlatent.conditional import edit_pictures, fixed_noise, render
from brainlatent.errors import BrainlatentError
from brainlatent.metrics.registry import MetricContext, MetricResult, register_metric

MODES = ("single", "consistent")


# --------------------------------------------------------------------------------------------
# Pure pieces


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ (average ranks for ties); 0 when either side is constant.

    Example:
        >>> spearman(np.arange(5), np.array([1, 2, 2, 5, 9.0]))  # doctest: +ELLIPSIS
        0.97...
    """
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean recall over the classes present in ``true``."""
    return float(np.mean([(pred[true == k] == k).mean() for k in np.unique(true)]))


def head_prediction(spec: dict, probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``(class or bin index, expected value or None)`` per image from one head's ``N x K`` probabilities."""
    p = probs.detach().cpu().double().numpy()
    if spec["kind"] == "numeric":
        return p.argmax(axis=1), p @ bin_centres(spec)
    return p.argmax(axis=1), None


def requested_values(encoder, name: str, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(raw values as an object array, known mask)`` of attribute ``name`` in label vectors ``c``."""
    decoded = encoder.decode(c)[name]
    known = decoded.notna().to_numpy()
    return decoded.to_numpy(dtype=object), known


def score(spec: dict, probs: torch.Tensor, raw: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """Classifier head ``spec`` against raw values (rows with ``known`` only): accuracy and balanced
    accuracy, or MAE (units) and MAE in bins."""
    if not known.any():
        return {}
    idx, value = head_prediction(spec, probs)
    target = encode(spec, list(raw[known]))
    idx = idx[known]
    if spec["kind"] == "numeric":
        true = np.asarray(raw[known], dtype=np.float64)
        return {"mae": float(np.abs(value[known] - true).mean()), "mae_bins": float(np.abs(idx - target).mean())}
    ok = target >= 0
    return {"accuracy": float((idx[ok] == target[ok]).mean()), "balanced_accuracy": balanced_accuracy(idx[ok], target[ok])}


def swap_targets(G, name: str, c: torch.Tensor, rng: torch.Generator) -> list:
    """A target value per row of ``c`` (see the module docstring)."""
    a = G.labels.attribute(name)
    if a["kind"] == "categorical":
        current, _ = requested_values(G.labels, name, c)
        present = [lv for lv in a["levels"] if G.table.has(name, lv)]
        out = []
        for cur in current:
            options = [lv for lv in present if lv != cur] or present
            out.append(options[int(torch.randint(len(options), (1,), generator=rng))])
        return out
    scaled = c[:, G.labels.units(name).start].numpy()
    return [float(G.labels.unscale(name, 0.1 if s > 0.5 else 0.9)) for s in scaled]


def _set_each(G, c: torch.Tensor, name: str, targets: list, mode: str, rng: torch.Generator) -> torch.Tensor:
    rows = []
    for i, t in enumerate(targets):
        row = c[i:i + 1]
        rows.append(G.labels.set_value(row, name, t) if mode == "single" else G.table.consistent(row, name, t, rng))
    return torch.cat(rows)


def _test_labels(ctx: MetricContext, G) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Label vectors of the real test slices and the slices themselves (``None`` without a dataset)."""
    if ctx.slices is None:
        return G.label_table.detach().cpu(), None
    from brainlatent.slices import load_slices

    images, manifest = load_slices(ctx.slices)
    y = G.labels.encode(manifest)
    test = (manifest["split"] == "test").to_numpy() if "split" in manifest.columns else np.ones(len(manifest), bool)
    if not test.any():
        raise BrainlatentError(f"{ctx.slices}: no test slices; attribute control needs the real-test ceiling")
    rows = manifest["index"].to_numpy()[test] if "index" in manifest.columns else np.flatnonzero(test)
    real = torch.from_numpy(np.ascontiguousarray(images[np.sort(rows)], dtype=np.float32))
    order = np.argsort(rows)
    return torch.from_numpy(y[test][order]), real


# --------------------------------------------------------------------------------------------
# The metric


@register_metric("attribute_control", stage_keys=("seed", "study", "evaluate.batch_size", "evaluate.attribute_control"))
def attribute_control(ctx: MetricContext) -> MetricResult:
    """Attribute control of a conditional generator: control, swaps, leakage, identity, monotonicity."""
    G, features, s = ctx.generator, ctx.features, ctx.cfg["evaluate"]["attribute_control"]
    bs = int(ctx.cfg["evaluate"]["batch_size"])
    if not getattr(G, "c_dim", 0):
        raise BrainlatentError(f"attribute_control: the '{getattr(G, 'arch', '?')}' network is unconditional")
    heads = [sp for sp in ctx.specs if sp["name"] in G.labels.names]
    notes = []
    skipped = [sp["name"] for sp in ctx.specs if sp["name"] not in G.labels.names]
    if skipped:
        notes.append(f"classifier heads without a label in the network, not scored: {skipped}")
    if not heads:
        raise BrainlatentError(
            f"attribute_control: no classifier head {[sp['name'] for sp in ctx.specs]} is a label of the network ({G.labels.names})")
    rng = torch.Generator().manual_seed(int(ctx.seed))
    results: dict[str, dict[str, float]] = {sp["name"]: {} for sp in heads}

    def predict(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return features.predict_proba(images, batch_size=bs)

    # control, with the real-test ceiling
    test_y, real = _test_labels(ctx, G)
    n_lab, per = int(s["num_labels"]), int(s["z_per_label"])
    c = test_y[torch.randint(len(test_y), (n_lab,), generator=rng)].repeat_interleave(per, dim=0)
    z = torch.randn(len(c), G.z_dim, generator=rng)
    probs = predict(render(G, z, c, fixed_noise(G, len(c), rng), bs))
    real_probs = predict(real) if real is not None else None
    real_err: dict[str, float] = {}
    for sp in heads:
        name = sp["name"]
        for k, v in score(sp, probs[name], *requested_values(G.labels, name, c)).items():
            results[name][k] = v
        if real_probs is None:
            continue
        real_scores = score(sp, real_probs[name], *requested_values(G.labels, name, test_y))
        for k, v in real_scores.items():
            results[name][f"real_{k}"] = v
        key = "mae" if sp["kind"] == "numeric" else "accuracy"
        if key in real_scores and real_scores[key] > 0 and key in results[name]:
            results[name]["vs_real"] = results[name][key] / real_scores[key]
        if key in real_scores:
            real_err[name] = real_scores[key] if key == "mae" else 1.0 - real_scores[key]
    if real is None:
        notes.append("no slice dataset given: labels from the network's training table and no real-test ceiling")

    # swaps: effectiveness, leakage, identity
    n_sw = int(s["swap_samples"])
    c0 = test_y[torch.randint(len(test_y), (n_sw,), generator=rng)]
    z0, z1 = torch.randn(n_sw, G.z_dim, generator=rng), torch.randn(n_sw, G.z_dim, generator=rng)
    noise0, noise1 = fixed_noise(G, n_sw, rng), fixed_noise(G, n_sw, rng)
    img0 = render(G, z0, c0, noise0, bs)
    p0 = predict(img0)
    for sp in heads:
        name = sp["name"]
        targets = swap_targets(G, name, c0, rng)
        for mode in MODES:
            cs = _set_each(G, c0, name, targets, mode, rng)
            img = render(G, z0, cs, noise0, bs)
            ps = predict(img)
            sc = score(sp, ps[name], np.asarray(targets, dtype=object), np.ones(n_sw, bool))
            idx, _ = head_prediction(sp, ps[name])
            results[name][f"swap_{mode}_hit"] = float((idx == encode(sp, targets)).mean())
            if sp["kind"] == "numeric":
                results[name][f"swap_{mode}_mae"] = sc["mae"]
            if mode != "single":
                continue
            for held in heads:
                if held["name"] == name:
                    continue
                h = held["name"]
                i0, v0 = head_prediction(held, p0[h])
                i1, v1 = head_prediction(held, ps[h])
                change = float(np.abs(v1 - v0).mean()) if held["kind"] == "numeric" else float((i1 != i0).mean())
                results[name][f"leak_{h}"] = change
                if real_err.get(h, 0) > 0:
                    results[name][f"leak_{h}_ratio"] = change / real_err[h]
            d_swap = features.distance(img0, img, batch_size=bs).double()
            d_rand = features.distance(img, render(G, z1, cs, noise1, bs), batch_size=bs).double()
            if float(d_rand.mean()) > 0:
                results[name]["identity_ratio"] = float(d_swap.mean() / d_rand.mean())
            results[name]["identity_kept"] = float((d_swap < d_rand).double().mean())

    # interpolation monotonicity
    n_z, steps = int(s["interpolation_z"]), int(s["interpolation_steps"])
    if n_z < 100:
        notes.append(f"monotonicity over {n_z} latents (seed 004's protocol asks for >= 100)")
    t = torch.linspace(0, 1, steps)
    for sp in heads:
        if sp["kind"] != "numeric":
            continue
        name = sp["name"]
        cb = G.sample_labels(n_z, rng).repeat_interleave(steps, dim=0)
        cb = G.labels.set_scaled(cb, name, t.repeat(n_z))
        zb = torch.randn(n_z, G.z_dim, generator=rng).repeat_interleave(steps, dim=0)
        nb = [x.repeat_interleave(steps, dim=0) for x in fixed_noise(G, n_z, rng)]
        _, value = head_prediction(sp, predict(render(G, zb, cb, nb, bs))[name])
        rhos = np.array([spearman(np.arange(steps), row) for row in value.reshape(n_z, steps)])
        results[name]["monotonic_rho"] = float(rhos.mean())
        results[name]["monotonic_share"] = float((rhos >= 0.9).mean())

    if ctx.out_dir is not None:
        edit_pictures(G, ctx.out_dir, int(ctx.seed))
    settings = {**{k: int(v) for k, v in s.items()}, "heads": [sp["name"] for sp in heads], "modes": list(MODES)}
    return MetricResult(results, settings, notes)
