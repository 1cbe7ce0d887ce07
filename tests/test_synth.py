"""The synthetic MS cohort: attribute correlations, anatomy truth, NIfTI headers, determinism."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from brainlatent import cli
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.synth import anatomy, cohort
from brainlatent.synth.clinical import (
    EDSS_MAX,
    Clinical,
    MS_TYPES,
    draw_baseline,
    draw_follow_up,
    plan_cohort,
    sample_attributes,
)
from brainlatent.synth.contrast import SITES, to_nifti
from brainlatent.synth.effects import Effects, default_effects
from brainlatent.synth.template import load_template

SEED = 7
SYNTH = {
    "n_subjects": 6,
    "second_session_fraction": 0.34,
    "healthy_fraction": 0.34,
    "modalities": ["flair", "t1w"],
    "template_resolution_mm": 2,
    "workers": 2,
}


def _cfg(**synthetic) -> dict:
    return load_config({"seed": SEED, "synthetic": {**SYNTH, **synthetic}})


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    """A 6-subject cohort (2 HC, 2 follow-ups, every site) written through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    from brainlatent.stage_keys import stage_view

    config = json.dumps(stage_view(load_config({"seed": SEED, "synthetic": SYNTH}), "synthesize"))
    assert cli.main(["synthesize", "--config", config, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tables(cohort_dir) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(cohort_dir / f"{name}.tsv", sep="\t") for name in ("scans", "truth", "participants")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# attributes alone (cheap, many draws)


def test_attribute_correlations():
    df = sample_attributes(3000, seed=3, healthy_fraction=0.1, female_fraction=0.7)
    rho = spearmanr(df["age"], df["edss"]).statistic
    assert rho > 0.3
    by_type = df.groupby("ms_type")
    assert set(by_type.groups) == set(MS_TYPES)
    assert by_type["age"].mean()["SPMS"] > by_type["age"].mean()["RRMS"] + 5
    assert by_type["age"].mean()["PPMS"] > by_type["age"].mean()["RRMS"] + 3
    assert by_type["edss"].mean()["SPMS"] > by_type["edss"].mean()["RRMS"] + 1
    assert (df.loc[df["ms_type"] == "HC", "edss"] == 0).all()
    assert (df.loc[df["ms_type"] != "HC", "edss"] > 0).mean() > 0.9
    assert (df["sex"] == "F").mean() == pytest.approx(0.7, abs=0.002)
    assert (df["ms_type"] == "HC").mean() == pytest.approx(0.1, abs=0.002)
    assert df["age"].between(18, 75).all()
    assert df["edss"].between(0, EDSS_MAX).all() and ((df["edss"] * 2) % 1 == 0).all()  # 0.5 steps


def test_attribute_sampler_is_seeded():
    a, b = sample_attributes(50, seed=1), sample_attributes(50, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["age"].equals(sample_attributes(50, seed=2)["age"])


def test_follow_up_is_older_and_never_better():
    rng = np.random.default_rng(0)
    for ms_type in MS_TYPES:
        base = draw_baseline(rng, ms_type, "F")
        later = draw_follow_up(rng, base, years=2.0)
        assert later.age == pytest.approx(base.age + 2.0)
        assert later.edss >= base.edss
        assert (later.edss == 0) == (ms_type == "HC")


def test_plan_has_exact_shares():
    plans = plan_cohort(20, seed=1, healthy_fraction=0.25, female_fraction=0.6, second_session_fraction=0.5)
    assert sum(p.ms_type == "HC" for p in plans) == 5
    assert sum(p.n_sessions == 2 for p in plans) == 10
    assert [p.subject for p in plans[:2]] == ["sub-001", "sub-002"]
    assert {p.site for p in plans} == set(range(len(SITES)))


def test_lesion_load_grows_with_edss():
    tpl = load_template(2)
    rng = np.random.default_rng(0)
    mild = Clinical(age=40.0, edss=1.0, ms_type="RRMS", sex="F", onset_age=30.0, disease_duration=10.0)
    severe = replace(mild, edss=6.5)

    def load(clin):
        return np.mean([
            sum(np.prod(les.radii_mm) for les in anatomy.draw_lesions(rng, tpl, clin)) for _ in range(30)
        ])

    assert load(severe) > 3 * load(mild)
    hc = replace(mild, ms_type="HC", edss=0.0)
    assert anatomy.draw_lesions(rng, tpl, hc) == []


def _plain_anatomy(tpl) -> anatomy.SubjectAnatomy:
    """One subject's anatomy with its ventricle, thinning and cap offsets set to 0."""
    a = anatomy.draw_subject_anatomy(np.random.default_rng(0), tpl, "F")
    return replace(a, ventricle_offset_mm=0.0, thinning_offset=0.0, cap_offset_mm=0.0)


def test_ageing_accelerates_and_acts_on_everyone():
    tpl = load_template(2)
    subj = _plain_anatomy(tpl)
    hc = {age: Clinical(float(age), 0.0, "HC", "F", float("nan"), float("nan")) for age in (25, 30, 50, 70)}
    widen = {age: anatomy.atrophy(subj, c)[0] for age, c in hc.items()}
    thin = {age: anatomy.atrophy(subj, c)[1] for age, c in hc.items()}
    assert widen[70] - widen[50] > 1.5 * (widen[50] - widen[30]) > 0  # ventricles widen faster with age
    assert thin[70] > thin[50] > thin[30] > thin[25] > 0  # sulci widen from early adulthood on
    fx = default_effects()
    assert widen[70] == pytest.approx(fx.age.ventricle_mm(70.0))  # zero offsets: the config's curve exactly
    assert anatomy.cap_thickness(subj, hc[30]) == 0.0 and anatomy.cap_thickness(subj, hc[70]) > 0.0  # ageing rim after 50
    # the ventricles themselves: roughly doubling from 30 to 70 (real: about 1.5-3x)
    vols = {age: anatomy.warped_volume_ml(tpl.ventricles, anatomy.subject_coordinates(tpl, subj, widen[age]), tpl.voxel_ml)
            for age in (30, 70)}
    assert 1.5 < vols[70] / vols[30] < 2.5


def test_disease_effects_per_course_and_edss():
    tpl = load_template(2)
    subj = _plain_anatomy(tpl)
    base = Clinical(45.0, 5.0, "RRMS", "F", 30.0, 15.0)
    courses = {t: replace(base, ms_type=t) for t in ("RRMS", "SPMS", "PPMS")}
    widen = {t: anatomy.atrophy(subj, c)[0] for t, c in courses.items()}
    cap = {t: anatomy.cap_thickness(subj, c) for t, c in courses.items()}
    assert widen["SPMS"] > widen["RRMS"] and widen["PPMS"] > widen["RRMS"]  # progressive courses atrophy faster
    assert cap["SPMS"] > cap["RRMS"] > cap["PPMS"] > 0  # confluent periventricular lesions in SPMS
    assert anatomy.cap_thickness(subj, replace(base, edss=7.0)) > cap["RRMS"]
    assert anatomy.atrophy(subj, replace(base, edss=7.0))[0] > widen["RRMS"]

    def mean_count(clin):
        rng = np.random.default_rng(1)
        return np.mean([len(anatomy.draw_lesions(rng, tpl, clin)) for _ in range(200)])

    fx = default_effects()
    for t, clin in courses.items():  # Poisson mean: load x (base + per point x EDSS)
        expected = fx.ms_type.lesion_load[t] * (fx.edss.lesions_base + fx.edss.lesions_per_point * 5.0)
        assert mean_count(clin) == pytest.approx(expected, rel=0.1)


def test_effects_come_from_the_config():
    tpl = load_template(2)
    subj = _plain_anatomy(tpl)
    clin = Clinical(60.0, 4.0, "SPMS", "M", 35.0, 25.0)
    none = load_config({"synthetic": {"effects": {
        "age": {"ventricle_mm_per_decade": 0, "ventricle_mm_per_decade_squared": 0, "thinning_per_decade": 0,
                "thinning_per_decade_squared": 0, "wmh_rim_mm_per_decade": 0},
        "edss": {"ventricle_mm_per_point": 0, "thinning_per_point": 0, "cap_mm_per_point": 0, "lesions_base": 0, "lesions_per_point": 0},
    }}})
    fx = Effects.from_config(none["synthetic"]["effects"])
    assert anatomy.atrophy(subj, clin, effects=fx) == (0.0, 0.0)
    assert anatomy.cap_thickness(subj, clin, effects=fx) == 0.0
    assert anatomy.draw_lesions(np.random.default_rng(0), tpl, clin, effects=fx) == []
    assert anatomy.atrophy(subj, clin) != (0.0, 0.0)  # the defaults do act
    from brainlatent.stage_keys import stage_view

    assert stage_view(none, "synthesize")["synthetic"]["effects"] == none["synthetic"]["effects"]  # reruns the stage when changed


def test_twin_differs_only_by_the_changed_attribute():
    """A subject re-rendered with one attribute changed keeps everything the attribute does not act on."""
    tpl = load_template(2)
    subj = anatomy.draw_subject_anatomy(np.random.default_rng(4), tpl, "F")  # with its own offsets
    bases = tuple(anatomy.gaussian_basis(n, tpl.resolution_mm, 20.0, 12.0) for n in tpl.shape)
    texture = anatomy.smooth_field(subj.texture, bases) * tpl.brain
    young = Clinical(30.0, 0.0, "HC", "F", float("nan"), float("nan"))
    older = replace(young, age=70.0)
    a = cohort.render_session(tpl, subj, young, [], ("flair",), texture)
    b = cohort.render_session(tpl, subj, older, [], ("flair",), texture)
    again = cohort.render_session(tpl, subj, young, [], ("flair",), texture)
    np.testing.assert_array_equal(a[0]["flair"], again[0]["flair"])  # pure: same inputs, same image
    assert b[3]["ventricle_volume_ml"] > 1.4 * a[3]["ventricle_volume_ml"]
    assert b[3]["brain_volume_ml"] < a[3]["brain_volume_ml"] - 30
    assert a[3]["head_scale"] == b[3]["head_scale"]
    assert a[3]["lesion_volume_ml"] == 0 < b[3]["lesion_volume_ml"] < 5  # only the thin periventricular rim of ageing


# ------------------------------------------------------------------------------------------
# the written cohort


def test_scans_table_format(cohort_dir, tables):
    scans = tables["scans"]
    assert list(scans.columns) == [
        "subject", "session", "image_flair", "image_t1w", "mask", "age", "edss", "ms_type", "sex", "site",
    ]
    assert len(scans) == 8 and scans["subject"].nunique() == 6
    for col in ("image_flair", "image_t1w", "mask"):
        for rel in scans[col]:
            assert not Path(rel).is_absolute() and (cohort_dir / rel).is_file()
    follow = scans.groupby("subject").filter(lambda g: len(g) == 2).sort_values(["subject", "session"])
    for _, g in follow.groupby("subject"):
        assert g["age"].iloc[1] > g["age"].iloc[0] and g["edss"].iloc[1] >= g["edss"].iloc[0]
    participants = tables["participants"]
    assert list(participants["subject"]) == sorted(scans["subject"].unique())
    assert (participants["n_sessions"].sum()) == len(scans)
    assert not list(cohort_dir.parent.glob(".cohort.*"))  # no temporary folder left behind


def test_participants_match_attribute_sampler(tables):
    p = tables["participants"]
    s = sample_attributes(SYNTH["n_subjects"], seed=SEED, healthy_fraction=SYNTH["healthy_fraction"])
    pd.testing.assert_series_equal(p["age"], s["age"], check_names=False)
    assert list(p["ms_type"]) == list(s["ms_type"]) and list(p["sex"]) == list(s["sex"])


def test_truth_lesions_and_atrophy(tables):
    truth = tables["truth"]
    hc = truth["ms_type"] == "HC"
    rim = truth["periventricular_cap_mm"] > 0.25  # HC past ~56: the thin rim of ageing, drawn as lesion
    assert hc.any() and (truth.loc[hc & ~rim, "lesion_volume_ml"] == 0).all()
    assert (truth.loc[hc, "lesion_count"] == 0).all()
    assert (truth.loc[~hc, "lesion_volume_ml"] > 0).all()
    assert spearmanr(truth["edss"], truth["lesion_volume_ml"]).statistic > 0.5
    assert truth["brain_volume_ml"].between(900, 1900).all()
    assert truth["ventricle_volume_ml"].between(5, 80).all()
    assert (truth.loc[hc & (truth["age"] < 50), "periventricular_cap_mm"] == 0).all()  # no rim before the ageing onset
    for _, g in truth.groupby("subject"):
        if len(g) == 2:  # follow-up: more lesion, wider ventricles, less brain
            first, second = g.sort_values("session").iloc[0], g.sort_values("session").iloc[1]
            assert second["lesion_volume_ml"] >= first["lesion_volume_ml"]
            assert second["ventricle_widening_mm"] >= first["ventricle_widening_mm"]
            assert second["brain_volume_ml"] <= first["brain_volume_ml"] + 1.0


def test_headers_match_truth(cohort_dir, tables):
    truth = tables["truth"].set_index("scan")
    assert set(truth["site"]) == {s.name for s in SITES}
    for scan, row in truth.iterrows():
        img = nib.load(cohort_dir / "images" / f"{scan}_flair.nii.gz")
        mask = nib.load(cohort_dir / "masks" / f"{scan}_brainmask.nii.gz")
        lesions = nib.load(cohort_dir / "lesions" / f"{scan}_lesions.nii.gz")
        assert "".join(nib.aff2axcodes(img.affine)) == row["orientation"]
        assert str(img.get_data_dtype()) == row["dtype"]
        assert "x".join(f"{v:g}" for v in img.header.get_zooms()) == row["voxel_size_mm"]
        assert "x".join(str(n) for n in img.shape) == row["shape"]
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        for other in (mask, lesions, nib.load(cohort_dir / "images" / f"{scan}_t1w.nii.gz")):
            assert other.shape == img.shape and np.allclose(other.affine, img.affine)


def test_uint16_slope_round_trips(cohort_dir, tables, tmp_path):
    truth = tables["truth"]
    row = truth[truth["dtype"] == "uint16"].iloc[0]
    img = nib.load(cohort_dir / "images" / f"{row['scan']}_flair.nii.gz")
    assert img.dataobj.slope == pytest.approx(row["scl_slope"]) and row["scl_slope"] != 1
    raw = np.asarray(img.dataobj.get_unscaled())
    assert raw.dtype == np.uint16
    np.testing.assert_allclose(img.get_fdata(), raw * row["scl_slope"], rtol=1e-6)
    # writer level: intensities come back within half a quantisation step
    values = np.linspace(0, 3000, 24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(to_nifti(values, np.eye(4), "uint16", 0.25), tmp_path / "x.nii.gz")
    back = nib.load(tmp_path / "x.nii.gz")
    assert back.get_data_dtype() == np.uint16
    np.testing.assert_allclose(back.get_fdata(), values, atol=0.125 + 1e-4)


def test_masks_inside_head_and_world_coordinates(cohort_dir, tables):
    centre_world = load_template(2).affine @ np.append(load_template(2).centre, 1.0)
    for scan in tables["truth"]["scan"]:
        img = nib.load(cohort_dir / "images" / f"{scan}_flair.nii.gz")
        data = img.get_fdata(dtype=np.float32)
        mask = np.asarray(nib.load(cohort_dir / "masks" / f"{scan}_brainmask.nii.gz").dataobj) > 0
        lesions = np.asarray(nib.load(cohort_dir / "lesions" / f"{scan}_lesions.nii.gz").dataobj) > 0
        assert 800 < mask.sum() * np.prod(img.header.get_zooms()) / 1000 < 2600  # ml
        for axis in range(3):  # the head (with skull) fits inside the field of view
            assert not np.take(mask, [0, -1], axis=axis).any()
        corners = np.concatenate([data[:8, :8, :].ravel(), data[-8:, -8:, :].ravel()])
        assert data[mask].mean() > 5 * corners.mean()
        assert lesions.sum() == 0 or (lesions & mask).sum() / lesions.sum() > 0.99
        # every orientation keeps world coordinates right: the brain stays near the template's centre
        centroid = img.affine @ np.append(np.argwhere(mask).mean(0), 1.0)
        assert np.linalg.norm(centroid[:3] - centre_world[:3]) < 15.0


def test_subject_is_deterministic_and_independent_of_workers(cohort_dir, tables, tmp_path):
    """Re-synthesising one subject in-process (1 worker) gives the cohort's (2 workers) bytes."""
    cfg = _cfg()
    plans = plan_cohort(6, SEED, SYNTH["healthy_fraction"], 0.7, SYNTH["second_session_fraction"], len(SITES))
    plan = next(p for p in plans if p.n_sessions == 2)
    for sub in ("images", "masks", "lesions"):
        (tmp_path / "a" / sub).mkdir(parents=True)
        (tmp_path / "b" / sub).mkdir(parents=True)
    job = cohort._Job(plan, cfg["seed"], 2, ("flair", "t1w"), str(tmp_path / "a"))
    rows = cohort.synthesize_subject(job)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.nii.gz"))
    assert len(files) == 2 * 4  # 2 sessions x (2 images + mask + lesions)
    for rel in files:
        assert _sha(tmp_path / "a" / rel) == _sha(cohort_dir / rel), rel
    truth = tables["truth"].set_index("scan")
    for row in rows["truth"]:
        assert row["lesion_volume_ml"] == pytest.approx(truth.loc[row["scan"], "lesion_volume_ml"])
    other = cohort.synthesize_subject(cohort._Job(plan, cfg["seed"] + 1, 2, ("flair",), str(tmp_path / "b")))
    rel = Path("images") / f"{plan.subject}_ses-01_flair.nii.gz"
    assert _sha(tmp_path / "b" / rel) != _sha(cohort_dir / rel)
    assert other["participant"]["age"] != rows["participant"]["age"]


def test_failed_run_leaves_no_output(tmp_path, monkeypatch):
    calls = []

    def flaky(job):
        calls.append(job.plan.subject)
        (Path(job.out_dir) / "images" / f"{job.plan.subject}.nii.gz").write_bytes(b"partial")
        if len(calls) == 2:
            raise RuntimeError("killed")
        return {}

    monkeypatch.setattr(cohort, "synthesize_subject", flaky)
    out = tmp_path / "cohort"
    with pytest.raises(RuntimeError):
        cohort.synthesize_cohort(_cfg(n_subjects=4), out, workers=1)
    assert calls == ["sub-001", "sub-002"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_rejects_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthetic: {n_subjects: 2}\n")
    code = cli.main(["synthesize", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "synthetic.n_subjects" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("synthetic: {n_subjects: 4}\n")
    with pytest.raises(BrainlatentError, match="--workers"):
        cohort.run(argparse.Namespace(config=str(good), out=tmp_path / "y", workers=0))
    assert not (tmp_path / "y").exists()
