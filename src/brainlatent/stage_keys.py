"""Which config keys each stage reads: the one place that says so.

The workflow gives every job exactly these keys (as its ``params``), so Snakemake reruns a job when,
and only when, a key its code reads has changed: adding a latent size does not retrain the existing
generators, new attribute bins do not re-preprocess the scans, an ``evaluate`` setting does not
retrain anything. The CLI applies the same view to a study YAML (:func:`brainlatent.config.load_stage_config`),
so a stage that reads a key missing from its list fails loudly on either path.

A selector is a dotted path (``"gan.lr"``; a whole section: ``"gan"``), optionally with a leading
``-`` to drop a key again (``"-gan.archs"``). ``"attributes[].name"`` takes one key of every list
item (items that lack it are left without it), and ``"attributes[].bins@ends"`` only the first and
last element of that key (the value range the bins cover); ``"attributes[slices.split.stratify]"`` takes whole
items whose ``name`` is listed under the dotted key in brackets. ``"*"`` is the whole config.
"""

from __future__ import annotations

import copy
from typing import Any

from brainlatent.errors import BrainlatentError

#: the config keys each stage's code reads (see the module docstring for the selector syntax)
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "synthesize": ("seed", "synthetic", "-synthetic.twins"),
    # counterfactual twins: the cohort's generator, the study's preprocessing and slice geometry
    "twins": ("seed", "synthetic", "inputs.modality", "preprocess", "slices.resolution", "attributes[].name"),
    "validate_inputs": (
        "inputs",
        "preprocess.mask.source",
        "attributes[].name", "attributes[].kind", "attributes[].levels", "attributes[].required",
        "attributes[].bins@ends",  # values are checked against the range, not the bins
    ),
    "preprocess": ("preprocess",),
    # bins matter to the split only for stratified numeric attributes
    "slice": (
        "seed", "slices", "preprocess.normalise.method", "preprocess.qc", "qc",
        "attributes[].name", "attributes[].kind", "attributes[slices.split.stratify]",
    ),
    "train_classifier": ("seed", "attributes", "classifier", "-classifier.lpips_weights"),
    # a generator's trainer: ``"train:<family>"``, keys from brainlatent.models.families
    # a metric: ``"evaluate:<metric>"``, keys from brainlatent.metrics.registry
    "counterfactual": ("seed", "attributes", "counterfactual", "preprocess.field_of_view_mm", "preprocess.spacing_mm",
                       "slices.resolution"),
    "aggregate": ("study",),
    "report": ("*",),
}


def stage_keys(stage: str) -> tuple[str, ...]:
    """The selectors of one stage; ``"train:<family>"`` asks the generator-family registry."""
    if stage.startswith("train:"):
        from brainlatent.models.families import get_family

        return get_family(stage.split(":", 1)[1]).stage_keys
    if stage.startswith("evaluate:"):
        from brainlatent.metrics.registry import get_metric

        return get_metric(stage.split(":", 1)[1]).stage_keys
    if stage not in STAGE_KEYS:
        raise BrainlatentError(f"unknown stage '{stage}'; stages with a key list: {sorted(STAGE_KEYS)} and train:<family>, evaluate:<metric>")
    return STAGE_KEYS[stage]


def stage_view(cfg: dict, stage: str) -> dict:
    """The part of a completed study config that ``stage`` reads (a new plain dict).

    Example:
        >>> from brainlatent.config import load_config
        >>> sorted(stage_view(load_config({}), "train:stylegan")["gan"])[:3]
        ['batch_size', 'betas', 'channels_base']
    """
    out: dict[str, Any] = {}
    for selector in stage_keys(stage):
        if selector == "*":
            out = copy.deepcopy(dict(cfg))
        elif selector.startswith("-"):
            _drop(out, selector[1:].split("."))
        else:
            _take(cfg, out, selector)
    return out


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise BrainlatentError(f"stage key '{dotted}' is not in the config (is the config completed?)")
        node = node[part]
    return node


def _take(cfg: dict, out: dict, selector: str) -> None:
    if "[" in selector:
        head, rest = selector.split("[", 1)
        inside, tail = rest.split("]", 1)
        items = _lookup(cfg, head)
        target = _ensure_list(out, head, len(items))
        if inside == "":
            key, _, modifier = tail.lstrip(".").partition("@")
            for item, dest in zip(items, target):
                if key in item:
                    value = copy.deepcopy(item[key])
                    dest[key] = [value[0], value[-1]] if modifier == "ends" else value
        else:
            names = set(_lookup(cfg, inside))
            for item, dest in zip(items, target):
                if item.get("name") in names:
                    dest.update(copy.deepcopy(item))
        return
    parts = selector.split(".")
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = copy.deepcopy(_lookup(cfg, selector))


def _ensure_list(out: dict, dotted: str, n: int) -> list[dict]:
    parts = dotted.split(".")
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    existing = node.get(parts[-1])
    if not isinstance(existing, list) or len(existing) != n:
        existing = [{} for _ in range(n)]
        node[parts[-1]] = existing
    return existing


def _drop(out: dict, parts: list[str]) -> None:
    node = out
    for part in parts[:-1]:
        node = node.get(part, {})
    if isinstance(node, dict):
        node.pop(parts[-1], None)
