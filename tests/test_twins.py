"""Counterfactual twins: a twin differs from its source only where its changed attribute acts."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from brainlatent import cli
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.synth import anatomy as anat
from brainlatent.synth import cohort
from brainlatent.synth.clinical import SubjectPlan, baseline_edss, draw_baseline, draw_follow_up, subject_rngs
from brainlatent.synth.contrast import SITES, reorient, resample
from brainlatent.synth.effects import default_effects
from brainlatent.synth.template import load_template
from brainlatent.synth.twins import (
    Intervention,
    counterfactual,
    parse_interventions,
    propagate,
    render_subject,
    same_history,
    source_acquisitions,
    subject_anatomy,
)

SEED = 7
MODS = ("flair",)
TOL = 1e-3  # noise-free intensity (white matter ~0.6) below which two renders count as equal


@pytest.fixture(scope="module")
def tpl():
    return load_template(2)


def _history(renders):
    return [(r.session, r.clinical, r.years) for r in renders]


@pytest.fixture(scope="module")
def spms(tpl):
    """A secondary progressive woman (EDSS >= 3, lesions and a periventricular cap), thick-slice site."""
    plan = SubjectPlan("sub-001", "SPMS", "F", 2, 1)
    return plan, render_subject(plan, SEED, tpl, MODS)


@pytest.fixture(scope="module")
def edss_twin(tpl, spms):
    """The EDSS-0 twin of ``spms`` and the render with only its atrophy changed."""
    plan, (src,) = spms
    history = counterfactual(_history([src]), Intervention("edss", 0.0), "single", "ses-01")
    (twin,) = render_subject(plan, SEED, tpl, MODS, history=history)
    anatomy, texture = subject_anatomy(subject_rngs(SEED, plan.subject), tpl, "F")
    # the source's lesions and periventricular cap with the twin's atrophy
    atrophy_only = cohort.render_session(tpl, anatomy, twin.clinical, src.lesions, MODS, texture,
                                         cap_mm=anat.cap_thickness(anatomy, src.clinical))
    return src, twin, atrophy_only


def _regions(src, twin, atrophy_only):
    a, b, c = src.images["flair"], twin.images["flair"], atrophy_only[0]["flair"]
    lesions = (src.lesion > 0) | (twin.lesion > 0) | (atrophy_only[2] > 0)
    lesion_region = ndi.binary_dilation(lesions, iterations=1)
    atrophy_region = np.abs(c - a) > TOL
    return a, b, c, lesion_region, atrophy_region


def test_edss_twin_differs_only_in_lesion_and_atrophy_regions(edss_twin):
    src, twin, atrophy_only = edss_twin
    assert src.clinical.edss >= 3 and twin.clinical.edss == 0
    assert twin.truth["lesion_count"] < src.truth["lesion_count"]
    assert twin.truth["ventricle_volume_ml"] < src.truth["ventricle_volume_ml"]  # less atrophy
    a, b, c, lesion_region, atrophy_region = _regions(src, twin, atrophy_only)
    # the lesion change acts only where a lesion (or the cap) is, in either render
    assert not ((b != c) & ~lesion_region).any()
    changed = np.abs(b - a) > TOL
    outside = changed & ~(lesion_region | atrophy_region)
    assert not outside.any(), f"{outside.sum()} voxels changed outside the lesion and atrophy regions"
    assert changed.sum() > 100
    # the regions are not the whole head (EDSS 4 -> 0 narrows the ventricles by ~1.8 mm and
    # thickens the cortex: about half the head moves by > TOL), and skull and scalp barely change
    head = a > 0.02
    assert (lesion_region | atrophy_region)[head].mean() < 0.75
    outer = head & ~ndi.binary_dilation(src.brain > 0.01, iterations=2)
    assert changed[outer].mean() < 0.15
    assert twin.truth["head_scale"] == src.truth["head_scale"]


def test_edss_twin_acquired_with_the_same_noise(tmp_path, tpl, spms, edss_twin):
    """On the written NIfTI (the cohort's own writer for the source, same grid, bias and noise
    draws for the twin), the twin differs only where the noise-free renders differ."""
    plan, renders = spms
    src, twin, atrophy_only = edss_twin
    for sub in ("images", "masks", "lesions"):
        (tmp_path / sub).mkdir()
    cohort.synthesize_subject(cohort._Job(plan, SEED, 2, MODS, str(tmp_path), default_effects()))
    acq = source_acquisitions(plan, SEED, renders, tpl, len(MODS))["ses-01"]
    site = SITES[plan.site]
    cohort.acquire_session(twin.images, twin.brain, twin.lesion, tpl, site, acq.noise_rng(), tmp_path, "twin", acquisition=acq)
    source = nib.load(str(tmp_path / "images" / "sub-001_ses-01_flair.nii.gz"))
    acquired = nib.load(str(tmp_path / "images" / "twin_flair.nii.gz"))
    assert source.shape == acquired.shape and np.allclose(source.affine, acquired.affine)
    a, b, _, lesion_region, atrophy_region = _regions(src, twin, atrophy_only)
    allowed = resample((lesion_region | atrophy_region).astype(np.float32), tpl.affine, acq.grid) > 0
    allowed, _ = reorient(allowed.astype(np.uint8), acq.grid.affine, site.orientation)
    diff = np.abs(acquired.get_fdata() - source.get_fdata())
    # outside the regions the noise-free renders differ by <= TOL: after bias, gain and storage
    # rounding (scl_slope) the acquired difference stays below this
    bound = TOL * site.gain * float(acq.bias.max()) + site.scl_slope * 1.01
    outside = (diff > bound) & (allowed == 0)
    assert not outside.any(), f"{outside.sum()} acquired voxels changed outside the regions"
    assert (diff > bound).sum() > 50
    equal = diff == 0
    assert equal.mean() > 0.5  # same noise: most of the volume is bit-identical
    # the true lesion masks shrink
    src_les = nib.load(str(tmp_path / "lesions" / "sub-001_ses-01_lesions.nii.gz")).get_fdata()
    twin_les = nib.load(str(tmp_path / "lesions" / "twin_lesions.nii.gz")).get_fdata()
    assert twin_les.sum() < 0.5 * src_les.sum()


def test_lower_edss_twin_has_a_subset_of_the_lesions(tpl):
    plan = SubjectPlan("sub-004", "RRMS", "M", 0, 2)
    rngs = subject_rngs(SEED, plan.subject)
    history = cohort.session_history(plan, rngs)
    source = cohort.session_lesions(rngs, tpl, history)
    for edss in (0.0, 1.0, history[0][1].edss):
        twin_history = counterfactual(history, Intervention("edss", edss), "single", "ses-02")
        rngs = subject_rngs(SEED, plan.subject)
        cohort.session_history(plan, rngs)
        twin = cohort.session_lesions(rngs, tpl, twin_history)
        n_src, n_twin = len(source[0]), len(twin[0])
        assert n_twin <= n_src or edss > history[0][1].edss
        k = default_effects().edss.lesion_radius_per_point
        factor = (1 + k * edss) / (1 + k * history[0][1].edss)
        for s, t in zip(source[0], twin[0]):  # the first lesions, same place and shape, scaled
            np.testing.assert_allclose(t.centre, s.centre)
            np.testing.assert_allclose(t.rotation, s.rotation)
            np.testing.assert_allclose(t.radii_mm, s.radii_mm * factor, rtol=1e-12)
        # follow-up: the baseline lesions persist, new ones sit where the source's new ones do
        assert len(twin[1]) - n_twin == len(source[1]) - n_src
        for s, t in zip(source[1][n_src:], twin[1][n_twin:]):
            np.testing.assert_allclose(t.centre, s.centre)
    assert len(twin[0]) == n_src  # the last one is the source's own EDSS


def test_poisson_quantile_is_monotone_in_the_mean():
    rng = np.random.default_rng(0)
    us = rng.uniform(size=2000)
    counts = np.array([anat.poisson_quantile(u, 4.0) for u in us])
    assert counts.mean() == pytest.approx(4.0, abs=0.15) and counts.var() == pytest.approx(4.0, abs=0.4)
    for u in us[:200]:
        assert anat.poisson_quantile(u, 2.0) <= anat.poisson_quantile(u, 6.0)
    assert anat.poisson_quantile(0.9, 0.0) == 0


def test_sex_twin_changes_head_size_only(tpl):
    plan = SubjectPlan("sub-002", "RRMS", "F", 0, 1)
    (src,) = render_subject(plan, SEED, tpl, MODS)
    history = counterfactual(_history([src]), Intervention("sex", "other"), "single", "ses-01")
    assert history[0][1].sex == "M" and _drop_sex(history[0][1]) == _drop_sex(src.clinical)
    (twin,) = render_subject(plan, SEED, tpl, MODS, history=history)
    assert twin.truth["head_scale"] / src.truth["head_scale"] == pytest.approx(anat.MALE_SCALE, rel=1e-3)  # truth rounds to 4 digits
    assert twin.truth["lesion_count"] == src.truth["lesion_count"]
    assert twin.truth["ventricle_widening_mm"] == src.truth["ventricle_widening_mm"]
    ratio = twin.truth["brain_volume_ml"] / src.truth["brain_volume_ml"]
    assert ratio == pytest.approx(anat.MALE_SCALE**3, rel=0.02)
    assert twin.truth["lesion_volume_ml"] / src.truth["lesion_volume_ml"] == pytest.approx(anat.MALE_SCALE**3, rel=0.05)


def _drop_sex(clinical):
    return replace(clinical, sex="")


def test_causal_edss_is_recomputed_with_the_same_noise():
    """Abduction: recomputing EDSS from the recorded age, duration and noise gives the source back
    (baseline and follow-up); an older causal twin gets the model's EDSS with the same noise."""
    rng = np.random.default_rng(1)
    changed = 0
    for i in range(400):
        ms_type = ["RRMS", "SPMS", "PPMS", "HC"][i % 4]
        base = draw_baseline(rng, ms_type, "F")
        history = [("ses-01", base, 0.0), ("ses-02", draw_follow_up(rng, base, 2.0), 2.0)]
        assert same_history(propagate(history, history), history)
        assert counterfactual(history, Intervention("age", shift=0.0), "causal", "ses-01").startswith("the causal twin equals")
        older = counterfactual(history, Intervention("age", shift=10.0), "causal", "ses-01")
        if ms_type == "HC":
            assert isinstance(older, str)  # an HC's EDSS stays 0: same as the single twin
            continue
        first = older[0][1]
        assert first.disease_duration == pytest.approx(base.disease_duration + 10)
        assert first.edss == baseline_edss(ms_type, base.age + 10, first.disease_duration, base.edss_z)
        assert first.edss >= base.edss and older[1][1].edss >= first.edss
        changed += first.edss != base.edss
    assert changed > 100


def test_ms_type_twins_and_skip_reasons():
    rng = np.random.default_rng(2)
    base = draw_baseline(rng, "RRMS", "M")
    history = [("ses-01", base, 0.0)]
    single = counterfactual(history, Intervention("ms_type", "HC"), "single", "ses-01")
    causal = counterfactual(history, Intervention("ms_type", "HC"), "causal", "ses-01")
    assert single[0][1].edss == base.edss and causal[0][1].edss == 0.0
    hc = [("ses-01", draw_baseline(rng, "HC", "F"), 0.0)]
    assert "healthy control" in counterfactual(hc, Intervention("ms_type", "RRMS"), "causal", "ses-01")
    assert "causal twin is the single twin" in counterfactual(history, Intervention("edss", 0.0), "causal", "ses-01")


def test_bad_interventions_are_named():
    with pytest.raises(BrainlatentError, match=r"interventions.0.value: EDSS 11"):
        parse_interventions([{"attribute": "edss", "value": 11}])
    with pytest.raises(BrainlatentError, match=r"interventions.1: give exactly one"):
        parse_interventions([{"attribute": "age", "shift": 5}, {"attribute": "age", "shift": 5, "value": 40}])
    with pytest.raises(BrainlatentError, match=r"interventions.0.shift: sex is categorical"):
        parse_interventions([{"attribute": "sex", "shift": 1}])
    with pytest.raises(BrainlatentError, match=r"interventions.0.value: ms_type 'CIS'"):
        parse_interventions([{"attribute": "ms_type", "value": "CIS"}])
    assert [i.label for i in parse_interventions(load_config({})["synthetic"]["twins"]["interventions"])] == [
        "edss=0", "age+10", "sex=other", "ms_type=HC"]


# ------------------------------------------------------------------------------------------
# the stage, end to end on a tiny study (cohort, preprocessing and slices built in-process)


TINY = {
    "seed": SEED,
    "inputs": {"source": "synthetic", "modality": "flair"},
    "synthetic": {"n_subjects": 8, "healthy_fraction": 0.25, "second_session_fraction": 0.25, "template_resolution_mm": 2,
                  "workers": 2, "twins": {"enabled": True}},
    "preprocess": {"spacing_mm": [3.0, 3.0, 3.0], "field_of_view_mm": [180, 216, 180],
                   "bias_correction": {"enabled": True, "shrink_factor": 2, "iterations": [10]}},
    "slices": {"resolution": 32, "per_scan": 4, "band": [0.45, 0.75],
               "split": {"train": 0.5, "val": 0.25, "test": 0.25, "stratify": ["sex"]}},
}


def _stage_json(cfg: dict, stage: str) -> str:
    from brainlatent.stage_keys import stage_view

    return json.dumps(stage_view(cfg, stage))


@pytest.fixture(scope="module")
def tiny_twins(tmp_path_factory):
    """A tiny study's cohort, preprocessed scans and slices, then its twins through the CLI."""
    from brainlatent.preprocess import preprocess_scan
    from brainlatent.slices import build_slice_dataset

    root = tmp_path_factory.mktemp("twins")
    cfg = load_config(TINY)
    assert cli.main(["synthesize", "--config", _stage_json(cfg, "synthesize"), "--out", str(root / "cohort")]) == 0
    scans = pd.read_csv(root / "cohort" / "scans.tsv", sep="\t")
    scans.insert(0, "scan", scans["subject"] + "_" + scans["session"])
    for sub in ("images", "masks", "summaries"):
        (root / "preprocessed" / sub).mkdir(parents=True)
    for row in scans.itertuples():
        summary = preprocess_scan(cfg, root / "cohort" / row.image_flair, None, root / "preprocessed" / "images" / f"{row.scan}.nii.gz",
                                  root / "preprocessed" / "masks" / f"{row.scan}.nii.gz", None)
        (root / "preprocessed" / "summaries" / f"{row.scan}.json").write_text(json.dumps(summary, default=str))
    scans["image"] = [str(root / "cohort" / p) for p in scans["image_flair"]]
    scans.to_csv(root / "scans.tsv", sep="\t", index=False)
    build_slice_dataset(cfg, root / "scans.tsv", root / "preprocessed", root / "slices" / "32")
    args = ["twins", "--config", _stage_json(cfg, "twins"), "--scans", str(root / "cohort" / "scans.tsv"),
            "--slices", str(root / "slices" / "32"), "--preprocessed", str(root / "preprocessed"), "--out", str(root / "twins")]
    assert cli.main(args) == 0
    return root, cfg


@pytest.mark.slow
def test_truth_table_links_every_twin_to_its_source(tiny_twins):
    root, cfg = tiny_twins
    main = pd.read_parquet(root / "slices" / "32" / "manifest.parquet")
    truth = pd.read_csv(root / "twins" / "truth.tsv", sep="\t", keep_default_na=False, na_values=[""])
    manifest = pd.read_parquet(root / "twins" / "slices" / "32" / "manifest.parquet")
    test_scans = set(main.loc[main["split"] == "test", "scan"])
    assert set(truth["scan"]) == test_scans
    n_interventions = len(cfg["synthetic"]["twins"]["interventions"])
    assert len(truth) == len(test_scans) * n_interventions * 2  # every (scan, intervention, mode), made or skipped
    made = truth[truth["skipped"].isna()]
    skipped = truth[truth["skipped"].notna()]
    assert len(made) and len(skipped)
    assert (skipped.loc[(skipped["intervention"] == "edss") & (skipped["mode"] == "causal"), "skipped"].str.contains("single twin")).all()
    assert set(manifest["twin"]) == set(made["twin"])
    # every twin slice points at its source slice in the main dataset: same scan and slice index
    src = main.set_index("index").loc[manifest["source_index"]]
    assert (src["scan"].to_numpy() == manifest["scan"].to_numpy()).all()
    assert (src["slice"].to_numpy() == manifest["slice"].to_numpy()).all()
    for name in ("age", "edss", "ms_type", "sex"):
        assert (manifest[f"source_{name}"].astype(str).to_numpy() == src[name].astype(str).to_numpy()).all()
    changed = manifest.apply(lambda r: str(r[r["intervention"]]) != str(r[f"source_{r['intervention']}"]), axis=1)
    assert changed.all()  # a made twin has its attribute changed
    sex = manifest[manifest["intervention"] == "sex"]
    assert (sex["sex"] != sex["source_sex"]).all() and (sex["edss"] == sex["source_edss"]).all()
    for name in ("images", "lesions", "source_lesions"):
        arr = np.load(root / "twins" / "slices" / "32" / f"{name}.npy")
        assert arr.shape == (len(manifest), 1, 32, 32) and arr.dtype == np.float32
    images = np.load(root / "twins" / "slices" / "32" / "images.npy")
    assert images.min() >= -1 and images.max() <= 1
    for twin in made["twin"]:
        assert (root / "twins" / "cohort" / "images" / f"{twin}_flair.nii.gz").exists()
        assert (root / "twins" / "preprocessed" / "images" / f"{twin}.nii.gz").exists()


@pytest.mark.slow
def test_twin_slices_align_with_their_sources(tiny_twins):
    root, _ = tiny_twins
    main_images = np.load(root / "slices" / "32" / "images.npy")
    manifest = pd.read_parquet(root / "twins" / "slices" / "32" / "manifest.parquet")
    images = np.load(root / "twins" / "slices" / "32" / "images.npy")
    lesions = np.load(root / "twins" / "slices" / "32" / "lesions.npy")
    source_lesions = np.load(root / "twins" / "slices" / "32" / "source_lesions.npy")
    edss = manifest.index[(manifest["intervention"] == "edss") & (manifest["mode"] == "single")].to_numpy()
    assert len(edss)
    corrs = []
    for i in edss:
        src = main_images[manifest.loc[i, "source_index"], 0]
        twin = images[i, 0]
        calm = (lesions[i, 0] == 0) & (source_lesions[i, 0] == 0) & ((src > -1) | (twin > -1))
        corrs.append(np.corrcoef(src[calm], twin[calm])[0, 1])
    assert np.min(corrs) > 0.95, corrs
    # an EDSS-0 twin has less lesion than its source (in each scan's slices together)
    for twin, rows in manifest.loc[edss].groupby("twin"):
        idx = rows.index.to_numpy()
        assert lesions[idx].sum() <= source_lesions[idx].sum() + 1e-6
    # source lesion slices of a scan are the same whatever its twin
    first = manifest.groupby("source_index").head(1).index
    for i in manifest.index:
        j = first[manifest.loc[first, "source_index"].to_numpy() == manifest.loc[i, "source_index"]][0]
        np.testing.assert_array_equal(source_lesions[i], source_lesions[j])


def test_stage_rejects_a_manifest_of_another_cohort(tmp_path):
    from brainlatent.synth.twins import synthesize_twins

    cfg = load_config(TINY)
    (tmp_path / "cohort").mkdir()
    pd.DataFrame({"subject": ["sub-001"], "session": ["ses-01"]}).to_csv(tmp_path / "cohort" / "scans.tsv", sep="\t", index=False)
    slices = tmp_path / "slices" / "32"
    slices.mkdir(parents=True)
    np.save(slices / "images.npy", np.zeros((1, 1, 32, 32), np.float32))
    pd.DataFrame({"index": [0], "scan": ["sub-099_ses-01"], "subject": ["sub-099"], "session": ["ses-01"], "slice": [10],
                  "split": ["test"]}).to_parquet(slices / "manifest.parquet")
    with pytest.raises(BrainlatentError, match=r"manifest.parquet: scan 'sub-099_ses-01' is not in .*scans.tsv"):
        synthesize_twins(cfg, tmp_path / "cohort" / "scans.tsv", slices, tmp_path / "preprocessed", tmp_path / "twins")
    assert not (tmp_path / "twins").exists()


def test_sex_twin_head_stays_in_the_source_field_of_view(tpl):
    """A larger (male) twin keeps its source's field of view; the margin (4-14 mm) holds its head."""
    from brainlatent.synth.twins import head_outside_ml

    plan = SubjectPlan("sub-003", "HC", "F", 3, 1)
    renders = render_subject(plan, SEED, tpl, MODS)
    acq = source_acquisitions(plan, SEED, renders, tpl, len(MODS))["ses-01"]
    assert head_outside_ml(renders[0].images["flair"], tpl, acq) == 0.0
    history = counterfactual(_history(renders), Intervention("sex", "other"), "single", "ses-01")
    (twin,) = render_subject(plan, SEED, tpl, MODS, history=history)
    outside = head_outside_ml(twin.images["flair"], tpl, acq)
    assert outside < 0.01 * twin.truth["brain_volume_ml"]
