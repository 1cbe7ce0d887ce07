"""``brainlatent train-gan``: train one generator of any registered family (resuming when it can).

The family (``--arch``) comes from :mod:`brainlatent.models.families`; its trainer gets exactly the
config keys the registry lists for it, as under Snakemake.

Example:
    brainlatent train-gan --config config/config.yaml --slices results/demo/slices/64 \\
        --arch stylegan --zdim 32 --out results/demo/gan/stylegan-z32
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import torch

from brainlatent.config import load_stage_config
from brainlatent.models.families import families, get_family
from brainlatent.train.common import TrainingInterrupted

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = list(families())
    parser.add_argument("--config", required=True, help="study config: YAML path or inline JSON")
    parser.add_argument("--slices", required=True, metavar="DIR", help="slice dataset folder (images.npy + manifest.parquet)")
    parser.add_argument("--arch", required=True, choices=names, help="generator family: " + ", ".join(names))
    parser.add_argument("--zdim", required=True, type=int, help="latent size")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder (resumed if it has matching checkpoints)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def run(args: argparse.Namespace) -> None:
    family = get_family(args.arch)
    cfg = load_stage_config(args.config, f"train:{family.name}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        family.trainer()(cfg, args.slices, family.name, args.zdim, args.out, device=args.device)
    except TrainingInterrupted as exc:
        log.error("%s", exc)
        sys.exit(128 + signal.SIGTERM)
