"""``brainlatent train-gan``: train a StyleGAN or the mapping-free GAN with WGAN-GP, resumably.

One run folder per (arch, z_dim)::

    <out>/options.json            what this run was asked to do (config section, seed, networks)
    <out>/log.csv                 kimg, step, loss_d, loss_g, gp, wasserstein, img_per_s, wall_s
    <out>/samples/reals.png       training images
    <out>/samples/fakes-<kimg>.png  fixed-z grid from the EMA generator, fixed noise
    <out>/checkpoints/ckpt-<kimg>.pt  G, D, EMA, both optimisers, counters, RNG and data-order state
    <out>/network.pt              the EMA generator (weights only): see models.stylegan.load_generator

Training: Adam for G (mapping included) and D; ``critic_steps`` critic updates (one real batch each)
per generator update; progress counted in thousands of real images shown (kimg). The EMA copy of G
(half-life ``ema_kimg``) is the model every later stage evaluates. On start the newest valid
checkpoint is resumed; on CPU a killed-and-resumed run ends with bitwise the same weights as an
uninterrupted one (seeded init, seeded data order, global RNG states saved). SIGTERM (SLURM
preemption) writes a checkpoint and exits with status 143.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from brainlatent.config import derive_seed, load_stage_config
from brainlatent.errors import BrainlatentError
from brainlatent.images import image_grid, save_png
from brainlatent.io import write_json
from brainlatent.models.discriminator import Discriminator
from brainlatent.models.stylegan import ARCHS, Generator, load_generator, save_network
from brainlatent.numerics import strict_float32
from brainlatent.slices import dataset_identity
from brainlatent.train.checkpoint import (
    ResumableShuffler,
    capture_rng_state,
    fingerprint_digest,
    restore_rng_state,
    resume_matching,
    save_checkpoint,
)
from brainlatent.train.common import (
    SigtermFlag,
    TrainImages,
    TrainingInterrupted,
    append_log,
    ema_beta,
    ema_update,
    every_nimg,
    kimg_name,
    start_log,
    trim_log,
)
from brainlatent.train.losses import critic_loss, generator_loss

__all__ = ["train_gan", "load_generator", "ema_beta", "ema_update", "mix_styles"]

log = logging.getLogger(__name__)

LOG_COLUMNS = ["kimg", "step", "loss_d", "loss_g", "gp", "wasserstein", "img_per_s", "wall_s"]
CHECKPOINT_KEYS = ["G", "D", "G_ema", "opt_G", "opt_D", "step", "nimg", "rng", "data_order", "generator_config"]
#: gan keys that may change between runs without invalidating a checkpoint (a longer run resumes)
RESUMABLE_CHANGES = ("kimg", "log_kimg", "snapshot_kimg", "checkpoint_kimg", "keep_checkpoints")
SNAPSHOT_IMAGES = 32  # 8 x 4 grid


# --------------------------------------------------------------------------------------------
# Pieces with their own tests


def mix_styles(G: Generator, z: torch.Tensor, prob: float, update_w_avg: bool = False) -> torch.Tensor:
    """Style-mixing regularisation: ``N × num_ws × w_dim`` styles, the layers from a random cutoff on
    taken from a second latent, with probability ``prob`` (NVlabs). ``prob = 0`` draws nothing."""
    ws = G.mapping(z, update_w_avg=update_w_avg).unsqueeze(1).repeat(1, G.num_ws, 1)
    if prob > 0:
        cutoff = int(torch.randint(1, G.num_ws, ()))
        if float(torch.rand(())) < prob:
            ws[:, cutoff:] = G.mapping(torch.randn_like(z)).unsqueeze(1)
    return ws


# --------------------------------------------------------------------------------------------
# Training loop helpers




def _snapshot(G_ema: Generator, z: torch.Tensor, noise: list[torch.Tensor], path: Path) -> None:
    with torch.no_grad():
        imgs = G_ema(z, noise=noise).float()
    save_png(image_grid(imgs, ncols=8), path)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def training_fingerprint(gcfg: dict, seed: int, arch: str, z_dim: int, generator_config: dict, data: dict) -> dict:
    """Everything that shapes a trained generator: a checkpoint is resumed only if this matches."""
    from brainlatent.config import plain

    return {
        "format": 1, "arch": arch, "z_dim": int(z_dim), "seed": int(seed), "generator_config": generator_config,
        "gan": {k: v for k, v in plain(gcfg).items() if k not in RESUMABLE_CHANGES}, "data": data,
    }


def _check_inputs(arch: str, z_dim: int) -> None:
    if arch not in ARCHS:
        raise BrainlatentError(f"--arch: expected one of {list(ARCHS)}, got {arch!r}")
    if z_dim < 2:
        raise BrainlatentError(f"--zdim: expected an integer >= 2, got {z_dim}")


# --------------------------------------------------------------------------------------------
# Training


def train_gan(
    cfg: dict,
    slices_dir: str | Path,
    arch: str,
    z_dim: int,
    out_dir: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train one generator (resuming from the newest valid checkpoint) and write ``network.pt``.

    Args:
        cfg: a completed study config (:func:`brainlatent.config.load_config`); uses ``cfg["gan"]``.
        slices_dir: slice dataset folder (``images.npy`` + ``manifest.parquet``); its train split is used.
        arch: ``"stylegan"`` or ``"gan"``.
        z_dim: latent size (also w size).
        out_dir: the run folder.
        device: torch device; default ``cuda`` if available, else ``cpu``.

    Returns:
        Summary dict: ``network``, ``kimg``, ``steps``, ``seconds`` (this call), ``s_per_kimg``
        (this call), ``resumed_from`` (checkpoint path or None), ``device``.
    """
    cfg = load_stage_config(cfg, f"train:{arch}")  # exactly the keys the workflow gives this stage
    gcfg = cfg["gan"]
    _check_inputs(arch, z_dim)
    strict_float32()  # TF32 off for every float32 matmul/convolution (bf16 autocast regions are unaffected)
    out_dir = Path(out_dir)
    ckpt_dir, sample_dir = out_dir / "checkpoints", out_dir / "samples"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = derive_seed(cfg["seed"], "train_gan", arch, z_dim)
    data = TrainImages(slices_dir)
    batch = int(gcfg["batch_size"])
    generator_config = dict(
        z_dim=int(z_dim), w_dim=int(z_dim), resolution=data.resolution, arch=arch,
        mapping_layers=int(gcfg["mapping_layers"]), channels_base=int(gcfg["channels_base"]),
        channels_max=int(gcfg["channels_max"]), img_channels=1,
    )
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), SigtermFlag() as sigterm:
        torch.manual_seed(seed)
        G = Generator(**generator_config).to(device)
        D = Discriminator(data.resolution, gcfg["channels_base"], gcfg["channels_max"]).to(device)
        # channels-last is faster on CPU too (measured ~25% on the demo networks, oneDNN)
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        betas = tuple(gcfg["betas"])
        opt_G = torch.optim.Adam(G.parameters(), lr=gcfg["lr"], betas=betas, eps=1e-8)
        opt_D = torch.optim.Adam(D.parameters(), lr=gcfg["lr"], betas=betas, eps=1e-8)
        order = ResumableShuffler(len(data), batch, derive_seed(seed, "data_order"))
        step, nimg, wall_before = 0, 0, 0.0

        fingerprint = training_fingerprint(gcfg, seed, arch, z_dim, generator_config, dataset_identity(slices_dir))
        total = every_nimg(gcfg["kimg"])
        resumed_from, state = resume_matching(
            ckpt_dir, fingerprint, required_keys=CHECKPOINT_KEYS,
            still_valid=lambda s: None if int(s["nimg"]) <= total else f"trained past the configured {gcfg['kimg']} kimg ({int(s['nimg']) / 1000:g})",
        )
        if state is not None:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            G_ema.load_state_dict(state["G_ema"])
            opt_G.load_state_dict(state["opt_G"])
            opt_D.load_state_dict(state["opt_D"])
            order.load_state_dict(state["data_order"])
            step, nimg, wall_before = int(state["step"]), int(state["nimg"]), float(state.get("wall_s", 0.0))
            restore_rng_state(state["rng"])
            log.info("resumed from %s (kimg %.3f, step %d)", resumed_from, nimg / 1000, step)
            trim_log(out_dir / "log.csv", step, LOG_COLUMNS)
            del state
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            start_log(out_dir / "log.csv", LOG_COLUMNS)
        write_json(out_dir / "options.json", {
            "arch": arch, "z_dim": z_dim, "seed": seed, "slices_dir": str(slices_dir), "device": str(device),
            "train_images": len(data), "generator_config": generator_config, "discriminator_config": D.config,
            "fingerprint": fingerprint_digest(fingerprint),
            "gan": gcfg, "num_params": {"G": sum(p.numel() for p in G.parameters()),
                                        "mapping": sum(p.numel() for p in G.mapping.parameters()),
                                        "D": sum(p.numel() for p in D.parameters())},
        })

        # fixed snapshot latents and noise, from their own generator (the training RNG is untouched)
        snap_gen = torch.Generator().manual_seed(derive_seed(seed, "snapshot"))
        snap_z = torch.randn(SNAPSHOT_IMAGES, z_dim, generator=snap_gen).to(device)
        snap_noise = [torch.randn((SNAPSHOT_IMAGES,) + s[1:], generator=snap_gen).to(device) for s in G.noise_shapes()]
        if not (sample_dir / "reals.png").exists():
            save_png(image_grid(data.get(torch.arange(min(SNAPSHOT_IMAGES, len(data)))), ncols=8), sample_dir / "reals.png")
        if nimg == 0:
            _snapshot(G_ema, snap_z, snap_noise, sample_dir / f"fakes-{kimg_name(0)}.png")

        beta = ema_beta(batch, gcfg["ema_kimg"])
        every_log, every_snap, every_ckpt = every_nimg(gcfg["log_kimg"]), every_nimg(gcfg["snapshot_kimg"]), every_nimg(gcfg["checkpoint_kimg"])
        next_log, next_snap, next_ckpt = ((nimg // e + 1) * e for e in (every_log, every_snap, every_ckpt))
        sums: dict[str, torch.Tensor] = {}
        n_sum, last_ckpt_nimg = 0, (nimg if resumed_from is not None else -1)
        t_start = t_tick = time.perf_counter()
        nimg_start = nimg_tick = nimg
        bar = _progress(total, nimg)

        def checkpoint() -> Path:
            path = ckpt_dir / f"ckpt-{kimg_name(nimg)}.pt"
            save_checkpoint({
                "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
                "step": step, "nimg": nimg, "wall_s": wall_before + time.perf_counter() - t_start,
                "rng": capture_rng_state(), "data_order": order.state_dict(),
                "generator_config": generator_config, "seed": seed, "arch": arch, "fingerprint": fingerprint,
            }, path, keep=int(gcfg["keep_checkpoints"]))
            return path

        while nimg < total:
            stats = _train_step(G, D, opt_G, opt_D, data, order, device, gcfg)
            ema_update(G_ema, G, beta)
            step += 1
            nimg += batch * int(gcfg["critic_steps"])
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            if bar is not None:
                bar.update(min(nimg, total) - bar.n)

            if nimg >= next_log or nimg >= total:
                now = time.perf_counter()
                row = {"kimg": nimg / 1000, "step": step, **{k: float(sums[k]) / n_sum for k in ("loss_d", "loss_g", "gp", "wasserstein")},
                       "img_per_s": (nimg - nimg_tick) / max(now - t_tick, 1e-9), "wall_s": wall_before + now - t_start}
                append_log(out_dir / "log.csv", row, LOG_COLUMNS)
                _report(row, bar, total)
                sums, n_sum, t_tick, nimg_tick = {}, 0, now, nimg
                next_log = (nimg // every_log + 1) * every_log
            if nimg >= next_snap or nimg >= total:
                _snapshot(G_ema, snap_z, snap_noise, sample_dir / f"fakes-{kimg_name(nimg)}.png")
                next_snap = (nimg // every_snap + 1) * every_snap
            if nimg >= next_ckpt or nimg >= total or sigterm.received:
                checkpoint()
                last_ckpt_nimg = nimg
                next_ckpt = (nimg // every_ckpt + 1) * every_ckpt
            if sigterm.received:
                raise TrainingInterrupted(f"stopped by SIGTERM at kimg {nimg / 1000:.3f}; checkpoint written to {ckpt_dir}")

        if bar is not None:
            bar.close()
        if last_ckpt_nimg != nimg:  # a resumed, already finished run
            checkpoint()
        network = out_dir / "network.pt"
        save_network(network, G_ema, kimg=nimg / 1000, seed=seed, fingerprint=fingerprint_digest(fingerprint))
        seconds = time.perf_counter() - t_start
        done_kimg = (nimg - nimg_start) / 1000
        summary = {
            "network": str(network), "kimg": nimg / 1000, "steps": step, "seconds": seconds,
            "s_per_kimg": seconds / done_kimg if done_kimg > 0 else float("nan"),
            "resumed_from": str(resumed_from) if resumed_from else None, "device": str(device),
        }
        log.info("trained %s z%d to kimg %.3f in %.1f s (%.2f s/kimg); wrote %s",
                 arch, z_dim, nimg / 1000, seconds, summary["s_per_kimg"], network)
        return summary


def _train_step(
    G: Generator,
    D: Discriminator,
    opt_G: torch.optim.Optimizer,
    opt_D: torch.optim.Optimizer,
    data: TrainImages,
    order: ResumableShuffler,
    device: torch.device,
    gcfg: dict,
) -> dict[str, torch.Tensor]:
    """``critic_steps`` critic updates then one generator update; returns detached loss terms."""
    batch, mix = int(gcfg["batch_size"]), float(gcfg["style_mixing_prob"])
    stats: dict[str, torch.Tensor] = {}
    for _ in range(int(gcfg["critic_steps"])):
        real = data.get(order.next_batch()).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        z = torch.randn(batch, G.z_dim, device=device)
        with _autocast(device):
            with torch.no_grad():
                fake = G.synthesis(mix_styles(G, z, mix))
            loss_d, stats = critic_loss(D, real, fake, gp_lambda=gcfg["gp_lambda"], drift=gcfg["drift"])
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()

    D.requires_grad_(False)
    z = torch.randn(batch, G.z_dim, device=device)
    with _autocast(device):
        fake = G.synthesis(mix_styles(G, z, mix, update_w_avg=True))
        loss_g = generator_loss(D, fake)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    D.requires_grad_(True)
    return {"loss_d": stats["loss_d"], "gp": stats["gp"], "wasserstein": stats["wasserstein"], "loss_g": loss_g.detach()}


def _progress(total: int, start: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="img", unit_scale=True, desc="train-gan", file=sys.stderr)


def _report(row: dict[str, float], bar, total: int) -> None:
    if bar is not None:
        bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", W=f"{row['wasserstein']:.3f}")
        return
    log.info("kimg %.3f/%.3f step %d loss_d %.4f loss_g %.4f gp %.4f W %.4f %.1f img/s",
             row["kimg"], total / 1000, row["step"], row["loss_d"], row["loss_g"], row["gp"],
             row["wasserstein"], row["img_per_s"])
