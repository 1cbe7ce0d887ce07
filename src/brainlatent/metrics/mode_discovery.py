"""``mode_discovery``: which factor the mixture components of a ``gmmgan`` found (seed 002, §2.8).

On the real **test** slices:

* **NMI and ARI** (``sklearn.metrics``, NMI with arithmetic normalisation) of the segmentation
  ``argmax_k C(x)`` against each factor: every categorical attribute (sex, MS type ...), healthy vs
  MS (``ms_type == healthy_level``), the **slice-position tercile** (each slice's rank among its
  scan's slices, in thirds: the nuisance that unsupervised modes tend to find first) and the
  **site** (a manifest column ``site``, else the cohort table ``<study>/cohort/scans.tsv`` by
  subject; skipped with a note when neither exists).
* The same scores for the **K-means baseline**: K clusters (``n_init`` restarts, seeded) of the study
  classifier's penultimate features of the same slices. The question it answers: does the GAN add
  anything over clustering features that already know the attributes? And for ``kmeans_pixels``:
  K-means on the first 20 principal components of the pixels, a baseline that needs no classifier
  (useful when the classifier is weak).
* ``discovered``: the factor with the highest NMI (clinical or nuisance); ``discovered_attribute``:
  the classifier head with the highest NMI, used below.

On generated images (``num_per_component`` from each component, ``z = μ_k + A_k e``):

* **Component recovery**: share of component k's images with ``argmax C = k``, and the expected
  calibration error (ECE, ``calibration_bins`` equal-width bins of the max probability) of C's
  component prediction.
* **Calibration against the oracle**: components are mapped to the discovered attribute's classes by
  the majority real label of their test segment; C's class probability is the sum of its
  components' responsibilities; ECE against the classifier's argmax label, overall and per
  component (images of that component).
* **Interpolation monotonicity**: for every component pair mapped to different classes,
  ``interpolation_paths`` paths ``μ_j + A_j e → μ_k + A_k e`` (``e`` shared, ``interpolation_steps``
  points); Spearman ρ between t and the classifier's probability of component k's class; mean ρ,
  mean |ρ| and the share with ρ ≥ 0.9.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlatent.config import derive_seed
from brainlatent.errors import BrainlatentError
from brainlatent.metrics.registry import MetricContext, MetricResult, register_metric
from brainlatent.models import gmm_ops

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Pieces with their own tests


def cluster_scores(labels, truth) -> dict:
    """NMI and ARI of a clustering against one factor (rows whose factor is missing are dropped).

    Args:
        labels: ``N`` cluster ids. truth: ``N`` factor values (any hashable; NaN/None = missing).

    Example:
        >>> cluster_scores([0, 0, 1, 1], ["F", "F", "M", "M"])["nmi"]
        1.0
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t = pd.Series(list(truth), dtype=object)
    keep = t.notna().to_numpy()
    lab, t = np.asarray(labels)[keep], t[keep].astype(str).to_numpy()
    if len(t) == 0:
        return {"nmi": float("nan"), "ari": float("nan"), "n": 0, "levels": 0}
    return {"nmi": float(normalized_mutual_info_score(t, lab)), "ari": float(adjusted_rand_score(t, lab)),
            "n": len(t), "levels": len(set(t))}


def slice_tercile(manifest: pd.DataFrame) -> pd.Series:
    """0/1/2: a slice's rank among its scan's slices (by ``slice``), in thirds (inferior → superior)."""
    rank = manifest.groupby("scan")["slice"].rank(method="first")
    size = manifest.groupby("scan")["slice"].transform("count")
    return np.minimum(2, ((rank - 1) * 3 // size).astype(int))


def site_labels(manifest: pd.DataFrame, slices_dir: Path | None) -> tuple[pd.Series | None, str | None]:
    """The site of each slice: a manifest column, else ``<study>/cohort/scans.tsv`` by subject; else a note."""
    if "site" in manifest.columns:
        return manifest["site"].astype(str), None
    if slices_dir is not None:
        table = Path(slices_dir).parents[1] / "cohort" / "scans.tsv"
        if table.exists():
            cohort = pd.read_csv(table, sep="\t", dtype=str)
            if {"subject", "site"} <= set(cohort.columns):
                sites = cohort.drop_duplicates("subject").set_index("subject")["site"]
                return manifest["subject"].astype(str).map(sites), None
    return None, "site: not in the manifest and no cohort table with a site column; skipped"


def factors(manifest: pd.DataFrame, attributes: list[dict], healthy_level: str, slices_dir: Path | None) -> tuple[dict, list[str]]:
    """Every factor the segmentation is scored against: ``{name: N values}``, and notes."""
    out, notes = {}, []
    for attr in attributes:
        if attr.get("kind") == "categorical" and attr["name"] in manifest.columns:
            out[attr["name"]] = manifest[attr["name"]].where(manifest[attr["name"]].notna(), None)
    if "ms_type" in manifest.columns:
        ms = manifest["ms_type"]
        if (ms.astype(str) == healthy_level).any():
            out["healthy_vs_ms"] = ms.where(ms.isna(), (ms.astype(str) == healthy_level).map({True: "healthy", False: "ms"}))
        else:
            notes.append(f"healthy_vs_ms: no test slice has ms_type '{healthy_level}'; skipped")
    if "slice" in manifest.columns and "scan" in manifest.columns:
        out["slice_tercile"] = slice_tercile(manifest)
    site, note = site_labels(manifest, slices_dir)
    if site is not None:
        out["site"] = site
    if note:
        notes.append(note)
    return out, notes


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE: Σ_b (n_b / N) |accuracy_b − mean confidence_b| over equal-width confidence bins.

    Example:
        >>> expected_calibration_error(np.array([1.0, 1.0]), np.array([True, False]))
        0.5
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if len(confidence) == 0:
        return float("nan")
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total)


def majority_map(labels: np.ndarray, truth: pd.Series, k: int) -> dict[int, str]:
    """Component → the most frequent factor value among the real slices it segments (components with none are left out)."""
    df = pd.DataFrame({"c": np.asarray(labels), "t": truth.to_numpy()}).dropna()
    return {int(c): str(g["t"].astype(str).mode().iloc[0]) for c, g in df.groupby("c") if int(c) < k}


def best_factor(scores: dict, names: list[str]) -> str | None:
    """The factor among ``names`` with the highest NMI of C's segmentation; None when none is above 0."""
    ranked = [(scores[n]["gmm"]["nmi"], n) for n in names if np.isfinite(scores[n]["gmm"]["nmi"]) and scores[n]["gmm"]["nmi"] > 1e-12]
    return max(ranked)[1] if ranked else None


def spearman_along(probs: np.ndarray) -> np.ndarray:
    """Spearman ρ between the step index and each path's values (``paths × steps``); NaN for a constant path."""
    from scipy.stats import spearmanr

    t = np.arange(probs.shape[1])
    out = []
    for row in probs:
        out.append(np.nan if np.ptp(row) == 0 else spearmanr(t, row).statistic)
    return np.asarray(out, dtype=float)


def kmeans_pixels(images: np.ndarray, k: int, restarts: int, seed: int, components: int = 20) -> np.ndarray:
    """A classifier-free baseline: K-means on the first ``components`` principal components of the pixels (``N × 1 × R × R``)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    x = PCA(n_components=min(components, len(x) - 1, x.shape[1]), random_state=seed).fit_transform(x)
    return KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(x)


# --------------------------------------------------------------------------------------------
# The metric


def _test_split(slices_dir: Path) -> tuple[np.ndarray, pd.DataFrame]:
    from brainlatent.slices import load_slices

    images, manifest = load_slices(slices_dir)
    test = manifest[manifest["split"].astype(str) == "test"]
    if test.empty:
        raise BrainlatentError(f"{slices_dir}/manifest.parquet: no slices in split 'test'")
    rows = (test["index"] if "index" in test.columns else pd.Series(test.index)).to_numpy()
    order = np.argsort(rows)
    return np.asarray(images[rows[order]], dtype=np.float32), test.iloc[order].reset_index(drop=True)


def _class_probs(resp: np.ndarray, mapping: dict[int, str], classes: list[str]) -> np.ndarray:
    out = np.zeros((len(resp), len(classes)))
    for k, c in mapping.items():
        out[:, classes.index(c)] += resp[:, k]
    return out


@register_metric(
    "mode_discovery",
    stage_keys=("seed", "study", "evaluate.batch_size", "evaluate.mode_discovery", "attributes"),
    description="NMI/ARI of argmax C(x) vs attributes, slice tercile and site, beside K-means; C's calibration; interpolation monotonicity",
)
def mode_discovery(ctx: MetricContext) -> MetricResult:
    """Seed 002's mode discovery on the real test slices (see the module docstring)."""
    from sklearn.cluster import KMeans

    net, p = ctx.generator, ctx.cfg["evaluate"]["mode_discovery"]
    if not hasattr(net, "responsibilities"):
        raise BrainlatentError(f"mode_discovery: network '{net.arch}' has no responsibility classifier (a gmmgan family is needed)")
    if ctx.slices is None:
        raise BrainlatentError("mode_discovery needs the slice dataset (--slices) for the real test slices")
    bs, k = int(ctx.cfg["evaluate"]["batch_size"]), int(net.components)
    images, manifest = _test_split(Path(ctx.slices))
    seg, _ = gmm_ops.segment(net, images, bs, ctx.device)
    seg = seg.numpy()
    feats = torch.as_tensor(ctx.features.embed(torch.from_numpy(images).to(ctx.device), bs)).double().cpu().numpy()
    km = KMeans(n_clusters=k, n_init=int(p["kmeans_restarts"]), random_state=derive_seed(ctx.seed, "kmeans") % (2**31)).fit_predict(feats)
    km_pix = kmeans_pixels(images, k, int(p["kmeans_restarts"]), derive_seed(ctx.seed, "kmeans_pixels") % (2**31))
    facs, notes = factors(manifest, ctx.cfg["attributes"], p["healthy_level"], Path(ctx.slices))
    methods = ("gmm", "kmeans", "kmeans_pixels")
    scores = {name: {"gmm": cluster_scores(seg, v), "kmeans": cluster_scores(km, v), "kmeans_pixels": cluster_scores(km_pix, v)}
              for name, v in facs.items()}
    results: dict = {
        "nmi": {n: {m: s[m]["nmi"] for m in methods} for n, s in scores.items()},
        "ari": {n: {m: s[m]["ari"] for m in methods} for n, s in scores.items()},
        "segment_share": {str(c): float((seg == c).mean()) for c in range(k)},
        "pi": {str(c): float(net.prior.pi[c]) for c in range(k)},
    }
    if len(set(seg.tolist())) == 1:
        notes.append(f"C assigns every test slice to component {int(seg[0])}: NMI/ARI are 0 by construction")
    discovered = best_factor(scores, list(scores))
    attr = best_factor(scores, [s["name"] for s in ctx.specs if s.get("kind") == "categorical" and s["name"] in facs])
    if discovered is None:
        notes.append("no factor has NMI > 0 with C's segmentation: nothing discovered")

    # generated images, per component
    n_per = int(p["num_per_component"])
    e, e2 = gmm_ops.shared_normals(net, n_per, derive_seed(ctx.seed, "components"))
    with torch.no_grad():
        z = gmm_ops.component_latents(net, e, e2)  # K × n × D
        fakes = torch.cat([torch.cat([net.synthesis(zz) for zz in z[c].split(bs)]) for c in range(k)]).float()
        fake_resp = torch.cat([net.responsibilities(x) for x in fakes.split(bs)]).cpu().numpy()
    comp = np.repeat(np.arange(k), n_per)
    own = fake_resp.argmax(1) == comp
    results["component_recovery"] = {str(c): float(own[comp == c].mean()) for c in range(k)}
    results["component_ece"] = expected_calibration_error(fake_resp.max(1), own, int(p["calibration_bins"]))

    if attr is not None:
        mapping = majority_map(seg, facs[attr], k)
        classes = [str(c) for c in next(s for s in ctx.specs if s["name"] == attr)["levels"]]
        oracle = ctx.features.predict_proba(fakes, bs)[attr].numpy()
        y = np.asarray(classes)[oracle.argmax(1)]
        pc = _class_probs(fake_resp, mapping, classes)
        correct = np.asarray(classes)[pc.argmax(1)] == y
        results["calibration"] = {
            "ece": expected_calibration_error(pc.max(1), correct, int(p["calibration_bins"])),
            "accuracy": float(correct.mean()),
            "per_component_ece": {str(c): expected_calibration_error(pc.max(1)[comp == c], correct[comp == c], int(p["calibration_bins"])) for c in range(k)},
            "per_component_oracle_share": {str(c): float((y[comp == c] == mapping.get(c, "")).mean()) for c in range(k)},
        }
        pairs = [(a, b) for a in range(k) for b in range(k) if a < b and a in mapping and b in mapping and mapping[a] != mapping[b]]
        if pairs:
            ne, ne2 = gmm_ops.shared_normals(net, int(p["interpolation_paths"]), derive_seed(ctx.seed, "interpolation"))
            rhos = []
            for a, b in pairs:
                _, imgs = gmm_ops.interpolate_pair(net, a, b, ne.to(ctx.device), int(p["interpolation_steps"]), None if ne2 is None else ne2.to(ctx.device))
                pr = ctx.features.predict_proba(imgs.flatten(0, 1).float(), bs)[attr].numpy()[:, classes.index(mapping[b])]
                rhos.append(spearman_along(pr.reshape(len(ne), -1)))
            rho = np.concatenate(rhos)
            ok = rho[np.isfinite(rho)]
            results["interpolation"] = {
                "spearman_mean": float(ok.mean()) if len(ok) else float("nan"),
                "spearman_abs_mean": float(np.abs(ok).mean()) if len(ok) else float("nan"),
                "share_rho_ge_0.9": float((ok >= 0.9).mean()) if len(ok) else float("nan"),
                "paths": len(ok), "constant_paths": int(len(rho) - len(ok)),
            }
        else:
            notes.append(f"interpolation: no two components map to different {attr} classes; monotonicity not measured")
    else:
        notes.append("calibration and interpolation: no categorical classifier head has NMI > 0 with C's segmentation; skipped")
    if ctx.out_dir is not None:
        _pictures(net, ctx.out_dir, ctx.seed)
    settings = {
        "split": "test", "n_test": len(images), "components": k, "factors": list(facs),
        "nmi": "sklearn normalized_mutual_info_score (arithmetic)", "ari": "sklearn adjusted_rand_score",
        "kmeans": f"sklearn KMeans(n_clusters={k}, n_init={p['kmeans_restarts']}) on the classifier's penultimate features",
        "kmeans_pixels": "the same K-means on the first 20 principal components of the pixels (no classifier)",
        "slice_tercile": "rank of the slice among its scan's slices, in thirds", "healthy_level": p["healthy_level"],
        **{key: p[key] for key in ("num_per_component", "calibration_bins", "interpolation_paths", "interpolation_steps")},
    }
    extra = {"discovered": discovered, "discovered_attribute": attr,
             "scores": scores, "mapping": majority_map(seg, facs[attr], k) if attr else None}
    return MetricResult(results, settings, notes, extra)


def _pictures(net, out_dir: Path, seed: int) -> None:
    """Component grid (rows = components, shared noise) and, for K ≥ 3, a three-component blend."""
    from brainlatent.images import image_grid, save_png

    out_dir = Path(out_dir)
    grid = gmm_ops.component_grid(net, 8, derive_seed(seed, "grid"))
    save_png(image_grid(grid.flatten(0, 1).float().cpu(), ncols=8), out_dir / "components.png")
    e, e2 = gmm_ops.shared_normals(net, 1, derive_seed(seed, "blend"))
    if net.components >= 3:
        _, imgs = gmm_ops.interpolate_three(net, (0, 1, 2), e, 5, e2)
        save_png(image_grid(imgs.float().cpu(), ncols=5), out_dir / "blend3.png")
    _, imgs = gmm_ops.interpolate_pair(net, 0, 1, e, 9, e2)
    save_png(image_grid(imgs.flatten(0, 1).float().cpu(), ncols=9), out_dir / "interp01.png")
