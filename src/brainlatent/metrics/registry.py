"""The metric registry: every evaluation metric is one function behind ``@register_metric``.

A metric takes a :class:`MetricContext` (the generator, the study classifier's features, the
classifier's attribute specs, the stage config, a seed, the device, the slice dataset, a folder for
its pictures) and returns a :class:`MetricResult`; ``brainlatent evaluate --metric <name>`` writes it
as ``eval/<model>/<name>.json`` (results, settings, notes) and the workflow runs one ``evaluate``
rule for every (model, metric) the family lists (:mod:`brainlatent.models.families`).

Example:
    >>> @register_metric("toy", stage_keys=("seed",))          # doctest: +SKIP
    ... def toy(ctx: MetricContext) -> MetricResult:
    ...     return MetricResult({"value": 1.0}, {"n": 0})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainlatent.errors import BrainlatentError


@dataclass
class MetricContext:
    """What a metric gets.

    Args:
        cfg: the stage config (exactly the metric's ``stage_keys``; ``cfg["evaluate"][name]`` holds its settings).
        generator: the trained network (any family; see :mod:`brainlatent.latents` for sampling).
        features: :class:`brainlatent.metrics.features.PerceptualFeatures` of the study classifier
            (``embed``, ``predict_proba``, ``distance``).
        specs: the classifier's attribute specs (its heads), in head order.
        seed: the metric's seed (derived from the config seed, metric, family and latent size).
        device: torch device.
        slices: the slice dataset folder (real images and manifest), or None.
        out_dir: a folder for the metric's pictures (created on demand).
        distance: the image distance PPL uses (the classifier's or LPIPS).
        classifier_metrics: the classifier's ``metrics.json`` (test scores against baselines), if read.
    """

    cfg: dict
    generator: Any
    features: Any
    specs: list[dict]
    seed: int
    device: Any
    slices: Path | None = None
    out_dir: Path | None = None
    distance: Callable | None = None
    classifier_metrics: dict | None = None


@dataclass
class MetricResult:
    """``results`` (numbers only: what ``aggregate`` collects), ``settings`` (how), ``notes`` (caveats),
    ``extra`` (more top-level JSON keys, e.g. curves)."""

    results: dict
    settings: dict
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[MetricContext], MetricResult]
    stage_keys: tuple[str, ...]
    description: str = ""


_METRICS: dict[str, Metric] = {}

#: modules whose import registers the built-in metrics
_BUILTIN_MODULES = (
    "brainlatent.metrics.builtin", "brainlatent.metrics.mode_discovery", "brainlatent.metrics.attribute_control",
    "brainlatent.metrics.latent_order",
)


def register_metric(name: str, stage_keys: tuple[str, ...] = ("seed", "study", "evaluate.batch_size"), description: str = ""):
    """Decorator: register ``fn(ctx) -> MetricResult`` as metric ``name`` reading ``stage_keys``
    (the config keys its code reads; the workflow passes exactly these, :mod:`brainlatent.stage_keys`)."""

    def wrap(fn: Callable[[MetricContext], MetricResult]) -> Callable[[MetricContext], MetricResult]:
        if name in _METRICS:
            raise ValueError(f"metric {name!r} is registered already")
        _METRICS[name] = Metric(name, fn, tuple(stage_keys), description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return wrap


def _load_builtin() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def metrics() -> dict[str, Metric]:
    """Every registered metric."""
    _load_builtin()
    return dict(_METRICS)


def get_metric(name: str) -> Metric:
    """The metric called ``name``; a clear error naming the known ones otherwise."""
    _load_builtin()
    try:
        return _METRICS[name]
    except KeyError:
        raise BrainlatentError(f"metric {name!r} is not known; known metrics: {sorted(_METRICS)}") from None
