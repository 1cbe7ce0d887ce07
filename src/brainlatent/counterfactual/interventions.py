"""Interventions on slices: parsing (config, ``--set``), and the new attribute values they give each slice.

An intervention sets an attribute to a value (``edss=0``, ``ms_type=HC``), to the other level of a
two-level attribute (``sex=other``), or shifts a numeric one (``age=+10``: ten years older). From a
config: ``{attribute: edss, value: 0}``, ``{attribute: age, shift: 10}``, ``{attribute: sex, value: other}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from brainlatent.errors import BrainlatentError
from brainlatent.interventions import OTHER, Intervention


def new_values(iv: Intervention, parents: pd.DataFrame, spec: dict) -> pd.Series:
    """The attribute's value after the intervention, one per row of ``parents``."""
    name = iv.attribute
    if name not in parents.columns:
        raise BrainlatentError(f"intervention {iv.label}: the slices have no '{name}' column")
    old = parents[name]
    if spec["kind"] == "numeric":
        if iv.shift is not None:
            return pd.to_numeric(old, errors="coerce") + float(iv.shift)
        try:
            return pd.Series(float(iv.value), index=parents.index)
        except (TypeError, ValueError):
            raise BrainlatentError(f"intervention {iv.label}: '{name}' is numeric; expected a number or a shift like +10") from None
    levels = [str(v) for v in spec["levels"]]
    if iv.shift is not None:
        raise BrainlatentError(f"intervention {iv.label}: '{name}' is categorical; a shift is not defined")
    if str(iv.value) == OTHER:
        if len(levels) != 2:
            raise BrainlatentError(f"intervention {iv.label}: 'other' needs a two-level attribute; '{name}' has {levels}")
        return old.map(lambda v: levels[1 - levels.index(str(v))] if str(v) in levels else None)
    if str(iv.value) not in levels:
        raise BrainlatentError(f"intervention {iv.label}: expected one of {levels} for '{name}'")
    return pd.Series(str(iv.value), index=parents.index)


def apply(iv: Intervention, parents: pd.DataFrame, spec: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """``(new_parents, changed)``: the table with the attribute replaced, and which rows it changes
    (a row whose value is missing or already the target is unchanged)."""
    new = parents.copy()
    values = new_values(iv, parents, spec)
    new[iv.attribute] = values
    old = parents[iv.attribute]
    if spec["kind"] == "numeric":
        a = pd.to_numeric(old, errors="coerce").to_numpy(dtype=np.float64)
        b = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        changed = np.isfinite(a) & np.isfinite(b) & (np.abs(a - b) > 1e-9)
    else:
        changed = (old.notna() & values.notna() & (old.astype(str) != values.astype(str))).to_numpy()
    return new, changed


def from_config(items: Sequence[dict], attributes: Sequence[dict]) -> list[Intervention]:
    """Interventions from ``counterfactual.interventions``; each attribute must be a study attribute."""
    names = {a["name"] for a in attributes}
    out = []
    for item in items:
        name = item["attribute"]
        if name not in names:
            raise BrainlatentError(f"counterfactual.interventions: '{name}' is not a study attribute ({sorted(names)})")
        if ("value" in item) == ("shift" in item):
            raise BrainlatentError(f"counterfactual.interventions: {item} needs exactly one of 'value' and 'shift'")
        out.append(Intervention(name, item.get("value"), item.get("shift")))
    return out


def parse_set(text: str, attributes: Sequence[dict]) -> list[Intervention]:
    """``--set 'edss=0,age=+10,sex=other'`` → interventions (a leading + or - on a numeric value is a shift).

    Example:
        >>> attrs = [{"name": "edss", "kind": "numeric"}, {"name": "age", "kind": "numeric"}]
        >>> [i.label for i in parse_set("edss=0,age=+10", attrs)]
        ['edss=0', 'age+10']
    """
    specs = {a["name"]: a for a in attributes}
    out = []
    for part in str(text).split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not name or not value:
            raise BrainlatentError(f"--set: cannot read {part.strip()!r}; expected name=value pairs like edss=0,age=+10")
        if name not in specs:
            raise BrainlatentError(f"--set: '{name}' is not a study attribute ({sorted(specs)})")
        if specs[name]["kind"] == "numeric":
            try:
                number = float(value)
            except ValueError:
                raise BrainlatentError(f"--set: {name}={value!r}: expected a number (or +N / -N for a shift)") from None
            out.append(Intervention(name, shift=number) if value[0] in "+-" else Intervention(name, value=number))
        else:
            out.append(Intervention(name, value=value))
    return out
