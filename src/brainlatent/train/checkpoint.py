"""Resumable training state: checkpoint files, RNG states and a seeded, resumable data order.

Generic for any trainer. A checkpoint is one ``torch.save`` dict of tensors and plain Python values
(weights-only loadable), written atomically as ``<dir>/<prefix><number><suffix>``; the number in the
name orders them (``ckpt-000005.008.pt`` → 5.008). On restart the trainer asks
:func:`load_latest_checkpoint` for the newest one that loads; unreadable ones are renamed
``*.corrupt`` with a logged warning and the previous one is used.

Example:
    >>> state = {"model": model.state_dict(), "step": 10, "rng": capture_rng_state()}  # doctest: +SKIP
    >>> save_checkpoint(state, "run/checkpoints/ckpt-000010.pt", keep=3)          # doctest: +SKIP
    >>> path, state = load_latest_checkpoint("run/checkpoints", required_keys=["model"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.io import load_torch, save_torch

log = logging.getLogger(__name__)

PREFIX = "ckpt-"
SUFFIX = ".pt"


# --------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), numpy and Python ``random``.

    Only weights-only-loadable types are used (tensors, lists, tuples, ints, floats, str).
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured (CUDA states only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("checkpoint has RNG states for %d CUDA devices, this machine has %d; CUDA RNG not restored",
                        len(cuda_states), torch.cuda.device_count())


# --------------------------------------------------------------------------------------------
# Resumable data order


class ResumableShuffler:
    """Endless stream of index batches: a fresh seeded permutation each epoch, resumable exactly.

    Epoch ``e`` uses ``torch.randperm(n)`` seeded with ``(seed, e)``, so the state is just the
    epoch and the position in it. A batch that runs past the end of an epoch continues into the
    next one (no sample is dropped, every batch is full).

    Args:
        n: number of samples.
        batch_size: indices per batch.
        seed: base seed of the permutations.

    Example:
        >>> s = ResumableShuffler(5, 4, seed=0)
        >>> a = s.next_batch(); state = s.state_dict(); b = s.next_batch()
        >>> s2 = ResumableShuffler(5, 4, seed=0); s2.load_state_dict(state); bool((s2.next_batch() == b).all())
        True
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("cannot shuffle an empty dataset")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.pos = 0
        self._perm: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2 ** 63))
            self._perm = torch.randperm(self.n, generator=gen)
        return self._perm

    def next_batch(self) -> torch.Tensor:
        """The next ``batch_size`` indices (int64)."""
        parts = []
        need = self.batch_size
        while need > 0:
            perm = self._permutation()
            take = perm[self.pos:self.pos + need]
            parts.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch += 1
                self.pos = 0
                self._perm = None
        return torch.cat(parts)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise BrainlatentError(
                f"checkpoint data order is for {state['n']} samples with seed {state['seed']}, "
                f"this run has {self.n} samples with seed {self.seed}; the dataset or seed changed since the checkpoint"
            )
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._perm = None


# --------------------------------------------------------------------------------------------
# Checkpoint files


def checkpoint_number(path: str | os.PathLike, prefix: str = PREFIX, suffix: str = SUFFIX) -> float | None:
    """The number in a checkpoint's name (``ckpt-000005.008.pt`` → 5.008), None if it is not one."""
    name = Path(path).name
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    try:
        return float(name[len(prefix):len(name) - len(suffix)])
    except ValueError:
        return None


def list_checkpoints(directory: str | os.PathLike, prefix: str = PREFIX, suffix: str = SUFFIX) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (smallest number) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(checkpoint_number(p, prefix, suffix), p) for p in directory.iterdir() if p.is_file()]
    return [p for num, p in sorted((x for x in found if x[0] is not None), key=lambda x: x[0])]


def prune_checkpoints(directory: str | os.PathLike, keep: int, prefix: str = PREFIX, suffix: str = SUFFIX) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary files); returns the deleted."""
    directory = Path(directory)
    removed = []
    paths = list_checkpoints(directory, prefix, suffix)
    for path in paths[:-keep] if keep > 0 else paths:
        path.unlink(missing_ok=True)
        removed.append(path)
    for tmp in directory.glob(f".{prefix}*.tmp{suffix}"):  # left by a write that was killed
        tmp.unlink(missing_ok=True)
    return removed


def save_checkpoint(
    state: dict[str, Any],
    path: str | os.PathLike,
    keep: int | None = None,
    prefix: str = PREFIX,
    suffix: str = SUFFIX,
) -> Path:
    """Write ``state`` atomically to ``path``; then keep only the newest ``keep`` checkpoints beside it."""
    path = Path(path)
    save_torch(path, state)
    if keep is not None:
        prune_checkpoints(path.parent, keep, prefix=prefix, suffix=suffix)
    return path


def load_latest_checkpoint(
    directory: str | os.PathLike,
    required_keys: Iterable[str] = (),
    map_location: Any = "cpu",
    prefix: str = PREFIX,
    suffix: str = SUFFIX,
) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint that loads (weights-only) and has ``required_keys``.

    Unreadable or incomplete checkpoints (a truncated file from a killed job, say) are renamed to
    ``<name>.corrupt`` with a warning, and the next older one is tried.

    Returns:
        ``(path, state)``, or ``(None, None)`` when there is no valid checkpoint.
    """
    required = list(required_keys)
    for path in reversed(list_checkpoints(directory, prefix, suffix)):
        try:
            state = load_torch(path, map_location=map_location)
            if not isinstance(state, dict):
                raise BrainlatentError(f"{path}: expected a dict, got {type(state).__name__}")
            missing = [k for k in required if k not in state]
            if missing:
                raise BrainlatentError(f"{path}: checkpoint lacks {missing}")
        except BrainlatentError as exc:
            bad = path.with_name(path.name + ".corrupt")
            os.replace(path, bad)
            log.warning("skipping unreadable checkpoint (renamed to %s): %s", bad.name, exc)
            continue
        return path, state
    return None, None


# --------------------------------------------------------------------------------------------
# One resume policy for every trainer


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a fingerprint (shown in network files and the report)."""
    import hashlib
    import json

    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two fingerprints (``["<none recorded>"]`` without an old one)."""
    if not isinstance(old, dict):
        return ["<none recorded>"]
    a, b = _flat(old), _flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def set_aside(directory: str | os.PathLike) -> Path:
    """Rename ``directory`` to ``<name>.stale-<n>`` (the first free n); nothing is deleted."""
    directory = Path(directory)
    n = 1
    while (target := directory.with_name(f"{directory.name}.stale-{n}")).exists():
        n += 1
    os.replace(directory, target)
    return target


def resume_matching(
    directory: str | os.PathLike,
    fingerprint: dict[str, Any],
    required_keys: Iterable[str] = (),
    prefix: str = PREFIX,
    suffix: str = SUFFIX,
    still_valid: Any = None,
) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest valid checkpoint made for exactly this ``fingerprint``, else a fresh start.

    A fingerprint holds everything that shapes the trained result (training settings,
    architecture, seed, data identity). Same fingerprint: the run resumes (a killed or requeued
    job goes on exactly where it stopped). Different: the old checkpoints are moved aside to
    ``<directory>.stale-<n>`` (not deleted), the log names the settings that changed, and
    ``(None, None)`` is returned so that training starts afresh. ``still_valid(state)`` may
    return a reason (str) why a matching checkpoint cannot be continued (e.g. it is past the
    configured length); it is then moved aside too.
    """
    path, state = load_latest_checkpoint(directory, required_keys, prefix=prefix, suffix=suffix)
    if state is None:
        return None, None
    reason = None
    if state.get("fingerprint") != fingerprint:
        reason = "made with other settings: " + ", ".join(fingerprint_changes(state.get("fingerprint"), fingerprint)) + " changed"
    elif still_valid is not None:
        reason = still_valid(state)
    if reason is None:
        return path, state
    stale = set_aside(directory)
    log.warning("checkpoints in %s were %s; moved them to %s and training starts afresh", directory, reason, stale)
    return None, None
