"""Clinical attributes: binning numeric values into classes, encoding categorical levels.

Every classifier head is categorical. A numeric attribute (age, EDSS) with edges
``[e0, e1, ..., eK]`` has K classes; class k holds ``e_k <= v < e_{k+1}``; values below ``e0`` go
to class 0 and values at or above ``eK`` to class K-1. Missing values are encoded as ``-1`` and
masked out of the loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = -1


def n_classes(attr: dict) -> int:
    """Number of classes of an attribute's head."""
    return len(attr["bins"]) - 1 if attr["kind"] == "numeric" else len(attr["levels"])


def class_names(attr: dict) -> list[str]:
    """Human-readable class names, e.g. ``['18-30', '30-40', ...]`` or the levels."""
    if attr["kind"] == "categorical":
        return list(attr["levels"])
    edges = attr["bins"]
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]


def bin_centres(attr: dict) -> np.ndarray:
    """Centre of each bin of a numeric attribute, in the attribute's own units."""
    edges = np.asarray(attr["bins"], dtype=np.float64)
    return (edges[:-1] + edges[1:]) / 2


def encode(attr: dict, values: pd.Series | np.ndarray | list) -> np.ndarray:
    """Class index per value (int64), ``MISSING`` (-1) for missing values.

    Example:
        >>> encode({"kind": "numeric", "bins": [0, 2, 4, 10]}, [0.0, 2.0, 3.9, 12, None]).tolist()
        [0, 1, 1, 2, -1]
    """
    series = pd.Series(values, dtype="object")
    missing = series.isna().to_numpy()
    out = np.full(len(series), MISSING, dtype=np.int64)
    if attr["kind"] == "numeric":
        vals = pd.to_numeric(series[~missing]).to_numpy(dtype=np.float64)
        edges = np.asarray(attr["bins"], dtype=np.float64)
        idx = np.digitize(vals, edges[1:-1], right=False)
        out[~missing] = idx
    else:
        lookup = {level: i for i, level in enumerate(attr["levels"])}
        for i, v in enumerate(series):
            if not missing[i]:
                out[i] = lookup.get(str(v), MISSING)
    return out


def encode_all(attributes: list[dict], table: pd.DataFrame) -> np.ndarray:
    """``N x A`` class indices for every configured attribute (column order = config order)."""
    cols = []
    for attr in attributes:
        col = table[attr["name"]] if attr["name"] in table.columns else pd.Series([None] * len(table))
        cols.append(encode(attr, col))
    return np.stack(cols, axis=1) if cols else np.zeros((len(table), 0), dtype=np.int64)
