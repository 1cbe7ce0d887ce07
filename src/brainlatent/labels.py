"""Label vectors y for the conditional generator families (``cwgan``, ``cstylegan``).

y is laid out as, in config order of the attributes::

    [ value units ... | slice | mask units ... ]

* a categorical attribute gives one unit per level (one-hot); a numeric one gives one unit,
  min-max scaled to [0, 1] on the **training split** (values outside the training range are not
  clipped: they extrapolate);
* ``slice`` is the slice's position within its scan's chosen band: ``(z - z_min) / (z_max - z_min)``
  over that scan's slices in the manifest (0.5 for a scan with one slice), so 0 is the scan's most
  inferior chosen slice and 1 its most superior one;
* one mask unit per attribute: 1 = known, 0 = missing. A missing categorical value is an all-zero
  one-hot; a missing numeric value is filled with the training mean (scaled) so the unit stays in
  range. The mask tells the critic and the generator that the value is unknown, so neither is ever
  given a wrong label as if it were true.

The scaler (levels, training min/max, fill values) is a plain dict (:meth:`LabelEncoder.state`)
saved in the network file; :meth:`LabelEncoder.from_state` rebuilds the same encoder.

Example:
    >>> import pandas as pd
    >>> attrs = [{"name": "age", "kind": "numeric"}, {"name": "sex", "kind": "categorical", "levels": ["F", "M"]}]
    >>> m = pd.DataFrame({"scan": ["a", "a", "b"], "slice": [10, 12, 7], "split": "train",
    ...                   "age": [20.0, 20.0, 60.0], "sex": ["F", "F", None]})
    >>> enc = LabelEncoder.fit(attrs, m)
    >>> enc.columns
    ['age', 'sex=F', 'sex=M', 'slice', 'age?', 'sex?']
    >>> enc.encode(m).tolist()[2]
    [1.0, 0.0, 0.0, 0.5, 1.0, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from brainlatent.errors import BrainlatentError

SLICE = "slice"


@dataclass
class LabelEncoder:
    """Raw attribute values ↔ label vectors ``y`` (see the module docstring for the layout).

    Args:
        attributes: one dict per attribute: ``name``, ``kind``; ``levels`` (categorical) or
            ``min``, ``max``, ``fill`` (numeric: the training range and the scaled training mean).
    """

    attributes: list[dict] = field(default_factory=list)

    # ---------------------------------------------------------------- building and storing
    @classmethod
    def fit(cls, attributes: list[dict], manifest: pd.DataFrame, split: str = "train") -> LabelEncoder:
        """Scaler from the ``split`` rows of a slice manifest (config attribute specs in ``attributes``)."""
        rows = manifest[manifest["split"] == split] if "split" in manifest.columns else manifest
        if len(rows) == 0:
            raise BrainlatentError(f"label encoder: the manifest has no '{split}' rows to fit the scaler on")
        out = []
        for attr in attributes:
            name = attr["name"]
            if attr["kind"] == "categorical":
                out.append({"name": name, "kind": "categorical", "levels": [str(v) for v in attr["levels"]]})
                continue
            values = pd.to_numeric(rows[name], errors="coerce") if name in rows.columns else pd.Series(dtype=float)
            values = values.dropna().to_numpy(dtype=np.float64)
            lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
            if hi <= lo:
                hi = lo + 1.0  # one value in training: it maps to 0
            fill = float((values.mean() - lo) / (hi - lo)) if values.size else 0.5
            out.append({"name": name, "kind": "numeric", "min": lo, "max": hi, "fill": fill})
        return cls(out)

    def state(self) -> dict:
        """A plain dict (JSON- and ``weights_only``-safe) that :meth:`from_state` turns back into this encoder."""
        return {"format": 1, "attributes": [dict(a) for a in self.attributes]}

    @classmethod
    def from_state(cls, state: dict) -> LabelEncoder:
        if not isinstance(state, dict) or state.get("format") != 1 or "attributes" not in state:
            raise BrainlatentError("label encoder state: expected {'format': 1, 'attributes': [...]} as written by LabelEncoder.state()")
        return cls([dict(a) for a in state["attributes"]])

    # ---------------------------------------------------------------- layout
    @property
    def columns(self) -> list[str]:
        """Name of every unit of y: ``age``, ``sex=F``, ..., ``slice``, ``age?`` (masks)."""
        cols: list[str] = []
        for a in self.attributes:
            cols += [f"{a['name']}={lv}" for lv in a["levels"]] if a["kind"] == "categorical" else [a["name"]]
        return cols + [SLICE] + [f"{a['name']}?" for a in self.attributes]

    @property
    def c_dim(self) -> int:
        return len(self.columns)

    @property
    def names(self) -> list[str]:
        return [a["name"] for a in self.attributes]

    def attribute(self, name: str) -> dict:
        for a in self.attributes:
            if a["name"] == name:
                return a
        raise BrainlatentError(f"attribute {name!r} is not a label of this network; its labels: {self.names + [SLICE]}")

    def units(self, name: str) -> slice:
        """The value units of attribute ``name`` (or ``"slice"``) within y."""
        start = 0
        for a in self.attributes:
            width = len(a["levels"]) if a["kind"] == "categorical" else 1
            if a["name"] == name:
                return slice(start, start + width)
            start += width
        if name == SLICE:
            return slice(start, start + 1)
        raise BrainlatentError(f"attribute {name!r} is not a label of this network; its labels: {self.names + [SLICE]}")

    def mask_unit(self, name: str) -> int:
        return self.columns.index(f"{name}?")

    # ---------------------------------------------------------------- values
    def scale(self, name: str, value: float) -> float:
        a = self.attribute(name)
        return (float(value) - a["min"]) / (a["max"] - a["min"])

    def unscale(self, name: str, value: float | np.ndarray) -> float | np.ndarray:
        a = self.attribute(name)
        out = a["min"] + np.asarray(value, dtype=np.float64) * (a["max"] - a["min"])
        return out if out.ndim else float(out)

    def encode(self, table: pd.DataFrame) -> np.ndarray:
        """``N x c_dim`` float32 label vectors of a manifest (or any table with the attribute columns).

        The slice unit comes from a ``slice_position`` column when the table has one, else from
        ``scan`` and ``slice`` (:func:`slice_positions`), else 0.5.
        """
        n = len(table)
        y = np.zeros((n, self.c_dim), dtype=np.float32)
        for a in self.attributes:
            col = table[a["name"]] if a["name"] in table.columns else pd.Series([None] * n, index=table.index)
            units, mask = self.units(a["name"]), self.mask_unit(a["name"])
            if a["kind"] == "categorical":
                lookup = {lv: i for i, lv in enumerate(a["levels"])}
                for i, v in enumerate(col.tolist()):
                    k = None if _missing(v) else lookup.get(str(v))
                    if k is not None:
                        y[i, units.start + k] = 1.0
                        y[i, mask] = 1.0
            else:
                vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
                known = ~np.isnan(vals)
                y[:, units.start] = np.where(known, (vals - a["min"]) / (a["max"] - a["min"]), a["fill"])
                y[:, mask] = known
        if "slice_position" in table.columns:
            y[:, self.units(SLICE).start] = table["slice_position"].to_numpy(dtype=np.float64)
        elif {"scan", "slice"} <= set(table.columns):
            y[:, self.units(SLICE).start] = slice_positions(table)
        else:
            y[:, self.units(SLICE).start] = 0.5
        return y

    def decode(self, y: np.ndarray | torch.Tensor) -> pd.DataFrame:
        """Raw values of label vectors: levels (argmax), unscaled numbers, ``None`` where masked; plus ``slice_position``."""
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        y = y.reshape(-1, self.c_dim)
        out: dict[str, list] = {}
        for a in self.attributes:
            units, known = self.units(a["name"]), y[:, self.mask_unit(a["name"])] > 0.5
            if a["kind"] == "categorical":
                out[a["name"]] = [a["levels"][int(np.argmax(r))] if k else None for r, k in zip(y[:, units], known)]
            else:
                out[a["name"]] = [float(self.unscale(a["name"], v)) if k else None for v, k in zip(y[:, units.start], known)]
        out["slice_position"] = y[:, self.units(SLICE).start].astype(np.float64).tolist()
        return pd.DataFrame(out)

    def set_value(self, y: torch.Tensor, name: str, value) -> torch.Tensor:
        """A copy of ``y`` (``N x c_dim``) with attribute ``name`` set to raw ``value`` (and marked known).

        ``name="slice"`` sets the slice position (a number in [0, 1]).
        """
        y = y.clone()
        units = self.units(name)
        if name == SLICE:
            y[:, units] = float(value)
            return y
        a = self.attribute(name)
        if a["kind"] == "categorical":
            if str(value) not in a["levels"]:
                raise BrainlatentError(f"label {name}={value!r}: expected one of {a['levels']}")
            y[:, units] = 0.0
            y[:, units.start + a["levels"].index(str(value))] = 1.0
        else:
            try:
                y[:, units.start] = self.scale(name, float(value))
            except (TypeError, ValueError):
                raise BrainlatentError(f"label {name}={value!r}: expected a number") from None
        y[:, self.mask_unit(name)] = 1.0
        return y

    def set_scaled(self, y: torch.Tensor, name: str, scaled: torch.Tensor | float) -> torch.Tensor:
        """A copy of ``y`` with numeric attribute ``name`` (or ``slice``) set to a scaled value (per row or one)."""
        y = y.clone()
        if name != SLICE and self.attribute(name)["kind"] != "numeric":
            raise BrainlatentError(f"label {name!r} is categorical; only numeric labels have a scaled value")
        y[:, self.units(name).start] = torch.as_tensor(scaled, dtype=y.dtype)
        if name != SLICE:
            y[:, self.mask_unit(name)] = 1.0
        return y


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def slice_positions(manifest: pd.DataFrame) -> np.ndarray:
    """Each slice's position within its scan's chosen slices: ``(z - z_min) / (z_max - z_min)``, 0.5 if alone.

    Example:
        >>> slice_positions(pd.DataFrame({"scan": ["a", "a", "a", "b"], "slice": [4, 6, 8, 3]})).tolist()
        [0.0, 0.5, 1.0, 0.5]
    """
    z = manifest["slice"].astype(float)
    grouped = z.groupby(manifest["scan"])
    lo, hi = grouped.transform("min"), grouped.transform("max")
    span = (hi - lo).to_numpy()
    return np.where(span > 0, (z - lo).to_numpy() / np.where(span > 0, span, 1.0), 0.5)


def parse_labels(text: str) -> dict[str, str]:
    """``"sex=F,edss=6"`` → ``{"sex": "F", "edss": "6"}`` (a clear error for anything else)."""
    out: dict[str, str] = {}
    for part in str(text).split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or not name.strip() or not value.strip():
            raise BrainlatentError(f"--labels: cannot read {part.strip()!r} in {text!r}; expected name=value pairs like sex=F,edss=6")
        out[name.strip()] = value.strip()
    return out


class LabelTable:
    """The training table's label vectors: the joint label distribution a conditional network samples from.

    Args:
        encoder: the network's :class:`LabelEncoder`.
        table: ``N x c_dim`` label vectors of the training slices.
    """

    def __init__(self, encoder: LabelEncoder, table: torch.Tensor) -> None:
        if table.ndim != 2 or table.shape[1] != encoder.c_dim or len(table) == 0:
            raise BrainlatentError(f"label table of shape {tuple(table.shape)}; expected N x {encoder.c_dim} with N > 0")
        self.encoder, self.table = encoder, table.float()

    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``n x c_dim`` rows drawn uniformly with replacement (the empirical joint distribution)."""
        return self.table[torch.randint(len(self.table), (n,), generator=rng)].clone()

    def matching(self, name: str, value, k: int | None = None) -> torch.Tensor:
        """Rows whose ``name`` is ``value``: the same level, or the ``k`` rows nearest a numeric value
        (default ``max(10, N // 20)``): the table for p(others | name = value)."""
        a = self.encoder.attribute(name)
        units, mask = self.encoder.units(name), self.encoder.mask_unit(name)
        known = self.table[:, mask] > 0.5
        if a["kind"] == "categorical":
            k_level = a["levels"].index(str(value)) if str(value) in a["levels"] else None
            if k_level is None:
                raise BrainlatentError(f"label {name}={value!r}: expected one of {a['levels']}")
            rows = self.table[known & (self.table[:, units.start + k_level] > 0.5)]
        else:
            cand = self.table[known]
            k = min(len(cand), k or max(10, len(self.table) // 20))
            dist = (cand[:, units.start] - self.encoder.scale(name, float(value))).abs()
            rows = cand[torch.argsort(dist, stable=True)[:k]]
        if len(rows) == 0:
            raise BrainlatentError(f"label {name}={value!r}: no training slice has it, so p(others | {name}={value}) is unknown")
        return rows

    def has(self, name: str, value) -> bool:
        """Whether some training row has ``name = value`` (always true for a numeric value)."""
        try:
            self.matching(name, value)
        except BrainlatentError:
            return False
        return True

    def consistent(self, y: torch.Tensor, name: str, value, rng: torch.Generator) -> torch.Tensor:
        """``y`` with ``name`` set to ``value`` and every other attribute resampled from p(others | value).

        The slice position is held (a nuisance variable, independent of the clinical attributes).
        """
        rows = self.matching(name, value)
        out = rows[torch.randint(len(rows), (len(y),), generator=rng)].clone()
        s = self.encoder.units(SLICE)
        out[:, s] = y[:, s]
        return self.encoder.set_value(out, name, value)

    def request(self, values: dict[str, str], n: int, rng: torch.Generator) -> torch.Tensor:
        """``n`` label vectors with the given raw values; the rest drawn from p(rest | given).

        Attributes left out are drawn from training rows that match the first given attribute and
        then every given value is set (``slice`` sets the slice position).
        """
        names = [k for k in values if k != SLICE]
        if names:
            y = self.consistent(self.sample(n, rng), names[0], values[names[0]], rng)
        else:
            y = self.sample(n, rng)
        for name in names[1:]:
            y = self.encoder.set_value(y, name, values[name])
        if SLICE in values:
            try:
                y = self.encoder.set_value(y, SLICE, float(values[SLICE]))
            except ValueError:
                raise BrainlatentError(f"label slice={values[SLICE]!r}: expected a number in [0, 1]") from None
        return y
