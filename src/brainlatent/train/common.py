"""Pieces every generator trainer shares: the training images, EMA, SIGTERM handling, kimg counting.

A trainer of any family (:mod:`brainlatent.models.families`) reads its training split with
:class:`TrainImages`, keeps an exponential moving average of its generator with :func:`ema_update`,
counts images shown in kimg, and turns SIGTERM (SLURM preemption) into a checkpoint and
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import csv
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainlatent.errors import BrainlatentError
from brainlatent.io import write_table

log = logging.getLogger(__name__)

IN_MEMORY_BYTES = 2 * 1024 ** 3  # train images up to this size are copied into RAM


class TrainingInterrupted(RuntimeError):
    """Raised after a checkpoint was written because SIGTERM arrived."""


def ema_beta(batch_size: int, ema_kimg: float) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images: ``0.5 ** (batch / (ema_kimg·1000))``."""
    return 0.5 ** (batch_size / max(ema_kimg * 1000.0, 1e-8))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``p_ema ← beta · p_ema + (1 − beta) · p`` for every parameter; buffers (w_avg) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


class TrainImages:
    """The training split of a slice dataset; batches gathered by index.

    Small datasets are copied into memory; large ones are read from the memmap batch by batch.
    """

    def __init__(self, slices_dir: str | Path) -> None:
        from brainlatent.slices import load_slices

        images, manifest = load_slices(slices_dir)
        if "split" not in manifest.columns:
            raise BrainlatentError(f"{slices_dir}/manifest.parquet: no 'split' column; expected train/val/test per slice")
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
            raise BrainlatentError(f"{slices_dir}/images.npy: shape {images.shape}; expected N x 1 x R x R")
        train = manifest[manifest["split"] == "train"]
        rows = np.sort((train["index"] if "index" in train.columns else train.index).to_numpy(dtype=np.int64))
        if len(rows) == 0:
            raise BrainlatentError(f"{slices_dir}/manifest.parquet: no slice has split 'train'")
        self.rows = rows  # position i of the training split = row rows[i] of images.npy
        self.resolution = int(images.shape[-1])
        if len(rows) * images[0].nbytes <= IN_MEMORY_BYTES:
            self.memory: torch.Tensor | None = torch.from_numpy(np.ascontiguousarray(images[rows], dtype=np.float32))
            self.images = None
        else:
            self.memory = None
            self.images = images

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` (positions in the training split) as ``B × 1 × R × R`` float32."""
        if self.memory is not None:
            return self.memory.index_select(0, idx)
        return torch.from_numpy(np.ascontiguousarray(self.images[self.rows[idx.numpy()]], dtype=np.float32))


class SigtermFlag:
    """Context manager that records SIGTERM instead of dying (main thread only)."""

    def __init__(self) -> None:
        self.received = False
        self._installed = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("SIGTERM received: writing a checkpoint, then stopping")
        self.received = True

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)


def kimg_name(nimg: int) -> str:
    """``"000012.345"`` for 12 345 images shown (checkpoint and snapshot names sort by it)."""
    return f"{nimg / 1000:010.3f}"


def every_nimg(kimg: float) -> int:
    """A kimg interval as a whole number of images (at least 1)."""
    return max(1, int(round(kimg * 1000)))


# --------------------------------------------------------------------------------------------
# log.csv: one row per log interval, trimmed back to the checkpoint on resume


def start_log(path: Path, columns: list[str]) -> None:
    """Write an empty ``log.csv`` with its header (a run that starts afresh)."""
    import pandas as pd

    write_table(path, pd.DataFrame(columns=columns))


def trim_log(path: Path, max_step: int, columns: list[str]) -> None:
    """Keep the header and the rows up to ``max_step`` (rows a killed run wrote after its last
    checkpoint go); a missing or unreadable log (e.g. removed by the workflow manager with a failed
    job's outputs) is started afresh."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception:  # noqa: BLE001 - a missing or unreadable log is rebuilt from scratch
        df = pd.DataFrame(columns=columns)
    write_table(path, df[df["step"] <= max_step] if "step" in df.columns else pd.DataFrame(columns=columns))


def append_log(path: Path, row: dict, columns: list[str]) -> None:
    """Append one row (floats with 6 significant digits) in the order of ``columns``."""
    with open(path, "a", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerow([f"{row[c]:.6g}" if isinstance(row[c], float) else row[c] for c in columns])
