"""``brainlatent evaluate``: one metric family for one trained generator, written as one JSON.

Metrics (``--metric``) come from the metric registry (:mod:`brainlatent.metrics.registry`); the ones
every family gets are in :mod:`brainlatent.metrics.builtin` (``ppl``, ``path_profile``,
``separability``, ``quality``). A metric's pictures go into ``--out-dir`` (default: a folder named
after the metric beside ``--out``).

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

import torch

from brainlatent import __version__
from brainlatent.config import config_hash, derive_seed, load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.io import load_torch, write_json
from brainlatent.numerics import module_dtype, numerics_info, strict_float32

log = logging.getLogger(__name__)



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


def evaluate(
    metric: str,
    cfg: dict,
    generator,
    features,
    specs: list[dict] | None = None,
    device: str | torch.device = "cpu",
    slices: str | Path | None = None,
    out_dir: str | Path | None = None,
    distance_fn=None,
    classifier_metrics: dict | None = None,
) -> dict:
    """Compute one registered metric; returns the JSON document (without file provenance).

    Args:
        metric: a registered metric name (:func:`brainlatent.metrics.registry.metrics`).
        cfg: the metric's stage config (or a completed study config).
        generator: the network (any family; :mod:`brainlatent.models.families`).
        features: ``PerceptualFeatures``-like (``embed``, ``distance``, ``predict_proba``).
        specs: the classifier's attribute specs (default: the config's attributes, if it has them).
        device: where everything runs.
        slices: slice dataset folder (real images).
        out_dir: folder for the metric's pictures (None: none are written).
        distance_fn: the PPL distance (default ``features.distance``).
        classifier_metrics: the classifier's ``metrics.json`` (separability: the interpretability check).

    Every metric runs with TF32 off (:func:`brainlatent.numerics.strict_float32`); the document's
    ``settings.numerics`` records device, dtype, torch version and the TF32 flags.
    """
    from brainlatent.metrics.registry import MetricContext, get_metric

    entry = get_metric(metric)
    seed = metric_seed(cfg, metric, generator)
    strict_float32()
    ctx = MetricContext(
        cfg=cfg, generator=generator, features=features, specs=specs if specs is not None else list(cfg.get("attributes") or []),
        seed=seed, device=device, slices=Path(slices) if slices is not None else None,
        out_dir=Path(out_dir) if out_dir is not None else None, distance=distance_fn, classifier_metrics=classifier_metrics,
    )
    result = entry.fn(ctx)
    doc = {
        "metric": metric,
        "study": cfg["study"],
        "arch": generator.arch,
        "z_dim": int(generator.z_dim),
        "results": result.results,
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
            **result.settings,
            "numerics": numerics_info(device, module_dtype(generator)),
        },
        "notes": result.notes,
    }
    doc.update(result.extra)
    return doc


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from brainlatent.metrics.registry import metrics

    parser.add_argument("--metric", required=True, choices=sorted(metrics()), help="registered metric to compute")
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--network", required=True, help="trained generator, e.g. gan/stylegan-z32/network.pt")
    parser.add_argument("--classifier", required=True, help="attribute classifier, classifier/model.pt (the feature network)")
    parser.add_argument("--slices", default=None, help="slice dataset folder slices/<res> (needed by --metric quality)")
    parser.add_argument("--out", required=True, help="output JSON, e.g. eval/stylegan-z32/ppl.json")
    parser.add_argument("--out-dir", default=None, help="folder for the metric's pictures (default: <out without .json>/ beside --out)")
    parser.add_argument("--lpips-weights", default=None, help="ppl with evaluate.ppl.distance 'lpips': the LPIPS-VGG16 state-dict file (default: classifier.lpips_weights of the config)")
    parser.add_argument("--classifier-metrics", default=None, help="separability: the classifier's metrics.json (default: metrics.json beside --classifier)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")


def _load_models(args, cfg: dict, device: torch.device):
    """Generator, classifier, features and the PPL distance named by the CLI arguments."""
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.models.families import load_network
    from brainlatent.models.vgg import load_classifier

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


def load_classifier_metrics(args: argparse.Namespace) -> tuple[dict | None, str | None]:
    """The classifier's ``metrics.json`` (``--classifier-metrics``, else beside ``--classifier``) and its path."""
    path = Path(args.classifier_metrics) if args.classifier_metrics else Path(args.classifier).with_name("metrics.json")
    if not path.exists():
        if args.classifier_metrics:
            raise BrainlatentError(f"--classifier-metrics {path}: file not found")
        return None, None
    from brainlatent.io import read_json

    return read_json(path), str(path)


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, f"evaluate:{args.metric}")
    for flag, path in (("--network", args.network), ("--classifier", args.classifier)):
        if not Path(path).exists():
            raise BrainlatentError(f"{flag} {path}: file not found")
    device = pick_device(args.device)
    out = Path(args.out)
    out_dir = Path(args.out_dir) if args.out_dir else out.with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)  # always there (the workflow declares it), empty for a metric without pictures
    generator, classifier, features, distance_fn, feature_info = _load_models(args, cfg, device)
    specs, spec_notes = classifier_specs(classifier, args.classifier, cfg)
    log.info("evaluate %s: %s z%d on %s", args.metric, generator.arch, generator.z_dim, device)
    clf_metrics, clf_metrics_path = load_classifier_metrics(args) if args.metric == "separability" else (None, None)
    doc = evaluate(args.metric, cfg, generator, features, specs, device, args.slices, out_dir, distance_fn, clf_metrics)
    doc["settings"]["network"] = str(args.network)
    doc["settings"]["network_sha256"] = sha256_file(args.network)
    doc["settings"]["feature_network"] = feature_info
    if args.slices is not None:
        doc["settings"]["slices"] = str(args.slices)
    if args.metric == "separability":
        doc["notes"] += spec_notes
        if clf_metrics_path is not None:
            doc["settings"]["feature_network"]["classifier_metrics"] = clf_metrics_path
            doc["settings"]["feature_network"]["classifier_metrics_sha256"] = sha256_file(clf_metrics_path)
    write_json(out, doc)
    log.info("wrote %s", out)
