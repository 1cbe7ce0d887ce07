"""The metrics every generator family gets: PPL, path profile, linear separability, image quality.

Each is registered with :func:`brainlatent.metrics.registry.register_metric`; definitions and every
deviation from NVlabs' reference code are in ``docs/metrics.md``.
"""

from __future__ import annotations

from brainlatent.config import derive_seed
from brainlatent.errors import BrainlatentError
from brainlatent.metrics.data import embed_images, generated_features, load_real_images
from brainlatent.metrics.registry import MetricContext, MetricResult, register_metric

#: keys every metric reads: the seed, the study name (provenance) and the batch size
COMMON_KEYS = ("seed", "study", "evaluate.batch_size")

#: fewer PPL pairs than this make the bootstrap errors fragile (docs/metrics.md)
MIN_BOOTSTRAP_PAIRS = 1000


@register_metric("ppl", stage_keys=(*COMMON_KEYS, "evaluate.ppl", "classifier.lpips_weights"))
def ppl(ctx: MetricContext) -> MetricResult:
    """Perceptual path length, every variant the family's spaces allow (NVlabs definition)."""
    cfg, generator, distance_fn, seed, device = ctx.cfg, ctx.generator, ctx.distance or ctx.features.distance, ctx.seed, ctx.device
    from brainlatent.metrics.ppl import BOOTSTRAP_RESAMPLES, bootstrap_seed, compare_variants, describe_variant, ppl_distances, variants_for

    p = cfg["evaluate"]["ppl"]
    bs = cfg["evaluate"]["batch_size"]
    results, per_variant, notes, distances = {}, {}, [], {}
    for name in variants_for(generator):
        space, sampling = name.split("_")
        distances[name] = ppl_distances(generator, distance_fn, space, sampling, p["num_samples"], p["epsilon"], bs, seed, device)
        r = describe_variant(distances[name], generator, space, sampling, p["epsilon"], bs, seed)
        results[name] = {k: r[k] for k in ("mean", "std", "se", "ci_low", "ci_high", "n_kept", "n_total", "lo", "hi")}
        per_variant[name] = {k: r[k] for k in ("interpolation", "z_rescaled")}
        notes += [f"{name}: {n}" for n in r["notes"]]
    if p["num_samples"] < MIN_BOOTSTRAP_PAIRS:
        notes.append(
            f"{p['num_samples']} pairs: the filter drops only about 1 % of them, so a single extreme value drawn several times "
            f"in a bootstrap resample can dominate se and ci; use at least {MIN_BOOTSTRAP_PAIRS} pairs for trustworthy errors"
        )
    comparisons = compare_variants(distances, bootstrap_seed(seed))
    for key, c in comparisons.items():
        if not c["se_below_quarter_gap"]:
            notes.append(
                f"{key}: the standard error of the difference ({c['se']:.4g}) is above a quarter of the difference "
                f"({c['difference']:.4g}); raise evaluate.ppl.num_samples to resolve it (docs/metrics.md, sample counts)"
            )
    settings = {
        "num_samples": p["num_samples"],
        "epsilon": p["epsilon"],
        "distance": p["distance"],
        "variants": per_variant,
        "t_full": "U(0,1)",
        "t_end": 0.0,
        "crop": False,
        "filter": "keep P1 (method lower) <= d <= P99 (method higher)",
        "std_ddof": 1,
        "same_seed_for_every_variant": True,
        "standard_error": (
            f"se, ci_low, ci_high: bootstrap over the per-pair values ({BOOTSTRAP_RESAMPLES} resamples, the filter "
            "re-applied to each resample), std (ddof=1) and 2.5/97.5 percentiles of the filtered means"
        ),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "bootstrap_seed": bootstrap_seed(seed),
    }
    if not generator.has_mapping:
        notes.append(f"arch '{generator.arch}' has no mapping network: only the Z variants")
    return MetricResult(results, settings, notes, {"comparisons": comparisons} if comparisons else {})


@register_metric("path_profile", stage_keys=(*COMMON_KEYS, "evaluate.path_profile"))
def path_profile_metric(ctx: MetricContext) -> MetricResult:
    """The reference study's distance-from-first profile of linear paths, its plot and interpolation GIFs."""
    cfg, generator, features, seed, device = ctx.cfg, ctx.generator, ctx.features, ctx.seed, ctx.device
    plot = ctx.out_dir / "path_profile.png" if ctx.out_dir is not None else None
    gif_dir = ctx.out_dir
    from brainlatent.explore import write_interpolations
    from brainlatent.metrics.path_profile import path_profile, plot_path_profile

    p = cfg["evaluate"]["path_profile"]
    bs = cfg["evaluate"]["batch_size"]
    prof = path_profile(generator, lambda x: features.embed(x, bs), p["pairs"], p["steps"], bs, seed, device)
    results, curves = {}, {}
    for space in prof["spaces"]:
        curves[space] = prof[space].pop("curves")
        results[space] = prof[space]
    notes = []
    if not generator.has_mapping:
        notes.append(f"arch '{generator.arch}' has no mapping network: only Z (its W equals Z)")
    extra = {}
    if plot is not None:
        plot_path_profile(prof, plot, title=f"{generator.arch}, z_dim {generator.z_dim}: path profile")
        extra["plot"] = str(plot)
    if gif_dir is not None:
        extra.update(write_interpolations(generator, gif_dir, seed=derive_seed(seed, "explore"), device=device, batch_size=bs))
        if not generator.has_mapping:
            notes.append("interp_w.* show the Z interpolation (no mapping network, W = Z)")
    settings = dict(prof["settings"])
    settings["outputs"] = extra
    return MetricResult(results, settings, notes, {"curves": curves})


@register_metric("separability", stage_keys=(*COMMON_KEYS, "evaluate.separability", "attributes"))
def separability(ctx: MetricContext) -> MetricResult:
    """Linear separability (conditional entropy, SVM accuracy) of binary attributes in each latent space."""
    cfg, generator, features, specs, seed, device = ctx.cfg, ctx.generator, ctx.features, ctx.specs, ctx.seed, ctx.device
    classifier_metrics = ctx.classifier_metrics
    if not specs:
        raise BrainlatentError("separability: no attribute specs (the classifier's heads) were given")
    from brainlatent.metrics.separability import linear_separability

    p = cfg["evaluate"]["separability"]
    out = linear_separability(
        generator,
        features.predict_proba,
        specs,
        attributes=p["attributes"],
        binarise=p["binarise"],
        num_samples=p["num_samples"],
        repeats=p["repeats"],
        batch_size=cfg["evaluate"]["batch_size"],
        seed=seed,
        device=device,
        classifier_metrics=classifier_metrics,
    )
    notes = []
    for key, entry in out["results"].items():
        notes += [f"{key}: {n}" for n in entry.pop("notes", [])]
    notes += interpretability_notes(out["classifier_check"])
    if p["repeats"] < 2:
        notes.append("one repeat: no standard error over repeats (the _se values are null); set evaluate.separability.repeats >= 2")
    settings = {
        "num_samples": p["num_samples"],
        "num_kept": p["num_samples"] // 2,
        "repeats": p["repeats"],
        "attributes": out["attributes"],
        "spaces": out["spaces"],
        "svm": "sklearn.svm.LinearSVC() defaults (random_state fixed: only the dual solver uses it), fitted and scored on the kept samples",
        "entropy": "H(Y|X) in bits = H(Y) - I(X;Y) from the 2x2 table (SVM prediction x classifier label), clipped >= 0",
        "combined_score": "2 ** sum over attributes of H(Y|X) (bits), per repeat, then mean and std (ddof=1)",
        "heldout": "SVM fitted on a random half of the kept samples, scored on the other half",
        "std_ddof": 1,
        "standard_error": "_se: std (ddof=1) over the repeats / sqrt(repeats); z_minus_w: per-repeat paired difference (same samples)",
        "classifier_check": out["classifier_check"],
    }
    if not generator.has_mapping:
        notes.append(f"arch '{generator.arch}' has no mapping network: Z only")
    return MetricResult(out["results"], settings, notes)


def interpretability_notes(checks: dict[str, dict]) -> list[str]:
    """One note per attribute whose separability cannot be interpreted, or whose check could not run."""
    notes = []
    for name, c in checks.items():
        if c["interpretable"] is False:
            notes.append(
                f"{name}: NOT INTERPRETABLE: the classifier's {c['split']} {c['measure']} ({c['score']:.3f}) is not above "
                f"its majority baseline ({c['baseline']:.3f}), so its labels carry no information to separate"
            )
        elif c["interpretable"] is None:
            notes.append(f"{name}: interpretability unknown ({c['reason']})")
    return notes


@register_metric("quality", stage_keys=(*COMMON_KEYS, "evaluate.quality"))
def quality(ctx: MetricContext) -> MetricResult:
    """FID, KID and precision/recall on the classifier's features, with the real-vs-real floor."""
    cfg, generator, features, slices, seed, device = ctx.cfg, ctx.generator, ctx.features, ctx.slices, ctx.seed, ctx.device
    if slices is None:
        raise BrainlatentError("--metric quality needs --slices (the slice dataset folder with the real test slices)")
    from brainlatent.metrics.quality import quality_report

    p = cfg["evaluate"]["quality"]
    bs = cfg["evaluate"]["batch_size"]
    real = load_real_images(slices, "test")
    if real.shape[-1] != generator.resolution:
        raise BrainlatentError(f"{slices}: real slices are {real.shape[-1]}x{real.shape[-2]} but the generator makes {generator.resolution}x{generator.resolution}")
    real_feats = embed_images(features, real, bs, device)
    gen_feats = generated_features(generator, features, p["num_generated"], bs, derive_seed(seed, "generate"), device)
    rep = quality_report(real_feats, gen_feats, p["kid_subsets"], p["kid_subset_size"], p["pr_k"], derive_seed(seed, "report"), device)
    results = {k: rep[k] for k in ("fid", "kid", "precision", "recall")}
    settings = {
        "num_generated": p["num_generated"],
        "real_split": "test",
        "kid_subsets": p["kid_subsets"],
        "kid_subset_size": p["kid_subset_size"],
        "kid_kernel": "(a.b/d + 1)^3, unbiased MMD^2 per subset, std ddof=0",
        "pr_k": p["pr_k"],
        "fid_covariance_ddof": 1,
        "features": "attribute classifier, penultimate layer",
        "sizes": rep["sizes"],
        "comparisons": {
            "generated_vs_real": "all generated vs all real test slices",
            "generated_vs_real_matched": "generated subset of real-half size vs real half B",
            "real_vs_real": "real half A vs real half B (floor)",
        },
    }
    return MetricResult(results, settings, rep["notes"])


