"""``brainlatent train-gan --arch gmmgan|gmmgan<K>|dcgan``: seed 002's mixture-prior GAN and its plain GAN.

One run folder per model (``<arch>-z<zdim>``)::

    <out>/options.json              settings, seed, network sizes, fingerprint digest
    <out>/log.csv                   kimg, step, losses, D's probabilities; gmmgan also: mi, c_acc,
                                    pi_entropy, resp_entropy, pi_max, pi_0 … pi_<K-1> (the π trajectory)
    <out>/samples/reals.png         training images
    <out>/samples/fakes-<kimg>.png  gmmgan: one row per component, shared noise per column;
                                    dcgan: a fixed-z grid
    <out>/checkpoints/ckpt-<kimg>.pt  networks, D, both optimisers, counters, RNG and data-order state
    <out>/network.pt                weights only (``arch``, G, prior with π, C): models.gmm.load_network

Losses and update order: :mod:`brainlatent.train.gmm_losses`. Progress is counted in real images
shown (kimg); a gmmgan step makes K fakes per real, so at equal kimg it costs ~K times the plain
GAN's generator work. **Collapse guard**: after ``gmm.mixture.collapse.warmup_kimg``, a step whose
running π has ``max π_k > gmm.mixture.collapse.max_pi`` stops the run with a :class:`BrainlatentError`
(the log keeps the rows up to it; no ``network.pt`` is written). Resume follows
:func:`brainlatent.train.checkpoint.resume_matching`; on CPU a resumed run ends bit-identical.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from brainlatent.config import derive_seed, load_stage_config, plain
from brainlatent.errors import BrainlatentError
from brainlatent.images import image_grid, save_png
from brainlatent.io import write_json
from brainlatent.models import gmm_ops
from brainlatent.models.gmm import (
    DCGANDiscriminator,
    DCGANNetwork,
    GMMGANNetwork,
    save_network,
)
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
from brainlatent.train.gmm_losses import (
    StepSettings,
    gmm_step,
    plain_step,
    uniform_entropy,
)

log = logging.getLogger(__name__)

#: gmm keys that may change without invalidating a checkpoint (a longer run resumes)
RESUMABLE_CHANGES = ("kimg", "log_kimg", "snapshot_kimg", "checkpoint_kimg", "keep_checkpoints")
CHECKPOINT_KEYS = ["net", "D", "net_ema", "opt_d", "opt_g", "step", "nimg", "rng", "data_order"]
PLAIN_COLUMNS = ["kimg", "step", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "wall_s"]
MIXTURE_STATS = ["mi", "c_acc", "pi_entropy", "resp_entropy", "pi_max"]
SNAPSHOT_COLUMNS = 8


def components_for(arch: str, gcfg: dict) -> int:
    """K: from the family name (``gmmgan4`` → 4), else ``gmm.components`` (family ``gmmgan``)."""
    tail = arch[len("gmmgan"):]
    return int(tail) if tail else int(gcfg["components"])


def log_columns(k: int | None) -> list[str]:
    """log.csv columns: the plain GAN's, plus the mixture statistics and π per component."""
    if k is None:
        return list(PLAIN_COLUMNS)
    return PLAIN_COLUMNS[:6] + MIXTURE_STATS + [f"pi_{i}" for i in range(k)] + PLAIN_COLUMNS[6:]


def training_fingerprint(gcfg: dict, seed: int, arch: str, z_dim: int, network_config: dict, data: dict) -> dict:
    """Everything that shapes the trained networks: a checkpoint is resumed only if this matches."""
    return {
        "format": 1, "arch": arch, "z_dim": int(z_dim), "seed": int(seed), "network_config": network_config,
        "gmm": {k: v for k, v in plain(gcfg).items() if k not in RESUMABLE_CHANGES}, "data": data,
    }


def build_networks(arch: str, z_dim: int, resolution: int, gcfg: dict) -> tuple[DCGANNetwork, DCGANDiscriminator]:
    """The network that is saved (G; for gmmgan also the prior and C) and the discriminator.

    For the shared classifier, D's encoder *is* C's encoder (one module)."""
    width = float(gcfg["width"])
    if arch == "dcgan":
        net = DCGANNetwork(z_dim, resolution, width, arch="dcgan")
        return net, DCGANDiscriminator(resolution, width)
    m = gcfg["mixture"]
    net = GMMGANNetwork(
        z_dim, components_for(arch, gcfg), resolution, width, classifier=m["classifier"],
        covariance=m["covariance"], eps=float(m["covariance_eps"]), mean_std=float(m["mean_std"]), arch=arch,
    )
    D = DCGANDiscriminator(resolution, width)
    if m["classifier"] == "shared":
        D.encoder = net.classifier.encoder
    return net, D


def step_settings(gcfg: dict, batch: int) -> StepSettings:
    m = gcfg["mixture"]
    return StepSettings(
        adversarial=gcfg["adversarial"], mutual_information=m["mutual_information"], mi_weight=float(m["mi_weight"]),
        mi_updates_generator=bool(m["mi_updates_generator"]), classifier_adversarial=bool(m["classifier_adversarial"]),
        pi_beta=ema_beta(batch, float(m["pi_halflife_kimg"])),
    )


def _check(arch: str, z_dim: int, gcfg: dict) -> None:
    if z_dim < 1:
        raise BrainlatentError(f"--zdim: expected an integer >= 1, got {z_dim}")
    if arch != "dcgan" and not arch.startswith("gmmgan"):
        raise BrainlatentError(f"--arch {arch!r}: this trainer trains dcgan, gmmgan and gmmgan<K>")
    if arch != "dcgan":
        k = components_for(arch, gcfg)
        if k < 2:
            raise BrainlatentError(f"{arch}: K = {k} components; a mixture prior needs K >= 2 (gmm.components)")
        m = gcfg["mixture"]
        if m["covariance"] == "full" and float(m["covariance_eps"]) <= 0:
            raise BrainlatentError("gmm.mixture.covariance 'full' (the seed's unconstrained A) needs gmm.mixture.covariance_eps > 0 to keep Σ positive definite")


def check_collapse(pi: torch.Tensor, nimg: int, gcfg: dict, arch: str, z_dim: int, resp_entropy: float) -> None:
    """Raise when one component has taken over (``max π_k > collapse.max_pi`` after the warm-up)."""
    guard = gcfg["mixture"]["collapse"]
    if nimg < guard["warmup_kimg"] * 1000:
        return
    top = float(pi.max())
    if top > float(guard["max_pi"]):
        k = len(pi)
        h = float(-(pi * torch.log(pi.clamp_min(1e-12))).sum())
        options = ["gmm.mixture.classifier_adversarial: false (stop the adversarial gradient into C)"] if gcfg["mixture"]["classifier_adversarial"] else []
        options += ["a larger gmm.mixture.mi_weight", "fewer components", "a higher max_pi (1 disables the guard)"]
        raise BrainlatentError(
            f"{arch}-z{z_dim}: mixture collapse at kimg {nimg / 1000:.3f}: π = {[round(float(p), 3) for p in pi]} "
            f"(max π_k {top:.3f} > gmm.mixture.collapse.max_pi {guard['max_pi']} after the {guard['warmup_kimg']} kimg warm-up); "
            f"entropy of π {h:.3f} nats (uniform {uniform_entropy(k):.3f}), mean responsibility entropy {resp_entropy:.3f}. "
            "No network.pt was written. Options: " + ", ".join(options) + "."
        )


def _snapshot(net: DCGANNetwork, snap_z: torch.Tensor, seed: int, path: Path) -> None:
    net.eval()
    with torch.no_grad():
        if isinstance(net, GMMGANNetwork):
            imgs = gmm_ops.component_grid(net, SNAPSHOT_COLUMNS, seed).flatten(0, 1)
        else:
            imgs = net.synthesis(snap_z)
    save_png(image_grid(imgs.float().cpu(), ncols=SNAPSHOT_COLUMNS), path)


def train_dcgan(cfg: dict, slices_dir: str | Path, arch: str, z_dim: int, out_dir: str | Path, device: str | torch.device | None = None) -> dict[str, Any]:
    """The plain GAN of seed 002's networks (family ``dcgan``); see :func:`train_gmmgan`."""
    return train_gmmgan(cfg, slices_dir, arch, z_dim, out_dir, device)


def train_gmmgan(
    cfg: dict,
    slices_dir: str | Path,
    arch: str,
    z_dim: int,
    out_dir: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train ``gmmgan``/``gmmgan<K>`` (or ``dcgan``), resuming from a matching checkpoint; write ``network.pt``.

    Args:
        cfg: a study config (or the stage config of ``train:<arch>``); reads ``seed`` and ``gmm``.
        slices_dir: slice dataset folder; its train split is used.
        arch: ``gmmgan``, ``gmmgan<K>`` or ``dcgan``.
        z_dim: latent size.
        out_dir: the run folder.
        device: torch device; default ``cuda`` when available.

    Returns:
        ``network``, ``kimg``, ``steps``, ``seconds`` (this call), ``s_per_kimg``, ``resumed_from``,
        ``device``, ``components`` (None for dcgan), ``pi`` (final mixture weights, gmmgan).

    Raises:
        BrainlatentError: bad settings, or the collapse guard fired.
    """
    cfg = load_stage_config(cfg, f"train:{arch}")
    gcfg = cfg["gmm"]
    _check(arch, z_dim, gcfg)
    mixture = arch != "dcgan"
    out_dir = Path(out_dir)
    ckpt_dir, sample_dir = out_dir / "checkpoints", out_dir / "samples"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = derive_seed(cfg["seed"], "train_gan", arch, z_dim)
    data = TrainImages(slices_dir)
    batch = int(gcfg["batch_size"])
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), SigtermFlag() as sigterm:
        torch.manual_seed(seed)
        net, D = build_networks(arch, z_dim, data.resolution, gcfg)
        net, D = net.to(device).train(), D.to(device).train()
        k = net.components if mixture else None
        columns = log_columns(k)
        net_ema = copy.deepcopy(net).eval().requires_grad_(False)
        betas = tuple(gcfg["betas"])
        d_params = list(D.parameters()) + (net.classifier.own_parameters() if mixture else [])
        g_params = list(net.G.parameters()) + (list(net.prior.parameters()) if mixture else [])
        opt_d = torch.optim.Adam(d_params, lr=gcfg["lr"], betas=betas)
        opt_g = torch.optim.Adam(g_params, lr=gcfg["lr"], betas=betas)
        order = ResumableShuffler(len(data), batch, derive_seed(seed, "data_order"))
        step, nimg, wall_before = 0, 0, 0.0

        fingerprint = training_fingerprint(gcfg, seed, arch, z_dim, net.config, dataset_identity(slices_dir))
        total = every_nimg(gcfg["kimg"])
        resumed_from, state = resume_matching(
            ckpt_dir, fingerprint, required_keys=CHECKPOINT_KEYS,
            still_valid=lambda s: None if int(s["nimg"]) <= total else f"trained past the configured {gcfg['kimg']} kimg",
        )
        if state is not None:
            net.load_state_dict(state["net"])
            D.load_state_dict(state["D"])
            net_ema.load_state_dict(state["net_ema"])
            opt_d.load_state_dict(state["opt_d"])
            opt_g.load_state_dict(state["opt_g"])
            order.load_state_dict(state["data_order"])
            step, nimg, wall_before = int(state["step"]), int(state["nimg"]), float(state.get("wall_s", 0.0))
            restore_rng_state(state["rng"])
            trim_log(out_dir / "log.csv", step, columns)
            log.info("resumed from %s (kimg %.3f, step %d)", resumed_from, nimg / 1000, step)
            del state
        else:
            out_dir.mkdir(parents=True, exist_ok=True)

            start_log(out_dir / "log.csv", columns)
        write_json(out_dir / "options.json", {
            "arch": arch, "z_dim": z_dim, "components": k, "seed": seed, "slices_dir": str(slices_dir), "device": str(device),
            "train_images": len(data), "network_config": net.config, "fingerprint": fingerprint_digest(fingerprint), "gmm": gcfg,
            "num_params": {"G": sum(p.numel() for p in net.G.parameters()), "D": sum(p.numel() for p in D.parameters()),
                           "C": sum(p.numel() for p in net.classifier.parameters()) if mixture else 0},
        })

        snap_seed = derive_seed(seed, "snapshot")
        snap_z = torch.randn(SNAPSHOT_COLUMNS * 4, z_dim, generator=torch.Generator().manual_seed(snap_seed)).to(device)
        if not (sample_dir / "reals.png").exists():
            save_png(image_grid(data.get(torch.arange(min(32, len(data)))), ncols=8), sample_dir / "reals.png")
        if nimg == 0:
            _snapshot(net_ema, snap_z, snap_seed, sample_dir / f"fakes-{kimg_name(0)}.png")

        settings = step_settings(gcfg, batch) if mixture else None
        beta = ema_beta(batch, float(gcfg["ema_kimg"]))
        every_log, every_snap, every_ckpt = (every_nimg(gcfg[key]) for key in ("log_kimg", "snapshot_kimg", "checkpoint_kimg"))
        next_log, next_snap, next_ckpt = ((nimg // e + 1) * e for e in (every_log, every_snap, every_ckpt))
        sums: dict[str, float] = {}
        n_sum, last_ckpt_nimg = 0, (nimg if resumed_from is not None else -1)
        t_start = t_tick = time.perf_counter()
        nimg_start = nimg_tick = nimg

        def checkpoint() -> None:
            save_checkpoint({
                "net": net.state_dict(), "D": D.state_dict(), "net_ema": net_ema.state_dict(),
                "opt_d": opt_d.state_dict(), "opt_g": opt_g.state_dict(), "step": step, "nimg": nimg,
                "wall_s": wall_before + time.perf_counter() - t_start, "rng": capture_rng_state(),
                "data_order": order.state_dict(), "network_config": net.config, "seed": seed, "arch": arch,
                "fingerprint": fingerprint,
            }, ckpt_dir / f"ckpt-{kimg_name(nimg)}.pt", keep=int(gcfg["keep_checkpoints"]))

        while nimg < total:
            net.train()
            real = data.get(order.next_batch()).to(device)
            if mixture:
                stats = gmm_step(net.G, net.prior, D, net.classifier, opt_d, opt_g, real, settings)
            else:
                stats = plain_step(net.G, D, opt_d, opt_g, real, z_dim, gcfg["adversarial"])
            ema_update(net_ema, net, beta)
            step += 1
            nimg += batch
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + float(v)
            n_sum += 1
            if mixture:
                try:
                    check_collapse(net.prior.pi, nimg, gcfg, arch, z_dim, float(stats["resp_entropy"]))
                except BrainlatentError:
                    append_log(out_dir / "log.csv", _row(sums, n_sum, net, nimg, step, 0.0, wall_before + time.perf_counter() - t_start), columns)
                    raise
            if nimg >= next_log or nimg >= total:
                now = time.perf_counter()
                row = _row(sums, n_sum, net, nimg, step, (nimg - nimg_tick) / max(now - t_tick, 1e-9), wall_before + now - t_start)
                append_log(out_dir / "log.csv", row, columns)
                log.info("kimg %.3f/%.3f %s", nimg / 1000, total / 1000,
                         " ".join(f"{c} {row[c]:.4g}" for c in columns[2:] if isinstance(row[c], float)))
                sums, n_sum, t_tick, nimg_tick = {}, 0, now, nimg
                next_log = (nimg // every_log + 1) * every_log
            if nimg >= next_snap or nimg >= total:
                _snapshot(net_ema, snap_z, snap_seed, sample_dir / f"fakes-{kimg_name(nimg)}.png")
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
        save_network(network, net_ema, kimg=nimg / 1000, seed=seed, fingerprint=fingerprint_digest(fingerprint))
        seconds = time.perf_counter() - t_start
        done = (nimg - nimg_start) / 1000
        return {
            "network": str(network), "kimg": nimg / 1000, "steps": step, "seconds": seconds,
            "s_per_kimg": seconds / done if done > 0 else float("nan"),
            "resumed_from": str(resumed_from) if resumed_from else None, "device": str(device), "components": k,
            "pi": [float(p) for p in net_ema.prior.pi] if mixture else None,
        }


def _row(sums: dict, n: int, net, nimg: int, step: int, img_per_s: float, wall_s: float) -> dict:
    row: dict[str, Any] = {"kimg": nimg / 1000, "step": step, "img_per_s": float(img_per_s), "wall_s": float(wall_s)}
    row.update({key: v / max(n, 1) for key, v in sums.items()})
    if isinstance(net, GMMGANNetwork):
        row.update({f"pi_{i}": float(p) for i, p in enumerate(net.prior.pi)})
        row["pi_max"] = float(net.prior.pi.max())
        row["pi_entropy"] = float(-(net.prior.pi * torch.log(net.prior.pi.clamp_min(1e-12))).sum())
    return row
