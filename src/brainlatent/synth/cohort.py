"""``brainlatent synthesize``: write the synthetic MS cohort (NIfTI images, masks, tables).

Output folder (written whole into a temporary folder, then renamed into place)::

    images/<scan>_<modality>.nii.gz   one image per scan and configured modality
    masks/<scan>_brainmask.nii.gz     the true brain mask in the scan's space
    lesions/<scan>_lesions.nii.gz     the true lesion mask in the scan's space
    participants.tsv                  one row per subject (attributes at the first session)
    scans.tsv                         the scans table the workflow reads (paths relative to it)
    truth.tsv                         per scan: true volumes and acquisition facts
    cohort.json                       the synthetic config, seed and site table (provenance)

``<scan>`` is ``<subject>_<session>``, e.g. ``sub-007_ses-02``. ``truth.tsv`` holds, per scan, the
session's attributes, ``years_since_baseline``, ``lesion_count``, ``lesion_volume_ml`` (soft, native
grid), ``lesion_mask_ml`` (the written mask), ``brain_volume_ml`` (GM + WM + lesions),
``ventricle_volume_ml``, ``mask_volume_ml``, the atrophy parameters, the periventricular rim
(``periventricular_cap_mm``), ``head_scale`` and the
acquisition (``voxel_size_mm`` and ``shape`` in stored axis order, ``orientation``, ``dtype``,
``scl_slope``, ``noise``). Each subject's draws come from
``derive_seed(seed, "synthesize", subject)``, so the files do not depend on the worker count.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainlatent import __version__
from brainlatent.config import load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.io import atomic_dir, write_json, write_table
from brainlatent.synth import anatomy as anat
from brainlatent.synth.clinical import Clinical, SubjectPlan, draw_baseline, draw_follow_up, plan_cohort, subject_rngs
from brainlatent.synth.effects import Effects, default_effects
from brainlatent.synth.contrast import (
    SITES,
    Site,
    bias_field,
    field_of_view,
    render_contrast,
    reorient,
    resample,
    rician,
    to_nifti,
)
from brainlatent.synth.template import Template, load_template

log = logging.getLogger(__name__)

SCAN_COLUMNS = ["subject", "session", "mask", "age", "edss", "ms_type", "sex", "site"]


@dataclass(frozen=True)
class _Job:
    plan: SubjectPlan
    seed: int
    resolution_mm: int
    modalities: tuple[str, ...]
    out_dir: str
    effects: Effects | None = None  # None: the schema's defaults


def _sessions(job: _Job, rngs: dict, template) -> list[tuple[str, Clinical, list, float]]:
    """``(session, clinical, lesions, years since baseline)`` for each of the subject's sessions."""
    plan = job.plan
    base = draw_baseline(rngs["clinical"], plan.ms_type, plan.sex)
    fx = job.effects
    lesions = anat.draw_lesions(rngs["ses-01"], template, base, effects=fx)
    out = [("ses-01", base, lesions, 0.0)]
    if plan.n_sessions > 1:
        years = float(rngs["ses-02"].uniform(1.0, 3.0))
        follow = draw_follow_up(rngs["clinical"], base, years)
        out.append(("ses-02", follow, anat.progress_lesions(rngs["ses-02"], template, lesions, follow, years, effects=fx), years))
    return out


def render_session(
    template: Template,
    anatomy: anat.SubjectAnatomy,
    clinical: Clinical,
    lesions: list[anat.Lesion],
    modalities: tuple[str, ...],
    texture: np.ndarray,
    effects: Effects | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, float]]:
    """One session in the subject's native space (the template grid), before acquisition.

    A pure function of its arguments: re-rendering with a changed ``clinical`` (and the lesions
    drawn for it) changes only that attribute's effects. ``effects``: the effect sizes (default:
    the schema's).

    Returns:
        ``(images, brain, lesion, truth)``: noise-free image per modality, soft brain mask and
        lesion fraction (all ``X x Y x Z`` float32), and true volumes/atrophy parameters.
    """
    fx = effects or default_effects()
    widen, thin = anat.atrophy(anatomy, clinical, effects=fx)
    cap_mm = anat.cap_thickness(anatomy, clinical, effects=fx)
    lesion_map = anat.render_lesions(template, lesions, cap_mm)
    fractions = anat.tissue_fractions(template, anatomy, thin, lesion_map)
    coords = anat.subject_coordinates(template, anatomy, widen)
    images = {
        m: anat.warp(render_contrast(fractions, m, anatomy.contrast_jitter, texture), coords) for m in modalities
    }
    brain = anat.warp(template.brain, coords)
    lesion = anat.warp_sparse(fractions["lesion"], coords)
    parenchyma = fractions["gm"] + fractions["wm"] + fractions["lesion"]
    truth = {
        "lesion_count": len(lesions),
        "lesion_volume_ml": round(float(lesion.sum(dtype=np.float64)) * template.voxel_ml, 3),
        "brain_volume_ml": round(anat.warped_volume_ml(parenchyma, coords, template.voxel_ml), 2),
        "ventricle_volume_ml": round(anat.warped_volume_ml(template.ventricles, coords, template.voxel_ml), 2),
        "ventricle_widening_mm": round(widen, 3),
        "cortical_thinning": round(thin, 3),
        "periventricular_cap_mm": round(cap_mm, 3),
        "head_scale": round(anatomy.scale, 4),
    }
    return images, brain, lesion, truth


def acquire_session(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    lesion: np.ndarray,
    template: Template,
    site: Site,
    rng: np.random.Generator,
    out_dir: Path,
    scan: str,
) -> tuple[dict[str, str], dict]:
    """Acquire one session at ``site`` and write its images, brain mask and lesion mask.

    Returns:
        ``(paths, truth)``: path per modality (relative to ``out_dir``) and acquisition facts.
    """
    head = next(iter(images.values())) > 0.02
    grid = field_of_view(head, template.affine, site.voxel_mm, rng.uniform(4.0, 14.0, size=3))
    bias = bias_field(rng, template.shape, template.resolution_mm, site.bias)
    paths = {}
    for modality, image in images.items():
        data = resample(image * bias, template.affine, grid) * np.float32(site.gain)
        data = rician(data, site.noise * site.gain, rng)
        arr, affine = reorient(data, grid.affine, site.orientation)
        paths[modality] = f"images/{scan}_{modality}.nii.gz"
        nib.save(to_nifti(arr, affine, site.dtype, site.scl_slope), str(out_dir / paths[modality]))
    voxel_ml = float(np.prod(grid.voxel_mm)) / 1000.0
    masks = {}
    targets = (("mask", brain, "masks", "brainmask"), ("lesion", lesion, "lesions", "lesions"))
    for name, soft, folder, suffix in targets:
        binary = resample(soft, template.affine, grid) > 0.5 if soft.any() else np.zeros(grid.shape, dtype=bool)
        arr, affine = reorient(binary.astype(np.uint8), grid.affine, site.orientation)
        nib.save(to_nifti(arr, affine, "uint8"), str(out_dir / folder / f"{scan}_{suffix}.nii.gz"))
        masks[name] = float(binary.sum(dtype=np.int64)) * voxel_ml
    paths["mask"] = f"masks/{scan}_brainmask.nii.gz"
    stored_axes = nib.orientations.axcodes2ornt(tuple(site.orientation))[:, 0].astype(int)
    truth = {
        "lesion_mask_ml": round(masks["lesion"], 3),
        "mask_volume_ml": round(masks["mask"], 2),
        "voxel_size_mm": "x".join(f"{site.voxel_mm[a]:g}" for a in stored_axes),  # stored axis order
        "shape": "x".join(str(grid.shape[a]) for a in stored_axes),
        "orientation": site.orientation,
        "dtype": site.dtype,
        "scl_slope": site.scl_slope,
        "noise": site.noise,
    }
    return paths, truth


def synthesize_subject(job: _Job) -> dict:
    """Draw, render, acquire and write every session of one subject; returns its table rows."""
    plan = job.plan
    template = load_template(job.resolution_mm)
    site = SITES[plan.site]
    rngs = subject_rngs(job.seed, plan.subject)
    anatomy = anat.draw_subject_anatomy(rngs["anatomy"], template, plan.sex)
    bases = tuple(anat.gaussian_basis(n, template.resolution_mm, 20.0, 12.0) for n in template.shape)
    texture = anat.smooth_field(anatomy.texture, bases) * template.brain  # tissue texture, brain only
    scans, truths = [], []
    sessions = _sessions(job, rngs, template)
    for session, clinical, lesions, years in sessions:
        scan = f"{plan.subject}_{session}"
        images, brain, lesion, anatomy_truth = render_session(
            template, anatomy, clinical, lesions, job.modalities, texture, job.effects
        )
        paths, acq_truth = acquire_session(
            images, brain, lesion, template, site, rngs["acquisition"], Path(job.out_dir), scan
        )
        attrs = {"age": clinical.age, "edss": clinical.edss, "ms_type": clinical.ms_type, "sex": clinical.sex}
        scans.append({
            "subject": plan.subject, "session": session, **{f"image_{m}": paths[m] for m in job.modalities},
            "mask": paths["mask"], **attrs, "site": site.name,
        })
        truths.append({
            "scan": scan, "subject": plan.subject, "session": session, "site": site.name, **attrs,
            "years_since_baseline": round(years, 2), **anatomy_truth, **acq_truth,
        })
    base = sessions[0][1]
    participant = {
        "subject": plan.subject, "sex": plan.sex, "age": base.age, "ms_type": plan.ms_type, "edss": base.edss,
        "onset_age": base.onset_age, "disease_duration": base.disease_duration, "site": site.name,
        "n_sessions": plan.n_sessions,
    }
    return {"participant": participant, "scans": scans, "truth": truths}


def _progress(iterable, total: int, desc: str):
    """tqdm on a terminal, plain log lines (every ~10 %) otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, unit="subject")
        return
    step = max(1, total // 10)
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        if i % step == 0 or i == total:
            log.info("%s: %d/%d subjects (%.1f s)", desc, i, total, time.perf_counter() - start)
        yield item


def _pool_context() -> mp.context.BaseContext:
    """``fork`` where available: workers inherit the template built once in the parent."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def synthesize_cohort(cfg: dict, out_dir: Path, workers: int | None = None) -> pd.DataFrame:
    """Write the synthetic cohort described by ``cfg["synthetic"]`` into ``out_dir``.

    Args:
        cfg: a completed study config (:func:`brainlatent.config.load_config`).
        out_dir: output folder; replaced whole, atomically, when every file is written.
        workers: processes to use (default ``cfg["synthetic"]["workers"]``); the files do not
            depend on it.

    Returns:
        The scans table (as written to ``scans.tsv``): one row per scan with columns
        ``subject, session, image_<modality>..., mask, age, edss, ms_type, sex, site``.

    Example:
        >>> cfg = load_config({"synthetic": {"n_subjects": 4}})
        >>> scans = synthesize_cohort(cfg, Path("/tmp/cohort"))  # doctest: +SKIP
        >>> list(scans.columns)[:3]  # doctest: +SKIP
        ['subject', 'session', 'image_flair']
    """
    syn = cfg["synthetic"]
    out_dir = Path(out_dir)
    modalities = tuple(syn["modalities"])
    plans = plan_cohort(
        syn["n_subjects"], cfg["seed"], syn["healthy_fraction"], syn["female_fraction"],
        syn["second_session_fraction"], n_sites=len(SITES),
    )
    workers = max(1, min(int(workers or syn["workers"]), len(plans)))
    start = time.perf_counter()
    load_template(syn["template_resolution_mm"])  # once, before the workers fork
    with atomic_dir(out_dir) as tmp:
        for sub in ("images", "masks", "lesions"):
            (tmp / sub).mkdir()
        effects = Effects.from_config(syn["effects"])
        jobs = [_Job(p, cfg["seed"], syn["template_resolution_mm"], modalities, str(tmp), effects) for p in plans]
        if workers == 1:
            results = list(_progress(map(synthesize_subject, jobs), len(jobs), "synthesize"))
        else:
            with _pool_context().Pool(workers) as pool:
                results = list(_progress(pool.imap(synthesize_subject, jobs), len(jobs), "synthesize"))
        participants = pd.DataFrame([r["participant"] for r in results])
        image_cols = [f"image_{m}" for m in modalities]
        scans = pd.DataFrame([row for r in results for row in r["scans"]])
        scans = scans[SCAN_COLUMNS[:2] + image_cols + SCAN_COLUMNS[2:]]
        truth = pd.DataFrame([row for r in results for row in r["truth"]])
        write_table(tmp / "participants.tsv", participants)
        write_table(tmp / "scans.tsv", scans)
        write_table(tmp / "truth.tsv", truth)
        write_json(tmp / "cohort.json", {
            "generator": f"brainlatent {__version__}",
            "seed": cfg["seed"],
            "synthetic": syn,
            "template": f"nilearn MNI152 2009 at {syn['template_resolution_mm']} mm",
            "sites": [s.as_dict() for s in SITES],
            "n_subjects": len(participants),
            "n_scans": len(scans),
        })
    log.info("synthesized %d subjects, %d scans in %.1f s -> %s", len(participants), len(scans),
             time.perf_counter() - start, out_dir)
    return scans


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``brainlatent synthesize``."""
    parser.add_argument("--config", required=True, help="study config: a YAML path or an inline JSON string")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced whole when done)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: synthetic.workers of the config); files do not depend on it")


def run(args: argparse.Namespace) -> None:
    """Entry point of ``brainlatent synthesize``."""
    cfg = load_stage_config(args.config, "synthesize")
    if args.workers is not None and args.workers < 1:
        raise BrainlatentError(f"--workers: got {args.workers}; expected a positive number of processes")
    scans = synthesize_cohort(cfg, args.out, workers=args.workers)
    print(f"wrote {len(scans)} scans of {scans['subject'].nunique()} subjects to {args.out}")
