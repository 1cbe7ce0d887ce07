"""``brainlatent aggregate``: every number of every evaluation JSON in one long-format CSV.

Columns: ``study, arch, z_dim, metric, variant, statistic, value``. ``variant`` is the first key
under a JSON's ``results`` (a PPL variant such as ``w_end``, a space ``z``/``w``, a
``space/attribute`` pair such as ``w/sex``, or a quality metric such as ``fid``); ``statistic`` is
the rest of the key path, dot-joined, with ``[i]`` for list positions (``mean``, ``curve_mean[17]``,
``entropy_bits_per_repeat[2]``, ``generated_vs_real.mean`` under ``kid``). Strings are skipped;
booleans become 0/1; ``null``/NaN are written as empty values. Only ``results`` is collected: the
settings (sample counts, seeds, hashes) stay in the JSON files.

Errors are rows of the same table: a PPL variant's ``se``, ``ci_low`` and ``ci_high`` (bootstrap)
beside its ``mean``; a separability entry's ``entropy_bits_se``, ``accuracy_se``, ``score_se``...
(over repeats) beside the ``_mean`` rows, and its ``interpretable`` flag (1, 0, empty = unknown).

Example:
    brainlatent aggregate --config config/config.yaml --inputs results/demo/eval/*/*.json --out results/demo/metrics.csv
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brainlatent.config import load_stage_config
from brainlatent.errors import BrainlatentError, raise_if_problems
from brainlatent.io import read_json, write_table

COLUMNS = ["study", "arch", "z_dim", "metric", "variant", "statistic", "value"]
REQUIRED = ("metric", "arch", "z_dim", "results")


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(key path, number)`` for every number in nested dicts/lists (strings skipped).

    Example:
        >>> list(flatten({"a": 1, "b": [2.5, None], "c": "x"}))
        [('a', 1.0), ('b[0]', 2.5), ('b[1]', nan)]
    """
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from flatten(sub, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from flatten(sub, f"{prefix}[{i}]")
    elif isinstance(value, bool):
        yield prefix, float(value)
    elif isinstance(value, (int, float)):
        yield prefix, float(value)
    elif value is None:
        yield prefix, math.nan


def rows_of(doc: dict, study: str) -> list[dict]:
    """Long-format rows of one evaluation document."""
    rows = []
    for variant, stats in doc["results"].items():
        items = flatten(stats) if isinstance(stats, (dict, list)) else [("value", stats)]
        for statistic, value in items:
            if not isinstance(value, float):
                continue
            rows.append(
                {
                    "study": study,
                    "arch": doc["arch"],
                    "z_dim": int(doc["z_dim"]),
                    "metric": doc["metric"],
                    "variant": variant,
                    "statistic": statistic or "value",
                    "value": value,
                }
            )
    return rows


def aggregate(inputs: list[str | Path], study: str) -> "pd.DataFrame":  # noqa: F821
    """Read every evaluation JSON and return the long table (input order, then key order)."""
    import pandas as pd

    problems, rows = [], []
    for path in inputs:
        doc = read_json(path)
        if not isinstance(doc, dict):
            problems.append(f"{path}: expected a JSON object written by 'brainlatent evaluate'")
            continue
        missing = [k for k in REQUIRED if k not in doc]
        if missing:
            problems.append(f"{path}: missing key(s) {missing}; expected an evaluation JSON written by 'brainlatent evaluate'")
            continue
        if not isinstance(doc["results"], dict):
            problems.append(f"{path}: 'results' must be an object, got {type(doc['results']).__name__}")
            continue
        if doc.get("study", study) != study:
            problems.append(f"{path}: belongs to study '{doc['study']}', not '{study}'")
            continue
        rows += rows_of(doc, study)
    raise_if_problems("cannot aggregate the evaluation results", problems)
    return pd.DataFrame(rows, columns=COLUMNS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--inputs", required=True, nargs="+", help="evaluation JSON files from 'brainlatent evaluate'")
    parser.add_argument("--out", required=True, help="output CSV (long format)")


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, "aggregate")
    if not args.inputs:
        raise BrainlatentError("--inputs: no evaluation JSON given")
    table = aggregate(args.inputs, cfg["study"])
    write_table(args.out, table)
