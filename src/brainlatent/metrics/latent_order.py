"""Registered metrics of seed 003's claim that growing orders the latent axes by salience.

* ``variability_profile``: :func:`brainlatent.metrics.group_variability.variability_profile`;
* ``attribute_saliency``: the same protocol on the study classifier's predictions;
* ``axis_alignment``: MIG, SAP and DCI (:mod:`brainlatent.metrics.disentanglement`) of the latent
  prefix against the classifier's labels of the generated images (numeric heads: expected value,
  continuous; categorical heads: the predicted level, discrete).

Latents are drawn from the seed's prior (:mod:`brainlatent.latent_groups`) in every case.
"""

from __future__ import annotations

import numpy as np
import torch

from brainlatent.latent_groups import sample_prior
from brainlatent.metrics.disentanglement import dci, mig, sap
from brainlatent.metrics.group_variability import (
    _prior_dim,
    _render,
    attribute_saliency,
    prediction_quantities,
    variability_profile,
)
from brainlatent.metrics.registry import MetricContext, MetricResult, register_metric

_KEYS = ("seed", "study", "evaluate.batch_size")


@register_metric("variability_profile", stage_keys=_KEYS + ("evaluate.variability_profile",))
def variability_profile_metric(ctx: MetricContext) -> MetricResult:
    """Per coordinate group, the per-pixel std inside the brain over images that vary only that group."""
    p = ctx.cfg["evaluate"]["variability_profile"]
    res = variability_profile(ctx.generator, p["references"], p["images_per_group"], ctx.seed, p["mask_threshold"],
                              p["bootstrap"], ctx.cfg["evaluate"]["batch_size"], ctx.device)
    settings = {**dict(p), "std_ddof": 1, "ci": "bootstrap percentile 95 % over references",
                "prior": "unit-norm Gaussian, first z_dim coordinates; a group redrawn from fresh prior vectors"}
    if ctx.out_dir is not None:  # the walks that show what each group does (PNG strips, GIFs, style transfer)
        from brainlatent.config import derive_seed
        from brainlatent.growing_walks import write_walks

        settings["pictures"] = sorted(write_walks(ctx.generator, ctx.out_dir, derive_seed(ctx.seed, "walks"), device=ctx.device))
    return MetricResult(res, settings)


@register_metric("attribute_saliency", stage_keys=_KEYS + ("evaluate.attribute_saliency",))
def attribute_saliency_metric(ctx: MetricContext) -> MetricResult:
    """Per coordinate group and attribute, the std of the classifier's prediction over images varying that group."""
    p = ctx.cfg["evaluate"]["attribute_saliency"]
    res = attribute_saliency(ctx.generator, ctx.features.predict_proba, ctx.specs, p["references"],
                             p["images_per_group"], ctx.seed, p["bootstrap"], ctx.cfg["evaluate"]["batch_size"], ctx.device)
    notes = ["slice position is not scored: the study has no slice-position regressor"]
    return MetricResult(res, {**dict(p), "quantity": "numeric: expected value over bin centres; two levels: P(second level); "
                              "more levels: mean over levels of each probability's std"}, notes)


@torch.no_grad()
def latent_factors(generator, predict_proba, specs: list[dict], n: int, seed: int, batch_size: int = 64,
                   device="cpu") -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
    """``n`` prior draws (protocol units), and per classifier head its factor values and whether discrete."""
    z = sample_prior(n, generator.z_dim, torch.Generator().manual_seed(int(seed)), _prior_dim(generator))
    images = _render(generator, z, batch_size, device)
    probs = predict_proba(images)
    quantities = prediction_quantities(probs, specs)
    factors, discrete = [], []
    for spec in specs:
        if spec["kind"] == "numeric":
            factors.append(quantities[spec["name"]])
            discrete.append(False)
        else:
            factors.append(probs[spec["name"]].numpy().argmax(1))
            discrete.append(True)
    return z.numpy(), factors, discrete


@register_metric("axis_alignment", stage_keys=_KEYS + ("evaluate.axis_alignment",))
def axis_alignment_metric(ctx: MetricContext) -> MetricResult:
    """MIG, SAP and DCI of the latent prefix against the classifier's labels of the generated images."""
    p = ctx.cfg["evaluate"]["axis_alignment"]
    z, factors, discrete = latent_factors(ctx.generator, ctx.features.predict_proba, ctx.specs, p["num_samples"],
                                          ctx.seed, ctx.cfg["evaluate"]["batch_size"], ctx.device)
    codes = z[:, : min(int(p["max_dims"]), z.shape[1])]
    names = [s["name"] for s in ctx.specs]
    notes = [f"factor '{n}' is constant in the generated sample: left out of MIG" for n, f in zip(names, factors)
             if len(np.unique(f)) < 2]
    m, s, d = mig(codes, factors, discrete, int(p["bins"])), sap(codes, factors, discrete), dci(codes, factors, discrete)
    results = {
        "mig": m["mig"], "sap": s["sap"], "dci_disentanglement": d["disentanglement"],
        "dci_completeness": d["completeness"], "dci_informativeness": d["informativeness"],
        "per_factor": {n: {"mig": m["per_factor"][i], "sap": s["per_factor"][i],
                           "completeness": d["per_factor_completeness"][i],
                           "informativeness": d["per_factor_informativeness"][i]} for i, n in enumerate(names)},
    }
    settings = {**dict(p), "codes": codes.shape[1], "factors": dict(zip(names, ["discrete" if x else "continuous" for x in discrete])),
                "mi": "plug-in, bits; continuous variables in equal-frequency bins", "dci_importance": "|lasso coef| on standardised variables, alpha 3/sqrt(N)"}
    return MetricResult(results, settings, notes, extra={"mi": m["mi"], "sap_scores": s["scores"], "dci_importance": d["importance"]})
