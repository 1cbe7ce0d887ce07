"""``brainlatent report``: one self-contained HTML page per study (figures inline as base64 PNG).

The page is written for a clinical reader: the question, the dataset and how its attributes are
tangled, the attribute classifier (the reference study's Table 1 layout, published numbers and
majority baselines beside ours), every generator's training, perceptual path length, the
interpolation path profiles, linear separability (Table 2 layout) and image quality, then the
provenance (commit, package versions, config hash, per-rule runtime and memory). PPL and
separability values are printed as mean ± standard error (bootstrap for PPL, over repeats for
separability); a separability result whose classifier labels do not beat the majority baseline is
marked ‡ "not interpretable".

A part of the study that did not run (no GAN trained, a missing metric) is shown as "not run";
a file that cannot be read is shown as an error box in its section. The report never fails for
either.

**Number contract.** Every number printed in the page is a ``<span class="num">`` with

* ``data-source``: the file it comes from, relative to the study folder (``classifier/metrics.json``,
  ``eval/stylegan-z32/ppl.json``, ``gan/stylegan-z32/log.csv``, ``slices/64/manifest.parquet``,
  ``benchmarks/train_gan/*.tsv``), or ``published:kriz-table1`` / ``published:kriz-table2`` for the
  reference study's numbers;
* ``data-key``: where in that file: a dot path for JSON (``best.val.heads.sex.accuracy``,
  ``results.w/sex.entropy_bits_mean``), ``rows[-1].<column>`` for a CSV row, or a statistic for
  numbers derived from a table (``mean:age:train``, ``spearman:age:edss``, ``sum:s``; see the
  functions that build each section);
* ``data-format``: the Python format spec applied to the source value (``.3f``, ``d``...).

so ``format(source value, data-format)`` is exactly the printed text. Tables have ``id``\\ s
(``table-classifier``, ``table-separability``...), label cells have ``class="label"``.

Example:
    brainlatent report --config config/config.yaml --study-dir results/demo --out results/demo/report/index.html
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from brainlatent import __version__, io
from brainlatent.config import config_hash, load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.models.families import families, model_id, parse_model_id
from brainlatent.report import counterfactual_section, family_sections, figures, mixture_prior
from brainlatent.report.templating import page, render
from brainlatent.report.primitives import (  # noqa: F401 - the primitives every section uses
    Cell,
    H,
    L,
    _attr,
    _finite,
    auto_format,
    esc,
    figure,
    format_value,
    img,
    lookup,
    missing,
    not_run,
    num,
    pm,
    section,
    table,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The reference study's published numbers (Kriz; see shared/reference/study.md)

#: Table 1, validation scores of the VGG-16 attribute classifier (MAE in category units)
PUBLISHED_TABLE1: dict[str, dict[str, float]] = {
    "best": {"age": 0.395, "edss": 0.672, "sex": 0.877, "ms_type": 0.836},
    "last": {"age": 0.434, "edss": 0.716, "sex": 0.858, "ms_type": 0.800},
}
#: Table 2, linear separability of sex: (latent, arch, space) -> (H mean, H std, acc mean, acc std)
PUBLISHED_TABLE2: dict[tuple[int, str, str], tuple[float, float, float, float]] = {
    (64, "stylegan", "w"): (0.324, 0.024, 0.962, 0.006),
    (64, "stylegan", "z"): (0.375, 0.041, 0.948, 0.013),
    (32, "stylegan", "w"): (0.384, 0.034, 0.949, 0.008),
    (32, "stylegan", "z"): (0.465, 0.059, 0.915, 0.019),
    (32, "gan", "z"): (0.387, 0.035, 0.947, 0.008),
}
#: Table 1's columns in its order: attribute name -> column title
TABLE1_HEADS = {"age": "age", "edss": "disease score (EDSS)", "sex": "sex", "ms_type": "MS type"}
SPLITS = ("train", "val", "test")
OPEN_MS_CITATION = (
    "Lesjak Ž., Pernuš F., Likar B., Špiclin Ž., \u201cValidation of white-matter lesion change detection "
    "methods on a novel publicly available MRI image database\u201d, Neuroinformatics, 2016."
)
#: distributions whose versions the provenance table lists
VERSION_PACKAGES = ("brainlatent", "torch", "numpy", "scipy", "pandas", "scikit-learn", "snakemake",
                    "snakemake-executor-plugin-slurm", "nibabel", "SimpleITK", "monai", "matplotlib", "pillow")
#: pipeline order of the rules in the runtime table (others follow, by name)
RULE_ORDER = ("synthesize_cohort", "validate_inputs", "preprocess", "slice_dataset", "train_classifier", "train_gan",
              "evaluate", "aggregate", "report")
DEFAULT_QC_LIMIT = 12
#: below this many test slices the numbers are a smoke test, and the page says so
SMALL_TEST_SET = 200


def model_name(arch: str, z: int) -> str:
    return model_id(arch, z)


def spaces_of(arch: str) -> tuple[str, ...]:
    """The latent spaces of a family (Z only for a family this version does not know)."""
    return families()[arch].spaces if arch in families() else ("z",)


def arch_label(arch: str) -> str:
    """The family's label from the registry (the id itself for a family this version does not know)."""
    return families()[arch].label if arch in families() else arch


# --------------------------------------------------------------------------------------------
# The study's files


class StudyFiles:
    """Read access to one study folder; every reader returns ``None`` for a missing file.

    Args:
        root: the study folder (``results/<study>``).
        cfg: the study config (completed).
    """

    def __init__(self, root: str | Path, cfg: dict, qc_limit: int = 12) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self.qc_limit = qc_limit
        self._json: dict[str, Any] = {}
        self._csv: dict[str, Any] = {}

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).is_file()

    def json(self, rel: str) -> Any:
        if rel not in self._json:
            self._json[rel] = io.read_json(self.path(rel)) if self.exists(rel) else None
        return self._json[rel]

    def csv(self, rel: str):
        import pandas as pd

        if rel not in self._csv:
            self._csv[rel] = pd.read_csv(self.path(rel)) if self.exists(rel) else None
        return self._csv[rel]

    def bytes(self, rel: str) -> bytes | None:
        return self.path(rel).read_bytes() if self.exists(rel) else None

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def models(self) -> list[tuple[str, int]]:
        """(arch, z_dim) of the config's models, plus any other model found on disk; by z, then arch."""
        gan = self.cfg.get("gan") or {}
        found = {(a, int(z)) for a in gan.get("archs", []) for z in gan.get("latent_sizes", [])}
        for folder in ("gan", "eval"):
            base = self.root / folder
            if base.is_dir():
                for d in base.iterdir():
                    try:
                        arch, z = parse_model_id(d.name)
                    except BrainlatentError:
                        continue
                    if d.is_dir():
                        found.add((arch, z))
        order = {a: i for i, a in enumerate(families())}
        return sorted(found, key=lambda m: (m[1], order.get(m[0], 99), m[0]))

    def eval_doc(self, arch: str, z: int, metric: str) -> tuple[dict | None, str]:
        rel = f"eval/{model_name(arch, z)}/{metric}.json"
        return self.json(rel), rel

    def manifest_rel(self) -> str | None:
        res = (self.cfg.get("slices") or {}).get("resolution")
        if res is not None and self.exists(f"slices/{res}/manifest.parquet"):
            return f"slices/{res}/manifest.parquet"
        found = sorted((self.root / "slices").glob("*/manifest.parquet")) if (self.root / "slices").is_dir() else []
        return self.rel(found[0]) if found else None

    def attributes(self) -> list[dict]:
        return list(self.cfg.get("attributes") or [])


# --------------------------------------------------------------------------------------------
# Dataset statistics (the keys the number contract uses for manifest-derived values)


def scans_table(manifest):
    """One row per scan (attributes are per scan)."""
    return manifest.drop_duplicates("scan") if "scan" in manifest.columns else manifest


def ordinal(attr: dict, values) -> np.ndarray:
    """Numeric values as float; categorical levels as their index in the config (missing -> NaN)."""
    import pandas as pd

    if attr["kind"] == "numeric":
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    lookup_ = {level: float(i) for i, level in enumerate(attr["levels"])}
    return np.array([lookup_.get(str(v), np.nan) if not pd.isna(v) else np.nan for v in values], dtype=float)


def attribute_correlations(scans, attributes: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Spearman rank correlation between attributes over scans (pairwise complete).

    Categorical attributes are ordinal-encoded in their config level order. Returns the names, the
    ``A x A`` correlation (NaN with fewer than 3 complete pairs or a constant column) and the
    ``A x A`` count of complete pairs.
    """
    import pandas as pd

    present = [a for a in attributes if a["name"] in scans.columns]
    frame = pd.DataFrame({a["name"]: ordinal(a, scans[a["name"]].tolist()) for a in present})
    corr = frame.corr(method="spearman", min_periods=3).to_numpy(dtype=float)
    ok = frame.notna().to_numpy(dtype=float)
    return [a["name"] for a in present], corr, ok.T @ ok


# --------------------------------------------------------------------------------------------
# Sections


def intro_context(st: StudyFiles, generated: str) -> dict:
    """What ``sections/intro.html.j2`` shows: the study, its data source and families, the questions."""
    cfg = st.cfg
    inputs = cfg.get("inputs") or {}
    gan = cfg.get("gan") or {}
    sep = ((cfg.get("evaluate") or {}).get("separability") or {})
    known = families()
    return {
        "study": cfg.get("study", st.root.name), "source": inputs.get("source", "synthetic"),
        "table": inputs.get("table"), "bids_dir": inputs.get("bids_dir"),
        "families": [(known[a].label, known[a].description) if a in known else (a, "") for a in gan.get("archs", [])],
        "latent": ", ".join(str(z) for z in gan.get("latent_sizes", [])) or "—",
        "sep_attrs": ", ".join([*sep.get("attributes", []), *sep.get("binarise", {})]) or "every two-level attribute",
        "config_hash": config_hash(cfg), "generated": generated, "folder": str(st.root),
    }


def section_intro(st: StudyFiles, generated: str) -> str:
    return str(render("sections/intro.html.j2", **intro_context(st, generated)))


def _small_sample_warning(st: StudyFiles) -> str:
    metrics = st.json("classifier/metrics.json")
    n_test = lookup(metrics, "n_slices.test") if metrics else None
    if _finite(n_test) and n_test < SMALL_TEST_SET:
        return (f'<p class="box warn">This study has only {num(n_test, "classifier/metrics.json", "n_slices.test", "d")} '
                "test slices: its numbers check that the workflow runs and are not evidence either way.</p>")
    return ""


def _compare_phrase(a: float | None, sa: float | None, b: float | None, sb: float | None, lower_better: bool, what: str) -> str:
    """'W more separable than Z' style verdict; 'no clear difference' within one combined std."""
    if not (_finite(a) and _finite(b)):
        return "cannot be compared"
    spread = math.hypot(sa if _finite(sa) else 0.0, sb if _finite(sb) else 0.0)
    if abs(a - b) <= spread:
        return "no clear difference (within one standard deviation)"
    better = (a < b) if lower_better else (a > b)
    return f"{what[0] if better else what[1]}"


def _separability_verdict(doc: dict, z_key: str) -> str:
    """W versus Z from the paired per-repeat difference of H(Y|X): a clear verdict only when its 95 %
    interval (Student t over the repeats) excludes zero."""
    from scipy.stats import t as student_t

    diff, se = lookup(doc, f"{z_key}.z_minus_w_entropy_bits_mean"), lookup(doc, f"{z_key}.z_minus_w_entropy_bits_se")
    repeats = len(lookup(doc, f"{z_key}.entropy_bits_per_repeat") or [])
    if not (_finite(diff) and _finite(se)) or repeats < 2:
        return "cannot be compared (no paired standard error; it needs two or more repeats)"
    if abs(diff) <= float(student_t.ppf(0.975, repeats - 1)) * se:
        return "no clear difference (the 95 % interval of the paired difference includes zero)"
    return "W separates it better than Z" if diff > 0 else "Z separates it better than W"


def section_glance(st: StudyFiles) -> str:
    """Plain-language findings, each number taken from the tables' sources."""
    items = []
    man_rel = st.manifest_rel()
    if man_rel:
        import pandas as pd

        scans = scans_table(pd.read_parquet(st.path(man_rel)))
        names, corr, counts = attribute_correlations(scans, st.attributes())
        best = None
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if np.isfinite(corr[i, j]) and (best is None or abs(corr[i, j]) > abs(corr[best[0], best[1]])):
                    best = (i, j)
        if best:
            i, j = best
            items.append(
                f"<strong>Confounding in the data:</strong> the most strongly related attributes are "
                f"<em>{esc(names[i])}</em> and <em>{esc(names[j])}</em> (Spearman ρ = "
                f"{num(corr[i, j], man_rel, f'spearman:{names[i]}:{names[j]}', '.2f')} over "
                f"{num(counts[i, j], man_rel, f'pairs:{names[i]}:{names[j]}', 'd')} scans)."
            )
    metrics = st.json("classifier/metrics.json")
    sep_attrs = ((st.cfg.get("evaluate") or {}).get("separability") or {}).get("attributes", [])
    if metrics:
        for name in sep_attrs:
            base = f"best.test.heads.{name}"
            acc = lookup(metrics, f"{base}.accuracy")
            if acc is not None:
                items.append(
                    f"<strong>Classifier, {esc(name)}:</strong> test accuracy "
                    f"{num(acc, 'classifier/metrics.json', f'{base}.accuracy', '.3f')} versus "
                    f"{num(lookup(metrics, f'{base}.majority_baseline_accuracy'), 'classifier/metrics.json', f'{base}.majority_baseline_accuracy', '.3f')} "
                    "for always guessing the most common class. The separability labels below come from this classifier."
                )
    for arch, z in st.models():
        if "w" not in spaces_of(arch):
            continue
        doc, rel = st.eval_doc(arch, z, "separability")
        for name in sep_attrs:
            w_key, z_key = f"results.w/{name}", f"results.z/{name}"
            if doc and lookup(doc, w_key) and lookup(doc, z_key):
                verdict = _separability_verdict(doc, z_key)
                if one_class_repeats(lookup(doc, w_key)) or one_class_repeats(lookup(doc, z_key)):
                    verdict = "not measurable: the classifier gave every kept generated image the same label in some repeats"
                if not_interpretable(lookup(doc, w_key)):
                    verdict = ("not interpretable: on the test slices the classifier's labels for this attribute are no better "
                               "than always guessing the most common class")
                items.append(
                    f"<strong>Separability of {esc(name)}, latent size {z}:</strong> H(Y|X) in W "
                    f"{pm(doc, rel, f'{w_key}.entropy_bits_mean', f'{w_key}.entropy_bits_se', '.3f')} bits, in Z "
                    f"{pm(doc, rel, f'{z_key}.entropy_bits_mean', f'{z_key}.entropy_bits_se', '.3f')} bits "
                    f"(mean ± standard error): {esc(verdict)}."
                )
        doc, rel = st.eval_doc(arch, z, "path_profile")
        if doc and lookup(doc, "results.w") and lookup(doc, "results.z"):
            verdict = _compare_phrase(lookup(doc, "results.w.r2_mean"), lookup(doc, "results.w.r2_std"),
                                      lookup(doc, "results.z.r2_mean"), lookup(doc, "results.z.r2_std"), False,
                                      ("paths in W are straighter", "paths in Z are straighter"))
            items.append(
                f"<strong>Path linearity, latent size {z}:</strong> R² in W "
                f"{pm(doc, rel, 'results.w.r2_mean', 'results.w.r2_std', '.3f')}, in Z "
                f"{pm(doc, rel, 'results.z.r2_mean', 'results.z.r2_std', '.3f')}: {esc(verdict)}."
            )
    if not items:
        return not_run("no results yet", "the sections below say which stages are missing")
    return _small_sample_warning(st) + '<ul class="findings">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def section_dataset(st: StudyFiles, qc_limit: int) -> str:
    import pandas as pd

    from brainlatent.attributes import class_names, encode

    man_rel = st.manifest_rel()
    if man_rel is None:
        return not_run("slice dataset", "no slices/<resolution>/manifest.parquet")
    manifest = pd.read_parquet(st.path(man_rel))
    parts = [f'<p>Source: <code>{esc(man_rel)}</code>. Each scan contributes the same number of axial slices; '
             "subjects are split into train / validation / test as a whole (no subject in two splits). "
             "Attribute statistics are per scan.</p>"]
    splits = [s for s in SPLITS if "split" in manifest.columns and (manifest["split"] == s).any()]
    groups = [(s, manifest[manifest["split"] == s]) for s in splits] + [("all", manifest)]

    # counts
    rows = []
    for name, part in groups:
        rows.append([L(name),
                     num(part["subject"].nunique() if "subject" in part else None, man_rel, f"subjects::{name}", "d"),
                     num(part["scan"].nunique() if "scan" in part else None, man_rel, f"scans::{name}", "d"),
                     num(len(part), man_rel, f"slices::{name}", "d")])
    parts.append(table("table-counts", [[L("split"), L("subjects"), L("scans"), L("slices")]], rows, "Subjects, scans and slices per split"))

    # attribute statistics
    attrs = [a for a in st.attributes() if a["name"] in manifest.columns]
    head = [[L("attribute"), L("statistic"), *[L(n) for n, _ in groups]]]
    rows, classes = [], []
    for attr in attrs:
        name = attr["name"]
        first = True
        stats: list[tuple[str, Callable]] = []
        if attr["kind"] == "numeric":
            stats = [("mean ± sd", lambda sc, split, n=name: (
                f"{num(pd.to_numeric(sc[n], errors='coerce').mean(), man_rel, f'mean:{n}:{split}', '.1f')} "
                f"<span class='pm'>±</span> {num(pd.to_numeric(sc[n], errors='coerce').std(ddof=1), man_rel, f'sd:{n}:{split}', '.1f')}")),
                     ("min – max", lambda sc, split, n=name: (
                f"{num(pd.to_numeric(sc[n], errors='coerce').min(), man_rel, f'min:{n}:{split}', '.1f')} – "
                f"{num(pd.to_numeric(sc[n], errors='coerce').max(), man_rel, f'max:{n}:{split}', '.1f')}"))]
        else:
            for level in attr["levels"]:
                stats.append((f"{level} (scans)", lambda sc, split, n=name, lv=level: num(
                    int((sc[n].astype("string") == lv).sum()), man_rel, f"count:{n}={lv}:{split}", "d")))
        stats.append(("missing (scans)", lambda sc, split, n=name: num(int(sc[n].isna().sum()), man_rel, f"missing:{n}:{split}", "d")))
        for label, fn in stats:
            rows.append([L(name if first else ""), L(label), *[fn(scans_table(part), split) for split, part in groups]])
            classes.append("group-start" if first else "")
            first = False
    parts.append(table("table-attributes", head, rows, "Attributes per split (one value per scan)", classes))

    # distributions figure (shares per class and split, the classifier's classes)
    shares, labels = {}, {}
    for attr in attrs:
        codes_all = encode(attr, scans_table(manifest)[attr["name"]])
        names = class_names(attr) + (["missing"] if (codes_all < 0).any() else [])
        labels[attr["name"]] = names
        shares[attr["name"]] = {}
        for split, part in groups[:-1] or groups:
            codes = encode(attr, scans_table(part)[attr["name"]])
            k = len(class_names(attr))
            counts = np.bincount(np.where(codes < 0, k, codes), minlength=k + 1)[: len(names)]
            shares[attr["name"]][split] = counts / max(1, len(codes))
    if attrs:
        parts.append(figure(figures.attribute_distributions(shares, labels),
                            "Share of scans per class (numeric attributes in the classifier's bins), per split. "
                            "Similar bars across splits mean the split kept the attribute balanced.",
                            "attribute distributions per split", "fig-attributes"))

    # correlation
    names, corr, counts = attribute_correlations(scans_table(manifest), attrs)
    if len(names) >= 2:
        enc = "; ".join(f"{a['name']}: " + ", ".join(f"{lv}={i}" for i, lv in enumerate(a["levels"])) for a in attrs if a["kind"] == "categorical")
        rows = []
        for i, a in enumerate(names):
            rows.append([L(a), *[f"{num(corr[i, j], man_rel, f'spearman:{a}:{b}', '.2f')} "
                                 f"<span class='small'>(n={num(counts[i, j], man_rel, f'pairs:{a}:{b}', 'd')})</span>"
                                 for j, b in enumerate(names)]])
        parts.append("<h3>How the attributes are tangled</h3>")
        parts.append(f"<p>Spearman rank correlation between attributes over scans (pairwise complete; n = scans with "
                     f"both values). Categorical attributes are <strong>ordinal-encoded</strong> in the config's level "
                     f"order ({esc(enc) or 'none'}), so ρ for a two-level attribute is a rank-biserial-type association "
                     "and for MS type it assumes the listed order. Values far from 0 are the confounding a disentangled "
                     "latent space has to undo.</p>")
        parts.append('<div class="grid two"><div>' + table("table-correlation", [[L(""), *[L(n) for n in names]]], rows,
                                                           "Spearman ρ (n)") + "</div><div>"
                     + figure(figures.correlation_heatmap(names, corr, "Spearman ρ between attributes (per scan)"),
                              "Red: the attributes rise together; blue: one rises as the other falls.",
                              "attribute correlation heatmap", "fig-correlation", width=460) + "</div></div>")

    parts.append(_qc_montage(st, qc_limit))
    parts.append(_qc_exclusions(st, man_rel))
    return "".join(parts)


def _qc_exclusions(st: StudyFiles, man_rel: str) -> str:
    """The scans quality control left out (``excluded.tsv`` beside the manifest), one row each."""
    import pandas as pd

    rel = str(Path(man_rel).parent / "excluded.tsv")
    if not st.exists(rel):
        return f"<p>Quality control: no <code>{esc(rel)}</code> (a slice dataset built before QC exclusions existed).</p>"
    excluded = pd.read_csv(st.path(rel), sep="\t", dtype=str, keep_default_na=False)
    if excluded.empty:
        return f"<p id='qc-exclusions'>Quality control: every scan passed its checks; none was excluded (<code>{esc(rel)}</code>).</p>"
    rows = [[L(r["scan"]), L(r["subject"]), L(r["reason"])] for r in excluded.to_dict("records")]
    return (f"<h3>Scans excluded by quality control</h3><p class='warning'>{len(excluded)} scan(s) failed a plausibility check "
            f"and were left out of the slices (<code>qc.on_fail: exclude</code>; <code>{esc(rel)}</code>).</p>"
            + table("table-qc-excluded", [[L("scan"), L("subject"), L("reason")]], rows, "Scans excluded by quality control"))


def _qc_montage(st: StudyFiles, qc_limit: int) -> str:
    qc_dir = st.root / "qc"
    pngs = sorted(qc_dir.glob("*.png")) if qc_dir.is_dir() else []
    if not pngs:
        return "<h3>Preprocessing quality control</h3>" + not_run("QC pictures", "no qc/<scan>.png")
    shown = pngs[:qc_limit]
    tiles, rows = [], []
    for p in shown:
        scan = p.stem
        summ_rel = f"preprocessed/summaries/{scan}.json"
        summ = st.json(summ_rel)
        vol = num(lookup(summ, "brain_volume_ml"), summ_rel, "brain_volume_ml", ".0f") if summ else ""
        tiles.append(f'<figure>{img(figures.thumbnail(p.read_bytes()), f"QC {scan}")}'
                     f"<figcaption>{esc(scan)}{' · brain ' + vol + ' ml' if summ else ''}</figcaption></figure>")
        if summ:
            rows.append([L(scan), L(lookup(summ, "input.orientation") or "?"),
                         L("×".join(str(v) for v in (lookup(summ, "input.spacing_mm") or [])) or "?"),
                         num(lookup(summ, "brain_volume_ml"), summ_rel, "brain_volume_ml", ".1f"),
                         num(lookup(summ, "head_volume_ml"), summ_rel, "head_volume_ml", ".1f"),
                         num(lookup(summ, "mask_fraction_in_fov"), summ_rel, "mask_fraction_in_fov", ".3f"),
                         L(lookup(summ, "mask_method") or lookup(summ, "mask_source") or "?"),
                         L("—" if lookup(summ, "qc.passed") is None else "ok" if lookup(summ, "qc.passed")
                           else "failed: " + "; ".join(lookup(summ, "qc.failures") or []))])
    out = ["<h3>Preprocessing quality control</h3>",
           f"<p>The first {len(shown)} of {len(pngs)} scans after reorientation, resampling, bias correction and "
           "normalisation, with the brain mask's outline (red). Check that the outline follows the brain and that "
           "no scan is flipped or cut off.</p>",
           '<div class="grid three" id="qc-montage">' + "".join(tiles) + "</div>"]
    if rows:
        out.append(table("table-qc", [[L("scan"), L("input orientation"), L("input spacing (mm)"), L("brain volume (ml)"),
                                        L("head volume (ml)"), L("mask inside box"), L("mask"), L("QC checks")]], rows,
                         "Preprocessing summaries of the scans shown"))
    return "".join(out)


def _table1_heads(metrics: dict) -> list[str]:
    heads = list(lookup(metrics, "best.val.heads") or lookup(metrics, "best.test.heads") or {})
    known = [h for h in TABLE1_HEADS if h in heads]
    return known + [h for h in heads if h not in known]


def _ci_cell(metrics: dict, src: str, k: str) -> Cell | str:
    """``[low, high]`` of a head's balanced-accuracy interval (a number cell), marked when above chance; — if absent."""
    key = f"{k}.balanced_accuracy_ci"
    if lookup(metrics, key) is None:
        return missing()
    text = f"[{num(lookup(metrics, key + '.low'), src, key + '.low', '.3f')}, {num(lookup(metrics, key + '.high'), src, key + '.high', '.3f')}]"
    above = lookup(metrics, f"{k}.above_baseline")
    if above is not None:
        text += " above chance" if above else " <span class='small'>not above chance</span>"
    return text


def section_classifier(st: StudyFiles) -> str:
    src = "classifier/metrics.json"
    metrics = st.json(src)
    if metrics is None:
        return not_run("attribute classifier", "no classifier/metrics.json")
    heads = _table1_heads(metrics)
    numeric = {h: lookup(metrics, f"best.val.heads.{h}.mae_bins") is not None or lookup(metrics, f"best.test.heads.{h}.mae_bins") is not None
               or any(a["name"] == h and a["kind"] == "numeric" for a in st.attributes()) for h in heads}
    stat = {h: "mae_bins" if numeric[h] else "accuracy" for h in heads}
    base_stat = {h: "majority_baseline_mae_bins" if numeric[h] else "majority_baseline_accuracy" for h in heads}
    head_row = [L("split"), L("model"), *[H(f"{esc(TABLE1_HEADS.get(h, h))}<br><span class='small'>"
                                               f"{'MAE (bins) ↓' if numeric[h] else 'accuracy ↑'}</span>") for h in heads]]
    rows, classes = [], []
    for split, split_name in (("val", "validation"), ("test", "test")):
        if lookup(metrics, f"best.{split}.heads") is None:
            continue
        epoch = lookup(metrics, "best_epoch")
        entries = [
            (f"ours, best epoch ({epoch})", "", lambda h, s=split: num(lookup(metrics, f"best.{s}.heads.{h}.{stat[h]}"), src, f"best.{s}.heads.{h}.{stat[h]}", ".3f")),
            (f"ours, last epoch ({lookup(metrics, 'epochs_run')})", "", lambda h, s=split: num(lookup(metrics, f"last.{s}.heads.{h}.{stat[h]}"), src, f"last.{s}.heads.{h}.{stat[h]}", ".3f")),
            ("always the most common train class", "baseline", lambda h, s=split: num(lookup(metrics, f"best.{s}.heads.{h}.{base_stat[h]}"), src, f"best.{s}.heads.{h}.{base_stat[h]}", ".3f")),
        ]
        if split == "val":
            for which in ("best", "last"):
                entries.append((f"published (Kriz Table 1), {which}", "published",
                                lambda h, w=which: num(PUBLISHED_TABLE1[w][h], "published:kriz-table1", f"{w}.{h}", ".3f")
                                if h in PUBLISHED_TABLE1[w] else missing()))
        for i, (label, cls, fn) in enumerate(entries):
            rows.append([L(split_name if i == 0 else ""), L(label), *[fn(h) for h in heads]])
            classes.append(" ".join(c for c in (cls, "group-start" if i == 0 else "") if c))
    n_slices = metrics.get("n_slices", {})
    parts = [
        "<p>The classifier labels every generated image (for separability) and provides the feature space of the "
        "perceptual metrics, so its quality bounds everything downstream. Layout of the reference study's Table 1: "
        "mean absolute error (MAE) for the binned numeric attributes, in <strong>bins</strong> (one bin apart = 1; "
        "the reference study's \u201ccategory units\u201d), and accuracy for the categorical ones. The model used "
        f"downstream is the best epoch ({esc(metrics.get('selection', 'model selection'))}). Slices: "
        + ", ".join(f"{esc(k)} {num(v, src, f'n_slices.{k}', 'd')}" for k, v in n_slices.items()) + ".</p>",
        table("table-classifier", [head_row], rows, "Attribute classifier (Table 1 layout)", classes),
        "<p class='note'>Published numbers are the reference study's validation scores on 7 542 real multi-site scans; "
        "ours depend on this study's data and size. An accuracy no better than the baseline row means the head's labels "
        "add nothing to the class frequencies; a balanced accuracy above chance (next table) can still show weak "
        "information that the class prior outweighs.</p>",
    ]
    # detail table: every head, split and model
    level = lookup(metrics, "bootstrap.level")
    ci_level = f"{level:.0%}" if isinstance(level, (int, float)) else "95%"
    rows, classes = [], []
    for h in heads:
        first = True
        for split in ("val", "test"):
            for which in ("best", "last"):
                k = f"{which}.{split}.heads.{h}"
                if lookup(metrics, k) is None:
                    continue
                rows.append([L(h if first else ""), L(split), L(which), num(lookup(metrics, f"{k}.n"), src, f"{k}.n", "d"),
                             num(lookup(metrics, f"{k}.accuracy"), src, f"{k}.accuracy", ".3f"),
                             num(lookup(metrics, f"{k}.balanced_accuracy"), src, f"{k}.balanced_accuracy", ".3f"),
                             _ci_cell(metrics, src, k),
                             num(lookup(metrics, f"{k}.chance_balanced_accuracy"), src, f"{k}.chance_balanced_accuracy", ".3f"),
                             num(lookup(metrics, f"{k}.roc_auc_macro_ovr"), src, f"{k}.roc_auc_macro_ovr", ".3f"),
                             num(lookup(metrics, f"{k}.majority_baseline_accuracy"), src, f"{k}.majority_baseline_accuracy", ".3f"),
                             num(lookup(metrics, f"{k}.mae_centre_vs_true_value"), src, f"{k}.mae_centre_vs_true_value", ".2f")
                             if numeric[h] else missing()])
                classes.append("group-start" if first else "")
                first = False
    parts.append(table("table-classifier-detail",
                       [[L("attribute"), L("split"), L("model"), L("n"), L("accuracy"), L("balanced accuracy"),
                         L(f"{ci_level} CI (subjects)"), L("chance (1/K)"),
                         L("ROC-AUC (macro one-vs-rest)"), L("majority-class accuracy"), L("MAE in attribute units")]],
                       rows, "Every head: accuracy, balanced accuracy and ROC-AUC", classes))
    parts.append("<p class='note'>Accuracy, ROC-AUC and MAE score the labels the classifier gives (the posterior under the "
                 "training split's class frequencies); balanced accuracy scores the class-balanced decision (no class prior) "
                 "and is to be compared with chance, 1/K; its confidence interval comes from resampling the split's subjects "
                 "(all slices of a drawn subject together), and a head marked <strong>above chance</strong> has the interval's "
                 "lower bound above 1/K. ROC-AUC is n/a when a class is missing from the split. MAE in attribute units = "
                 "|centre of the predicted bin − recorded value| (years for age, EDSS points).</p>")
    curves = st.bytes("classifier/curves.png")
    if curves is not None:
        parts.append(figure(curves, "Training curves: loss (train, validation) and validation accuracy per head; "
                                    "the dotted line marks the selected epoch.", "classifier training curves", "fig-classifier-curves"))
    else:
        parts.append(not_run("classifier training curves", "no classifier/curves.png"))
    return "".join(parts)


def _last_fakes(sample_dir: Path) -> tuple[Path | None, str]:
    fakes = sorted(sample_dir.glob("fakes-*.png")) if sample_dir.is_dir() else []
    if not fakes:
        return None, ""
    last = fakes[-1]
    try:
        kimg = f"{float(last.stem.split('-', 1)[1]):g} kimg"
    except ValueError:
        kimg = last.stem
    return last, kimg


def section_generators(st: StudyFiles) -> str:
    models = st.models()
    if not models:
        return not_run("generators", "the config trains no GAN")
    parts = ["<p>Every generator is trained with the WGAN-GP loss (a critic D scores real against generated slices; "
             "the <em>Wasserstein estimate</em> E[D(real)] − E[D(fake)] falls as the generated slices get closer to the "
             "real ones). The images below come from the exponential-moving-average copy of the generator that every "
             "metric evaluates, always from the same latent vectors.</p>"]
    for arch, z in models:
        name = model_name(arch, z)
        rel = f"gan/{name}/log.csv"
        body = [f'<div class="card" id="model-{_attr(name)}"><h3>{esc(arch_label(arch))}, latent size {z} '
                f"<span class='small'>({esc(name)})</span></h3>"]
        logdf = st.csv(rel)
        if logdf is None:
            body.append(not_run(f"training of {name}", f"no {rel}"))
        elif len(logdf) == 0:
            body.append(not_run(f"training of {name}", f"{rel} has no rows yet"))
        else:
            cols = [("kimg", "kimg", ".3g"), ("step", "steps", "d"), ("loss_d", "critic loss", None), ("loss_g", "generator loss", None),
                    ("wasserstein", "Wasserstein estimate", None), ("gp", "gradient penalty", None),
                    ("img_per_s", "images / s", ".1f"), ("wall_s", "wall time (s)", ".0f")]
            cols = [c for c in cols if c[0] in logdf.columns]
            last = logdf.iloc[-1]
            body.append(table(f"table-gan-{name}", [[L(label) for _, label, _ in cols]],
                              [[num(last[c], rel, f"rows[-1].{c}", f) for c, _, f in cols]], "Last log row"))
            body.append(figure(figures.gan_training_curves({c: logdf[c].tolist() for c in logdf.columns}, name),
                               "Training curves from log.csv.", f"training curves {name}"))
        sample_dir = st.path(f"gan/{name}/samples")
        last, kimg = _last_fakes(sample_dir)
        reals = st.bytes(f"gan/{name}/samples/reals.png")
        pics = []
        if reals is not None:
            pics.append(figure(reals, "Real training slices.", f"real slices {name}", css="pixel"))
        if last is not None:
            pics.append(figure(last.read_bytes(), f"Generated at {esc(kimg)} (last snapshot, fixed latents).", f"samples {name}", css="pixel"))
        if pics:
            body.append('<div class="grid two">' + "".join(pics) + "</div>")
        elif logdf is not None:
            body.append(not_run(f"sample grid of {name}", f"no gan/{name}/samples/fakes-*.png"))
        strips = []
        for space in ("z", "w"):
            strip = st.bytes(f"eval/{name}/path_profile/interp_{space}.png")
            if strip is not None:
                gif = f"../eval/{name}/path_profile/interp_{space}.gif"
                link = f' (<a href="{_attr(gif)}">animation</a>)' if st.exists(f"eval/{name}/path_profile/interp_{space}.gif") else ""
                label = space.upper() if ("w" in spaces_of(arch) or space == "z") else "W = Z (no mapping network)"
                strips.append(figure(strip, f"Linear interpolation in {esc(label)}{link}.", f"interpolation {space} {name}", css="pixel"))
        if strips:
            body.append('<div class="grid two">' + "".join(strips) + "</div>")
        body.append("</div>")
        parts.append("".join(body))
    return "".join(parts)


def _ppl_cell(doc: dict, rel: str, v: str) -> str:
    """``mean ± SE`` of one PPL variant, with its per-pair sd and kept count in small print."""
    k = f"results.{v}"
    fmt = auto_format(lookup(doc, f"{k}.mean"))
    return (f"{pm(doc, rel, f'{k}.mean', f'{k}.se', fmt)} <span class='small'>(sd "
            f"{num(lookup(doc, f'{k}.std'), rel, f'{k}.std', fmt)}, n={num(lookup(doc, f'{k}.n_kept'), rel, f'{k}.n_kept', 'd')})</span>")


def _ppl_gap_cell(doc: dict, rel: str, key: str) -> Cell | str:
    """The paired Z − W difference ``difference ± SE``; ``—`` when the model has no W."""
    k = f"comparisons.{key}"
    if lookup(doc, k) is None:
        return missing()
    fmt = auto_format(lookup(doc, f"{k}.difference"))
    flag = "" if lookup(doc, f"{k}.se_below_quarter_gap") else " <span class='small'>(SE &gt; ¼ of the gap)</span>"
    return pm(doc, rel, f"{k}.difference", f"{k}.se", fmt) + flag


def section_ppl(st: StudyFiles) -> str:
    models = st.models()
    variants = ["z_full", "w_full", "z_end", "w_end"]
    gaps = ["z_full-w_full", "z_end-w_end"]
    rows, settings = [], None
    for arch, z in models:
        doc, rel = st.eval_doc(arch, z, "ppl")
        if doc is None:
            rows.append([L(z), L(arch_label(arch)), *[Cell("not run", label=True, cls="missing")] * (len(variants) + len(gaps))])
            continue
        settings = settings or doc.get("settings")
        cells = []
        for v in variants:
            if lookup(doc, f"results.{v}") is None:
                cells.append(missing("— (no W)" if v.startswith("w") else "—"))
            else:
                cells.append(_ppl_cell(doc, rel, v))
        rows.append([L(z), L(arch_label(arch)), *cells, *[_ppl_gap_cell(doc, rel, g) for g in gaps]])
    if not any(st.eval_doc(a, z, "ppl")[0] for a, z in models):
        return not_run("perceptual path length", "no eval/<model>/ppl.json")
    s = settings or {}
    dist = {"classifier": "the study's own classifier features (LPIPS-style, unit-normalised layers)",
            "lpips": "LPIPS-VGG16"}.get(s.get("distance"), esc(s.get("distance", "?")))
    return "".join([
        "<p>Perceptual path length, as defined by NVlabs StyleGAN: the perceptual change between two images "
        "a tiny step (ε) apart along a random path, divided by ε², averaged over paths after dropping the 1 % most "
        "extreme values at each end. <em>full</em>: steps anywhere along the path; <em>end</em>: at its start. "
        "Lower = images change more evenly. Z paths are spherical (slerp), W paths linear (lerp). "
        f"Distance: {dist}.</p>",
        table("table-ppl", [[L("latent"), L("model"), *[L(v) for v in variants], L("Z − W, full"), L("Z − W, end")]], rows,
              "Perceptual path length: mean ± standard error (per-pair sd, n kept); Z − W: paired difference ± standard error"),
        "<p class='note'>Standard errors and the JSON's 95 % intervals come from a bootstrap over the sampled paths "
        "(the 1 %/99 % filter re-applied to every resample). Z and W use the same random paths, so their difference "
        "is measured pairwise and its error is smaller than the two errors combined. A difference is resolved when its "
        "standard error is below a quarter of it; otherwise the cell says so and more samples are needed "
        "(docs/metrics.md). The GAN without a mapping network has only Z; because its synthesis network receives z "
        "unnormalised, its spherical path is scaled by the straight-line interpolation of the two endpoint norms, so "
        "it keeps the norm of a typical z and moves at the same angular pace as StyleGAN's Z path. PPL values depend "
        "on the feature network, so compare them within this study only.</p>",
    ])


def _profile_stats(doc: dict | None, space: str) -> dict | None:
    return lookup(doc, f"results.{space}") if doc else None


def section_path_profile(st: StudyFiles) -> str:
    models = st.models()
    docs = {(a, z): st.eval_doc(a, z, "path_profile") for a, z in models}
    if not any(d for d, _ in docs.values()):
        return not_run("interpolation path profiles", "no eval/<model>/path_profile.json")
    sizes = sorted({z for _, z in models})
    settings = next((d.get("settings") for d, _ in docs.values() if d), None) or {}
    pairs, steps = settings.get("pairs", "several"), settings.get("steps", "many")
    parts = [f"<p>The reference study's view of smoothness: for {esc(pairs)} pairs of random endpoints, {esc(steps)} images "
             "along a straight line in Z (then mapped to W) or in W; each curve is the distance of every image from the first "
             "one in the classifier's feature space (mean over pairs; shaded: 10–90 % of pairs). A straight rising curve means "
             "the generator's images change at an even pace along the path; R² measures how straight.</p>"]
    zw_panels = []
    for z in sizes:
        doc = docs.get(("stylegan", z), (None, ""))[0]
        series = [(k, _profile_stats(doc, sp)) for k, sp in (("stylegan/z", "z"), ("stylegan/w", "w"))]
        series = [(k, s) for k, s in series if s]
        if series:
            zw_panels.append((f"StyleGAN, latent size {z}", series))
    if zw_panels:
        parts.append(figure(figures.path_profiles(zw_panels, title="Z versus W per latent size (StyleGAN)"),
                            "Z versus W: distance from the first image along linear paths, per latent size.",
                            "path profiles Z vs W", "fig-profile-zw"))
    else:
        parts.append(not_run("Z versus W profiles", "no StyleGAN path profile"))
    gw_panels = []
    for z in sizes:
        sw = _profile_stats(docs.get(("stylegan", z), (None, ""))[0], "w")
        gz = _profile_stats(docs.get(("gan", z), (None, ""))[0], "z")
        series = [(k, s) for k, s in (("stylegan/w", sw), ("gan/z", gz)) if s]
        if series:
            gw_panels.append((f"latent size {z}", series))
    if gw_panels:
        parts.append(figure(figures.path_profiles(gw_panels, normalise=True, title="StyleGAN W versus GAN Z (shape, normalised)"),
                            "StyleGAN's W versus the mapping-free GAN's Z, each curve divided by its mean endpoint distance "
                            "so the shapes compare (dashed: a perfectly linear path).", "path profiles StyleGAN W vs GAN Z",
                            "fig-profile-gan"))
    rows, classes = [], []
    for (arch, z), (doc, rel) in docs.items():
        spaces = list(spaces_of(arch))
        for i, sp in enumerate(spaces):
            k = f"results.{sp}"
            if doc is None:
                cells = [Cell("not run", label=True, cls="missing")] * 3
            elif lookup(doc, k) is None:
                cells = [missing()] * 3
            else:
                cells = [pm(doc, rel, f"{k}.r2_mean", f"{k}.r2_std", ".3f"), num(lookup(doc, f"{k}.r2_n"), rel, f"{k}.r2_n", "d"),
                         pm(doc, rel, f"{k}.endpoint_distance_mean", f"{k}.endpoint_distance_std")]
            rows.append([L(z if i == 0 else ""), L(arch_label(arch) if i == 0 else ""), L(sp.upper()), *cells])
            classes.append("group-start" if i == 0 else "")
    parts.append(table("table-linearity", [[L("latent"), L("model"), L("space"), L("R² of distance vs step ↑"), L("pairs"),
                                            L("endpoint distance")]], rows, "Linearity of the interpolation paths", classes))
    return "".join(parts)


def binary_entropy_bits(p: float) -> float:
    """H_b(p) in bits (0 at p = 0 or 1)."""
    if p <= 0 or p >= 1:
        return 0.0
    return float(-p * math.log2(p) - (1 - p) * math.log2(1 - p))


def one_class_repeats(entry: dict | None) -> bool:
    """Whether any repeat kept samples of one class only (then H = 0 and accuracy = 1 by construction)."""
    counts = (entry or {}).get("class_counts_per_repeat") or []
    return any(sum(1 for c in rep if c) < 2 for rep in counts)


def not_interpretable(entry: dict | None) -> bool:
    """Whether a separability result is flagged: the classifier's labels did not beat the majority baseline."""
    return (entry or {}).get("interpretable") is False


def _interpretability_note(docs: dict, name: str) -> str:
    """The ‡ box: per model, the classifier's test score and its majority baseline (from the separability JSON)."""
    parts = []
    for (arch, z), (doc, rel) in docs.items():
        k = f"settings.classifier_check.{name}"
        if doc is None or lookup(doc, f"{k}.interpretable") is not False:
            continue
        parts.append(f"{esc(model_name(arch, z))}: {esc(lookup(doc, f'{k}.measure') or 'score')} "
                     f"{num(lookup(doc, f'{k}.score'), rel, f'{k}.score', '.3f')} versus "
                     f"{num(lookup(doc, f'{k}.baseline'), rel, f'{k}.baseline', '.3f')}")
    return (f"<p class='box warn'>‡ <strong>Not interpretable.</strong> On the held-out test slices the classifier's "
            f"labels for {esc(name)} are no better than always guessing the most common class ({'; '.join(parts)}), so "
            "they carry no information for an SVM to separate; these rows measure the classifier's noise, not the "
            "latent space.</p>")


DEGENERATE_NOTE = ("† In at least one repeat the classifier gave every kept generated image the same label, so the SVM "
                   "had nothing to separate: H(Y|X) = 0 and accuracy = 1 there by construction (the NVlabs fallback), "
                   "not a real separation. Train the generator longer or draw more samples.")


def section_separability(st: StudyFiles) -> str:
    models = st.models()
    docs = {(a, z): st.eval_doc(a, z, "separability") for a, z in models}
    if not any(d for d, _ in docs.values()):
        return not_run("linear separability", "no eval/<model>/separability.json")
    attrs: list[str] = []
    thresholds: dict[str, Any] = {}
    for doc, _ in docs.values():
        for entry in lookup(doc, "settings.attributes") or []:
            if entry["name"] not in attrs:
                attrs.append(entry["name"])
                thresholds[entry["name"]] = entry.get("threshold")
        for key in (doc or {}).get("results", {}):
            name = key.split("/", 1)[1]
            if name != "combined" and name not in attrs:
                attrs.append(name)
    parts = ["<p>Can a straight cut through the latent space tell the attribute apart? Generated images are labelled "
             "by the classifier, the least confident half is dropped, and a linear SVM is fitted on the latent vectors "
             "(Z, or W of StyleGAN) and scored on the same samples. <strong>H(Y|X)</strong>: the uncertainty about the "
             "classifier's label left once the SVM's side of the cut is known, in bits (0 = perfectly separated, 1 = no "
             "information). SVM accuracy: agreement with the classifier. <em>Held-out</em>: the SVM fitted on half of the "
             "kept samples and scored on the other half. Mean ± standard error over repeats (the spread of single repeats, "
             "the std, is in the JSON; the published columns show mean ± std). ‡ marks a result that cannot be "
             "interpreted because the classifier's labels for that attribute do not beat its majority baseline on the "
             "test slices.</p>"]
    order = {"w": 0, "z": 1}
    for name in attrs:
        thr = thresholds.get(name)
        title = f"{name} ≥ {thr:g}" if _finite(thr) else name
        keys = set()
        for (arch, z), (doc, rel) in docs.items():
            for sp in ("w", "z"):
                if lookup(doc, f"results.{sp}/{name}") is not None:
                    keys.add((z, arch, sp))
            if doc is None:
                keys.add((z, arch, "-"))
        if name == "sex":
            keys |= set(PUBLISHED_TABLE2)
        arch_rank = {a: i for i, a in enumerate(families())}
        ordered = sorted(keys, key=lambda k: (-k[0], arch_rank.get(k[1], 9), order.get(k[2], 2)))
        rows, classes = [], []
        prev_z, degenerate, uninterpretable = None, False, False
        for z, arch, sp in ordered:
            doc, rel = docs.get((arch, z), (None, f"eval/{model_name(arch, z)}/separability.json"))
            k = f"results.{sp}/{name}"
            label = f"{arch_label(arch)}, {sp.upper()}" if sp != "-" else arch_label(arch)
            if one_class_repeats(lookup(doc, k)):
                label += " †"
                degenerate = True
            if not_interpretable(lookup(doc, k)):
                label += " ‡"
                uninterpretable = True
            if doc is None or lookup(doc, k) is None:
                ours = [Cell("not run", label=True, cls="missing", colspan=4)]
            else:
                ours = [pm(doc, rel, f"{k}.entropy_bits_mean", f"{k}.entropy_bits_se", ".3f"),
                        pm(doc, rel, f"{k}.accuracy_mean", f"{k}.accuracy_se", ".3f"),
                        pm(doc, rel, f"{k}.heldout_accuracy_mean", f"{k}.heldout_accuracy_se", ".3f"),
                        num(lookup(doc, f"{k}.n_kept"), rel, f"{k}.n_kept", "d")]
            pub = PUBLISHED_TABLE2.get((z, arch, sp)) if name == "sex" else None
            if pub:
                pkey = f"{z}.{arch}.{sp}"
                theirs = [f"{num(pub[0], 'published:kriz-table2', pkey + '.h_mean', '.3f')} <span class='pm'>±</span> "
                          f"{num(pub[1], 'published:kriz-table2', pkey + '.h_std', '.3f')}",
                          f"{num(pub[2], 'published:kriz-table2', pkey + '.acc_mean', '.3f')} <span class='pm'>±</span> "
                          f"{num(pub[3], 'published:kriz-table2', pkey + '.acc_std', '.3f')}",
                          num(binary_entropy_bits(1 - pub[2]), "published:kriz-table2", pkey + ".max_h_bits", ".3f")]
            else:
                theirs = [missing(), missing(), missing()] if name == "sex" else []
            rows.append([L(z if z != prev_z else ""), L(label), *ours, *theirs])
            classes.append(" ".join(c for c in ("group-start" if z != prev_z else "", "not-interpretable" if label.endswith("‡") else "") if c))
            prev_z = z
        head = [[L("latent", rowspan=2), L("model, space", rowspan=2), L("this study: mean ± standard error over repeats", colspan=4),
                 *([L("published (Kriz Table 2): mean ± std", colspan=3)] if name == "sex" else [])],
                [L("H(Y|X) bits ↓"), L("SVM accuracy ↑"), L("held-out accuracy"), L("n kept"),
                 *([L("H(Y|X)"), L("SVM accuracy"), L("max H for that accuracy")] if name == "sex" else [])]]
        parts.append(table(f"table-separability-{name}" if name != attrs[0] else "table-separability", head, rows,
                           f"Linear separability of {esc(title)} (Table 2 layout)", classes))
        if degenerate:
            parts.append(f"<p class='box warn'>{esc(DEGENERATE_NOTE)}</p>")
        if uninterpretable:
            parts.append(_interpretability_note(docs, name))
    parts.append("<p class='box'><strong>About the published values.</strong> For a two-class label, H(Y|X) can be at most "
                 "the binary entropy of the error rate, H<sub>b</sub>(1 − accuracy); every H in the reference study's "
                 "Table 2 is above that maximum for its own accuracy (last column, in bits; the bound in nats is lower "
                 "still). The published H and accuracy were therefore not computed on the same samples, so compare "
                 "<em>rankings</em> (W versus Z, GAN-Z versus StyleGAN-W), not absolute values. This study computes "
                 "both on the same kept samples (see metrics.md §2).</p>")
    combined_rows = []
    for (arch, z), (doc, rel) in docs.items():
        for sp in ("w", "z"):
            k = f"results.{sp}/combined"
            if lookup(doc, k) is not None and len(lookup(doc, f"{k}.attributes") or []) > 1:
                label = f"{arch_label(arch)}, {sp.upper()}" + (" ‡" if not_interpretable(lookup(doc, k)) else "")
                combined_rows.append([L(z), L(label), pm(doc, rel, f"{k}.score_mean", f"{k}.score_se", ".3f")])
    if combined_rows:
        parts.append(table("table-separability-combined", [[L("latent"), L("model, space"), L("2^ΣH ↓")]], combined_rows,
                           "Combined separability score over attributes (NVlabs form): mean ± standard error over repeats"))
    notes = sorted({f"{model_name(a, z)}: {n}" for (a, z), (doc, _) in docs.items() for n in (doc or {}).get("notes", [])})
    if notes:
        parts.append("<details><summary>Notes from the separability runs</summary><ul class='note'>"
                     + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></details>")
    return "".join(parts)


def section_quality(st: StudyFiles) -> str:
    models = st.models()
    docs = [((a, z), *st.eval_doc(a, z, "quality")) for a, z in models]
    if not any(d for _, d, _ in docs):
        return not_run("image quality", "no eval/<model>/quality.json")
    gen, floor = "generated_vs_real_matched", "real_vs_real"
    rows = []
    for (arch, z), doc, rel in docs:
        if doc is None:
            rows.append([L(z), L(arch_label(arch)), Cell("not run", label=True, cls="missing", colspan=9)])
            continue
        r = "results"
        rows.append([
            L(z), L(arch_label(arch)),
            num(lookup(doc, f"{r}.fid.{gen}"), rel, f"{r}.fid.{gen}"),
            num(lookup(doc, f"{r}.fid.{floor}"), rel, f"{r}.fid.{floor}"),
            num(lookup(doc, f"{r}.fid.generated_vs_real"), rel, f"{r}.fid.generated_vs_real"),
            pm(doc, rel, f"{r}.kid.{gen}.mean", f"{r}.kid.{gen}.std"),
            pm(doc, rel, f"{r}.kid.{floor}.mean", f"{r}.kid.{floor}.std"),
            num(lookup(doc, f"{r}.precision.{gen}"), rel, f"{r}.precision.{gen}", ".3f"),
            num(lookup(doc, f"{r}.precision.{floor}"), rel, f"{r}.precision.{floor}", ".3f"),
            num(lookup(doc, f"{r}.recall.{gen}"), rel, f"{r}.recall.{gen}", ".3f"),
            num(lookup(doc, f"{r}.recall.{floor}"), rel, f"{r}.recall.{floor}", ".3f"),
        ])
    head = [[L("latent", rowspan=2), L("model", rowspan=2), L("FID ↓", colspan=3), L("KID ↓", colspan=2),
             L("precision ↑", colspan=2), L("recall ↑", colspan=2)],
            [L("generated"), L("real floor"), L("all generated"), L("generated"), L("real floor"), L("generated"),
             L("real floor"), L("generated"), L("real floor")]]
    sizes = next((lookup(d, "settings.sizes") for _, d, _ in docs if d), None) or {}
    notes = sorted({f"{model_name(a, z)}: {n}" for (a, z), d, _ in docs for n in (d or {}).get("notes", [])})
    parts = [
        "<p>How close the generated slices are to real test slices, measured in the classifier's feature space "
        "(not ImageNet Inception features, which do not describe brain MRI). <em>generated</em>: a random set of "
        "generated slices the size of half the real test set against the other half; <em>real floor</em>: one half "
        "of the real test slices against the other half — the best value reachable with this many slices. "
        "<em>all generated</em>: every generated slice against every real test slice. FID and KID: distance between "
        "the feature distributions (0 = identical); precision: share of generated slices that look like some real "
        "slice; recall: share of real slices the generator covers.</p>",
        table("table-quality", head, [[c for c in r] for r in rows], "Image quality, each beside its real-versus-real floor"),
    ]
    if sizes:
        flat = [(k, v) for k, v in sizes.items() if not isinstance(v, dict)]
        flat += [(f"{k} ({sub})", v2) for k, v in sizes.items() if isinstance(v, dict) for sub, v2 in v.items()]
        parts.append("<p class='note'>Sample sizes: " + ", ".join(f"{esc(k.replace('_', ' '))} {esc(v)}" for k, v in flat) + ".</p>")
    if notes:
        parts.append("<details><summary>Notes from the quality runs</summary><ul class='note'>"
                     + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></details>")
    return "".join(parts)


def git_commit(where: Iterable[Path]) -> tuple[str, bool | None]:
    """``(commit, has uncommitted changes)`` of the first git checkout among ``where``; ``("unknown", None)``."""
    for folder in where:
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
            if head.returncode != 0:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                   capture_output=True, text=True, timeout=20)
            return head.stdout.strip(), (bool(dirty.stdout.strip()) if dirty.returncode == 0 else None)
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown", None


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_benchmarks(root: Path) -> list[dict]:
    """Every Snakemake benchmark TSV under ``root`` (``report.tsv`` excepted): rule, job, file, mean seconds, peak RSS (MB)."""
    import pandas as pd

    out = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        if rel.as_posix() == "report.tsv":  # the report's own job is still running (or is a previous run's)
            continue
        rule = "/".join(rel.parts[:-1]) or rel.stem
        job = rel.stem if len(rel.parts) > 1 else ""
        try:
            df = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            log.warning("%s: not a benchmark table (%s)", path, exc)
            continue
        if "s" not in df.columns or len(df) == 0:
            continue
        s = pd.to_numeric(df["s"], errors="coerce")
        rss = pd.to_numeric(df["max_rss"], errors="coerce") if "max_rss" in df.columns else pd.Series([np.nan])
        out.append({"rule": rule, "job": job, "file": rel.as_posix(), "s": float(s.mean()),
                    "max_rss": float(rss.max()) if rss.notna().any() else float("nan")})
    return out


def section_provenance(st: StudyFiles, generated: str) -> str:
    import yaml

    commit, dirty = git_commit([Path.cwd(), Path(__file__).resolve().parent])
    versions = package_versions()
    devices = sorted({str(lookup(st.json(p), "settings.device")) for p in
                      (st.rel(x) for x in sorted(st.root.glob("eval/*/*.json"))) if lookup(st.json(p), "settings.device")})
    rows = [[L("config hash"), L(config_hash(st.cfg))],
            [L("git commit"), L(commit + (" (with uncommitted changes)" if dirty else ""))],
            [L("report generated"), L(generated)],
            [L("Python"), L(f"{platform.python_version()} on {platform.platform()}")],
            [L("evaluation device(s)"), L(", ".join(devices) or "—")]]
    rows += [[L(name), L(v)] for name, v in versions.items()]
    parts = [table("table-versions", [[L("item"), L("value")]], rows, "Provenance")]
    trained = [("classifier", lookup(st.json("classifier/metrics.json"), "fingerprint"))]
    trained += [(model_name(arch, z), lookup(st.json(f"gan/{model_name(arch, z)}/options.json"), "fingerprint")) for arch, z in st.models()]
    parts.append(table("table-fingerprints", [[L("network"), L("training fingerprint")]],
                       [[L(name), L(fp or "— (trained before fingerprints were recorded)")] for name, fp in trained],
                       "Training fingerprints: a digest of the settings, seed, architecture and slice data that made each network "
                       "(a checkpoint is resumed only under the same fingerprint); the resolved config is config.yaml"))
    bench_dir = st.path("benchmarks")
    records = read_benchmarks(bench_dir) if bench_dir.is_dir() else []
    if records:
        by_rule: dict[str, list[dict]] = {}
        rank = {rule: i for i, rule in enumerate(RULE_ORDER)}
        records.sort(key=lambda r: (rank.get(r["rule"].split("/")[0], len(rank)), r["rule"], r["job"]))
        for r in records:
            by_rule.setdefault(r["rule"], []).append(r)
        rows = []
        for rule, recs in by_rule.items():
            src = f"benchmarks/{rule}/*.tsv" if recs[0]["job"] else f"benchmarks/{rule}.tsv"
            s = [r["s"] for r in recs]
            rss = [r["max_rss"] for r in recs if math.isfinite(r["max_rss"])]
            rows.append([L(rule), num(len(recs), src, "count", "d"), num(sum(s), src, "sum:s", ".1f"), num(max(s), src, "max:s", ".1f"),
                         num(max(rss) if rss else None, src, "max:max_rss", ".0f")])
        total_s = sum(r["s"] for r in records)
        rows.append([L("all rules"), num(len(records), "benchmarks/**/*.tsv", "count", "d"),
                     num(total_s, "benchmarks/**/*.tsv", "sum:s", ".1f"), L(""), L("")])
        parts.append(table("table-runtimes", [[L("rule"), L("jobs"), L("total wall time (s)"), L("longest job (s)"), L("peak memory, max RSS (MB)")]],
                           rows, "Runtime and memory per rule (Snakemake benchmark files)"))
        parts.append("<p class='note'>Wall times are summed over jobs (jobs may have run in parallel); the report's own job "
                     "is not included. "
                     "Peak memory is n/a for jobs shorter than Snakemake's sampling interval.</p>")
    else:
        parts.append(not_run("runtime table", "no benchmarks/**/*.tsv (the study was not run through Snakemake)"))
    parts.append("<details><summary>The full study configuration</summary><pre class='config'>"
                 + esc(yaml.safe_dump(st.cfg, sort_keys=False, allow_unicode=True)) + "</pre></details>")
    return "".join(parts)


def uses_open_ms(cfg: dict) -> bool:
    """Whether the study reads the open_ms_sample scans (whose licence asks for the citation)."""
    inputs = cfg.get("inputs") or {}
    return any("open_ms_sample" in str(inputs.get(k) or "") for k in ("table", "bids_dir"))


def citation_block() -> str:
    return ("<p class='citation' id='citation'><strong>Data citation.</strong> The real MRI scans of this study are "
            "from the public database described in: " + esc(OPEN_MS_CITATION) + "</p>")


# --------------------------------------------------------------------------------------------
# Page


@dataclass(frozen=True)
class ReportSection:
    """One section of the report.

    Args:
        sid: the HTML id (also the table of contents' anchor).
        title: its heading.
        build: ``build(st, generated) -> HTML`` (the common sections), or
        template / context: a Jinja2 template under ``report/templates`` rendered with
            ``context(st) -> dict`` (how a generator family adds its section).
        families: the section is shown only when the study has a model of one of these families
            (empty: always).
        when: a further condition on the study (e.g. a config switch), or None.
    """

    sid: str
    title: str
    build: Callable[[StudyFiles, str], str] | None = None
    template: str | None = None
    context: Callable[[StudyFiles], dict] | None = None
    families: tuple[str, ...] = ()
    when: Callable[[StudyFiles], bool] | None = None

    def render(self, st: StudyFiles, generated: str) -> str:
        if self.build is not None:
            return self.build(st, generated)
        return str(render(self.template, **(self.context(st) if self.context else {})))

    def applies(self, st: StudyFiles) -> bool:
        if self.when is not None and not self.when(st):
            return False
        return not self.families or any(arch in self.families for arch, _ in st.models())


SECTIONS: list[ReportSection] = [
    ReportSection("glance", "Results at a glance", lambda st, g: section_glance(st)),
    ReportSection("dataset", "Dataset", lambda st, g: section_dataset(st, st.qc_limit) + (citation_block() if uses_open_ms(st.cfg) else "")),
    ReportSection("classifier", "Attribute classifier", lambda st, g: section_classifier(st)),
    ReportSection("generators", "Generators", lambda st, g: section_generators(st)),
    ReportSection("ppl", "Perceptual path length", lambda st, g: section_ppl(st)),
    ReportSection("path-profile", "Interpolation path profiles", lambda st, g: section_path_profile(st)),
    ReportSection("separability", "Linear separability", lambda st, g: section_separability(st)),
    ReportSection("quality", "Image quality", lambda st, g: section_quality(st)),
    ReportSection("provenance", "Provenance", section_provenance),
]


def register_section(new: ReportSection, before: str = "provenance") -> ReportSection:
    """Add a section (a family's, say) to the report, placed before section ``before``."""
    if any(s.sid == new.sid for s in SECTIONS):
        raise ValueError(f"report section {new.sid!r} exists already")
    index = next((i for i, s in enumerate(SECTIONS) if s.sid == before), len(SECTIONS))
    SECTIONS.insert(index, new)
    return new


# the families' sections: a template plus a small context function each
register_section(ReportSection("conditional", "Conditional generation", template="sections/conditional.html.j2",
                               context=family_sections.conditional_context, families=family_sections.CONDITIONAL))
register_section(ReportSection("growing", "Growing GANs: is the latent space ordered?", template="sections/growing.html.j2",
                               context=family_sections.growing_context, families=family_sections.GROWING))
register_section(ReportSection("counterfactuals", "Counterfactuals", lambda st, g: counterfactual_section.build(st, g),
                               when=counterfactual_section.applies))
register_section(ReportSection("mixture-prior", "Mixture-prior GAN: modes of the cohort", template="sections/mixture_prior.html.j2",
                               context=mixture_prior.context, families=mixture_prior.FAMILIES))


def _guarded(name: str, fn: Callable[[], str]) -> str:
    """A section's HTML, or an error box naming what failed (the report never crashes on one bad file)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not hide the other sections
        log.warning("report section '%s' failed: %s: %s", name, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return f'<p class="error"><strong>Could not build this section:</strong> {esc(type(exc).__name__)}: {esc(exc)}</p>'


def render_report(cfg: dict, study_dir: str | Path, qc_limit: int = DEFAULT_QC_LIMIT, now: _dt.datetime | None = None) -> str:
    """The report's HTML for one study folder.

    Args:
        cfg: the completed study config.
        study_dir: the study's folder (``results/<study>``).
        qc_limit: how many QC pictures the montage shows.
        now: the time stamp printed in the page (default: now, UTC).
    """
    st = StudyFiles(study_dir, cfg)
    st.qc_limit = qc_limit
    generated = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    shown = [("question", "The question", lambda: section_intro(st, generated))]
    shown += [(s.sid, s.title, (lambda s=s: s.render(st, generated))) for s in SECTIONS if s.applies(st)]
    body = [section(sid, title, _guarded(sid, fn)) for sid, title, fn in shown]
    if uses_open_ms(cfg):
        body.append(citation_block())
    study = cfg.get("study", st.root.name)
    heading = Markup("Does the latent space disentangle clinical attributes? — study <code>{}</code>").format(study)
    meta = [f"config hash {config_hash(cfg)}", f"generated {generated}", f"brainlatent {__version__}"]
    return page(f"brainlatent report: {study}", heading, Markup("".join(body)), meta, [(sid, title) for sid, title, _ in shown])


def build_report(cfg: dict, study_dir: str | Path, out: str | Path, qc_limit: int = DEFAULT_QC_LIMIT) -> Path:
    """Write the study's report to ``out`` (atomically) and return its path."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        from brainlatent.errors import BrainlatentError

        raise BrainlatentError(f"{study_dir}: study folder not found; expected results/<study> with the workflow's outputs")
    page = render_report(cfg, study_dir, qc_limit)
    io.write_text(out, page)
    log.info("report written to %s (%.1f MB)", out, len(page.encode()) / 1e6)
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--study-dir", required=True, metavar="DIR", help="the study's folder, e.g. results/demo")
    parser.add_argument("--out", required=True, metavar="HTML", help="output page, e.g. results/demo/report/index.html")
    parser.add_argument("--qc-limit", type=int, default=DEFAULT_QC_LIMIT, metavar="N",
                        help=f"QC pictures shown in the montage (default {DEFAULT_QC_LIMIT})")


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, "report")
    build_report(cfg, args.study_dir, args.out, args.qc_limit)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: brainlatent report --help")
