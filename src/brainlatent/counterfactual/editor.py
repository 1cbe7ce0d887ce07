"""A generator as a counterfactual editor: invert the slice, change the latent (or the labels), re-render.

:class:`LatentEditor` is an editor in the sense of :mod:`brainlatent.counterfactual.axioms`
(``editor(images, parents, new_parents) -> images``):

1. **Inversion** (:func:`brainlatent.counterfactual.projector.project`): the slice is projected into
   the family's space: ``w`` / ``w+`` / ``z`` for an unconditional family, ``(z, y)`` with y the
   encoded ``parents`` for a conditional one. Inversions are cached by image and labels, so the same
   source slice is projected once however many interventions are applied to it.
2. **Edit.** Unconditional: for every attribute whose value differs between ``parents`` and
   ``new_parents``, the latent moves along that attribute's SVM normal (conditionally orthogonalised
   against the attributes held fixed) until the SVM score reaches the target class's typical margin
   (:mod:`brainlatent.counterfactual.directions`): a step to a target value, not a fixed distance.
   Conditional: y is re-encoded from ``new_parents`` (z kept), so a causal intervention whose
   downstream attributes changed too sets all of them.
3. **Render** with the inversion's fixed noise inputs: only the latent or the labels differ.

The null intervention (``new_parents = parents``) returns the reconstruction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from brainlatent.attributes import class_names
from brainlatent.counterfactual.directions import target_class
from brainlatent.counterfactual.projector import Inversion, project, render
from brainlatent.errors import BrainlatentError

log = logging.getLogger(__name__)

def _differs(a: pd.Series, b: pd.Series, numeric: bool) -> np.ndarray:
    if numeric:
        x = pd.to_numeric(a, errors="coerce").to_numpy(dtype=np.float64)
        y = pd.to_numeric(b, errors="coerce").to_numpy(dtype=np.float64)
        return np.isfinite(x) & np.isfinite(y) & (np.abs(x - y) > 1e-9)
    return (a.notna() & b.notna() & (a.astype(str) != b.astype(str))).to_numpy()


class LatentEditor:
    """Invert → edit → render with one generator (see the module docstring).

    Args:
        G: the trained network (any registered family).
        space: the space to invert into and edit (``"z"``, ``"w"``, ``"w+"``; conditional families
            always use ``"zy"``).
        attributes: the study's attribute specs.
        features: the study classifier (:class:`PerceptualFeatures`) for the projector's feature term.
        projector: keyword arguments of :func:`project` (steps, lr, weights, batch_size).
        directions: the fitted attribute directions (unconditional families), see
            :func:`brainlatent.counterfactual.directions.fit_directions`.
        keep_fixed: attributes held by conditional orthogonalisation (empty = every other attribute).
        seed: the projector's seed.
    """

    def __init__(self, G, space: str, attributes: Sequence[dict], features=None, projector: dict | None = None,
                 directions=None, keep_fixed: Sequence[str] = (), seed: int = 0) -> None:
        self.G = G
        self.conditional = bool(getattr(G, "c_dim", 0))
        self.space = "zy" if self.conditional else space
        if not self.conditional and directions is None:
            raise BrainlatentError("an unconditional family edits along attribute directions; fit them first (fit_directions)")
        self.specs = {a["name"]: a for a in attributes}
        self.features = features
        self.projector = dict(projector or {})
        self.directions = directions
        self.keep_fixed = list(keep_fixed)
        self.seed = int(seed)
        self._cache: dict[str, tuple] = {}
        self.projected = 0
        #: target -> number of rows the directions could not edit (no hyperplane for that class)
        self.not_edited: dict[str, int] = {}

    # ------------------------------------------------------------------ inversion with a cache
    def _labels(self, parents: pd.DataFrame) -> torch.Tensor | None:
        if not self.conditional:
            return None
        return torch.from_numpy(self.G.labels.encode(parents))

    @staticmethod
    def _key(image: torch.Tensor, c: torch.Tensor | None) -> str:
        h = hashlib.sha1(image.numpy().tobytes())
        if c is not None:
            h.update(c.numpy().tobytes())
        return h.hexdigest()

    def invert(self, images: torch.Tensor, parents: pd.DataFrame) -> Inversion:
        """The inversion of every image (projected once per distinct image and labels)."""
        images = torch.as_tensor(images).float().cpu().contiguous()
        c = self._labels(parents)
        keys = [self._key(images[i], None if c is None else c[i]) for i in range(len(images))]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
        if todo:
            inv = project(self.G, images[todo], self.space, features=self.features,
                          c=None if c is None else c[todo], seed=self.seed, **self.projector)
            self.projected += len(todo)
            for j, i in enumerate(todo):
                self._cache[keys[i]] = (inv.latent[j], None if inv.c is None else inv.c[j],
                                        [t[j] for t in inv.noise], inv.images[j], float(inv.loss[j]))
        rows = [self._cache[k] for k in keys]
        n_noise = len(rows[0][2]) if rows else 0
        return Inversion(
            space=self.space,
            latent=torch.stack([r[0] for r in rows]),
            c=None if c is None else torch.stack([r[1] for r in rows]),
            noise=[torch.stack([r[2][k] for r in rows]) for k in range(n_noise)],
            images=torch.stack([r[3] for r in rows]),
            loss=np.array([r[4] for r in rows]),
            history=np.zeros(0),
        )

    # ------------------------------------------------------------------ the editor
    def __call__(self, images: torch.Tensor, parents: pd.DataFrame, new_parents: pd.DataFrame) -> torch.Tensor:
        if len(parents) != len(images) or len(new_parents) != len(images):
            raise BrainlatentError(f"editor: {len(images)} images but {len(parents)} / {len(new_parents)} attribute rows")
        inv = self.invert(images, parents)
        if self.conditional:
            return render(self.G, inv, c=torch.from_numpy(self.G.labels.encode(new_parents)))
        latent = inv.latent.clone()
        for name, spec in self.specs.items():
            if name not in parents.columns or name not in new_parents.columns:
                continue
            rows = np.flatnonzero(_differs(parents[name], new_parents[name], spec["kind"] == "numeric"))
            if rows.size == 0:
                continue
            keep = [k for k in (self.keep_fixed or self.specs) if k != name and k in self.specs]
            targets = new_parents[name].to_numpy()[rows]
            for value in pd.unique(targets):  # one step-to-target per distinct target value
                sub = rows[targets == value]
                try:
                    latent[sub] = self.directions.edit(latent[sub], name, value, keep_fixed=keep)
                except BrainlatentError as exc:  # no hyperplane for this target: these rows stay unedited, named
                    key = f"{name}={class_names(spec)[target_class(spec, value)]}"  # per target class
                    if key not in self.not_edited:
                        log.warning("cannot edit %s (rows left unedited): %s", key, exc)
                    self.not_edited[key] = self.not_edited.get(key, 0) + len(sub)
        return render(self.G, inv, latent=latent)

    def reconstruct(self, images: torch.Tensor, parents: pd.DataFrame) -> torch.Tensor:
        """The null edit: the inversion re-rendered."""
        return self.invert(images, parents).images.clone()
