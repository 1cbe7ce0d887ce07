"""GAN training loop: outputs, exact kill-and-resume, corrupt checkpoints, network file, generate CLI."""

from __future__ import annotations

import logging
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.cli import main as cli_main
from brainlatent.config import load_config
from brainlatent.generate import generate_images, parse_seeds
from brainlatent.models.stylegan import Generator, load_generator
from brainlatent.train import common as train_common
from brainlatent.train import gan as gan_module
from brainlatent.train.checkpoint import ResumableShuffler, list_checkpoints, load_latest_checkpoint
from brainlatent.train.gan import TrainingInterrupted, train_gan

RES = 16
BATCH = 4


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory):
    """24 ellipse 'slices' in the slice-dataset format (images.npy + manifest.parquet)."""
    out = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    n = 24
    images = np.full((n, 1, RES, RES), -1.0, np.float32)
    for i in range(n):
        a, b = rng.uniform(0.5, 0.9, 2)
        images[i, 0][(xx / a) ** 2 + (yy / b) ** 2 < 1] = rng.uniform(0.0, 0.8)
    np.save(out / "images.npy", images)
    split = ["train"] * 18 + ["val"] * 3 + ["test"] * 3
    pd.DataFrame({"index": np.arange(n), "scan": [f"s{i}" for i in range(n)], "subject": [f"p{i}" for i in range(n)],
                  "session": "1", "slice": 0, "split": split}).to_parquet(out / "manifest.parquet", index=False)
    return out


def tiny_cfg(**gan) -> dict:
    base = dict(kimg=0.032, batch_size=BATCH, channels_base=32, channels_max=8, mapping_layers=2, lr=0.002,
                ema_kimg=0.01, checkpoint_kimg=0.016, snapshot_kimg=0.016, log_kimg=0.008, keep_checkpoints=5)
    base.update(gan)
    return load_config({"seed": 7, "gan": base})


def ckpt_states(run_dir):
    state = torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)
    return state


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["step"] == b["step"] and a["nimg"] == b["nimg"]


@pytest.fixture(scope="module")
def finished_run(slices_dir, tmp_path_factory):
    """One uninterrupted run of 8 steps (checkpoints after steps 4 and 8)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "stylegan-z8"
    summary = train_gan(tiny_cfg(), slices_dir, "stylegan", 8, out, device="cpu")
    return out, summary


def test_run_writes_outputs(finished_run):
    out, summary = finished_run
    assert summary["steps"] == 8 and summary["kimg"] == pytest.approx(0.032) and summary["resumed_from"] is None
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == ["kimg", "step", "loss_d", "loss_g", "gp", "wasserstein", "img_per_s", "wall_s"]
    assert log["step"].tolist() == [2, 4, 6, 8]
    assert np.isfinite(log[["loss_d", "loss_g", "gp", "wasserstein"]].to_numpy()).all()
    assert (out / "samples" / "reals.png").exists()
    assert sorted(p.name for p in (out / "samples").glob("fakes-*.png")) == [
        "fakes-000000.000.png", "fakes-000000.016.png", "fakes-000000.032.png"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["ckpt-000000.016.pt", "ckpt-000000.032.pt"]
    assert (out / "options.json").exists()


def test_kill_and_resume_matches_uninterrupted_run(finished_run, slices_dir, tmp_path, monkeypatch):
    reference = ckpt_states(finished_run[0])
    out = tmp_path / "stylegan-z8"

    # 1) killed by SIGTERM during step 3 (not on a checkpoint boundary)
    real_step = gan_module._train_step
    calls = {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        result = real_step(*args, **kwargs)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(gan_module, "_train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        train_gan(tiny_cfg(), slices_dir, "stylegan", 8, out, device="cpu")
    monkeypatch.setattr(gan_module, "_train_step", real_step)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["ckpt-000000.012.pt"]
    assert not (out / "network.pt").exists()

    # 2) resumed from disk, with the RNG disturbed in between
    torch.manual_seed(12345)
    summary = train_gan(tiny_cfg(), slices_dir, "stylegan", 8, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.012.pt")
    assert_same_weights(ckpt_states(out), reference)
    assert pd.read_csv(out / "log.csv")["step"].tolist() == [2, 4, 6, 8]

    # 3) resumed again from a periodic checkpoint (the final one deleted, as if killed just before it)
    (out / "checkpoints" / "ckpt-000000.032.pt").unlink()
    (out / "network.pt").unlink()
    summary = train_gan(tiny_cfg(), slices_dir, "stylegan", 8, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.016.pt")
    assert_same_weights(ckpt_states(out), reference)


def test_corrupt_newest_checkpoint_is_skipped(finished_run, tmp_path, caplog):
    src = finished_run[0] / "checkpoints"
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for p in list_checkpoints(src):
        (ckpts / p.name).write_bytes(p.read_bytes())
    newest = ckpts / "ckpt-000000.032.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # truncated by a kill
    with caplog.at_level(logging.WARNING, logger="brainlatent.train.checkpoint"):
        path, state = load_latest_checkpoint(ckpts, required_keys=gan_module.CHECKPOINT_KEYS)
    assert path.name == "ckpt-000000.016.pt" and state["nimg"] == 16
    assert any("ckpt-000000.032.pt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert (ckpts / "ckpt-000000.032.pt.corrupt").exists()
    assert [p.name for p in list_checkpoints(ckpts)] == ["ckpt-000000.016.pt"]


def test_changed_lr_trains_a_different_network_from_scratch(finished_run, slices_dir, tmp_path, caplog):
    """Rerunning with another gan.lr never resumes the old checkpoints: they are moved aside (not
    deleted), the log names the change, and the network equals a fresh run with the new lr."""
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    old = torch.load(out / "network.pt", weights_only=True)
    with caplog.at_level(logging.WARNING, logger="brainlatent.train.checkpoint"):
        summary = train_gan(tiny_cfg(lr=0.001, gp_lambda=5.0), slices_dir, "stylegan", 8, out, device="cpu")
    assert summary["resumed_from"] is None
    assert any("gan.lr" in r.getMessage() and "gan.gp_lambda" in r.getMessage() for r in caplog.records)
    assert len(list_checkpoints(out / "checkpoints.stale-1")) == len(list_checkpoints(finished_run[0] / "checkpoints"))
    new = torch.load(out / "network.pt", weights_only=True)
    assert any(not torch.equal(old["state_dict"][k], new["state_dict"][k]) for k in old["state_dict"])
    assert new["fingerprint"] != old["fingerprint"]
    fresh = train_gan(tiny_cfg(lr=0.001, gp_lambda=5.0), slices_dir, "stylegan", 8, tmp_path / "fresh", device="cpu")
    reference = torch.load(fresh["network"], weights_only=True)
    assert all(torch.equal(reference["state_dict"][k], new["state_dict"][k]) for k in new["state_dict"])


def test_other_slices_are_never_resumed(finished_run, slices_dir, tmp_path):
    """The data identity is part of the fingerprint: the same settings on changed slices start afresh."""
    other = tmp_path / "slices"
    shutil.copytree(slices_dir, other)
    images = np.load(other / "images.npy")
    images[0] = -1.0
    np.save(other / "images.npy", images)
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    summary = train_gan(tiny_cfg(), other, "stylegan", 8, out, device="cpu")
    assert summary["resumed_from"] is None and (out / "checkpoints.stale-1").is_dir()


def test_longer_run_resumes_the_finished_one(finished_run, slices_dir, tmp_path):
    """kimg is not part of the fingerprint: extending a finished run continues it."""
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    summary = train_gan(tiny_cfg(kimg=0.048), slices_dir, "stylegan", 8, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.032.pt") and summary["kimg"] == pytest.approx(0.048)


def test_network_file_is_weights_only_and_regenerates(finished_run):
    out, _ = finished_run
    data = torch.load(out / "network.pt", weights_only=True)
    assert {"generator_config", "state_dict", "w_avg", "arch", "z_dim", "kimg", "seed"} <= set(data)
    assert data["arch"] == "stylegan" and data["z_dim"] == 8 and data["kimg"] == pytest.approx(0.032)
    G = load_generator(out / "network.pt")
    assert not G.training and G.has_mapping and torch.equal(G.w_avg, data["w_avg"])
    # the network file holds the EMA weights of the final checkpoint
    ema = Generator(**data["generator_config"])
    ema.load_state_dict(ckpt_states(out)["G_ema"])
    ema.eval()
    a = generate_images(G, [3, 5])
    b = generate_images(load_generator(out / "network.pt"), [5])
    # a seed's image does not depend on the other seeds (up to batch-size-dependent rounding)
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert torch.equal(a, generate_images(load_generator(out / "network.pt"), [3, 5]))
    assert torch.equal(a, generate_images(ema, [3, 5]))
    assert not torch.equal(a[0], a[1])


def test_generate_cli(finished_run, tmp_path):
    net = finished_run[0] / "network.pt"
    assert cli_main(["generate", "--network", str(net), "--seeds", "0-3,7", "--space", "w",
                     "--truncation", "0.7", "--out", str(tmp_path / "grid.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (3 * RES, 2 * RES)  # 5 images: 3 columns x 2 rows
    assert cli_main(["generate", "--network", str(net), "--seeds", "2,4", "--out-dir", str(tmp_path / "each")]) == 0
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == ["seed0002.png", "seed0004.png"]
    # Z truncation is meaningless for a mapping network that normalises z: a clear error, exit 2
    assert cli_main(["generate", "--network", str(net), "--seeds", "0", "--truncation", "0.5",
                     "--out", str(tmp_path / "x.png")]) == 2


def test_parse_seeds():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_seeds("5") == [5]
    from brainlatent.errors import BrainlatentError

    with pytest.raises(BrainlatentError, match="seeds"):
        parse_seeds("3-1")


def test_resumable_shuffler_covers_every_sample_each_epoch():
    s = ResumableShuffler(10, 4, seed=3)
    first = torch.cat([s.next_batch() for _ in range(5)])  # 20 indices = 2 epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    state = s.state_dict()
    nxt = s.next_batch()
    s2 = ResumableShuffler(10, 4, seed=3)
    s2.load_state_dict(state)
    assert torch.equal(s2.next_batch(), nxt)


def test_train_images_memmap_path_matches_in_memory(slices_dir, monkeypatch):
    in_memory = gan_module.TrainImages(slices_dir)
    monkeypatch.setattr(train_common, "IN_MEMORY_BYTES", 0)
    from_disk = gan_module.TrainImages(slices_dir)
    assert in_memory.memory is not None and from_disk.memory is None
    assert len(in_memory) == len(from_disk) == 18  # the train split only
    idx = torch.tensor([5, 0, 17, 5])
    assert torch.equal(in_memory.get(idx), from_disk.get(idx))
