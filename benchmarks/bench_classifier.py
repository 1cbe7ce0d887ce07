"""Speed of the attribute classifier at the demo settings, on random data.

Prints one table row per device: parameter count, training images/s (augmentation, forward,
backward, AdamW step, weight-average update), the implied time per epoch for ``--train-slices`` training slices, and
inference images/s (eval mode, no grad).

    python benchmarks/bench_classifier.py                     # demo: width 16, fc 256, 64x64, batch 32
    python benchmarks/bench_classifier.py --resolution 128 --width 32 --devices cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from brainlatent.models.vgg import VGG16Classifier
from brainlatent.train.classifier import SliceAugment, total_loss, weight_average

DEMO_HEADS = {"age": 5, "edss": 4, "ms_type": 4, "sex": 2}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(device: torch.device, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    net = VGG16Classifier(DEMO_HEADS, width=args.width, fc_width=args.fc_width, batch_norm=True, dropout=0.5).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=5e-4)
    ema = weight_average(net, 0.99)
    augment, gen = SliceAugment(), torch.Generator().manual_seed(0)
    b, r = args.batch_size, args.resolution
    x = (torch.rand(b, 1, r, r) * 2 - 1).to(device)
    t = torch.stack([torch.randint(0, k, (b,)) for k in DEMO_HEADS.values()], 1).to(device)

    def train_step() -> None:
        loss, _ = total_loss(net(augment(x, gen), adjust_prior=False), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(net)

    net.train()
    for _ in range(args.warmup):
        train_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        train_step()
    _sync(device)
    train_ips = args.batches * b / (time.perf_counter() - t0)

    net.eval()
    with torch.no_grad():
        for _ in range(args.warmup):
            net(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            net(x)
        _sync(device)
    infer_ips = args.batches * b / (time.perf_counter() - t0)
    return {
        "device": str(device) + ("" if device.type == "cuda" else f" ({torch.get_num_threads()} thr)"),
        "params": sum(p.numel() for p in net.parameters()),
        "train img/s": train_ips,
        "s/epoch": args.train_slices / train_ips,
        "infer img/s": infer_ips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--fc-width", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-slices", type=int, default=840, help="training-set size for the per-epoch time (demo: 70%% of 1200)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"VGG16Classifier width={args.width} fc={args.fc_width} {args.resolution}x{args.resolution} batch={args.batch_size}, "
          f"heads {DEMO_HEADS}; torch {torch.__version__}")
    rows = [bench(torch.device(d), args) for d in devices]
    cols = ["device", "params", "train img/s", "s/epoch", "infer img/s"]
    print(" | ".join(f"{c:>16}" for c in cols))
    print("-|-".join("-" * 16 for _ in cols))
    for row in rows:
        cells = [row["device"], f"{row['params']:,}", f"{row['train img/s']:.1f}", f"{row['s/epoch']:.2f}", f"{row['infer img/s']:.1f}"]
        print(" | ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
