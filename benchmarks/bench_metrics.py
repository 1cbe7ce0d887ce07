"""Throughput of the evaluation metrics at demo size (64 x 64 slices, VGG width 16).

Random-initialised networks (the numbers measure speed, not quality): the StyleGAN generator
with the demo's channel settings and the attribute classifier with width 16 / fc_width 256.
Prints one table row per metric: samples (pairs for PPL), seconds, samples per second.

Usage:
    python benchmarks/bench_metrics.py [--device auto|cpu|cuda] [--scale 1.0] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from brainlatent.metrics.evaluate import generated_features, pick_device
from brainlatent.metrics.features import PerceptualFeatures
from brainlatent.metrics.path_profile import path_profile
from brainlatent.metrics.ppl import perceptual_path_length
from brainlatent.metrics.quality import fid, kid, precision_recall
from brainlatent.metrics.separability import linear_separability
from brainlatent.models.stylegan import Generator
from brainlatent.models.vgg import VGG16Classifier

ATTRS = [
    {"name": "age", "kind": "numeric", "bins": [18, 30, 40, 50, 60, 80]},
    {"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 6, 10]},
    {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS", "SPMS", "PPMS"]},
    {"name": "sex", "kind": "categorical", "levels": ["F", "M"]},
]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every sample count")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--z-dim", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    G = Generator(args.z_dim, resolution=64, arch="stylegan", mapping_layers=3, channels_base=1024, channels_max=64)
    G = G.to(device).eval().requires_grad_(False)
    clf = VGG16Classifier({a["name"]: (len(a["bins"]) - 1 if a["kind"] == "numeric" else len(a["levels"])) for a in ATTRS},
                          width=16, fc_width=256, batch_norm=True)
    feats = PerceptualFeatures(clf, device)
    bs = args.batch_size
    n = lambda k: max(10, int(k * args.scale))  # noqa: E731

    rows = []
    n_ppl = n(256)
    _, t = timed(lambda: perceptual_path_length(G, feats.distance, "w", "end", n_ppl, batch_size=bs, seed=0, device=device))
    rows.append(("ppl w_end (pairs)", n_ppl, t))
    _, t = timed(lambda: perceptual_path_length(G, feats.distance, "z", "full", n_ppl, batch_size=bs, seed=0, device=device))
    rows.append(("ppl z_full (pairs)", n_ppl, t))

    pairs, steps = max(1, int(4 * args.scale)), 150
    _, t = timed(lambda: path_profile(G, lambda x: feats.embed(x, bs), pairs, steps, bs, 0, device))
    rows.append(("path profile (images, Z+W)", 2 * pairs * steps, t))

    n_sep = n(1000)
    _, t = timed(lambda: linear_separability(G, feats.predict_proba, ATTRS, ["sex"], {"age": 40}, n_sep, 1, bs, 0, device))
    rows.append(("separability (samples, 2 attrs)", n_sep, t))

    n_q = n(1000)
    gen, t = timed(lambda: generated_features(G, feats, n_q, bs, 0, device))
    rows.append(("quality: generate + embed", n_q, t))
    real = np.random.default_rng(0).normal(size=(n_q, gen.shape[1])) + gen.mean(0)
    _, t = timed(lambda: fid(gen, real))
    rows.append(("quality: FID (256-d)", n_q, t))
    _, t = timed(lambda: kid(gen, real, 100, 1000, 0))
    rows.append(("quality: KID (100 subsets)", n_q, t))
    _, t = timed(lambda: precision_recall(real, gen, 3, device=device))
    rows.append(("quality: precision/recall", n_q, t))

    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"torch threads {torch.get_num_threads()}, batch {bs}, z_dim {args.z_dim}, 64x64, VGG width 16")
    print(f"| {'metric':<34} | {'samples':>7} | {'seconds':>8} | {'samples/s':>9} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 10}|{'-' * 11}|")
    for name, count, secs in rows:
        print(f"| {name:<34} | {count:>7} | {secs:>8.2f} | {count / secs:>9.1f} |")


if __name__ == "__main__":
    main()
