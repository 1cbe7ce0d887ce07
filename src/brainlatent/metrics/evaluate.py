"""``brainlatent evaluate``: one metric family for one trained generator, written as one JSON.

Metric families (``--metric``):

* ``ppl``: the NVlabs perceptual path length, every variant the generator supports;
* ``path_profile``: the reference study's 150-step distance-from-first profile (+ a PNG plot and
  interpolation GIFs/strips, paths given by ``--plot`` and ``--gif-dir``);
* ``separability``: linear separability of the configured binary attributes in Z and W;
* ``quality``: FID / KID / precision-recall on the classifier's features with the real-vs-real floor.

Each JSON holds ``results`` (numbers only; what ``brainlatent aggregate`` collects), ``settings``
(sample counts, seeds, feature network and its sha256, device, versions) and ``notes``.

Example:
    brainlatent evaluate --metric ppl --config config/config.yaml \\
        --network results/demo/gan/stylegan-z32/network.pt --classifier results/demo/classifier/model.pt \\
        --slices results/demo/slices/64 --out results/demo/eval/stylegan-z32/ppl.json
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from brainlatent import __version__
from brainlatent.config import config_hash, derive_seed, load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.io import load_torch, write_json

log = logging.getLogger(__name__)

METRICS = ("ppl", "path_profile", "separability", "quality")


# --------------------------------------------------------------------------------------------
# Helpers


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_device(name: str = "auto") -> torch.device:
    """``cuda`` when available (for ``auto``), else ``cpu``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BrainlatentError(f"--device {name}: CUDA is not available on this machine; use 'auto' or 'cpu'")
    return torch.device(name)


def metric_seed(cfg: dict, metric: str, generator) -> int:
    """``derive_seed(cfg["seed"], "evaluate", metric, arch, z_dim)``."""
    return derive_seed(cfg["seed"], "evaluate", metric, generator.arch, generator.z_dim)


def classifier_specs(classifier, classifier_path: str | Path | None, cfg: dict) -> tuple[list[dict], list[str]]:
    """The classifier's attribute specs (its heads): from the model, its checkpoint, else the config."""
    notes = []
    specs = getattr(classifier, "attributes", None)
    if specs is None and classifier_path is not None:
        ckpt = load_torch(classifier_path)
        if isinstance(ckpt, dict):
            specs = ckpt.get("attributes")
    cfg_attrs = cfg.get("attributes")
    if specs is None:
        if cfg_attrs is None:
            raise BrainlatentError(f"{classifier_path}: the classifier file holds no attribute specs and the config has no 'attributes'")
        specs = cfg_attrs
        notes.append("classifier carries no attribute specs; the config's attributes were used")
    specs = [dict(s) for s in specs]
    cfg_names = [a["name"] for a in cfg_attrs] if cfg_attrs is not None else None
    if cfg_names is not None and [s["name"] for s in specs] != cfg_names:
        notes.append(f"classifier heads {[s['name'] for s in specs]} differ from the config's attributes {cfg_names}")
    return specs, notes


def load_real_images(slices_dir: str | Path, split: str = "test") -> np.ndarray:
    """The real slices of one split, ``N x 1 x R x R`` float32 (read from the memmap)."""
    from brainlatent.slices import load_slices

    images, manifest = load_slices(slices_dir)
    if "split" not in manifest.columns:
        raise BrainlatentError(f"{Path(slices_dir) / 'manifest.parquet'}: no 'split' column; expected train/val/test per slice")
    chosen = manifest[manifest["split"].astype(str) == split]
    if chosen.empty:
        raise BrainlatentError(f"{Path(slices_dir) / 'manifest.parquet'}: no slices in split '{split}'")
    rows = chosen["index"].to_numpy() if "index" in chosen.columns else chosen.index.to_numpy()
    return np.asarray(images[np.sort(rows)], dtype=np.float32)


def _embed(features, images: torch.Tensor | np.ndarray, batch_size: int, device) -> np.ndarray:
    """Penultimate features of many images, in chunks so memory stays bounded."""
    out = []
    chunk = max(batch_size, 1) * 16
    for i in range(0, len(images), chunk):
        x = torch.as_tensor(np.asarray(images[i : i + chunk]) if not isinstance(images, torch.Tensor) else images[i : i + chunk])
        e = features.embed(x.to(device), batch_size)
        out.append(torch.as_tensor(e).detach().double().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def generated_features(generator, features, n: int, batch_size: int, seed: int, device) -> np.ndarray:
    """Penultimate features of ``n`` generated images (z from the family's prior, random noise, no truncation).

    Drawn by :func:`brainlatent.latents.batches` (z ~ N(0, I) unless the network has ``sample_z``;
    for N(0, I) families the draws are those of the former inline loop: z, then noise, per batch).
    """
    from brainlatent.latents import batches

    out = []
    for batch in batches(generator, n, seed, batch_size, device, desc="quality samples"):
        out.append(torch.as_tensor(features.embed(batch.images, batch_size)).detach().double().cpu().numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# One function per metric family: (results, settings, notes)


def evaluate_ppl(cfg: dict, generator, distance_fn, seed: int, device) -> tuple[dict, dict, list[str]]:
    from brainlatent.metrics.ppl import perceptual_path_length, variants_for

    p = cfg["evaluate"]["ppl"]
    results, per_variant, notes = {}, {}, []
    for name in variants_for(generator):
        space, sampling = name.split("_")
        r = perceptual_path_length(
            generator, distance_fn, space, sampling, p["num_samples"], p["epsilon"], cfg["evaluate"]["batch_size"], seed, device
        )
        results[name] = {k: r[k] for k in ("mean", "std", "n_kept", "n_total", "lo", "hi")}
        per_variant[name] = {k: r[k] for k in ("interpolation", "z_rescaled")}
        notes += [f"{name}: {n}" for n in r["notes"]]
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
    }
    if not generator.has_mapping:
        notes.append(f"arch '{generator.arch}' has no mapping network: only the Z variants")
    return results, settings, notes


def evaluate_path_profile(
    cfg: dict, generator, features, seed: int, device, plot: str | Path | None, gif_dir: str | Path | None
) -> tuple[dict, dict, list[str], dict]:
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
    return results, settings, notes, {"curves": curves}


def evaluate_separability(cfg: dict, generator, features, specs: list[dict], seed: int, device) -> tuple[dict, dict, list[str]]:
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
    )
    notes = []
    for key, entry in out["results"].items():
        notes += [f"{key}: {n}" for n in entry.pop("notes", [])]
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
    }
    if not generator.has_mapping:
        notes.append(f"arch '{generator.arch}' has no mapping network: Z only")
    return out["results"], settings, notes


def evaluate_quality(cfg: dict, generator, features, slices: str | Path, seed: int, device) -> tuple[dict, dict, list[str]]:
    from brainlatent.metrics.quality import quality_report

    p = cfg["evaluate"]["quality"]
    bs = cfg["evaluate"]["batch_size"]
    real = load_real_images(slices, "test")
    if real.shape[-1] != generator.resolution:
        raise BrainlatentError(f"{slices}: real slices are {real.shape[-1]}x{real.shape[-2]} but the generator makes {generator.resolution}x{generator.resolution}")
    real_feats = _embed(features, real, bs, device)
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
    return results, settings, rep["notes"]


def evaluate(
    metric: str,
    cfg: dict,
    generator,
    features,
    specs: list[dict] | None = None,
    device: str | torch.device = "cpu",
    slices: str | Path | None = None,
    plot: str | Path | None = None,
    gif_dir: str | Path | None = None,
    distance_fn=None,
) -> dict:
    """Compute one metric family; returns the JSON document (without file provenance).

    Args:
        metric: one of ``ppl``, ``path_profile``, ``separability``, ``quality``.
        cfg: the completed study config.
        generator: the network (see ``brainlatent.models.stylegan.Generator``).
        features: ``PerceptualFeatures``-like (``embed``, ``distance``, ``predict_proba``).
        specs: the classifier's attribute specs (separability).
        device: where everything runs.
        slices: slice dataset folder (quality).
        plot, gif_dir: extra outputs of ``path_profile``.
        distance_fn: the PPL distance (default ``features.distance``).
    """
    from brainlatent.metrics.registry import MetricContext, metrics

    registered = metrics()
    if metric not in METRICS and metric not in registered:
        raise BrainlatentError(f"--metric: expected one of {all_metrics()}, got '{metric}'")
    seed = metric_seed(cfg, metric, generator)
    extra: dict = {}
    if metric not in METRICS:
        ctx = MetricContext(cfg, generator, features, list(specs or cfg.get("attributes") or []), seed, device,
                            Path(slices) if slices is not None else None, Path(gif_dir) if gif_dir is not None else None,
                            distance_fn)
        res = registered[metric].fn(ctx)
        results, settings, notes, extra = res.results, res.settings, res.notes, res.extra
    elif metric == "ppl":
        results, settings, notes = evaluate_ppl(cfg, generator, distance_fn or features.distance, seed, device)
    elif metric == "path_profile":
        results, settings, notes, extra = evaluate_path_profile(cfg, generator, features, seed, device, plot, gif_dir)
    elif metric == "separability":
        if specs is None:
            specs = cfg.get("attributes")
        if not specs:
            raise BrainlatentError("separability: no attribute specs (the classifier's heads) were given")
        results, settings, notes = evaluate_separability(cfg, generator, features, specs, seed, device)
    else:
        if slices is None:
            raise BrainlatentError("--metric quality needs --slices (the slice dataset folder with the real test slices)")
        results, settings, notes = evaluate_quality(cfg, generator, features, slices, seed, device)
    doc = {
        "metric": metric,
        "study": cfg["study"],
        "arch": generator.arch,
        "z_dim": int(generator.z_dim),
        "results": results,
        "settings": {
            "metric": metric,
            "arch": generator.arch,
            "z_dim": int(generator.z_dim),
            "w_dim": int(generator.w_dim),
            "resolution": int(generator.resolution),
            "seed": int(seed),
            "batch_size": cfg["evaluate"]["batch_size"],
            "device": str(device),
            "package_version": __version__,
            "torch_version": torch.__version__,
            "config_hash": config_hash(cfg),
            **settings,
        },
        "notes": notes,
    }
    doc.update(extra)
    return doc


# --------------------------------------------------------------------------------------------
# CLI


def all_metrics() -> list[str]:
    """The four built-in metric families and every metric of :mod:`brainlatent.metrics.registry`."""
    from brainlatent.metrics.registry import metrics

    return list(METRICS) + [m for m in metrics() if m not in METRICS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", required=True, choices=all_metrics(), help="metric to compute")
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--network", required=True, help="trained generator, e.g. gan/stylegan-z32/network.pt")
    parser.add_argument("--classifier", required=True, help="attribute classifier, classifier/model.pt (the feature network)")
    parser.add_argument("--slices", default=None, help="slice dataset folder slices/<res> (needed by --metric quality)")
    parser.add_argument("--out", required=True, help="output JSON, e.g. eval/stylegan-z32/ppl.json")
    parser.add_argument("--plot", default=None, help="path_profile: PNG plot path (default: <out stem>.png beside --out)")
    parser.add_argument("--gif-dir", default=None, help="path_profile: folder for interp_{z,w}.{gif,png} (default: the folder of --out)")
    parser.add_argument("--lpips-weights", default=None, help="ppl with evaluate.ppl.distance 'lpips': the LPIPS-VGG16 state-dict file (default: classifier.lpips_weights of the config)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")


def _load_models(args, cfg: dict, device: torch.device):
    """Generator, classifier, features and the PPL distance named by the CLI arguments."""
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.models.families import load_network
    from brainlatent.train.classifier import load_classifier

    generator = load_network(args.network, device).eval().requires_grad_(False)
    classifier = load_classifier(args.classifier, device).eval().requires_grad_(False)
    features = PerceptualFeatures(classifier, device)
    feature_info = {"classifier": str(args.classifier), "classifier_sha256": sha256_file(args.classifier), "distance": "classifier"}
    distance_fn = features.distance
    if args.metric == "ppl" and cfg["evaluate"]["ppl"]["distance"] == "lpips":
        from brainlatent.metrics.features import LPIPSVGG16Distance

        weights = args.lpips_weights or (cfg.get("classifier") or {}).get("lpips_weights")
        if not weights:
            raise BrainlatentError(
                "evaluate.ppl.distance is 'lpips' but no LPIPS-VGG16 weights file was given "
                "(--lpips-weights, or classifier.lpips_weights in the config)"
            )
        if not Path(weights).exists():
            raise BrainlatentError(f"LPIPS weights {weights}: file not found")
        lpips = LPIPSVGG16Distance(weights, device)
        distance_fn = lpips.distance
        feature_info.update({"distance": "lpips", "lpips_weights": str(weights), "lpips_sha256": sha256_file(weights)})
    return generator, classifier, features, distance_fn, feature_info


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, f"evaluate:{args.metric}")
    for flag, path in (("--network", args.network), ("--classifier", args.classifier)):
        if not Path(path).exists():
            raise BrainlatentError(f"{flag} {path}: file not found")
    device = pick_device(args.device)
    out = Path(args.out)
    plot = args.plot or (out.with_suffix(".png") if args.metric == "path_profile" else None)
    gif_dir = args.gif_dir or (out.parent if args.metric == "path_profile" or args.metric not in METRICS else None)
    generator, classifier, features, distance_fn, feature_info = _load_models(args, cfg, device)
    specs, spec_notes = classifier_specs(classifier, args.classifier, cfg)
    log.info("evaluate %s: %s z%d on %s", args.metric, generator.arch, generator.z_dim, device)
    doc = evaluate(args.metric, cfg, generator, features, specs, device, args.slices, plot, gif_dir, distance_fn)
    doc["settings"]["network"] = str(args.network)
    doc["settings"]["network_sha256"] = sha256_file(args.network)
    doc["settings"]["feature_network"] = feature_info
    if args.slices is not None:
        doc["settings"]["slices"] = str(args.slices)
    if args.metric == "separability":
        doc["notes"] += spec_notes
    write_json(out, doc)
    log.info("wrote %s", out)
