"""Clinical attributes of the synthetic cohort, drawn with the correlations of a real MS cohort.

The attributes are deliberately entangled, because that is what makes the science hard: MS type
sets the age range (secondary progressive patients are older and have had the disease longer,
primary progressive patients have a later onset), disability (EDSS, 0-10 in steps of 0.5) rises
with disease duration and age, healthy controls (HC) have EDSS 0, and most patients are women.

Two levels of randomness keep a cohort reproducible whatever the number of worker processes:

* :func:`plan_cohort` fixes, from one cohort-level seed, *who* is HC/RRMS/SPMS/PPMS, female or
  male, which site scans them and who has a follow-up session (exact shares, largest remainder);
* :func:`draw_baseline` and :func:`draw_follow_up` draw everything else from the subject's own
  random generator (``derive_seed(seed, "synthesize", subject_id)``).

The EDSS draws are *abductable*: a session keeps the standard-normal noise of its EDSS
(``edss_z``) and of its follow-up progression (``progression_z``), and :func:`baseline_edss` /
:func:`follow_up_edss` are the deterministic rest of the model, so a counterfactual twin
(:mod:`brainlatent.synth.twins`) can recompute EDSS for another age or MS course with the same noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from brainlatent.config import derive_seed

MS_TYPES: tuple[str, ...] = ("HC", "RRMS", "SPMS", "PPMS")
#: share of each MS course among patients (relapsing-remitting is the common one)
MS_COURSE_SHARE: dict[str, float] = {"RRMS": 0.65, "SPMS": 0.20, "PPMS": 0.15}
AGE_RANGE: tuple[float, float] = (18.0, 75.0)
EDSS_MAX = 9.5

#: per MS course: (onset mean, onset sd, duration offset, duration gamma shape, gamma scale)
_ONSET_DURATION = {
    "RRMS": (29.0, 7.0, 0.5, 1.6, 5.0),
    "SPMS": (31.0, 7.0, 9.0, 2.2, 5.0),
    "PPMS": (40.0, 8.0, 1.0, 1.6, 4.5),
}
#: per MS course: (EDSS intercept, per year of disease, per year of age over 35, noise sd, lo, hi)
_EDSS_MODEL = {
    "RRMS": (1.0, 0.13, 0.02, 0.7, 0.0, 6.0),
    "SPMS": (3.6, 0.07, 0.03, 0.8, 3.0, EDSS_MAX),
    "PPMS": (2.4, 0.28, 0.02, 0.8, 1.5, EDSS_MAX),
}
#: EDSS progression per year of follow-up (mean, sd), per MS course
_EDSS_RATE = {"HC": (0.0, 0.0), "RRMS": (0.12, 0.15), "SPMS": (0.30, 0.20), "PPMS": (0.35, 0.20)}


@dataclass(frozen=True)
class SubjectPlan:
    """Cohort-level facts about one subject, fixed before any per-subject draw.

    Args:
        subject: BIDS-like id, ``sub-001``...
        ms_type: one of :data:`MS_TYPES`.
        sex: ``F`` or ``M``.
        site: index into the acquisition site table.
        n_sessions: 1, or 2 with a follow-up session.
    """

    subject: str
    ms_type: str
    sex: str
    site: int
    n_sessions: int


@dataclass(frozen=True)
class Clinical:
    """One session's clinical state.

    Args:
        age: age at the session, years.
        edss: Expanded Disability Status Scale, 0-10 in steps of 0.5 (0 for HC).
        ms_type: one of :data:`MS_TYPES`.
        sex: ``F`` or ``M``.
        onset_age: age at disease onset (NaN for HC).
        disease_duration: years since onset (NaN for HC).
        edss_z: standard-normal noise of the baseline EDSS model (NaN for HC).
        progression_z: standard-normal noise of the EDSS progression up to this session (NaN at
            baseline and for HC).
    """

    age: float
    edss: float
    ms_type: str
    sex: str
    onset_age: float
    disease_duration: float
    edss_z: float = float("nan")
    progression_z: float = float("nan")

    def as_dict(self) -> dict:
        """The observable attributes (the noise terms ``edss_z``, ``progression_z`` are left out)."""
        out = asdict(self)
        out.pop("edss_z")
        out.pop("progression_z")
        return out


def _quota(n: int, shares: dict[str, float]) -> list[str]:
    """``n`` labels with exact shares (largest-remainder rounding), in label order."""
    keys = list(shares)
    raw = np.array([shares[k] for k in keys], dtype=np.float64) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    return [k for k, c in zip(keys, counts) for _ in range(c)]


def plan_cohort(
    n_subjects: int,
    seed: int,
    healthy_fraction: float = 0.1,
    female_fraction: float = 0.7,
    second_session_fraction: float = 0.0,
    n_sites: int = 4,
) -> list[SubjectPlan]:
    """Assign MS type, sex, site and number of sessions to ``sub-001``... with exact shares.

    Args:
        n_subjects: cohort size.
        seed: the config's seed (a cohort-level seed is derived from it).
        healthy_fraction: share of healthy controls.
        female_fraction: share of women (within every MS type).
        second_session_fraction: share of subjects with a follow-up session.
        n_sites: number of acquisition sites; subjects are spread evenly over them.

    Example:
        >>> plans = plan_cohort(10, seed=1, healthy_fraction=0.2)
        >>> sum(p.ms_type == "HC" for p in plans)
        2
    """
    rng = np.random.default_rng(derive_seed(seed, "synthesize", "cohort"))
    shares = {"HC": healthy_fraction}
    shares.update({k: (1.0 - healthy_fraction) * v for k, v in MS_COURSE_SHARE.items()})
    types = np.array(_quota(n_subjects, shares), dtype=object)
    sexes = np.empty(n_subjects, dtype=object)
    for ms_type in MS_TYPES:  # women share within each type, so sex stays independent of type
        idx = np.flatnonzero(types == ms_type)
        sexes[idx] = _quota(len(idx), {"F": female_fraction, "M": 1.0 - female_fraction})
    perm = rng.permutation(n_subjects)
    types, sexes = types[perm], sexes[perm]
    sites = rng.permutation(np.arange(n_subjects) % n_sites)
    n_follow = int(round(second_session_fraction * n_subjects))
    follow = np.zeros(n_subjects, dtype=bool)
    follow[rng.choice(n_subjects, size=n_follow, replace=False)] = True
    width = max(3, len(str(n_subjects)))
    return [
        SubjectPlan(f"sub-{i + 1:0{width}d}", str(types[i]), str(sexes[i]), int(sites[i]), 2 if follow[i] else 1)
        for i in range(n_subjects)
    ]


def _round_edss(value: float) -> float:
    return float(np.clip(np.round(value * 2.0) / 2.0, 0.0, EDSS_MAX))


def baseline_edss(ms_type: str, age: float, duration: float, z: float) -> float:
    """EDSS of the baseline model for a given age, disease duration and standard-normal noise ``z``.

    ``0`` for HC. Rounded to 0.5 steps and clipped to the course's range, as :func:`draw_baseline`.
    """
    if ms_type == "HC":
        return 0.0
    b0, b_dur, b_age, sd, e_lo, e_hi = _EDSS_MODEL[ms_type]
    edss = b0 + b_dur * duration + b_age * (age - 35.0) + sd * z
    return _round_edss(float(np.clip(edss, e_lo, e_hi)))


def follow_up_edss(ms_type: str, base_edss: float, years: float, z: float) -> float:
    """EDSS ``years`` after a session with ``base_edss``, for progression noise ``z`` (never lower)."""
    if ms_type == "HC":
        return base_edss
    mean, sd = _EDSS_RATE[ms_type]
    edss = _round_edss(base_edss + max(0.0, mean * years + sd * years * z))
    return max(edss, base_edss)


def draw_baseline(rng: np.random.Generator, ms_type: str, sex: str) -> Clinical:
    """Age, onset, duration and EDSS at the first session of one subject.

    Args:
        rng: the subject's random generator.
        ms_type: one of :data:`MS_TYPES`.
        sex: ``F`` or ``M``.
    """
    lo, hi = AGE_RANGE
    if ms_type == "HC":
        age = round(float(np.clip(rng.normal(42.0, 13.0), lo, hi)), 1)
        return Clinical(age, 0.0, ms_type, sex, float("nan"), float("nan"))
    onset_mu, onset_sd, dur_off, shape, scale = _ONSET_DURATION[ms_type]
    onset = float(np.clip(rng.normal(onset_mu, onset_sd), 16.0, 62.0))
    duration = dur_off + float(rng.gamma(shape, scale))
    age = onset + duration
    if age > hi:  # keep the age range; shorten the disease history rather than the onset
        age = hi - float(rng.uniform(0.0, 5.0))
        duration = max(0.5, age - onset)
        onset = age - duration
    if age < lo:
        age, onset = lo + float(rng.uniform(0.0, 2.0)), min(onset, lo)
        duration = age - onset
    z = float(rng.standard_normal())  # the same draw as rng.normal(0, sd) = sd * z
    # EDSS from the recorded (rounded) age and duration, so that it can be recomputed from them
    age, duration = round(age, 1), round(duration, 1)
    edss = baseline_edss(ms_type, age, duration, z)
    return Clinical(age, edss, ms_type, sex, round(onset, 1), duration, edss_z=z)


def draw_follow_up(rng: np.random.Generator, base: Clinical, years: float) -> Clinical:
    """The same subject ``years`` later: older, EDSS never lower (rises with MS course).

    Args:
        rng: the subject's random generator.
        base: the clinical state at the earlier session.
        years: time between sessions.
    """
    z = float(rng.standard_normal()) if base.ms_type != "HC" else float("nan")
    edss = follow_up_edss(base.ms_type, base.edss, years, z)
    duration = base.disease_duration + years if base.ms_type != "HC" else float("nan")
    return replace(base, age=round(base.age + years, 1), edss=edss, disease_duration=round(duration, 1), progression_z=z)


def sample_attributes(
    n: int,
    seed: int = 0,
    healthy_fraction: float = 0.1,
    female_fraction: float = 0.7,
) -> pd.DataFrame:
    """Baseline attributes of ``n`` subjects without any image (cheap; for checks and plots).

    Uses exactly the draws of :func:`brainlatent.synth.cohort.synthesize_cohort`, so the table
    equals the baseline attributes of a cohort synthesised with the same seed and size.

    Returns:
        DataFrame with columns ``subject, age, edss, ms_type, sex, onset_age, disease_duration``.
    """
    rows = []
    for plan in plan_cohort(n, seed, healthy_fraction, female_fraction):
        rng = subject_rngs(seed, plan.subject)["clinical"]
        rows.append({"subject": plan.subject, **draw_baseline(rng, plan.ms_type, plan.sex).as_dict()})
    return pd.DataFrame(rows)


def subject_rngs(seed: int, subject: str) -> dict[str, np.random.Generator]:
    """Independent generators for one subject's clinical, anatomy, acquisition and session draws.

    All come from ``derive_seed(seed, "synthesize", subject)``; each concern has its own stream
    so that, e.g., adding a modality does not change the anatomy.
    """
    names = ("clinical", "anatomy", "acquisition", "ses-01", "ses-02")
    children = np.random.SeedSequence(derive_seed(seed, "synthesize", subject)).spawn(len(names))
    return {name: np.random.default_rng(child) for name, child in zip(names, children)}
