"""Training and generation speed of the GANs, per arch and latent size.

Times the real training step (critic update with gradient penalty + generator update + EMA) on
random data, and EMA-generator inference. Prints one table row per (device, arch, z_dim).

    python benchmarks/bench_gan.py                       # CPU, demo sizes (64x64, batch 16)
    python benchmarks/bench_gan.py --threads 2 --zdims 32,64,128,512
    python benchmarks/bench_gan.py --device cuda         # GPU target: 128x128, batch 32, full-size networks

Defaults per device: CPU uses the demo config (config/config.yaml: 64x64, its batch and channels);
CUDA uses the GPU target: 128x128, batch 32, channels_base 1024 / channels_max 64.
Timings on a shared machine vary: compare rows from one run only. cpu-s/kimg (process CPU time,
all threads) is less sensitive to other load than the wall-clock s/kimg.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from brainlatent.config import load_config
from brainlatent.models.discriminator import Discriminator
from brainlatent.models.stylegan import Generator
from brainlatent.train import gan as gan_train
from brainlatent.train.checkpoint import ResumableShuffler

REPO = Path(__file__).resolve().parents[1]


class RandomImages:
    """Stand-in for the slice dataset: random images in [-1, 1]."""

    def __init__(self, n: int, resolution: int) -> None:
        self.memory = torch.rand(n, 1, resolution, resolution) * 2 - 1

    def __len__(self) -> int:
        return len(self.memory)

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        return self.memory.index_select(0, idx)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_one(gcfg: dict, arch: str, z_dim: int, resolution: int, device: torch.device, steps: int, gen_batches: int) -> dict:
    torch.manual_seed(0)
    G = Generator(z_dim, resolution=resolution, arch=arch, mapping_layers=gcfg["mapping_layers"],
                  channels_base=gcfg["channels_base"], channels_max=gcfg["channels_max"]).to(device)
    D = Discriminator(resolution, gcfg["channels_base"], gcfg["channels_max"]).to(device)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=gcfg["lr"], betas=tuple(gcfg["betas"]))
    opt_D = torch.optim.Adam(D.parameters(), lr=gcfg["lr"], betas=tuple(gcfg["betas"]))
    batch = gcfg["batch_size"]
    data = RandomImages(max(4 * batch, 64), resolution)
    order = ResumableShuffler(len(data), batch, 0)
    beta = gan_train.ema_beta(batch, gcfg["ema_kimg"])

    def step() -> None:
        gan_train._train_step(G, D, opt_G, opt_D, data, order, device, gcfg)
        gan_train.ema_update(G_ema, G, beta)

    for _ in range(2):
        step()
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    _sync(device)
    train_s = (time.perf_counter() - t0) / steps
    train_cpu_s = (time.process_time() - c0) / steps
    images_per_step = batch * gcfg["critic_steps"]

    z = torch.randn(64, z_dim, device=device)
    with torch.no_grad(), gan_train._autocast(device):
        G_ema(z)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(gen_batches):
            G_ema(z)
        _sync(device)
    gen_s = (time.perf_counter() - t0) / (gen_batches * len(z))
    return {
        "params_G": sum(p.numel() for p in G.parameters()),
        "params_D": sum(p.numel() for p in D.parameters()),
        "s_per_kimg": train_s * 1000 / images_per_step,
        "cpu_s_per_kimg": train_cpu_s * 1000 / images_per_step,
        "train_img_s": images_per_step / train_s,
        "gen_img_s": 1.0 / gen_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"), help="study config (gan section used)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or 'all' (cpu, and cuda if available)")
    parser.add_argument("--archs", default="stylegan,gan")
    parser.add_argument("--zdims", default="32,64")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 on CPU, 128 on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="default: config batch on CPU, 32 on CUDA")
    parser.add_argument("--channels-base", type=int, default=None, help="default: config on CPU, 1024 on CUDA")
    parser.add_argument("--channels-max", type=int, default=None, help="default: config on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--gen-batches", type=int, default=5, help="timed generation batches of 64")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    header = f"{'device':<6} {'arch':<9} {'z':>4} {'res':>4} {'batch':>5} {'ch':>9} {'G params':>9} {'D params':>9} {'s/kimg':>8} {'cpu-s/kimg':>10} {'train img/s':>12} {'gen img/s':>10}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(header)
    print("-" * len(header))
    for dev in devices:
        device = torch.device(dev)
        gcfg = dict(cfg["gan"])
        gpu = device.type == "cuda"
        resolution = args.resolution or (128 if gpu else cfg["slices"]["resolution"])
        gcfg["batch_size"] = args.batch or (32 if gpu else gcfg["batch_size"])
        gcfg["channels_base"] = args.channels_base or (1024 if gpu else gcfg["channels_base"])
        gcfg["channels_max"] = args.channels_max or (64 if gpu else gcfg["channels_max"])
        for arch in args.archs.split(","):
            for z_dim in (int(z) for z in args.zdims.split(",")):
                r = bench_one(gcfg, arch, z_dim, resolution, device, args.steps, args.gen_batches)
                ch = f"{gcfg['channels_base']}/{gcfg['channels_max']}"
                print(f"{dev:<6} {arch:<9} {z_dim:>4} {resolution:>4} {gcfg['batch_size']:>5} {ch:>9} "
                      f"{r['params_G']:>9,} {r['params_D']:>9,} {r['s_per_kimg']:>8.2f} {r['cpu_s_per_kimg']:>10.2f} {r['train_img_s']:>12.1f} {r['gen_img_s']:>10.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
