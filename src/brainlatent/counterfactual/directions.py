"""Attribute edits that step a latent to a *target value* (e.g. EDSS 0), not by a fixed distance.

**Unconditional families (and W of cstylegan): directions from SVM normals.**
:func:`fit_directions` draws ``n_samples`` seeded samples (:func:`brainlatent.latents.batches`, as
the separability metric does: :func:`brainlatent.metrics.separability.generate_labelled`), labels
their images with the study classifier (``forward()`` with its class-prior adjustment, i.e.
:meth:`~brainlatent.metrics.features.PerceptualFeatures.predict_proba`), and for an attribute and a
*target class* fits ``LinearSVC()`` "target class vs rest" on the latents, as separability does:
the ``keep_fraction`` most confident samples (by the head's maximum class probability, stable sort),
label 1 where the head's argmax is the target class, sklearn defaults, no standardisation (so the
normal is already a direction in the raw latent space). A numeric target value maps to the
classifier bin that holds it (:func:`brainlatent.attributes.encode`: ``e_k <= v < e_{k+1}``; below
the first edge → bin 0, at or above the last → the last bin); a categorical one to its level.
SVMs are fitted on demand and cached per (attribute, class).

For an SVM ``f(x) = a·x + b`` the unit normal is ``n = a / |a|`` and a latent's *score* is its
signed distance ``s(x) = f(x) / |a|``. The class's **target margin** ``t`` is the median score of
the samples the classifier puts in that class (argmax, all ``n_samples``).

**Conditional orthogonalisation** (InterFaceGAN): the edit direction is ``d = P n / |P n|``, with
``P`` the projector onto the orthogonal complement of the normals of the attributes held fixed
(default every other head; a name holds all its classes' normals, one for a two-class head,
``"name=level"`` one class's; their span is taken by SVD, dropping directions with singular value below 1e-6 of the largest).
Moving by ``alpha d`` changes the target score by ``alpha (n·d)`` and leaves every kept normal's
score unchanged, so the step to the target is ``alpha = (t - s(x)) / (n·d)``: it depends on the
latent's current score. With ``stop_if_reached`` (default) a latent whose score is already at or
beyond ``t`` is not moved (it is already a typical member of the target class).

Latents: ``N x d`` in the space the directions were fitted in (``"z"`` or ``"w"``); ``N x L x d`` W+
latents get the same delta on every layer, computed from the layers' mean score.

**Conditional families** (``cwgan``, ``cstylegan``): :func:`conditional_edit` changes y after an
inversion in (z, y): ``"single"`` sets the attribute's units (``G.labels.set_value``: one-hot for a
level, the min-max scaled value for a number) and holds the rest; ``"consistent"`` also redraws the
correlated attributes from p(others | value) of the training table (``G.table.consistent``).

Example:
    >>> import torch
    >>> class Linear:  # a stand-in classifier: class 1 where the first latent unit is positive
    ...     def __call__(self, images):
    ...         p = torch.sigmoid(8 * images[:, 0, 0, :1])
    ...         return {"sex": torch.cat([1 - p, p], 1)}
    >>> x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    >>> dirs = Directions.from_samples(x, Linear()(x.view(-1, 1, 1, 4)),
    ...                                [{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}], "w")
    >>> edited = dirs.edit(x[:3], "sex", "M", stop_if_reached=False)
    >>> torch.allclose(dirs.score(edited, "sex", "M"), torch.full((3,), dirs.target_margin("sex", "M")), atol=1e-5)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from brainlatent.attributes import class_names, encode
from brainlatent.errors import BrainlatentError
from brainlatent.metrics.separability import generate_labelled, most_confident

EDIT_MODES = ("single", "consistent")
#: directions whose singular value is below this fraction of the largest are dropped from the kept span
RANK_TOL = 1e-6


@dataclass
class Hyperplane:
    """One fitted "class vs rest" SVM: ``normal`` (unit, ``d``), ``offset`` = b/|a|, ``margin`` (target score).

    ``score(x) = x·normal + offset``; ``n_class`` samples were in the class, ``n_kept`` fitted.
    """

    attribute: str
    level: str
    normal: np.ndarray
    offset: float
    margin: float
    n_class: int
    n_kept: int
    convergence_warnings: int = 0


def _probs_fn(classifier) -> Callable[[torch.Tensor], dict]:
    """``images -> {head: N x K probabilities}`` from a PerceptualFeatures, a VGG16Classifier or a callable."""
    if hasattr(classifier, "predict_proba"):
        return classifier.predict_proba
    if isinstance(classifier, torch.nn.Module) and hasattr(classifier, "heads"):
        from brainlatent.metrics.features import PerceptualFeatures

        dev = next(iter(classifier.parameters()), torch.zeros(())).device
        return PerceptualFeatures(classifier, dev).predict_proba
    if callable(classifier):
        return classifier
    raise BrainlatentError(
        f"directions: classifier is a {type(classifier).__name__}; expected a PerceptualFeatures, a VGG16Classifier or "
        "a function images -> {head: N x K probabilities}"
    )


def target_class(spec: dict, value) -> int:
    """The class index of ``value`` for attribute ``spec``: its level, or the bin holding a number.

    Example:
        >>> target_class({"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 6, 10]}, 0)
        0
        >>> target_class({"name": "sex", "kind": "categorical", "levels": ["F", "M"]}, "M")
        1
    """
    name = spec["name"]
    if spec["kind"] == "categorical":
        if str(value) not in [str(v) for v in spec["levels"]]:
            raise BrainlatentError(f"edit target {name}={value!r}: expected one of {list(spec['levels'])}")
        return [str(v) for v in spec["levels"]].index(str(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BrainlatentError(f"edit target {name}={value!r}: expected a number (classifier bins {list(spec['bins'])})") from None
    if not np.isfinite(v):
        raise BrainlatentError(f"edit target {name}={value!r}: expected a finite number")
    return int(encode(spec, [v])[0])


class Directions:
    """Per (attribute, class) SVM hyperplanes in one latent space, and edits to a target value.

    Build with :func:`fit_directions` (from a generator and the classifier) or
    :meth:`from_samples` (from latents and their classifier probabilities).

    Args:
        latents: ``N x d`` latents (float64 numpy).
        probs: ``{head: N x K}`` class probabilities of their images.
        specs: the classifier's attribute specs (``name``, ``kind``, ``bins`` | ``levels``).
        space: the latent space (``"z"`` or ``"w"``), recorded.
        keep_fraction: share of the most confident samples each SVM is fitted on (separability: 0.5).
        seed: the SVM's ``random_state`` (fixes only the dual solver's shuffling).
    """

    def __init__(self, latents: np.ndarray, probs: dict[str, np.ndarray], specs: Sequence[dict], space: str,
                 keep_fraction: float = 0.5, seed: int = 0) -> None:
        self.latents = np.asarray(latents, dtype=np.float64)
        if self.latents.ndim != 2 or len(self.latents) < 4:
            raise BrainlatentError(f"directions: latents of shape {self.latents.shape}; expected N x d with N >= 4")
        if not 0 < keep_fraction <= 1:
            raise BrainlatentError(f"directions: keep_fraction={keep_fraction}; expected a share in (0, 1]")
        self.specs = {s["name"]: dict(s) for s in specs}
        self.probs = {}
        for name in self.specs:
            if name not in probs:
                raise BrainlatentError(f"directions: the classifier gave no head '{name}'; heads: {list(probs)}")
            p = np.asarray(torch.as_tensor(probs[name]).double().cpu().numpy() if isinstance(probs[name], torch.Tensor) else probs[name], dtype=np.float64)
            if p.shape != (len(self.latents), len(class_names(self.specs[name]))):
                raise BrainlatentError(f"directions: head '{name}' probabilities of shape {p.shape}; expected {len(self.latents)} x {len(class_names(self.specs[name]))}")
            self.probs[name] = p
        self.space, self.keep_fraction, self.seed = space, float(keep_fraction), int(seed)
        self._planes: dict[tuple[str, int], Hyperplane] = {}
        #: classes that could not be held by orthogonalisation (no hyperplane could be fitted); reported by the editor
        self.unheld: set[str] = set()

    @classmethod
    def from_samples(cls, latents, probs, specs, space: str, keep_fraction: float = 0.5, seed: int = 0) -> Directions:
        """Directions from ``N x d`` latents and their ``{head: N x K}`` probabilities."""
        lat = latents.detach().double().cpu().numpy() if isinstance(latents, torch.Tensor) else latents
        return cls(lat, probs, specs, space, keep_fraction, seed)

    @property
    def dim(self) -> int:
        return self.latents.shape[1]

    def spec(self, attribute: str) -> dict:
        if attribute not in self.specs:
            raise BrainlatentError(f"directions: attribute {attribute!r} is not a classifier head; heads: {list(self.specs)}")
        return self.specs[attribute]

    # ------------------------------------------------------------------ fitting
    def hyperplane(self, attribute: str, value) -> Hyperplane:
        """The "class of ``value`` vs rest" hyperplane (fitted on first use)."""
        spec = self.spec(attribute)
        k = target_class(spec, value)
        key = (attribute, k)
        if key not in self._planes:
            self._planes[key] = self._fit(spec, k)
        return self._planes[key]

    def _fit(self, spec: dict, k: int) -> Hyperplane:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        name, probs = spec["name"], self.probs[spec["name"]]
        level = class_names(spec)[k]
        in_class = probs.argmax(axis=1) == k
        if in_class.sum() == 0:
            raise BrainlatentError(
                f"directions: no sample of {len(probs)} is classified {name}={level}; its target margin is unknown "
                "(draw more samples, or pick another target)"
            )
        keep = max(2, int(len(probs) * self.keep_fraction))
        idx = most_confident(probs, keep)
        y = in_class[idx].astype(np.int64)
        if np.unique(y).size < 2:
            raise BrainlatentError(
                f"directions: the {keep} most confident samples are all {'in' if y[0] else 'outside'} {name}={level}; "
                "a class-vs-rest SVM needs both (draw more samples or raise keep_fraction)"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            svm = LinearSVC(random_state=self.seed).fit(self.latents[idx], y)
        a, b = svm.coef_.ravel().astype(np.float64), float(svm.intercept_[0])
        norm = float(np.linalg.norm(a))
        if norm == 0:
            raise BrainlatentError(f"directions: the SVM for {name}={level} has a zero normal (the classes are not linearly ordered)")
        normal, offset = a / norm, b / norm
        scores = self.latents @ normal + offset
        return Hyperplane(name, level, normal, offset, float(np.median(scores[in_class])), int(in_class.sum()), int(keep),
                          sum(issubclass(w.category, ConvergenceWarning) for w in caught))

    # ------------------------------------------------------------------ editing
    def target_margin(self, attribute: str, value) -> float:
        """The median score of the samples classified in ``value``'s class."""
        return self.hyperplane(attribute, value).margin

    def score(self, latent: torch.Tensor, attribute: str, value) -> torch.Tensor:
        """Signed distance of each latent to the ``value`` hyperplane; ``N`` (W+: the layers' mean)."""
        h = self.hyperplane(attribute, value)
        x = self._flat(latent)
        return x @ torch.as_tensor(h.normal, dtype=x.dtype, device=x.device) + h.offset

    def _flat(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim == 3:
            latent = latent.mean(dim=1)
        if latent.ndim != 2 or latent.shape[1] != self.dim:
            raise BrainlatentError(f"edit: latent of shape {tuple(latent.shape)}; expected N x {self.dim} or N x layers x {self.dim} ({self.space})")
        return latent

    def kept_normals(self, attribute: str, keep_fixed: Sequence[str] | None) -> np.ndarray:
        """``m x d`` normals held fixed for an edit of ``attribute`` (default: every class of every other head)."""
        entries = [n for n in self.specs if n != attribute] if keep_fixed is None else list(keep_fixed)
        normals = []
        for entry in entries:
            name, eq, level = str(entry).partition("=")
            if name == attribute:
                raise BrainlatentError(f"edit: keep_fixed names {entry!r}, the attribute being edited")
            spec = self.spec(name)
            if eq:
                values = [level if spec["kind"] == "categorical" else _bin_value(spec, level)]
            else:  # every class some but not every sample is in (others have no hyperplane)
                labels = self.probs[name].argmax(axis=1)
                values = [lv if spec["kind"] == "categorical" else float(spec["bins"][k])
                          for k, lv in enumerate(class_names(spec)) if 0 < (labels == k).sum() < len(labels)]
                if len(class_names(spec)) == 2:
                    values = values[-1:]  # a two-class head's two hyperplanes are one (normals opposite)
            for v in values:
                try:
                    normals.append(self.hyperplane(name, v).normal)
                except BrainlatentError:
                    if eq:  # a class asked for by name must be holdable
                        raise
                    self.unheld.add(f"{name}={v}")  # no hyperplane (too few confident samples on one side)
        return np.stack(normals) if normals else np.zeros((0, self.dim))

    def direction(self, attribute: str, value, keep_fixed: Sequence[str] | None = None) -> np.ndarray:
        """The unit edit direction ``P n / |P n|`` (``d``)."""
        n = self.hyperplane(attribute, value).normal
        kept = self.kept_normals(attribute, keep_fixed)
        if len(kept):
            u, s, _ = np.linalg.svd(kept.T, full_matrices=False)
            basis = u[:, s > RANK_TOL * s.max()]
            n = n - basis @ (basis.T @ n)
        norm = float(np.linalg.norm(n))
        if norm < 1e-8:
            raise BrainlatentError(f"edit: the {attribute} direction lies in the span of the held attributes {keep_fixed}; hold fewer")
        return n / norm

    def edit(self, latent: torch.Tensor, attribute: str, target_value, keep_fixed: Sequence[str] | None = None,
             stop_if_reached: bool = True) -> torch.Tensor:
        """Move each latent along the (orthogonalised) direction until its score reaches the target margin.

        Args:
            latent: ``N x d`` or ``N x L x d`` (W+) latents of the space the directions were fitted in.
            attribute: the classifier head to edit.
            target_value: a level, or a number (mapped to its classifier bin).
            keep_fixed: attributes (``"name"``) or classes (``"name=level"``) whose scores are held;
                None = every other head; ``[]`` = no orthogonalisation.
            stop_if_reached: leave latents already at or beyond the target margin where they are.

        Returns:
            the edited latents, same shape and dtype.
        """
        h = self.hyperplane(attribute, target_value)
        d = torch.as_tensor(self.direction(attribute, target_value, keep_fixed), dtype=latent.dtype, device=latent.device)
        n_dot_d = float(torch.as_tensor(h.normal, dtype=torch.float64) @ d.double().cpu())
        s = self.score(latent, attribute, target_value)
        alpha = (h.margin - s) / n_dot_d
        if stop_if_reached:
            alpha = torch.where(s >= h.margin, torch.zeros_like(alpha), alpha)
        delta = alpha[:, None] * d[None, :]
        return latent + (delta[:, None, :] if latent.ndim == 3 else delta)


def _bin_value(spec: dict, level: str) -> float:
    """A number inside the bin called ``level`` (``"30-40"`` → 30), or ``level`` read as a number."""
    names = class_names(spec)
    if level in names:
        return float(spec["bins"][names.index(level)])
    try:
        return float(level)
    except ValueError:
        raise BrainlatentError(f"edit: {spec['name']}={level!r}: expected a number or one of the bins {names}") from None


def fit_directions(G, classifier, attribute_specs: Sequence[dict], space: str = "w", n_samples: int = 2000, seed: int = 0,
                   keep_fraction: float = 0.5, batch_size: int = 64, device: str | torch.device = "cpu") -> Directions:
    """Directions in ``space`` of ``G`` from ``n_samples`` seeded samples labelled by the classifier.

    Args:
        G: any family's network (a conditional one draws its labels from its training table).
        classifier: a PerceptualFeatures, a VGG16Classifier, or ``images -> {head: N x K probabilities}``.
        attribute_specs: the classifier's attribute specs (config ``attributes``).
        space: ``"w"`` (needs a mapping network; for a family without one W is Z) or ``"z"``.
        n_samples, seed, batch_size, device: the draw (:func:`brainlatent.latents.batches`).
        keep_fraction: share of the most confident samples each SVM is fitted on.
    """
    if space not in ("z", "w"):
        raise BrainlatentError(f"directions: space {space!r}; expected 'z' or 'w' (W+ latents are edited with the W directions)")
    if int(n_samples) < 4:
        raise BrainlatentError(f"directions: n_samples={n_samples}; expected at least 4")
    z, w, probs = generate_labelled(G, _probs_fn(classifier), int(n_samples), int(batch_size), int(seed), device)
    latents = z if space == "z" or w is None else w
    return Directions(latents, probs, attribute_specs, space, keep_fraction, seed)


def conditional_edit(G, c: torch.Tensor, attribute: str, target_value, mode: str = "single",
                     rng: torch.Generator | None = None) -> torch.Tensor:
    """Labels ``c`` (``N x c_dim``) with ``attribute`` set to the raw ``target_value``.

    ``"single"``: only the attribute's units change (one-hot of the level, or the min-max scaled
    number in the training range; its mask unit set to 1); ``"consistent"``: the other attributes are
    redrawn from p(others | value) of the training table with ``rng``, the slice position held.
    Render with :func:`brainlatent.counterfactual.projector.render` (``c=``) to keep z and the noise.
    """
    from brainlatent.conditional import swap_labels

    if not getattr(G, "c_dim", 0):
        raise BrainlatentError(f"conditional_edit: the '{getattr(G, 'arch', '?')}' network is unconditional; use fit_directions and Directions.edit")
    if mode not in EDIT_MODES:
        raise BrainlatentError(f"conditional_edit: mode {mode!r}; expected one of {list(EDIT_MODES)}")
    if c.ndim != 2 or c.shape[1] != G.c_dim:
        raise BrainlatentError(f"conditional_edit: labels of shape {tuple(c.shape)}; expected N x {G.c_dim}")
    return swap_labels(G, c.float(), attribute, target_value, mode, rng or torch.Generator().manual_seed(0))
