"""An intervention do(attribute = value) or do(attribute = attribute + shift): one record shared by the
synthetic twins (:mod:`brainlatent.synth.twins`) and the counterfactual editor
(:mod:`brainlatent.counterfactual.interventions`), so both name the same change the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the value that swaps a two-level attribute (sex: F <-> M)
OTHER = "other"


@dataclass(frozen=True)
class Intervention:
    """Set (``value``) or shift (``shift``) one attribute.

    Args:
        attribute: the attribute's name (``age``, ``edss``, ``ms_type``, ``sex``...).
        value: the new value (a level, a number, or ``"other"`` for a two-level attribute).
        shift: added to a numeric attribute.

    Example:
        >>> Intervention("edss", 0.0).label, Intervention("age", shift=10.0).label, Intervention("sex", "other").label
        ('edss=0', 'age+10', 'sex=other')
    """

    attribute: str
    value: object = None
    shift: float | None = None

    @property
    def label(self) -> str:
        """``edss=0``, ``age+10``, ``sex=other``: the id in file names, twin ids and tables."""
        if self.shift is not None:
            return f"{self.attribute}{self.shift:+g}"
        value = f"{self.value:g}" if isinstance(self.value, (int, float)) else self.value
        return f"{self.attribute}={value}"
