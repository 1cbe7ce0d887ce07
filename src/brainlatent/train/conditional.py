"""``brainlatent train-gan --arch cwgan|cstylegan``: conditional generators trained with WGAN-GP, resumably.

Both families learn ``G(z, y)`` from the training split's images and label vectors
(:mod:`brainlatent.labels`: the configured attributes, the slice position and the missing-value
masks). Each critic step takes a real batch with its labels and a fake batch generated from the
*same* labels, so the gradient penalty interpolates images under one y; the generator step draws
its labels from the training table (the joint label distribution).

* ``cwgan`` (seed 004): settings from the ``cwgan`` config section (paper defaults: λ = 10,
  5 critic steps, Adam 1e-4, β = (0, 0.9), batch 64, N(0, I) prior); the saved generator is the
  raw one unless ``cwgan.ema_kimg`` > 0.
* ``cstylegan``: settings from the ``gan`` section (the unconditional StyleGAN's), projection critic;
  style mixing (``gan.style_mixing_prob``) is not applied.

Run folder and resume policy as :mod:`brainlatent.train.gan`: ``options.json``, ``log.csv``,
``samples/``, ``checkpoints/`` (G, D, EMA, optimisers, counters, RNG, data order; resumed only with
the same fingerprint, :func:`brainlatent.train.checkpoint.resume_matching`), ``network.pt``
(weights only, with its label scaler and training label table).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainlatent.config import derive_seed, load_stage_config, plain
from brainlatent.errors import BrainlatentError
from brainlatent.images import image_grid, save_png
from brainlatent.io import write_json
from brainlatent.labels import LabelEncoder
from brainlatent.models.cstylegan import CStyleGANGenerator, ProjectionDiscriminator
from brainlatent.models.cwgan import CWGANCritic, CWGANGenerator
from brainlatent.models.labelled import save_network
from brainlatent.slices import dataset_identity, load_slices
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
from brainlatent.train.gan import LOG_COLUMNS, RESUMABLE_CHANGES
from brainlatent.train.losses import critic_loss, generator_loss

log = logging.getLogger(__name__)

CHECKPOINT_KEYS = ["G", "D", "G_ema", "opt_G", "opt_D", "step", "nimg", "rng", "data_order"]
SNAPSHOT_IMAGES = 32


def train_labels(attributes: list[dict], slices_dir: str | Path, data: TrainImages) -> tuple[LabelEncoder, torch.Tensor]:
    """The label scaler fitted on the training split and ``N_train x c_dim`` labels aligned with ``data``."""
    _, manifest = load_slices(slices_dir)
    encoder = LabelEncoder.fit(attributes, manifest)
    y = encoder.encode(manifest)  # slice positions need every slice of a scan
    index = manifest["index"].to_numpy() if "index" in manifest.columns else np.arange(len(manifest))
    position = {int(i): k for k, i in enumerate(index)}
    return encoder, torch.from_numpy(y[[position[int(r)] for r in data.rows]])


def _build_cwgan(tcfg: dict, z_dim: int, resolution: int, encoder: LabelEncoder, rows: int):
    gconf = dict(z_dim=int(z_dim), resolution=resolution, label_state=encoder.state(), label_rows=rows, width=int(tcfg["width"]))
    return CWGANGenerator(**gconf), CWGANCritic(resolution, encoder.c_dim, int(tcfg["width"])), gconf


def _build_cstylegan(tcfg: dict, z_dim: int, resolution: int, encoder: LabelEncoder, rows: int):
    gconf = dict(z_dim=int(z_dim), resolution=resolution, label_state=encoder.state(), label_rows=rows,
                 mapping_layers=int(tcfg["mapping_layers"]), channels_base=int(tcfg["channels_base"]),
                 channels_max=int(tcfg["channels_max"]))
    D = ProjectionDiscriminator(resolution, encoder.c_dim, int(tcfg["channels_base"]), int(tcfg["channels_max"]))
    return CStyleGANGenerator(**gconf), D, gconf


#: family -> (config section with its training settings, network builder)
FAMILIES: dict[str, tuple[str, Callable]] = {"cwgan": ("cwgan", _build_cwgan), "cstylegan": ("gan", _build_cstylegan)}


def train_conditional(
    cfg: dict,
    slices_dir: str | Path,
    arch: str,
    z_dim: int,
    out_dir: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train one conditional generator (resuming from the newest matching checkpoint); write ``network.pt``.

    Args:
        cfg: the study config (or exactly the family's stage keys); reads ``seed``, ``attributes``
            and the family's section (``cwgan`` or ``gan``).
        slices_dir: slice dataset folder; its train split (images, labels, slice positions) is used.
        arch: ``"cwgan"`` or ``"cstylegan"``.
        z_dim: latent size.
        out_dir: the run folder.
        device: torch device; default ``cuda`` if available, else ``cpu``.

    Returns:
        ``network``, ``kimg``, ``steps``, ``seconds`` (this call), ``s_per_kimg``, ``resumed_from``, ``device``.
    """
    if arch not in FAMILIES:
        raise BrainlatentError(f"--arch: conditional trainer knows {list(FAMILIES)}, got {arch!r}")
    if int(z_dim) < 2:
        raise BrainlatentError(f"--zdim: expected an integer >= 2, got {z_dim}")
    cfg = load_stage_config(cfg, f"train:{arch}")
    section, build = FAMILIES[arch]
    tcfg = cfg[section]
    out_dir = Path(out_dir)
    ckpt_dir, sample_dir = out_dir / "checkpoints", out_dir / "samples"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = derive_seed(cfg["seed"], "train_gan", arch, z_dim)
    data = TrainImages(slices_dir)
    encoder, labels = train_labels(cfg["attributes"], slices_dir, data)
    batch, critic_steps = int(tcfg["batch_size"]), int(tcfg["critic_steps"])
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), SigtermFlag() as sigterm:
        torch.manual_seed(seed)
        G, D, gconf = build(tcfg, z_dim, data.resolution, encoder, len(labels))
        G.label_table.copy_(labels)
        G, D = G.to(device), D.to(device)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        betas = tuple(tcfg["betas"])
        opt_G = torch.optim.Adam(G.parameters(), lr=tcfg["lr"], betas=betas, eps=1e-8)
        opt_D = torch.optim.Adam(D.parameters(), lr=tcfg["lr"], betas=betas, eps=1e-8)
        order = ResumableShuffler(len(data), batch, derive_seed(seed, "data_order"))
        step, nimg, wall_before = 0, 0, 0.0
        fingerprint = {
            "format": 1, "arch": arch, "z_dim": int(z_dim), "seed": int(seed), "generator_config": gconf,
            "critic_config": D.config, "attributes": plain(cfg["attributes"]),
            section: {k: v for k, v in plain(tcfg).items() if k not in RESUMABLE_CHANGES + ("archs", "latent_sizes")},
            "data": dataset_identity(slices_dir),
        }
        total = every_nimg(tcfg["kimg"])
        resumed_from, state = resume_matching(
            ckpt_dir, fingerprint, required_keys=CHECKPOINT_KEYS,
            still_valid=lambda s: None if int(s["nimg"]) <= total else f"trained past the configured {tcfg['kimg']} kimg",
        )
        if state is not None:
            for name, obj in (("G", G), ("D", D), ("G_ema", G_ema), ("opt_G", opt_G), ("opt_D", opt_D), ("data_order", order)):
                obj.load_state_dict(state[name])
            step, nimg, wall_before = int(state["step"]), int(state["nimg"]), float(state.get("wall_s", 0.0))
            restore_rng_state(state["rng"])
            log.info("resumed from %s (kimg %.3f, step %d)", resumed_from, nimg / 1000, step)
            trim_log(out_dir / "log.csv", step, LOG_COLUMNS)
            del state
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            start_log(out_dir / "log.csv", LOG_COLUMNS)
        write_json(out_dir / "options.json", {
            "arch": arch, "z_dim": int(z_dim), "seed": seed, "slices_dir": str(slices_dir), "device": str(device),
            "train_images": len(data), "label_columns": encoder.columns, "generator_config": gconf,
            "critic_config": D.config, "fingerprint": fingerprint_digest(fingerprint), section: plain(tcfg),
            "num_params": {"G": sum(p.numel() for p in G.parameters()), "D": sum(p.numel() for p in D.parameters())},
        })

        snap_gen = torch.Generator().manual_seed(derive_seed(seed, "snapshot"))
        snap_z = torch.randn(SNAPSHOT_IMAGES, int(z_dim), generator=snap_gen)
        snap_c = G_ema.sample_labels(SNAPSHOT_IMAGES, snap_gen)
        snap_noise = [torch.randn((SNAPSHOT_IMAGES,) + tuple(s[1:]), generator=snap_gen) for s in G.noise_shapes()]
        snap = (snap_z.to(device), snap_c.to(device), [n.to(device) for n in snap_noise])

        def snapshot() -> None:
            with torch.no_grad():
                images = G_ema.synthesis(G_ema.mapping(snap[0], snap[1]), noise=snap[2] or None).float()
            save_png(image_grid(images, ncols=8), sample_dir / f"fakes-{kimg_name(nimg)}.png")

        if not (sample_dir / "reals.png").exists():
            save_png(image_grid(data.get(torch.arange(min(SNAPSHOT_IMAGES, len(data)))), ncols=8), sample_dir / "reals.png")
        if nimg == 0:
            snapshot()

        beta = ema_beta(batch, float(tcfg["ema_kimg"]))
        every_log, every_snap, every_ckpt = (every_nimg(tcfg[k]) for k in ("log_kimg", "snapshot_kimg", "checkpoint_kimg"))
        next_log, next_snap, next_ckpt = ((nimg // e + 1) * e for e in (every_log, every_snap, every_ckpt))
        sums: dict[str, float] = {}
        n_sum, last_ckpt_nimg = 0, (nimg if resumed_from is not None else -1)
        t_start = t_tick = time.perf_counter()
        nimg_start = nimg_tick = nimg

        def checkpoint() -> None:
            save_checkpoint({
                "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "step": step, "nimg": nimg,
                "wall_s": wall_before + time.perf_counter() - t_start, "rng": capture_rng_state(),
                "data_order": order.state_dict(), "seed": seed, "arch": arch, "fingerprint": fingerprint,
            }, ckpt_dir / f"ckpt-{kimg_name(nimg)}.pt", keep=int(tcfg["keep_checkpoints"]))

        while nimg < total:
            stats = train_step(G, D, opt_G, opt_D, data, labels, order, device, tcfg)
            ema_update(G_ema, G, beta)
            step += 1
            nimg += batch * critic_steps
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_sum += 1
            if nimg >= next_log or nimg >= total:
                now = time.perf_counter()
                row = {"kimg": nimg / 1000, "step": step, **{k: sums[k] / n_sum for k in ("loss_d", "loss_g", "gp", "wasserstein")},
                       "img_per_s": (nimg - nimg_tick) / max(now - t_tick, 1e-9), "wall_s": wall_before + now - t_start}
                append_log(out_dir / "log.csv", row, LOG_COLUMNS)
                log.info("%s kimg %.3f/%.3f step %d loss_d %.4f loss_g %.4f gp %.4f W %.4f %.1f img/s", arch, row["kimg"],
                         total / 1000, step, row["loss_d"], row["loss_g"], row["gp"], row["wasserstein"], row["img_per_s"])
                sums, n_sum, t_tick, nimg_tick = {}, 0, now, nimg
                next_log = (nimg // every_log + 1) * every_log
            if nimg >= next_snap or nimg >= total:
                snapshot()
                next_snap = (nimg // every_snap + 1) * every_snap
            if nimg >= next_ckpt or nimg >= total or sigterm.received:
                checkpoint()
                last_ckpt_nimg = nimg
                next_ckpt = (nimg // every_ckpt + 1) * every_ckpt
            if sigterm.received:
                raise TrainingInterrupted(f"stopped by SIGTERM at kimg {nimg / 1000:.3f}; checkpoint written to {ckpt_dir}")

        if last_ckpt_nimg != nimg:
            checkpoint()
        network = out_dir / "network.pt"
        save_network(network, G_ema, kimg=nimg / 1000, seed=seed, fingerprint=fingerprint_digest(fingerprint))
        seconds = time.perf_counter() - t_start
        done = (nimg - nimg_start) / 1000
        log.info("trained %s z%d to kimg %.3f in %.1f s; wrote %s", arch, z_dim, nimg / 1000, seconds, network)
        return {"network": str(network), "kimg": nimg / 1000, "steps": step, "seconds": seconds,
                "s_per_kimg": seconds / done if done > 0 else float("nan"),
                "resumed_from": str(resumed_from) if resumed_from else None, "device": str(device)}


def train_step(G, D, opt_G, opt_D, data: TrainImages, labels: torch.Tensor, order: ResumableShuffler,
               device: torch.device, tcfg: dict) -> dict[str, torch.Tensor]:
    """``critic_steps`` critic updates (real batch, fakes with the same labels), then one generator update
    with labels drawn from the training table; returns detached loss terms."""
    batch = int(tcfg["batch_size"])
    stats: dict[str, torch.Tensor] = {}
    for _ in range(int(tcfg["critic_steps"])):
        idx = order.next_batch()
        real, c = data.get(idx).to(device), labels.index_select(0, idx).to(device)
        z = torch.randn(batch, G.z_dim, device=device)
        with torch.no_grad():
            fake = G.synthesis(G.mapping(z, c))
        loss_d, stats = critic_loss(lambda x, c=c: D(x, c), real, fake, gp_lambda=tcfg["gp_lambda"], drift=tcfg["drift"])
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()

    D.requires_grad_(False)
    z = torch.randn(batch, G.z_dim, device=device)
    c = labels.index_select(0, torch.randint(len(labels), (batch,))).to(device)
    fake = G.synthesis(G.mapping(z, c, update_w_avg=True))
    loss_g = generator_loss(lambda x: D(x, c), fake)
    opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_G.step()
    D.requires_grad_(True)
    return {"loss_d": stats["loss_d"], "gp": stats["gp"], "wasserstein": stats["wasserstein"], "loss_g": loss_g.detach()}
