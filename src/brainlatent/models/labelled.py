"""What every conditional generator shares: its label encoder, its training label table, and its file.

A conditional network (``c_dim > 0``) carries the :class:`brainlatent.labels.LabelEncoder` state in
its ``config["label_state"]`` and the training slices' label vectors as the buffer ``label_table``
(``label_rows x c_dim``), so ``sample_labels(n, rng)`` draws from the training table's joint label
distribution and a loaded network needs nothing else. Files are weights-only (:func:`save_network`):
constructor arguments (plain values) plus a ``state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainlatent.errors import BrainlatentError
from brainlatent.labels import LabelEncoder, LabelTable


class LabelledNetwork(nn.Module):
    """Base class: ``labels`` (encoder), ``c_dim``, the ``label_table`` buffer and ``sample_labels``.

    Args:
        label_state: :meth:`LabelEncoder.state` of the training split.
        label_rows: number of rows of the training label table (the buffer is loaded from the file).
    """

    def __init__(self, label_state: dict, label_rows: int) -> None:
        super().__init__()
        self.labels = LabelEncoder.from_state(label_state)
        self.c_dim = self.labels.c_dim
        self.register_buffer("label_table", torch.zeros(int(label_rows), self.c_dim))

    @property
    def table(self) -> LabelTable:
        """The training label table (for conditional resampling, :mod:`brainlatent.conditional`)."""
        return LabelTable(self.labels, self.label_table.detach().cpu())

    def sample_labels(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """``n x c_dim`` label vectors drawn from the training table (CPU ``rng``; CPU tensor)."""
        return self.table.sample(n, rng)

    def check_labels(self, c: torch.Tensor | None, n: int) -> torch.Tensor:
        if c is None:
            raise BrainlatentError(
                f"the '{self.arch}' network is conditional: give labels c (N x {self.c_dim}), e.g. from "
                "brainlatent.latents.sample_labels or brainlatent.labels.LabelTable.request"
            )
        if c.ndim != 2 or c.shape != (n, self.c_dim):
            raise AssertionError(f"labels of shape {tuple(c.shape)}; expected ({n}, {self.c_dim})")
        return c


def save_network(path: str | Path, G: LabelledNetwork, kimg: float, seed: int, fingerprint: str | None = None) -> None:
    """Write a conditional network's ``network.pt`` atomically (``arch``, config, weights, label scaler)."""
    from brainlatent.io import save_torch

    save_torch(path, {
        "arch": G.arch, "z_dim": G.z_dim, "generator_config": dict(G.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in G.state_dict().items()},
        "label_state": G.labels.state(), "kimg": float(kimg), "seed": int(seed), "fingerprint": fingerprint,
    })


def load_network(path: str | Path, cls: type, device: Any = "cpu") -> Any:
    """Rebuild a ``cls`` network from its ``network.pt`` (weights only), in eval mode without parameter gradients."""
    from brainlatent.io import load_torch

    data = load_torch(path, map_location="cpu")
    missing = [k for k in ("generator_config", "state_dict", "arch") if not isinstance(data, dict) or k not in data]
    if missing:
        raise BrainlatentError(f"{path}: not a brainlatent network file; missing keys {missing}")
    try:
        G = cls(**data["generator_config"])
        G.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError, BrainlatentError) as exc:
        raise BrainlatentError(f"{path}: network weights do not match its generator_config ({exc})") from None
    if G.arch != data["arch"]:
        raise BrainlatentError(f"{path}: holds a '{data['arch']}' network, not '{G.arch}'")
    return G.to(device).eval().requires_grad_(False)
