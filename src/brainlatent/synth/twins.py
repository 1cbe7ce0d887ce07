"""``brainlatent twins``: counterfactual twins of the synthetic cohort's test subjects.

A twin is its source scan re-rendered with one attribute changed through the cohort's own causal
model, and nothing else: the same anatomy, deformation, texture, lesion candidates, site, field of
view, bias field and noise draws (every per-subject generator is replayed from the seed).

Causal graph of the generator (:mod:`brainlatent.synth.clinical`, :mod:`brainlatent.synth.anatomy`)::

    sex     -> head size
    age     -> atrophy (ventricles, cortex);      causal mode, patients: -> disease duration -> EDSS
    ms_type -> lesion load factor, cap (HC: none); causal mode: -> EDSS model (HC: EDSS 0)
    EDSS    -> lesion count and size, periventricular cap, atrophy

An intervention (``synthetic.twins.interventions``) sets (``value``) or shifts (``shift``) one
attribute at every session of the subject; ``sex: other`` swaps F and M. Two modes:

* ``single``: only that attribute changes (its children in the image follow, other attributes do
  not, e.g. an age twin keeps its EDSS);
* ``causal``: the attributes that depend on it are recomputed with the subject's own noise
  (abduction): an age twin's disease duration and EDSS (``baseline_edss`` with the same ``edss_z``,
  follow-up with the same ``progression_z``), an MS-type twin's EDSS (HC: 0).

Lesions are a prefix of the subject's fixed candidate list (:func:`anatomy.lesion_candidates`), so
a lower-EDSS twin has a subset of its source's lesions, each smaller. A twin is skipped, named in a
log line and in ``truth.tsv`` with the reason, when it would equal its source (e.g. EDSS 0 for an
EDSS-0 subject) or, in causal mode, its single-mode twin (EDSS and sex have no attribute children;
a healthy control's age), or when causal mode has nothing to recompute from (HC -> MS course).

Every twin is written like the cohort, preprocessed by :func:`brainlatent.preprocess.preprocess_scan`
into its source's output box (``box_affine``: the box is otherwise centred on the brain mask, which
the intervention moves) and sliced at its source's slice indices with the slice stage's functions.

Output folder (written whole, then renamed into place)::

    cohort/images/<twin>_<modality>.nii.gz, masks/<twin>_brainmask.nii.gz, lesions/<twin>_lesions.nii.gz
    cohort/scans.tsv                    the twins as a scans table (paths relative to it)
    preprocessed/images|masks/<twin>.nii.gz, preprocessed/summaries/<twin>.json
    slices/<R>/images.npy               float32 N x 1 x R x R in [-1, 1] (as the slice stage)
    slices/<R>/lesions.npy              float32 N x 1 x R x R: true lesion fraction of the twin slice
    slices/<R>/source_lesions.npy       ... of the source slice (the source's true mask, same path)
    slices/<R>/manifest.parquet         index, twin, scan, subject, session, slice, source_index,
                                        intervention, mode, label, split, <attributes> (the twin's),
                                        source_<attribute> (the source's)
    truth.tsv                           one row per twin scan (skipped ones too): twin, scan, subject,
                                        session, intervention, label, mode, source_<attr> and <attr>
                                        (age, edss, ms_type, sex, onset_age, disease_duration), site,
                                        source_ and twin lesion_count, lesion_volume_ml,
                                        ventricle_volume_ml, brain_volume_ml, ventricle_widening_mm,
                                        cortical_thinning, head_scale; skipped (the reason, empty
                                        for a made twin), qc_failures, lesion_mask_ml,
                                        head_outside_fov_ml, image, mask (paths in cohort/)

``<twin>`` is ``<scan>+<label>+<mode>``, e.g. ``sub-007_ses-01+edss=0+single``, ``sub-007_ses-01+age+10+causal``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from brainlatent import io
from brainlatent.config import load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.synth import anatomy as anat
from brainlatent.synth.clinical import (
    EDSS_MAX,
    MS_TYPES,
    Clinical,
    SubjectPlan,
    baseline_edss,
    follow_up_edss,
    plan_cohort,
    subject_rngs,
)
from brainlatent.synth.cohort import (
    Acquisition,
    _pool_context,
    acquire_session,
    plan_acquisition,
    render_session,
    session_history,
    session_lesions,
)
from brainlatent.interventions import Intervention
from brainlatent.synth.effects import Effects
from brainlatent.synth.contrast import SITES
from brainlatent.synth.template import Template, load_template

log = logging.getLogger(__name__)

ATTRIBUTES = ("age", "edss", "ms_type", "sex")
MODES = ("single", "causal")
#: the clinical facts of a session compared to decide whether a twin changed anything
_FACTS = ("age", "edss", "ms_type", "sex", "onset_age", "disease_duration")

History = list[tuple[str, Clinical, float]]


def parse_interventions(items: list, where: str = "synthetic.twins.interventions") -> list[Intervention]:
    """Check the configured interventions; a bad one raises naming its key and value."""
    out = []
    for i, item in enumerate(items):
        key = f"{where}.{i}"
        attr, value, shift = item.get("attribute"), item.get("value"), item.get("shift")
        if attr not in ATTRIBUTES:
            raise BrainlatentError(f"{key}.attribute: {attr!r} is not one of {list(ATTRIBUTES)}")
        if (value is None) == (shift is None):
            raise BrainlatentError(f"{key}: give exactly one of 'value' and 'shift' for {attr}")
        if shift is not None and attr not in ("age", "edss"):
            raise BrainlatentError(f"{key}.shift: {attr} is categorical; give a 'value'")
        if attr == "edss" and value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= EDSS_MAX or (value * 2) % 1):
            raise BrainlatentError(f"{key}.value: EDSS {value!r}; expected 0-{EDSS_MAX:g} in steps of 0.5")
        if attr == "age" and value is not None and not isinstance(value, (int, float)):
            raise BrainlatentError(f"{key}.value: age {value!r}; expected a number of years")
        if attr == "sex" and value not in ("F", "M", "other"):
            raise BrainlatentError(f"{key}.value: sex {value!r}; expected F, M or other")
        if attr == "ms_type" and value not in MS_TYPES:
            raise BrainlatentError(f"{key}.value: ms_type {value!r}; expected one of {list(MS_TYPES)}")
        out.append(Intervention(attr, float(value) if attr in ("age", "edss") and value is not None else value,
                                None if shift is None else float(shift)))
    return out


def _round_edss(value: float) -> float:
    return float(np.clip(np.round(value * 2.0) / 2.0, 0.0, EDSS_MAX))


def _facts(clinical: Clinical) -> tuple:
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in (getattr(clinical, k) for k in _FACTS))


def same_history(a: History, b: History) -> bool:
    """Whether two histories have the same clinical facts at every session (NaN equals NaN)."""
    return len(a) == len(b) and all(_facts(x[1]) == _facts(y[1]) for x, y in zip(a, b))


def intervene(history: History, intervention: Intervention, session: str) -> History:
    """The single-mode twin: the attribute set or shifted at every session, nothing else changed.

    Args:
        history: the source subject's ``(session, clinical, years)`` list (:func:`session_history`).
        intervention: what to change.
        session: the scan the twin is of; an ``age`` ``value`` is the age at this session.
    """
    attr = intervention.attribute
    at = {s: c for s, c, _ in history}[session]
    out = []
    for name, clin, years in history:
        if attr == "edss":
            edss = intervention.value if intervention.shift is None else _round_edss(clin.edss + intervention.shift)
            clin = replace(clin, edss=float(edss))
        elif attr == "age":
            delta = intervention.shift if intervention.shift is not None else intervention.value - at.age
            clin = replace(clin, age=round(clin.age + delta, 1))
        elif attr == "sex":
            sex = {"F": "M", "M": "F"}[clin.sex] if intervention.value == "other" else intervention.value
            clin = replace(clin, sex=sex)
        else:
            clin = replace(clin, ms_type=intervention.value)
        out.append((name, clin, years))
    return out


def propagate(twin: History, source: History) -> History:
    """Recompute the attributes that depend on age and MS type, with the source's own noise.

    Disease duration moves with age (the onset is kept); baseline EDSS is :func:`baseline_edss` of
    the new course, age and duration with the subject's ``edss_z``; a follow-up's EDSS is
    :func:`follow_up_edss` from the new baseline with its ``progression_z``; HC: EDSS 0. For an
    unchanged history this gives the source back exactly (abduction consistency).
    """
    out: History = []
    for i, ((name, clin, years), (_, src, _)) in enumerate(zip(twin, source)):
        if clin.ms_type == "HC":
            clin = replace(clin, edss=0.0, onset_age=float("nan"), disease_duration=float("nan"))
        elif i == 0:
            duration = round(src.disease_duration + (clin.age - src.age), 1)
            clin = replace(clin, disease_duration=duration, edss=baseline_edss(clin.ms_type, clin.age, duration, clin.edss_z))
        else:
            first = out[0][1]
            duration = round(first.disease_duration + (clin.age - first.age), 1)
            clin = replace(clin, disease_duration=duration,
                           edss=follow_up_edss(clin.ms_type, first.edss, years, clin.progression_z))
        out.append((name, clin, years))
    return out


def counterfactual(history: History, intervention: Intervention, mode: str, session: str) -> History | str:
    """The twin's history in ``mode`` (``single`` or ``causal``), or why there is no such twin (a string)."""
    single = intervene(history, intervention, session)
    if mode == "single":
        return single
    attr = intervention.attribute
    if attr in ("edss", "sex"):
        return f"nothing in the clinical model depends on {attr}: the causal twin is the single twin"
    if attr == "ms_type" and history[0][1].ms_type == "HC" and intervention.value != "HC":
        return "a healthy control has no disease onset to recompute EDSS from (causal mode)"
    twin = propagate(single, history)
    if same_history(twin, single):
        return "the causal twin equals the single twin (no attribute depends on the change here)"
    return twin


@dataclass
class SessionRender:
    """One rendered session: clinical state, lesions and the noise-free images on the subject grid."""

    session: str
    clinical: Clinical
    years: float
    lesions: list
    images: dict
    brain: np.ndarray
    lesion: np.ndarray
    truth: dict


def subject_anatomy(rngs: dict, template: Template, sex: str) -> tuple[anat.SubjectAnatomy, np.ndarray]:
    """The subject's anatomy (head size from ``sex``) and tissue texture, as the cohort draws them."""
    anatomy = anat.draw_subject_anatomy(rngs["anatomy"], template, sex)
    bases = tuple(anat.gaussian_basis(n, template.resolution_mm, 20.0, 12.0) for n in template.shape)
    return anatomy, anat.smooth_field(anatomy.texture, bases) * template.brain


def render_subject(
    plan: SubjectPlan,
    seed: int,
    template: Template,
    modalities: tuple[str, ...],
    history: History | None = None,
    sessions: set[str] | None = None,
    cap_mm: float | None = None,
    effects: Effects | None = None,
) -> list[SessionRender]:
    """Render a subject's sessions, or its twin's (``history``), from its own generators.

    Args:
        plan: the subject's cohort plan (MS type, sex, site, sessions).
        seed: the config's seed.
        template: the template.
        modalities: contrasts to render.
        history: the twin's clinical history (:func:`counterfactual`); ``None``: the subject's own.
        sessions: render only these sessions (default all).
        cap_mm: passed to :func:`render_session` (tests isolate the atrophy's effect with it).
        effects: the cohort's effect sizes (``synthetic.effects``; default: the schema's).
    """
    rngs = subject_rngs(seed, plan.subject)
    own = session_history(plan, rngs)  # consumes the same draws as the cohort (follow-up interval)
    history = own if history is None else history
    anatomy, texture = subject_anatomy(rngs, template, history[0][1].sex)
    out = []
    for (session, clinical, years), lesions in zip(history, session_lesions(rngs, template, history, effects)):
        if sessions is not None and session not in sessions:
            continue
        images, brain, lesion, truth = render_session(template, anatomy, clinical, lesions, modalities, texture,
                                                      cap_mm=cap_mm, effects=effects)
        out.append(SessionRender(session, clinical, years, lesions, images, brain, lesion, truth))
    return out


def source_acquisitions(plan: SubjectPlan, seed: int, renders: list[SessionRender], template: Template, n_modalities: int) -> dict[str, Acquisition]:
    """Replay the acquisition generator over the subject's sessions: grid, bias, noise state of each."""
    rng = subject_rngs(seed, plan.subject)["acquisition"]
    site = SITES[plan.site]
    out = {}
    for render in renders:
        acq = plan_acquisition(render.images, template, site, rng)
        out[render.session] = acq
        for _ in range(2 * n_modalities):  # the Rician noise of this session (real, imaginary part)
            rng.standard_normal(acq.grid.shape, dtype=np.float32)
    return out


def head_outside_ml(image: np.ndarray, template: Template, acquisition: Acquisition) -> float:
    """Volume (ml) of a twin's head (image > 0.02, as the field of view is planned) outside its
    source's field of view: a larger (sex twin's) head can reach beyond the margin."""
    grid = acquisition.grid
    inside = []
    for a in range(3):
        world = template.affine[a, a] * np.arange(template.shape[a]) + template.affine[a, 3]
        lo, hi = grid.origin_mm[a], grid.origin_mm[a] + (grid.shape[a] - 1) * grid.voxel_mm[a]
        inside.append((world >= lo) & (world <= hi))
    box = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return float(((image > 0.02) & ~box).sum()) * template.voxel_ml


# --------------------------------------------------------------------------------------------
# the stage


@dataclass(frozen=True)
class _SubjectJob:
    plan: SubjectPlan
    scans: tuple[str, ...]  # the subject's scans that have slices in the chosen split


def _slice_images(vol: np.ndarray, mask: np.ndarray, zs: list[int], method: str, res: int) -> list[np.ndarray]:
    from brainlatent.slices import resize_square, scale_intensities, to_display

    return [resize_square(to_display(scale_intensities(vol[:, :, z], mask[:, :, z], method)), res, background=-1.0) for z in zs]


def lesion_slices(lesion_path: Path, box_affine: np.ndarray, box_shape: tuple[int, int, int], zs: list[int], res: int) -> list[np.ndarray]:
    """True lesion fraction of the slices ``zs`` of a preprocessed box, from a scan's true lesion mask.

    The mask goes through the preprocessing's resampling (trilinear, anti-aliased, straight onto the
    box: the same values as resampling to the RAS grid and cropping) and the slice stage's display
    orientation and area-averaging resize.
    """
    import nibabel as nib

    from brainlatent.preprocess import resample_to_grid
    from brainlatent.slices import resize_square, to_display

    if not lesion_path.exists():
        raise BrainlatentError(f"{lesion_path}: true lesion mask missing")
    img = nib.load(str(lesion_path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    box = resample_to_grid(data, img.affine.astype(float), box_affine, box_shape, order=1)
    return [np.clip(resize_square(to_display(box[:, :, z]), res, background=0.0), 0.0, 1.0) for z in zs]


def _twin_jobs(cfg: dict, manifest: pd.DataFrame, split: str) -> list[_SubjectJob]:
    syn = cfg["synthetic"]
    plans = {p.subject: p for p in plan_cohort(syn["n_subjects"], cfg["seed"], syn["healthy_fraction"], syn["female_fraction"],
                                               syn["second_session_fraction"], n_sites=len(SITES))}
    chosen = manifest[manifest["split"] == split]
    jobs = []
    for subject, rows in chosen.groupby("subject", sort=True):
        if subject not in plans:
            raise BrainlatentError(f"slice manifest: subject {subject!r} is not in the synthetic cohort of this config "
                                   f"(synthetic.n_subjects {syn['n_subjects']}, seed {cfg['seed']})")
        jobs.append(_SubjectJob(plans[subject], tuple(sorted(rows["scan"].unique()))))
    return jobs


@dataclass(frozen=True)
class _Context:
    cfg: dict
    cohort_dir: str
    preprocessed_dir: str
    out_dir: str
    manifest: pd.DataFrame
    interventions: tuple[Intervention, ...]
    modes: tuple[str, ...]


_CTX: _Context | None = None


def _attr_values(clinical: Clinical) -> dict:
    return {"age": clinical.age, "edss": clinical.edss, "ms_type": clinical.ms_type, "sex": clinical.sex,
            "onset_age": clinical.onset_age, "disease_duration": clinical.disease_duration}


def _truth_volumes(truth: dict, prefix: str = "") -> dict:
    keys = ("lesion_count", "lesion_volume_ml", "ventricle_volume_ml", "brain_volume_ml", "ventricle_widening_mm",
            "cortical_thinning", "head_scale")
    return {f"{prefix}{k}": truth.get(k, np.nan) for k in keys}


def twin_subject(job: _SubjectJob) -> dict:
    """Render, acquire, preprocess and slice every twin of one subject's scans (a worker's job)."""
    import nibabel as nib

    from brainlatent.preprocess import preprocess_scan

    ctx = _CTX
    cfg, syn = ctx.cfg, ctx.cfg["synthetic"]
    out, cohort_dir, pre_dir = Path(ctx.out_dir), Path(ctx.cohort_dir), Path(ctx.preprocessed_dir)
    modalities = tuple(syn["modalities"])
    modality = cfg["inputs"]["modality"]
    if modality not in modalities:
        raise BrainlatentError(f"inputs.modality {modality!r} is not among synthetic.modalities {list(modalities)}")
    plan, site = job.plan, SITES[job.plan.site]
    template = load_template(syn["template_resolution_mm"])
    res = cfg["slices"]["resolution"]
    method = cfg["preprocess"]["normalise"]["method"]
    spacing = np.asarray(cfg["preprocess"]["spacing_mm"], dtype=float)
    fov_shape = tuple(int(v) for v in np.maximum(1, np.round(np.asarray(cfg["preprocess"]["field_of_view_mm"], dtype=float) / spacing)).astype(int))

    last = max(int(s.split("_ses-")[1]) for s in job.scans)
    effects = Effects.from_config(cfg["synthetic"]["effects"])
    sources = render_subject(plan, cfg["seed"], template, modalities, effects=effects)
    sources = [r for r in sources if int(r.session.split("-")[1]) <= last]
    acquisitions = source_acquisitions(plan, cfg["seed"], sources, template, len(modalities))
    history = [(r.session, r.clinical, r.years) for r in sources]
    by_session = {r.session: r for r in sources}
    rows, truth_rows, images, lesions, source_lesions, seconds = [], [], [], [], [], []
    for scan in job.scans:
        session = scan.split("_", 1)[1]
        src = by_session[session]
        slices = ctx.manifest[ctx.manifest["scan"] == scan].sort_values("index")
        for attr in ("age", "edss", "ms_type", "sex"):
            if attr in slices and len(slices) and not _equal(slices[attr].iloc[0], getattr(src.clinical, attr)):
                raise BrainlatentError(f"slice manifest: {scan} has {attr} {slices[attr].iloc[0]!r} but the generator replays "
                                       f"{getattr(src.clinical, attr)!r}; the cohort was made with another seed or synthetic config")
        box_img = nib.load(str(pre_dir / "images" / f"{scan}.nii.gz")) if (pre_dir / "images" / f"{scan}.nii.gz").exists() else None
        if box_img is None:
            raise BrainlatentError(f"{pre_dir / 'images' / (scan + '.nii.gz')}: preprocessed source scan missing; run the preprocess rule first")
        if tuple(box_img.shape[:3]) != fov_shape:
            raise BrainlatentError(f"{box_img.get_filename()}: shape {box_img.shape[:3]} is not the configured box {fov_shape}; "
                                   "was it preprocessed with another preprocess config?")
        box_affine = box_img.affine.astype(float)
        zs = slices["slice"].astype(int).tolist()
        upto = [h for h in history if int(h[0].split("-")[1]) <= int(session.split("-")[1])]
        for intervention in ctx.interventions:
            single = counterfactual(upto, intervention, "single", session)
            for mode in ctx.modes:
                twin_history = counterfactual(upto, intervention, mode, session)
                twin = f"{scan}+{intervention.label}+{mode}"
                reason = ""
                if isinstance(twin_history, str):
                    reason = twin_history
                elif same_history(twin_history, upto):
                    reason = f"the intervention leaves the subject unchanged ({intervention.attribute} is already {getattr(src.clinical, intervention.attribute)!r})"
                new = twin_history[-1][1] if not isinstance(twin_history, str) else (single[-1][1] if not isinstance(single, str) else src.clinical)
                row = {"twin": twin, "scan": scan, "subject": plan.subject, "session": session,
                       "intervention": intervention.attribute, "label": intervention.label, "mode": mode,
                       **{f"source_{k}": v for k, v in _attr_values(src.clinical).items()}, **_attr_values(new),
                       "site": site.name, **_truth_volumes(src.truth, "source_"), "skipped": reason}
                if reason:
                    truth_rows.append({**row, **_truth_volumes({})})
                    continue
                start = time.perf_counter()
                (render,) = render_subject(plan, cfg["seed"], template, modalities, history=twin_history,
                                          sessions={session}, effects=effects)
                acq = acquisitions[session]
                paths, acq_truth = acquire_session(render.images, render.brain, render.lesion, template, site, acq.noise_rng(),
                                                   out / "cohort", twin, acquisition=acq)
                rendered = time.perf_counter() - start
                outside = head_outside_ml(render.images[modalities[0]], template, acq)
                mask_arg = None
                if cfg["preprocess"]["mask"]["source"] == "table":
                    mask_arg = out / "cohort" / paths["mask"]
                summary = preprocess_scan(cfg, out / "cohort" / paths[modality], mask_arg, out / "preprocessed" / "images" / f"{twin}.nii.gz",
                                          out / "preprocessed" / "masks" / f"{twin}.nii.gz", None, box_affine=box_affine)
                io.write_json(out / "preprocessed" / "summaries" / f"{twin}.json", summary)
                seconds.append((rendered, time.perf_counter() - start - rendered))
                vol = np.asarray(nib.load(str(out / "preprocessed" / "images" / f"{twin}.nii.gz")).dataobj, dtype=np.float32)
                mask = np.asarray(nib.load(str(out / "preprocessed" / "masks" / f"{twin}.nii.gz")).dataobj) > 0
                images += _slice_images(vol, mask, zs, method, res)
                lesions += lesion_slices(out / "cohort" / "lesions" / f"{twin}_lesions.nii.gz", box_affine, fov_shape, zs, res)
                source_lesions += lesion_slices(cohort_dir / "lesions" / f"{scan}_lesions.nii.gz", box_affine, fov_shape, zs, res)
                for (_, srow) in slices.iterrows():
                    rows.append({"twin": twin, "scan": scan, "subject": plan.subject, "session": session, "slice": int(srow["slice"]),
                                 "source_index": int(srow["index"]), "intervention": intervention.attribute, "label": intervention.label,
                                 "mode": mode, "split": srow["split"], "new": new, "source": src.clinical})
                truth_rows.append({**row, **_truth_volumes(render.truth), "qc_failures": "; ".join(summary["qc"]["failures"]),
                                   "lesion_mask_ml": acq_truth["lesion_mask_ml"], "head_outside_fov_ml": round(outside, 2),
                                   "image": paths[modality], "mask": paths["mask"]})
    return {"rows": rows, "truth": truth_rows, "images": images, "lesions": lesions, "source_lesions": source_lesions, "seconds": seconds}


def _init_worker(ctx: _Context, threads: int | None) -> None:
    global _CTX
    _CTX = ctx
    if threads is not None:  # one SimpleITK thread per worker process
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _equal(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except (TypeError, ValueError):
        return str(a) == str(b)


def synthesize_twins(cfg: dict, scans_table: str | Path, slices_dir: str | Path, preprocessed_dir: str | Path, out_dir: str | Path,
                     workers: int | None = None) -> pd.DataFrame:
    """Write the twins of every scan of the configured split (see the module docstring).

    Args:
        cfg: the study config (``seed``, ``synthetic`` with ``twins``, ``inputs.modality``,
            ``preprocess``, ``slices.resolution``, ``attributes``).
        scans_table: the synthetic cohort's ``scans.tsv`` (its folder holds the true lesion masks).
        slices_dir: the slice dataset ``slices/<R>`` of the study (manifest: split, slice indices).
        preprocessed_dir: the study's ``preprocessed`` folder (each source's output box).
        out_dir: the twins folder to write (replaced whole).
        workers: processes (default ``synthetic.workers``).

    Returns:
        The truth table (one row per twin scan, skipped ones with their reason).
    """
    global _CTX
    from brainlatent.slices import load_slices

    syn, tw = cfg["synthetic"], cfg["synthetic"]["twins"]
    scans_table, slices_dir = Path(scans_table), Path(slices_dir)
    if not scans_table.exists():
        raise BrainlatentError(f"{scans_table}: cohort scans table missing; run the synthesize_cohort rule first")
    scans = pd.read_csv(scans_table, sep="\t")
    missing = [c for c in ("subject", "session") if c not in scans.columns]
    if missing:
        raise BrainlatentError(f"{scans_table}: column(s) {missing} missing; expected the synthetic cohort's scans.tsv")
    _, manifest = load_slices(slices_dir)
    for col in ("index", "scan", "subject", "session", "slice", "split"):
        if col not in manifest.columns:
            raise BrainlatentError(f"{slices_dir / 'manifest.parquet'}: column {col!r} missing; expected a slice_dataset manifest")
    known = set(scans["subject"].astype(str) + "_" + scans["session"].astype(str))
    unknown = sorted(set(manifest["scan"]) - known)
    if unknown:
        raise BrainlatentError(f"{slices_dir / 'manifest.parquet'}: scan {unknown[0]!r} is not in {scans_table} ({len(unknown)} unknown scans)")
    interventions = tuple(parse_interventions(tw["interventions"]))
    modes = tuple(tw["modes"])
    for m in modes:
        if m not in MODES:
            raise BrainlatentError(f"synthetic.twins.modes: {m!r} is not one of {list(MODES)}")
    jobs = _twin_jobs(cfg, manifest, tw["split"])
    if not jobs:
        raise BrainlatentError(f"{slices_dir / 'manifest.parquet'}: no subject in split {tw['split']!r}; no twins to make")
    workers = max(1, min(int(workers or syn["workers"]), len(jobs)))
    res = cfg["slices"]["resolution"]
    names = [a["name"] for a in cfg["attributes"]]
    load_template(syn["template_resolution_mm"])
    start = time.perf_counter()
    with io.atomic_dir(out_dir) as tmp:
        for sub in ("cohort/images", "cohort/masks", "cohort/lesions", "preprocessed/images", "preprocessed/masks", "preprocessed/summaries"):
            (tmp / sub).mkdir(parents=True)
        ctx = _Context(cfg, str(scans_table.parent), str(preprocessed_dir), str(tmp), manifest, interventions, modes)
        try:
            if workers == 1:
                _init_worker(ctx, threads=None)
                results = [twin_subject(j) for j in jobs]
            else:
                with _pool_context().Pool(workers, initializer=_init_worker, initargs=(ctx, 1)) as pool:
                    results = pool.map(twin_subject, jobs, chunksize=1)
        finally:
            _CTX = None
        rows = [r for res_ in results for r in res_["rows"]]
        for r in (r for res_ in results for r in res_["truth"] if r["skipped"]):
            log.info("twin %s skipped: %s", r["twin"], r["skipped"])
        truth = pd.DataFrame([r for res_ in results for r in res_["truth"]])
        seconds = [s for res_ in results for s in res_["seconds"]]
        table = []
        for i, r in enumerate(rows):
            new, src = r.pop("new"), r.pop("source")
            row = {"index": i, **r}
            for name in names:
                row[name] = getattr(new, name, np.nan)
            for name in names:
                row[f"source_{name}"] = getattr(src, name, np.nan)
            table.append(row)
        columns = ["index", "twin", "scan", "subject", "session", "slice", "source_index", "intervention", "label", "mode", "split"]
        out_manifest = pd.DataFrame(table, columns=columns + names + [f"source_{n}" for n in names])
        folder = tmp / "slices" / str(res)
        folder.mkdir(parents=True)
        for name, arrays in (("images", "images"), ("lesions", "lesions"), ("source_lesions", "source_lesions")):
            stack = np.stack([a for res_ in results for a in res_[arrays]]) if rows else np.zeros((0, res, res), np.float32)
            np.save(folder / f"{name}.npy", stack.astype(np.float32)[:, None])
        out_manifest.to_parquet(folder / "manifest.parquet", index=False)
        io.write_table(tmp / "truth.tsv", truth)
        made = truth[truth["skipped"] == ""] if len(truth) else truth
        twin_scans = pd.DataFrame({
            "subject": made["twin"], "session": made["session"], f"image_{cfg['inputs']['modality']}": made.get("image"),
            "mask": made.get("mask"), **{a: made[a] for a in ATTRIBUTES}, "site": made["site"], "source_scan": made["scan"],
        }) if len(made) else pd.DataFrame()
        io.write_table(tmp / "cohort" / "scans.tsv", twin_scans)
    if seconds:
        render_s, pre_s = np.mean([s[0] for s in seconds]), np.mean([s[1] for s in seconds])
        log.info("twins: %d twin scans (%d skipped), %d slices in %.1f s; per twin scan %.2f s render + acquire, %.2f s preprocess -> %s",
                 len(made), len(truth) - len(made), len(out_manifest), time.perf_counter() - start, render_s, pre_s, out_dir)
    return truth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``brainlatent twins``."""
    parser.add_argument("--config", required=True, help="study config: a YAML path or an inline JSON string")
    parser.add_argument("--scans", required=True, help="the synthetic cohort's scans.tsv (cohort/scans.tsv)")
    parser.add_argument("--slices", required=True, help="the study's slice dataset folder slices/<R>")
    parser.add_argument("--preprocessed", required=True, help="the study's preprocessed folder (the sources' output boxes)")
    parser.add_argument("--out", required=True, help="twins folder to write (replaced whole when done)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: synthetic.workers)")


def run(args: argparse.Namespace) -> None:
    """Entry point of ``brainlatent twins``."""
    cfg = load_stage_config(args.config, "twins")
    if args.workers is not None and args.workers < 1:
        raise BrainlatentError(f"--workers: got {args.workers}; expected a positive number of processes")
    truth = synthesize_twins(cfg, args.scans, args.slices, args.preprocessed, args.out, workers=args.workers)
    made = int((truth["skipped"] == "").sum()) if len(truth) else 0
    print(f"wrote {made} twin scans ({len(truth) - made} skipped, named in truth.tsv) to {args.out}")
