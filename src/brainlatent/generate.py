"""``brainlatent generate``: images from a trained network for given seeds, in Z or W.

Each seed fixes both the latent (``z ~ N(0, I)``) and the per-layer noise maps, drawn in that order
from ``torch.Generator().manual_seed(seed)``, so an image is a function of (network, seed, space,
truncation) alone and does not depend on which other seeds are in the same call.

Truncation (``--truncation PSI``) happens in the chosen space: ``--space w`` moves w toward the
running mean ``w_avg`` (``w_avg + psi (w - w_avg)``); ``--space z`` moves z toward the prior mean 0
(``psi z``). Only the mapping-free ``gan`` has a meaningful Z truncation (the StyleGAN mapping
network normalises z, so scaling z changes nothing) and only StyleGAN has a W distinct from Z.

A conditional network (``cwgan``, ``cstylegan``) also draws each seed's labels from that seed's
generator, after z and noise: from the training table's joint label distribution, or with
``--labels 'sex=F,edss=6'`` those values set and the other attributes drawn from p(others | first
given value) of the training table (``slice=0.3`` sets the slice position). An unconditional
network refuses ``--labels``.

Example:
    brainlatent generate --network results/demo/gan/stylegan-z32/network.pt --seeds 0-15 \\
        --space w --truncation 0.7 --out grid.png
    brainlatent generate --network results/conditional/gan/cwgan-z32/network.pt --seeds 0-7 \\
        --labels 'sex=F,edss=6' --out edss6.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from brainlatent.errors import BrainlatentError
from brainlatent.images import image_grid, save_png, to_uint8
from brainlatent.labels import parse_labels
from brainlatent.models.stylegan import Generator


def parse_seeds(text: str) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]`` (ranges inclusive, order kept).

    Raises:
        BrainlatentError: on anything that is not a comma list of non-negative ints or ranges.
    """
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or lo < 0:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                seeds.append(value)
        except ValueError:
            raise BrainlatentError(
                f"--seeds: cannot read {part!r} in {text!r}; expected non-negative integers or ranges like 0-15,20"
            ) from None
    return seeds


def seed_inputs(G: Generator, seeds: list[int], device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-seed latents ``N × z_dim`` and noise maps (one ``N × 1 × H × W`` tensor per noise layer)."""
    z, noise, _ = seed_inputs_labelled(G, seeds, device)
    return z, noise


def seed_inputs_labelled(
    G, seeds: list[int], device: str | torch.device = "cpu", labels: dict[str, str] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Per-seed latents, noise maps and, for a conditional network, labels ``N × c_dim`` (else None).

    Each seed's generator draws z, then its noise, then its labels (``labels`` set, the rest from
    the training table).
    """
    conditional = bool(getattr(G, "c_dim", 0))
    if labels and not conditional:
        raise BrainlatentError(
            f"--labels: the '{G.arch}' network is unconditional (it was trained without labels); "
            "use a conditional family such as cwgan or cstylegan, or leave out --labels"
        )
    zs, noises, cs = [], [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        zs.append(torch.randn(1, G.z_dim, generator=gen))
        noises.append([torch.randn(shape, generator=gen) for shape in G.noise_shapes()])
        if conditional:
            cs.append(G.table.request(labels, 1, gen) if labels else G.sample_labels(1, gen))
    z = torch.cat(zs).to(device)
    noise = [torch.cat([n[i] for n in noises]).to(device) for i in range(len(G.noise_shapes()))]
    return z, noise, (torch.cat(cs).to(device) if conditional else None)


@torch.no_grad()
def generate_images(
    G: Generator,
    seeds: list[int],
    space: str = "z",
    truncation_psi: float = 1.0,
    batch_size: int = 64,
    labels: dict[str, str] | None = None,
) -> torch.Tensor:
    """Images for ``seeds``: ``N × C × R × R`` float on the CPU (about [-1, 1]).

    Args:
        G: generator (its device is used).
        seeds: one image per seed.
        space: ``"z"`` or ``"w"``: where truncation is applied.
        truncation_psi: 1 = no truncation.
        batch_size: images per forward pass.
        labels: raw label values for a conditional network (``{"sex": "F", "edss": "6"}``).
    """
    if space not in ("z", "w"):
        raise BrainlatentError(f"--space: expected 'z' or 'w', got {space!r}")
    if space == "w" and not G.has_mapping:
        raise BrainlatentError(f"--space w: the '{G.arch}' network has no mapping network, so W is Z; use --space z")
    if space == "z" and G.normalizes_z and truncation_psi != 1:
        raise BrainlatentError(
            f"--truncation {truncation_psi:g} with --space z has no effect on a '{G.arch}' network "
            "(its mapping network normalises z); use --space w"
        )
    device = next(G.parameters()).device
    out = []
    for start in range(0, len(seeds), batch_size):
        z, noise, c = seed_inputs_labelled(G, seeds[start:start + batch_size], device, labels)
        cond = () if c is None else (c,)
        if space == "z":
            w = G.mapping(z * truncation_psi if truncation_psi != 1 else z, *cond)
        else:
            w = G.mapping(z, *cond, truncation_psi=truncation_psi)
        out.append(G.synthesis(w, noise=noise or None).float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--network", required=True, help="network.pt written by train-gan")
    parser.add_argument("--seeds", required=True, help="seeds, e.g. 0-15 or 0,3,7 (one image each)")
    parser.add_argument("--space", choices=["z", "w"], default="z", help="space in which truncation is applied (w: StyleGAN only)")
    parser.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="truncation psi (1 = none)")
    parser.add_argument("--labels", default=None, metavar="NAME=VALUE,...",
                        help="conditional networks only: labels to generate, e.g. 'sex=F,edss=6' (others drawn from the training table)")
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="write one grid PNG")
    out.add_argument("--out-dir", help="write one PNG per seed (seed<NNNN>.png)")
    parser.add_argument("--ncols", type=int, default=None, help="grid columns (default: square-ish)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> None:
    import logging

    from brainlatent.models.families import load_network

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seeds = parse_seeds(args.seeds)
    G = load_network(args.network, device=device)
    labels = parse_labels(args.labels) if args.labels else None
    images = generate_images(G, seeds, space=args.space, truncation_psi=args.truncation, labels=labels)
    if args.out:
        save_png(image_grid(images, args.ncols), args.out)
        logging.getLogger(__name__).info("wrote %d images to %s", len(seeds), args.out)
    else:
        for seed, img in zip(seeds, images):
            save_png(to_uint8(img[None])[0], Path(args.out_dir) / f"seed{seed:04d}.png")
        logging.getLogger(__name__).info("wrote %d images to %s", len(seeds), args.out_dir)
