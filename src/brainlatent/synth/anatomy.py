"""One subject's anatomy: head size, a smooth random deformation, atrophy and MS lesions.

The subject's native space is the template grid itself: for every subject voxel ``i`` the
template is sampled at ``c + L (i - c - t) + u(i) + s * pull(i)``, where ``L`` undoes the head's
scale and a small rotation, ``t`` is a small shift, ``u`` a smooth random displacement (a sum of
Gaussian bumps, separable, so it costs three small matrix products) and ``s * pull`` widens the
lateral ventricles by ``s`` voxels (atrophy). Lesions and cortical thinning are drawn in template
space, so they deform with the rest of the head.

How strongly age, EDSS and MS type act (:func:`atrophy`, :func:`draw_lesions`,
:func:`cap_thickness`) is set by the config's ``synthetic.effects``
(:class:`brainlatent.synth.effects.Effects`; the schema's defaults when none is given). Each is a
deterministic function of the session's clinical attributes and the subject's offsets
(:class:`SubjectAnatomy`), which are drawn independently of the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from brainlatent.synth.clinical import Clinical
from brainlatent.synth.effects import Effects, default_effects
from brainlatent.synth.template import MEAN_THICKNESS_MM, Template

#: linear head scale of women relative to the MNI152 template (MNI brains are larger than average)
FEMALE_SCALE = 0.90
#: linear head scale of men relative to women. Real cohorts show about 4-5 % (12-15 % larger
#: intracranial volume) with wide overlap; the synthetic cohort plants 9 % with a narrow spread
#: (HEAD_SCALE_SD) so that sex is a clear, learnable attribute, as in the reference study
#: (classifier sex accuracy 0.88). Deliberately exaggerated: sex is planted only through size.
MALE_SCALE = 1.09
#: within-sex spread of the linear head scale (log-normal sigma)
HEAD_SCALE_SD = 0.02
#: Gaussian-bump displacement field: node spacing and bump width (mm), amplitude sd (mm)
DEFORM_SPACING_MM, DEFORM_WIDTH_MM, DEFORM_SD_MM = 30.0, 20.0, 1.8
#: new lesions per year of follow-up
NEW_LESIONS_PER_YEAR = {"HC": 0.0, "RRMS": 1.5, "SPMS": 1.0, "PPMS": 0.8}


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal white-matter lesion.

    Args:
        centre: voxel coordinates (template grid), shape ``3``.
        radii_mm: semi-axes, shape ``3``.
        rotation: ``3 x 3`` rotation of the semi-axes.
    """

    centre: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray


@dataclass(frozen=True)
class SubjectAnatomy:
    """Per-subject anatomical parameters, fixed across sessions.

    Args:
        scale: linear head scale (women ~0.90, men ~0.98 of the template).
        rotation: ``3 x 3`` head rotation (a few degrees).
        shift_vox: ``3`` head translation in voxels.
        deform: ``3 x a x b x c`` Gaussian-bump coefficients (voxels) of the displacement.
        thickness_mm: head layer thicknesses (see ``MEAN_THICKNESS_MM``).
        ventricle_offset_mm: subject-specific ventricle size offset (added to the atrophy model).
        thinning_offset: subject-specific cortical thinning offset.
        cap_offset_mm: subject-specific periventricular lesion cap offset.
        texture: ``a x b x c`` coefficients of a smooth multiplicative intensity texture.
        contrast_jitter: ``2`` relative grey/white matter intensity offsets.
    """

    scale: float
    rotation: np.ndarray
    shift_vox: np.ndarray
    deform: np.ndarray
    thickness_mm: dict
    ventricle_offset_mm: float
    thinning_offset: float
    cap_offset_mm: float
    texture: np.ndarray
    contrast_jitter: np.ndarray


def gaussian_basis(n: int, resolution_mm: float, spacing_mm: float, width_mm: float) -> np.ndarray:
    """``n x k`` matrix of Gaussian bumps (width ``width_mm``) every ``spacing_mm`` along one axis."""
    extent = n * resolution_mm
    k = int(np.ceil(extent / spacing_mm)) + 1
    nodes = (np.arange(k) - (k - 1) / 2.0) * spacing_mm + extent / 2.0
    x = (np.arange(n) + 0.5) * resolution_mm
    return np.exp(-0.5 * ((x[:, None] - nodes[None, :]) / width_mm) ** 2).astype(np.float32)


def basis_shape(shape: tuple[int, int, int], resolution_mm: float, spacing_mm: float) -> tuple[int, int, int]:
    """Number of bumps per axis for :func:`gaussian_basis` on a grid of ``shape``."""
    return tuple(int(np.ceil(n * resolution_mm / spacing_mm)) + 1 for n in shape)


def smooth_field(coeffs: np.ndarray, bases: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Evaluate a separable Gaussian-bump field: ``sum_abc coeffs[a,b,c] Bx[:,a] By[:,b] Bz[:,c]``.

    Args:
        coeffs: ``a x b x c`` coefficients.
        bases: per-axis basis matrices ``X x a``, ``Y x b``, ``Z x c``.

    Returns:
        ``X x Y x Z`` float32 field.
    """
    bx, by, bz = bases
    field = np.tensordot(bx, coeffs, axes=(1, 0))  # X b c
    field = np.tensordot(field, by, axes=(1, 1))  # X c Y
    field = np.tensordot(field, bz, axes=(1, 1))  # X Y Z
    return np.ascontiguousarray(field, dtype=np.float32)


def draw_subject_anatomy(rng: np.random.Generator, template: Template, sex: str) -> SubjectAnatomy:
    """Draw one subject's head size, pose, deformation, layer thicknesses and texture."""
    r = template.resolution_mm
    scale = FEMALE_SCALE * (MALE_SCALE if sex == "M" else 1.0) * float(np.exp(rng.normal(0.0, HEAD_SCALE_SD)))
    angles = rng.normal(0.0, [4.0, 2.0, 2.0])  # degrees: nodding (about x) varies most
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    shift = rng.normal(0.0, 3.0 / r, size=3)
    n_nodes = basis_shape(template.shape, r, DEFORM_SPACING_MM)
    deform = rng.normal(0.0, DEFORM_SD_MM / r, size=(3, *n_nodes)).astype(np.float32)
    thickness = {k: float(v * np.exp(rng.normal(0.0, 0.15))) for k, v in MEAN_THICKNESS_MM.items()}
    texture = rng.normal(0.0, 0.03, size=basis_shape(template.shape, r, 20.0)).astype(np.float32)
    return SubjectAnatomy(
        scale=scale,
        rotation=rotation,
        shift_vox=shift,
        deform=deform,
        thickness_mm=thickness,
        ventricle_offset_mm=float(rng.normal(0.0, 0.6)),
        thinning_offset=float(rng.normal(0.0, 0.03)),
        cap_offset_mm=float(rng.normal(0.0, 0.4)),
        texture=texture,
        contrast_jitter=rng.normal(0.0, 0.03, size=2),
    )


def atrophy(anatomy: SubjectAnatomy, clinical: Clinical, *, effects: Effects | None = None) -> tuple[float, float]:
    """Ventricle widening (mm) and cortical thinning fraction for one session.

    Ageing widens the ventricles with the square of the decades since ``reference_age`` (real
    lateral ventricles grow slowly in early adulthood and faster after 60) and thins the cortex
    (sulci widen); EDSS adds disease atrophy, scaled per MS course (progressive courses atrophy
    faster). The subject's offsets make people of the same age and EDSS differ while keeping each
    person's follow-up monotone.
    """
    fx = effects or default_effects()
    course = fx.ms_type.factor("atrophy", clinical.ms_type)
    widen = fx.age.ventricle_mm(clinical.age) + course * fx.edss.ventricle_mm_per_point * clinical.edss
    thin = fx.age.thinning(clinical.age) + course * fx.edss.thinning_per_point * clinical.edss
    widen += anatomy.ventricle_offset_mm
    thin += anatomy.thinning_offset
    return float(np.clip(widen, 0.0, fx.limits.max_ventricle_mm)), float(np.clip(thin, 0.0, fx.limits.max_thinning))


def _lesion_size(edss: float, effects: Effects | None = None) -> float:
    """Linear size factor of every lesion at ``edss`` (lesions are larger in more disabled patients)."""
    return 1.0 + (effects or default_effects()).edss.lesion_radius_per_point * edss


def _lesion_radius(rng: np.random.Generator, effects: Effects | None = None) -> float:
    """Base (EDSS 0) radius (mm) of one lesion; :func:`_lesion_size` scales it."""
    e = (effects or default_effects()).edss
    return float(np.exp(rng.normal(np.log(e.lesion_radius_mm), e.lesion_radius_sd)))


def poisson_quantile(u: float, mean: float) -> int:
    """Smallest ``n`` with ``P(Poisson(mean) <= n) >= u`` (the inverse CDF; 0 for ``mean <= 0``).

    Drawing a count as the quantile of a fixed uniform keeps it monotone in ``mean``: the same
    subject with a lower mean has a count no larger (lesions of a lower-EDSS twin are a subset).

    Example:
        >>> poisson_quantile(0.5, 3.0), poisson_quantile(0.5, 0.0)
        (3, 0)
    """
    if mean <= 0.0:
        return 0
    n, p = 0, float(np.exp(-mean))
    cdf = p
    while cdf < u and n < 10_000:
        n += 1
        p *= mean / n
        cdf += p
    return n


def lesion_candidates(rng: np.random.Generator, template: Template, n: int, effects: Effects | None = None) -> list[Lesion]:
    """The first ``n`` of a subject's candidate lesions at their base (EDSS 0) size.

    Candidates are drawn one after another from ``rng``, so the first ``n`` are the same whatever
    is drawn later: a subject's list is fixed and independent of EDSS, and its sessions (and twins)
    take a prefix of it.
    """
    cdf = np.cumsum(template.lesion_weights)
    lesions = []
    for _ in range(n):
        k = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        radius = _lesion_radius(rng, effects)
        radii = radius * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)])
        centre = template.lesion_sites[k] + rng.uniform(-0.5, 0.5, size=3)
        lesions.append(Lesion(centre, radii, Rotation.random(random_state=rng).as_matrix()))
    return lesions


def _sized(lesions: list[Lesion], edss: float, effects: Effects | None = None) -> list[Lesion]:
    return [replace(les, radii_mm=les.radii_mm * _lesion_size(edss, effects)) for les in lesions]


def draw_lesions(
    rng: np.random.Generator, template: Template, clinical: Clinical, *, effects: Effects | None = None
) -> list[Lesion]:
    """Baseline lesions: their number (Poisson) and size grow with EDSS, the number scaled per MS
    course (``synthetic.effects.ms_type.lesion_load``); none for HC.

    The count is the Poisson quantile of one uniform drawn first (:func:`poisson_quantile`), the
    lesions are the first ``count`` of the subject's candidates (:func:`lesion_candidates`), each
    scaled by the EDSS size factor: with the same ``rng`` state, a lower EDSS gives a subset of the
    lesions, each smaller.
    """
    fx = effects or default_effects()
    load = fx.ms_type.factor("lesion_load", clinical.ms_type)
    mean = load * (fx.edss.lesions_base + fx.edss.lesions_per_point * clinical.edss)
    n = poisson_quantile(float(rng.uniform()), mean)
    return _sized(lesion_candidates(rng, template, n, fx), clinical.edss, fx)


def progress_lesions(
    rng: np.random.Generator,
    template: Template,
    lesions: list[Lesion],
    clinical: Clinical,
    years: float,
    *,
    effects: Effects | None = None,
) -> list[Lesion]:
    """Follow-up lesions: every old lesion persists (slightly grown) and new ones appear.

    The growth of old lesion ``k`` comes from its own draw of a separate stream and the new lesions'
    count from a uniform (Poisson quantile), so neither depends on how many old lesions there are.
    """
    growth_rng = np.random.default_rng(int(rng.integers(2**63)))
    n_new = poisson_quantile(float(rng.uniform()), NEW_LESIONS_PER_YEAR[clinical.ms_type] * years)
    grown = [replace(les, radii_mm=les.radii_mm * (1.0 + 0.03 * years * growth_rng.uniform())) for les in lesions]
    return grown + _sized(lesion_candidates(rng, template, n_new, effects), clinical.edss, effects)


def render_lesions(template: Template, lesions: list[Lesion], cap_mm: float) -> np.ndarray:
    """Soft lesion map (fraction of white matter that is lesion), template grid, float32.

    Args:
        template: the template.
        lesions: ellipsoids to draw (partial-volume edges about one voxel wide).
        cap_mm: thickness of a confluent periventricular lesion rim (0 for none).
    """
    r = template.resolution_mm
    out = np.zeros(template.shape, dtype=np.float32)
    for les in lesions:
        half = int(np.ceil(les.radii_mm.max() / r)) + 1
        lo = np.maximum(np.floor(les.centre).astype(int) - half, 0)
        hi = np.minimum(np.floor(les.centre).astype(int) + half + 1, template.shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        d = np.stack([(g - c) * r for g, c in zip(grids, les.centre)], axis=-1)  # mm offsets
        q = (d @ les.rotation) / les.radii_mm  # coordinates in the lesion's frame, unit ellipsoid
        rho = np.sqrt((q**2).sum(-1))
        soft = np.clip((1.0 - rho) * les.radii_mm.min() / r + 0.5, 0.0, 1.0).astype(np.float32)
        box = out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(box, soft, out=box)
    if cap_mm > 0.25:
        dist = template.ventricle_distance
        cap = np.clip((cap_mm - dist) / r + 0.5, 0.0, 1.0) * (dist > 0)
        np.maximum(out, cap.astype(np.float32), out=out)
    out *= np.clip((template.wm - 0.2) / 0.5, 0.0, 1.0)  # lesions live in white matter
    return out


def cap_thickness(anatomy: SubjectAnatomy, clinical: Clinical, *, effects: Effects | None = None) -> float:
    """Periventricular hyperintense rim thickness (mm).

    Two parts: a thin rim of normal ageing (periventricular "pencil-thin lining", common after
    50, HC included; no subject offset) and, in patients, a confluent MS cap from EDSS
    ``cap_onset`` on, scaled per MS course (thicker in SPMS) plus the subject's offset.
    """
    fx = effects or default_effects()
    rim = fx.age.wmh_rim_mm(clinical.age)
    if clinical.ms_type != "HC":
        e = fx.edss
        cap = fx.ms_type.factor("cap", clinical.ms_type) * e.cap_mm_per_point * (clinical.edss - e.cap_onset)
        rim += max(cap + anatomy.cap_offset_mm, 0.0)
    return float(np.clip(rim, 0.0, fx.limits.max_cap_mm))


def tissue_fractions(template: Template, anatomy: SubjectAnatomy, thinning: float, lesion_map: np.ndarray) -> dict:
    """Per-voxel tissue fractions in template space (they sum to the head's occupancy).

    Returns:
        dict of ``X x Y x Z`` float32 arrays: ``gm, wm, lesion, csf, csf_outer, bone, marrow,
        fat, soft``.
    """
    r = template.resolution_mm
    gm = template.gm * (1.0 - thinning * template.sulcal_csf)
    lesion = template.wm * lesion_map
    wm = template.wm - lesion
    csf = np.clip(template.brain - gm - template.wm, 0.0, 1.0)

    t = anatomy.thickness_mm
    edges = np.cumsum([0.0, t["csf"], t["inner_table"], t["diploe"], t["outer_table"], t["fat"], t["skin"]])
    depth = template.outer_depth.ravel()[template.shell_index]
    # ramp k ~ "deeper than edge k", with a partial-volume edge one voxel wide (all shell voxels
    # are outside the intracranial surface, so ramp 0 is 1)
    ramps = [np.ones_like(depth)] + [np.clip((depth - float(e)) / r + 0.5, 0.0, 1.0) for e in edges[1:]]
    layers = {
        "csf_outer": ramps[0] - ramps[1],
        "bone": (ramps[1] - ramps[2]) + (ramps[3] - ramps[4]),  # inner and outer table
        "marrow": ramps[2] - ramps[3],  # diploe
        "fat": ramps[4] - ramps[5],
        "soft": (ramps[5] - ramps[6]) + template.shell_neck * ramps[6],  # skin, the neck below the skull
    }
    fractions = {"gm": gm, "wm": wm, "lesion": lesion, "csf": csf}
    room = 1.0 - template.brain.ravel()[template.shell_index]  # brain partial volume at the surface
    for name, values in layers.items():
        fractions[name] = np.zeros(template.shape, dtype=np.float32)
        fractions[name].ravel()[template.shell_index] = values * room
    fractions["csf_outer"] += (1.0 - template.brain) * (template.outer_depth <= 0)  # sulcal notches
    return fractions


def subject_coordinates(template: Template, anatomy: SubjectAnatomy, widen_mm: float) -> np.ndarray:
    """Template voxel coordinates sampled by every subject voxel, ``3 x X x Y x Z`` float32."""
    r = template.resolution_mm
    shape = template.shape
    bases = tuple(gaussian_basis(n, r, DEFORM_SPACING_MM, DEFORM_WIDTH_MM) for n in shape)
    lin = anatomy.rotation.T / anatomy.scale
    c = template.centre
    axes = [np.arange(n, dtype=np.float32) - (c[k] + anatomy.shift_vox[k]) for k, n in enumerate(shape)]
    s = widen_mm / r
    coords = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        coords[a] = smooth_field(anatomy.deform[a], bases)
        coords[a] += s * template.ventricle_pull[a]
        coords[a] += c[a]
        coords[a] += lin[a, 0] * axes[0][:, None, None]
        coords[a] += lin[a, 1] * axes[1][None, :, None]
        coords[a] += lin[a, 2] * axes[2][None, None, :]
    return coords


def warp(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample ``volume`` (template space) at ``coords`` (linear interpolation, 0 outside)."""
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0, output=np.float32)


def warp_sparse(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """:func:`warp` for a mostly-zero volume: only coordinates near its non-zero box are sampled."""
    out = np.zeros(coords.shape[1:], dtype=np.float32)
    nonzero = [np.flatnonzero(volume.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if any(len(n) == 0 for n in nonzero):
        return out
    near = np.ones(out.shape, dtype=bool)
    for a, n in enumerate(nonzero):
        near &= (coords[a] > n[0] - 1) & (coords[a] < n[-1] + 1)
    out[near] = ndi.map_coordinates(volume, coords[:, near], order=1, mode="constant", cval=0.0, output=np.float32)
    return out


def warped_volume_ml(volume: np.ndarray, coords: np.ndarray, voxel_ml: float, step: int = 2) -> float:
    """Volume (ml) of a tissue map after warping, estimated on every ``step``-th subject voxel."""
    sub = coords[:, ::step, ::step, ::step]
    return float(warp(volume, sub).sum(dtype=np.float64)) * voxel_ml * step**3
