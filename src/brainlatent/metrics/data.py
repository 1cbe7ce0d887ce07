"""Images every metric needs: the real slices of a split and classifier features of real and generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainlatent.errors import BrainlatentError


def load_real_images(slices_dir: str | Path, split: str = "test") -> np.ndarray:
    """The real slices of one split, ``N x 1 x R x R`` float32 (read from the memmap)."""
    from brainlatent.slices import load_slices

    images, manifest = load_slices(slices_dir)
    if "split" not in manifest.columns:
        raise BrainlatentError(f"{Path(slices_dir) / 'manifest.parquet'}: no 'split' column; expected train/val/test per slice")
    chosen = manifest[manifest["split"].astype(str) == split]
    if chosen.empty:
        raise BrainlatentError(f"{Path(slices_dir) / 'manifest.parquet'}: no slices in split '{split}'")
    rows = chosen["index"].to_numpy() if "index" in chosen.columns else chosen.index.to_numpy()
    return np.asarray(images[np.sort(rows)], dtype=np.float32)


def embed_images(features, images: torch.Tensor | np.ndarray, batch_size: int, device) -> np.ndarray:
    """Penultimate features of many images, in chunks so memory stays bounded."""
    out = []
    chunk = max(batch_size, 1) * 16
    for i in range(0, len(images), chunk):
        x = torch.as_tensor(np.asarray(images[i : i + chunk]) if not isinstance(images, torch.Tensor) else images[i : i + chunk])
        e = features.embed(x.to(device), batch_size)
        out.append(torch.as_tensor(e).detach().double().cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def generated_features(generator, features, n: int, batch_size: int, seed: int, device) -> np.ndarray:
    """Penultimate features of ``n`` generated images (z ~ N(0, I), random noise, no truncation)."""
    from brainlatent.latents import batches

    out = [torch.as_tensor(features.embed(batch.images, batch_size)).detach().double().cpu().numpy()
           for batch in batches(generator, n, seed, batch_size, device, desc="quality samples")]
    return np.concatenate(out)
