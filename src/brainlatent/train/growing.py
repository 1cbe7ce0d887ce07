"""``brainlatent train-gan --arch {bgan,bggan,cggan,lggan,clggan}``: seed 003's growing GANs, resumably.

One run folder per model (``<arch>-z<final latent size>``)::

    <out>/options.json              settings, growth plan, parameter counts per stage
    <out>/log.csv                   kimg, step, stage, phase, ramp, latent, resolution, losses, img_per_s, wall_s
    <out>/stages.csv                per phase: kimg, seconds, img/s, parameters of G and D
    <out>/samples/reals.png, fakes-<kimg>.png   fixed prior draws (first m coordinates fed)
    <out>/checkpoints/ckpt-<kimg>.pt  G, D, both optimisers, growth state, counters, RNG, data order
    <out>/network.pt                the generator (weights only): models.growing.load_growing

Training (seed §3.4-3.5): WGAN-GP (λ = ``gp_lambda``, no drift term), ``critic_steps`` critic
updates per generator update, Adam(``lr``, ``betas``, ε = 1e-8) for both, batch ``batch_size``;
the prior is the unit-norm ``prior_dim``-d Gaussian, first m coordinates fed
(:mod:`brainlatent.latent_groups`). Growth follows :class:`~brainlatent.train.growing_schedule.Schedule`;
at a growth the optimisers are rebuilt on the grown parameters and each old parameter's Adam
state is carried into the leading slice (new weights start with fresh state). The seed keeps no
moving average of G, so ``network.pt`` is G itself.

Resume: the growth state (stage, fading) is in every checkpoint; the networks are rebuilt at that
stage and loaded, so a run killed mid-fade continues to bitwise the same network on CPU.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from brainlatent.config import derive_seed, load_stage_config, plain
from brainlatent.images import image_grid, save_png
from brainlatent.io import write_json, write_table
from brainlatent.latent_groups import sample_prior
from brainlatent.models.growing import build, commit, grow, save_network
from brainlatent.models.growing_plan import GrowthPlan
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
    every_nimg,
    kimg_name,
    start_log,
    trim_log,
)
from brainlatent.train.growing_schedule import Phase, Schedule, real_images
from brainlatent.train.losses import critic_loss, generator_loss

log = logging.getLogger(__name__)

LOG_COLUMNS = ["kimg", "step", "stage", "phase", "ramp", "latent", "resolution",
               "loss_d", "loss_g", "gp", "wasserstein", "img_per_s", "wall_s"]
STAGE_COLUMNS = ["phase", "stage", "fading", "kimg", "seconds", "img_per_s", "latent", "resolution", "params_G", "params_D"]
CHECKPOINT_KEYS = ["G", "D", "opt_G", "opt_D", "growth", "step", "nimg", "rng", "data_order", "fingerprint"]
#: growing keys that may change without invalidating a checkpoint
RESUMABLE_CHANGES = ("log_kimg", "snapshot_kimg", "checkpoint_kimg", "keep_checkpoints")
SNAPSHOT_IMAGES = 32


def make_plan(gcfg: dict, arch: str, z_dim: int, resolution: int) -> GrowthPlan:
    """The growth plan from the ``growing`` config section."""
    return GrowthPlan(arch, int(resolution), int(z_dim), int(gcfg["channels_final"]), int(gcfg["channels_max"]), int(gcfg["prior_dim"]))


def make_schedule(gcfg: dict, plan: GrowthPlan) -> Schedule:
    return Schedule(plan, every_nimg(gcfg["initial_kimg"]), every_nimg(gcfg["fade_kimg"]), every_nimg(gcfg["stabilise_kimg"]))


def training_fingerprint(gcfg: dict, seed: int, plan: GrowthPlan, data: dict) -> dict:
    """Everything that shapes the trained generator: a checkpoint is resumed only if this matches."""
    return {"format": 1, "arch": plan.arch, "z_dim": plan.z_dim, "seed": int(seed), "plan": plan.config(),
            "growing": {k: v for k, v in plain(gcfg).items() if k not in RESUMABLE_CHANGES}, "data": data}


def _optimizer(net: torch.nn.Module, gcfg: dict) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=float(gcfg["lr"]), betas=tuple(float(b) for b in gcfg["betas"]), eps=1e-8)


def carry_optimizer(old_opt: torch.optim.Adam, old_net: torch.nn.Module, new_opt: torch.optim.Adam,
                    new_net: torch.nn.Module, mapping: dict[str, str]) -> None:
    """Put each old parameter's Adam state into the leading slice of its grown counterpart (zeros elsewhere)."""
    old_params = dict(old_net.named_parameters())
    for name, p in new_net.named_parameters():
        src = mapping.get(name)
        if src is None or old_params[src] not in old_opt.state:
            continue
        old_state = old_opt.state[old_params[src]]
        state = {}
        for key, value in old_state.items():
            if torch.is_tensor(value) and value.ndim == p.ndim and value.ndim > 0:
                grown = torch.zeros_like(p.data)
                grown[tuple(slice(0, s) for s in value.shape)] = value
                state[key] = grown
            else:
                state[key] = value.clone() if torch.is_tensor(value) else value
        new_opt.state[p] = state


def _num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class _Run:
    """The mutable training state: networks, optimisers, phase."""

    def __init__(self, plan: GrowthPlan, gcfg: dict, seed: int, device: torch.device) -> None:
        self.plan, self.gcfg, self.seed, self.device = plan, gcfg, seed, device
        self.G = self.D = self.opt_G = self.opt_D = None
        self.stage, self.fading = -1, False

    def build_at(self, stage: int, fading: bool) -> None:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "init", stage, fading))
        G, D = build(self.plan, stage, fading, gen)
        self.G, self.D = G.to(self.device), D.to(self.device)
        self.opt_G, self.opt_D = _optimizer(self.G, self.gcfg), _optimizer(self.D, self.gcfg)
        self.stage, self.fading = stage, fading

    def move_to(self, phase: Phase) -> bool:
        """Grow or commit so that the networks match ``phase``; True when they changed."""
        changed = False
        while (self.stage, self.fading) != (phase.stage, phase.fading):
            if self.fading:
                self._replace(*commit(self.G), *commit(self.D))
                self.fading = False
            elif self.plan.changes(self.stage + 1):
                gen = torch.Generator().manual_seed(derive_seed(self.seed, "grow", self.stage + 1))
                self._replace(*grow(self.G, gen), *grow(self.D, gen))
                self.stage, self.fading = self.stage + 1, True
            else:  # a stage that does not grow (bGAN): same networks
                self.stage += 1
            changed = True
        return changed

    def _replace(self, G, map_G, D, map_D) -> None:
        opt_G, opt_D = _optimizer(G, self.gcfg), _optimizer(D, self.gcfg)
        carry_optimizer(self.opt_G, self.G, opt_G, G, map_G)
        carry_optimizer(self.opt_D, self.D, opt_D, D, map_D)
        self.G, self.D, self.opt_G, self.opt_D = G, D, opt_G, opt_D

    def set_fade(self, phase: Phase) -> None:
        r = phase.ramp if phase.fading else 1.0
        for net in (self.G, self.D):
            net.set_fade(alpha=r, beta=r, tau=0.5 * r)


def train_growing(
    cfg: dict,
    slices_dir: str | Path,
    arch: str,
    z_dim: int,
    out_dir: str | Path,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train one growing model (resuming from the newest matching checkpoint) and write ``network.pt``.

    Args:
        cfg: a study config (uses ``seed`` and ``growing``; exactly the family's stage keys are kept).
        slices_dir: slice dataset folder; its train split is used.
        arch: ``bgan``, ``bggan``, ``cggan``, ``lggan`` or ``clggan``.
        z_dim: the final latent size (the model id is ``<arch>-z<z_dim>``).
        out_dir: the run folder.
        device: torch device; default ``cuda`` if available, else ``cpu``.

    Returns:
        Summary dict: ``network``, ``kimg``, ``steps``, ``seconds`` (this call), ``resumed_from``,
        ``device``, ``stages`` (per phase kimg, seconds, img/s).
    """
    cfg = load_stage_config(cfg, f"train:{arch}")
    gcfg = cfg["growing"]
    out_dir = Path(out_dir)
    ckpt_dir, sample_dir = out_dir / "checkpoints", out_dir / "samples"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = derive_seed(cfg["seed"], "train_gan", arch, z_dim)
    data = TrainImages(slices_dir)
    plan = make_plan(gcfg, arch, z_dim, data.resolution)
    schedule = make_schedule(gcfg, plan)
    batch = int(gcfg["batch_size"])
    fingerprint = training_fingerprint(gcfg, seed, plan, dataset_identity(slices_dir))
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), SigtermFlag() as sigterm:
        torch.manual_seed(seed)
        run = _Run(plan, gcfg, seed, device)
        order = ResumableShuffler(len(data), batch, derive_seed(seed, "data_order"))
        step, nimg, wall_before, stage_stats = 0, 0, 0.0, {}
        resumed_from, state = resume_matching(
            ckpt_dir, fingerprint, required_keys=CHECKPOINT_KEYS,
            still_valid=lambda s: None if int(s["nimg"]) <= schedule.total else "trained past the schedule")
        if state is not None:
            run.build_at(int(state["growth"]["stage"]), bool(state["growth"]["fading"]))
            run.G.load_state_dict(state["G"])
            run.D.load_state_dict(state["D"])
            run.opt_G.load_state_dict(state["opt_G"])
            run.opt_D.load_state_dict(state["opt_D"])
            order.load_state_dict(state["data_order"])
            step, nimg, wall_before = int(state["step"]), int(state["nimg"]), float(state.get("wall_s", 0.0))
            stage_stats = {k: list(v) for k, v in state.get("stage_stats", {}).items()}
            restore_rng_state(state["rng"])
            trim_log(out_dir / "log.csv", step, LOG_COLUMNS)
            log.info("resumed from %s (kimg %.3f, stage %d%s)", resumed_from, nimg / 1000, run.stage, " fading" if run.fading else "")
            del state
        else:
            run.build_at(0, False)
            out_dir.mkdir(parents=True, exist_ok=True)
            start_log(out_dir / "log.csv", LOG_COLUMNS)
        write_json(out_dir / "options.json", {
            "arch": arch, "z_dim": z_dim, "seed": seed, "slices_dir": str(slices_dir), "device": str(device),
            "train_images": len(data), "plan": plan.config(), "growing": plain(gcfg),
            "fingerprint": fingerprint_digest(fingerprint), "total_kimg": schedule.total / 1000,
            "schedule": [{"stage": s, "fading": f, "kimg_start": a / 1000, "kimg_end": b / 1000} for s, f, a, b in schedule.phases],
            "stages": [{"stage": s, "latent": plan.latent(s), "resolution": plan.res(s), "real_resolution": plan.real_res(s),
                        "generator": plan.generator_shapes(s), "critic": plan.critic_shapes(s)} for s in range(plan.num_stages)],
        })

        snap_z = sample_prior(SNAPSHOT_IMAGES, z_dim, torch.Generator().manual_seed(derive_seed(seed, "snapshot")), plan.prior_dim).to(device)
        if not (sample_dir / "reals.png").exists():
            save_png(image_grid(data.get(torch.arange(min(SNAPSHOT_IMAGES, len(data)))), ncols=8), sample_dir / "reals.png")

        every_log, every_snap, every_ckpt = (every_nimg(gcfg[k]) for k in ("log_kimg", "snapshot_kimg", "checkpoint_kimg"))
        next_log, next_snap, next_ckpt = ((nimg // e + 1) * e for e in (every_log, every_snap, every_ckpt))
        sums: dict[str, float] = {}
        n_sum, last_ckpt = 0, (nimg if resumed_from is not None else -1)
        t_start = t_tick = time.perf_counter()
        nimg_tick = nimg
        gp_lambda, n_critic = float(gcfg["gp_lambda"]), int(gcfg["critic_steps"])

        def checkpoint() -> None:
            save_checkpoint({
                "G": run.G.state_dict(), "D": run.D.state_dict(), "opt_G": run.opt_G.state_dict(), "opt_D": run.opt_D.state_dict(),
                "growth": {"stage": run.stage, "fading": run.fading}, "step": step, "nimg": nimg,
                "wall_s": wall_before + time.perf_counter() - t_start, "stage_stats": stage_stats,
                "rng": capture_rng_state(), "data_order": order.state_dict(), "fingerprint": fingerprint,
                "seed": seed, "arch": arch,
            }, ckpt_dir / f"ckpt-{kimg_name(nimg)}.pt", keep=int(gcfg["keep_checkpoints"]))

        while nimg < schedule.total:
            phase = schedule.at(nimg)
            run.move_to(phase)
            run.set_fade(phase)
            t0 = time.perf_counter()
            stats = _train_step(run, data, order, device, plan, phase, batch, n_critic, gp_lambda)
            step += 1
            nimg += batch * n_critic
            entry = stage_stats.setdefault(phase.name, [phase.stage, int(phase.fading), 0, 0.0])
            entry[2] += batch * n_critic
            entry[3] += time.perf_counter() - t0
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_sum += 1
            if nimg >= next_log or nimg >= schedule.total:
                now = time.perf_counter()
                row = {"kimg": nimg / 1000, "step": step, "stage": phase.stage, "phase": "fade" if phase.fading else "stable",
                       "ramp": phase.ramp, "latent": plan.latent(phase.stage), "resolution": plan.res(phase.stage),
                       **{k: sums[k] / n_sum for k in ("loss_d", "loss_g", "gp", "wasserstein")},
                       "img_per_s": (nimg - nimg_tick) / max(now - t_tick, 1e-9), "wall_s": wall_before + now - t_start}
                append_log(out_dir / "log.csv", row, LOG_COLUMNS)
                log.info("kimg %.3f/%.3f stage %d %s ramp %.2f loss_d %.4f loss_g %.4f W %.4f %.1f img/s", row["kimg"],
                         schedule.total / 1000, phase.stage, row["phase"], phase.ramp, row["loss_d"], row["loss_g"],
                         row["wasserstein"], row["img_per_s"])
                sums, n_sum, t_tick, nimg_tick = {}, 0, now, nimg
                next_log = (nimg // every_log + 1) * every_log
            if nimg >= next_snap or nimg >= schedule.total:
                _snapshot(run.G, snap_z, sample_dir / f"fakes-{kimg_name(nimg)}.png")
                next_snap = (nimg // every_snap + 1) * every_snap
            if nimg >= next_ckpt or nimg >= schedule.total or sigterm.received:
                checkpoint()
                last_ckpt = nimg
                next_ckpt = (nimg // every_ckpt + 1) * every_ckpt
            if sigterm.received:
                raise TrainingInterrupted(f"stopped by SIGTERM at kimg {nimg / 1000:.3f}; checkpoint written to {ckpt_dir}")

        run.move_to(schedule.at(schedule.total))  # a fade never ends a schedule, but be exact about it
        if last_ckpt != nimg:
            checkpoint()
        network = out_dir / "network.pt"
        save_network(network, run.G, kimg=nimg / 1000, seed=seed, fingerprint=fingerprint_digest(fingerprint))
        stages = _write_stages(out_dir / "stages.csv", stage_stats, plan)
        seconds = time.perf_counter() - t_start
        summary = {"network": str(network), "kimg": nimg / 1000, "steps": step, "seconds": seconds,
                   "resumed_from": str(resumed_from) if resumed_from else None, "device": str(device), "stages": stages}
        log.info("trained %s z%d to kimg %.3f in %.1f s; wrote %s", arch, z_dim, nimg / 1000, seconds, network)
        return summary


def _train_step(run: _Run, data: TrainImages, order: ResumableShuffler, device: torch.device, plan: GrowthPlan,
                phase: Phase, batch: int, n_critic: int, gp_lambda: float) -> dict[str, torch.Tensor]:
    """``n_critic`` critic updates then one generator update (WGAN-GP, no drift)."""
    G, D, m = run.G, run.D, plan.latent(phase.stage)
    stats: dict[str, torch.Tensor] = {}
    for _ in range(n_critic):
        real = real_images(data.get(order.next_batch()).to(device), plan, phase)
        z = sample_prior(batch, m, None, plan.prior_dim).to(device)
        with torch.no_grad():
            fake = G(z)
        loss_d, stats = critic_loss(D, real, fake, gp_lambda=gp_lambda, drift=0.0)
        run.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        run.opt_D.step()
    D.requires_grad_(False)
    z = sample_prior(batch, m, None, plan.prior_dim).to(device)
    loss_g = generator_loss(D, G(z))
    run.opt_G.zero_grad(set_to_none=True)
    loss_g.backward()
    run.opt_G.step()
    D.requires_grad_(True)
    return {"loss_d": stats["loss_d"], "gp": stats["gp"], "wasserstein": stats["wasserstein"], "loss_g": loss_g.detach()}


def _snapshot(G, z: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        imgs = G(z).float()
    save_png(image_grid(imgs, ncols=8), path)


def _write_stages(path: Path, stage_stats: dict, plan: GrowthPlan) -> list[dict]:
    rows = []
    for name, (stage, fading, n, seconds) in stage_stats.items():
        G, D = build(plan, stage, bool(fading))
        rows.append({"phase": name, "stage": stage, "fading": bool(fading), "kimg": n / 1000, "seconds": seconds,
                     "img_per_s": n / seconds if seconds > 0 else float("nan"), "latent": plan.latent(stage),
                     "resolution": plan.res(stage), "params_G": _num_params(G), "params_D": _num_params(D)})
    import pandas as pd

    write_table(path, pd.DataFrame(rows, columns=STAGE_COLUMNS))
    return rows



