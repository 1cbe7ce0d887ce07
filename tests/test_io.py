"""Atomic writes: nothing half-written on failure, normal permissions on success."""

from __future__ import annotations

import os

import pytest

from brainlatent.errors import BrainlatentError
from brainlatent.io import atomic_dir, atomic_path, load_torch, write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_success_replaces_and_keeps_suffix(tmp_path):
    target = tmp_path / "img.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BrainlatentError, match="ckpt.pt: not a readable weights-only checkpoint"):
        load_torch(bad)
