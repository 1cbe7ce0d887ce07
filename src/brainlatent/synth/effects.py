"""How strongly age, EDSS and MS type act on the synthetic anatomy (config ``synthetic.effects``).

The sizes live in the config (defaults and their meaning: ``config.schema.yaml``, README "Effect
sizes"); this module only gives them types. Every effect in :mod:`brainlatent.synth.anatomy` is a
deterministic function of one session's clinical attributes plus per-subject offsets that are
drawn independently of those attributes, so a subject can be re-rendered with one attribute
changed ("twins") and differ only by that attribute's effect.

Example:
    >>> fx = default_effects()
    >>> fx.age.ventricle_mm(70.0) > 2 * fx.age.ventricle_mm(45.0)  # ageing accelerates
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

#: MS courses that carry disease effects (HC: EDSS 0, no lesions)
COURSES: tuple[str, ...] = ("RRMS", "SPMS", "PPMS")


@dataclass(frozen=True)
class AgeEffects:
    """Normal ageing (see ``synthetic.effects.age`` in the schema)."""

    reference_age: float
    ventricle_mm_per_decade: float
    ventricle_mm_per_decade_squared: float
    thinning_per_decade: float
    thinning_per_decade_squared: float
    wmh_onset_age: float
    wmh_rim_mm_per_decade: float

    def decades(self, age: float) -> float:
        return max(age - self.reference_age, 0.0) / 10.0

    def ventricle_mm(self, age: float) -> float:
        """Ventricle widening (mm) from ageing alone; grows with the square of the decades."""
        d = self.decades(age)
        return self.ventricle_mm_per_decade * d + self.ventricle_mm_per_decade_squared * d * d

    def thinning(self, age: float) -> float:
        """Cortical thinning (fraction of the sulcal cortex) from ageing alone."""
        d = self.decades(age)
        return self.thinning_per_decade * d + self.thinning_per_decade_squared * d * d

    def wmh_rim_mm(self, age: float) -> float:
        """Thin age-related periventricular hyperintense rim (mm), from ``wmh_onset_age`` on."""
        return self.wmh_rim_mm_per_decade * max(age - self.wmh_onset_age, 0.0) / 10.0


@dataclass(frozen=True)
class EdssEffects:
    """Disability effects per EDSS point (see ``synthetic.effects.edss``)."""

    ventricle_mm_per_point: float
    thinning_per_point: float
    lesions_base: float
    lesions_per_point: float
    lesion_radius_mm: float
    lesion_radius_sd: float
    lesion_radius_per_point: float
    cap_onset: float
    cap_mm_per_point: float


@dataclass(frozen=True)
class TypeEffects:
    """Per MS course factors (see ``synthetic.effects.ms_type``); HC gets 0 for each."""

    lesion_load: Mapping[str, float]
    atrophy: Mapping[str, float]
    cap: Mapping[str, float]

    def factor(self, which: str, ms_type: str) -> float:
        return float(getattr(self, which).get(ms_type, 0.0))


@dataclass(frozen=True)
class Limits:
    """Upper bounds of the rendered effects (see ``synthetic.effects.limits``)."""

    max_ventricle_mm: float
    max_thinning: float
    max_cap_mm: float


@dataclass(frozen=True)
class Effects:
    """All effect sizes of the synthetic cohort."""

    age: AgeEffects
    edss: EdssEffects
    ms_type: TypeEffects
    limits: Limits

    @classmethod
    def from_config(cls, effects: Mapping) -> "Effects":
        """From a completed config's ``synthetic.effects`` (every key filled in by the schema)."""
        ms = effects["ms_type"]
        return cls(
            age=AgeEffects(**{k: float(v) for k, v in effects["age"].items()}),
            edss=EdssEffects(**{k: float(v) for k, v in effects["edss"].items()}),
            ms_type=TypeEffects(**{k: {c: float(ms[k][c]) for c in COURSES} for k in ("lesion_load", "atrophy", "cap")}),
            limits=Limits(**{k: float(v) for k, v in effects["limits"].items()}),
        )


@lru_cache(maxsize=1)
def default_effects() -> Effects:
    """The schema's default effect sizes (the one place defaults are written is the schema)."""
    from brainlatent.config import load_config

    return Effects.from_config(load_config({})["synthetic"]["effects"])
