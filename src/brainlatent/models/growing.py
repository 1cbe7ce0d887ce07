"""Seed 003's growing generator and critic (bGAN, bgGAN, cgGAN, lgGAN, clgGAN), growth and network files.

A network is built for one stage of its :class:`~brainlatent.models.growing_plan.GrowthPlan`,
optionally *fading* (the first half of a grow cycle). Growth (:func:`grow`) builds the network of
the next stage in its fading form and copies every old parameter into the leading slice of its
grown counterpart; new weights are He-initialised and, for new channels, multiplied by β at run
time; a new resolution block is blended in with α (progressive growing):

* generator output = ``(1 − α) · up(toRGB_old(h)) + α · toRGB(block_new(up(h)))``;
* critic input     = ``(1 − α) · fromRGB_old(down(x)) + α · block_new(fromRGB(x))``.

At α = β = τ = 0 the grown network computes exactly the previous function (the generator's
image up-sampled ×2 for a layer growth). :func:`commit` ends the fade (drops the old toRGB/fromRGB;
at β = 1 the weights are the raw ones, so nothing changes).

Network protocol (:mod:`brainlatent.models.families`): ``z_dim`` (final latent), ``w_dim = z_dim``,
``c_dim = 0``, ``resolution``, ``has_mapping = False``, ``normalizes_z = False``, ``mapping(z) = z``,
``synthesis(w)``, ``noise_shapes() = []``. Latents are in protocol units (:mod:`brainlatent.latent_groups`):
the generator divides by ``√prior_dim`` before g1, and uses the first ``latent(stage)`` coordinates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainlatent.errors import BrainlatentError
from brainlatent.models.growing_layers import (
    Fadeable,
    GrowConv2d,
    GrowLinear,
    LatentInput,
    MinibatchStdBlend,
    StdConv,
    copy_leading,
)
from brainlatent.models.growing_plan import GROWS_LAYERS, GrowthPlan

#: parameter-name prefixes renamed when a resolution is added: old layer -> its kept copy
LAYER_RENAMES = {"generator": {"torgb.": "torgb_old."}, "critic": {"fromrgb.": "fromrgb_old."}}


def _old(shapes: dict, name: str) -> tuple[int | None, int | None]:
    return shapes.get(name, (None, None))


class _Staged(nn.Module):
    """Shared state of a network built for one stage: plan, stage, fading, α, and :meth:`set_fade`."""

    def __init__(self, plan: GrowthPlan, stage: int, fading: bool) -> None:
        super().__init__()
        if not 0 <= stage < plan.num_stages:
            raise BrainlatentError(f"{plan.arch}: stage {stage} outside 0..{plan.num_stages - 1}")
        if fading and not plan.changes(stage):
            raise BrainlatentError(f"{plan.arch}: stage {stage} does not grow, so it cannot fade")
        self.plan, self.stage, self.fading = plan, int(stage), bool(fading)
        self.layer_fade = self.fading and plan.arch in GROWS_LAYERS
        self.alpha = 1.0

    def set_fade(self, alpha: float, beta: float, tau: float) -> None:
        """Set α (layer blend), β (new-channel weights) and τ (minibatch-std blend) for the next calls."""
        self.alpha = float(alpha)
        for m in self.modules():
            if isinstance(m, Fadeable):
                m.beta = float(beta)
            elif isinstance(m, MinibatchStdBlend):
                m.tau = float(tau)

    def _block_dict(self, name: str) -> nn.ModuleDict:
        if name not in self.blocks:
            self.blocks[name] = nn.ModuleDict()
        return self.blocks[name]

    def _blend(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.alpha) * old + self.alpha * new


class GrowingGenerator(_Staged):
    """The generator at one stage (seed Table 2 at the final stage), 1 output channel, tanh.

    Args:
        plan: the model's growth plan.
        stage: 0 .. S-1.
        fading: built in the fading form of ``stage`` (old sizes known, old toRGB kept).
        generator: RNG of the He initialisation.

    Example:
        >>> G = GrowingGenerator(GrowthPlan("clggan", 16, 32), stage=2)
        >>> G(torch.randn(3, 32)).shape
        torch.Size([3, 1, 16, 16])
    """

    def __init__(self, plan: GrowthPlan, stage: int, fading: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(plan, stage, fading)
        shapes = plan.generator_shapes(stage)
        old = plan.generator_shapes(stage - 1) if fading else {}
        if self.layer_fade:
            old = {k: v for k, v in old.items() if k != "torgb"}  # the new toRGB is a new layer
        gen = generator
        (m, c4), (om, oc4) = shapes["g1"], _old(old, "g1")
        self.g1 = LatentInput(m, c4, om, oc4, generator=gen)
        self.blocks = nn.ModuleDict()
        for name, (cin, cout) in shapes.items():
            if name in ("g1", "torgb"):
                continue
            block, conv = name.split(".")
            oin, oout = _old(old, name)
            self._block_dict(block)[conv] = GrowConv2d(cin, cout, 3, "lrelu", oin, oout, generator=gen)
        cin, _ = shapes["torgb"]
        oin, _ = _old(old, "torgb")
        self.torgb = GrowConv2d(cin, 1, 1, "tanh", oin, None, generator=gen)
        if self.layer_fade:
            prev = plan.generator_shapes(stage - 1)["torgb"][0]
            self.torgb_old = GrowConv2d(plan.width(plan.res(stage - 1), stage), 1, 1, "tanh", prev, None, generator=gen)
        self.z_dim = self.w_dim = plan.z_dim
        self.c_dim = 0
        self.resolution = plan.resolution
        self.arch = plan.arch
        self.has_mapping = False
        self.normalizes_z = False
        self.input_scale = 1.0 / math.sqrt(plan.prior_dim)

    @property
    def latent_size(self) -> int:
        """Coordinates fed at this stage."""
        return self.plan.latent(self.stage)

    @property
    def output_resolution(self) -> int:
        return self.plan.res(self.stage)

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        """The identity (W = Z)."""
        return z

    def noise_shapes(self) -> list:
        return []

    def synthesis(self, w: torch.Tensor, noise: list | None = None) -> torch.Tensor:
        """``N × ≥latent_size`` latents (protocol units) → ``N × 1 × res × res`` images in [-1, 1]."""
        m = self.latent_size
        if w.ndim != 2 or w.shape[1] < m:
            raise AssertionError(f"expected N x >={m} latents, got {tuple(w.shape)}")
        h = self.g1(w[:, :m] * self.input_scale)
        h = self.blocks["b4"]["conv"](h)
        res = self.plan.resolutions(self.stage)
        h_prev = h
        for r in res[1:]:
            h_prev = h
            block = self.blocks[f"b{r}"]
            h = block["conv1"](block["conv0"](F.interpolate(h, scale_factor=2, mode="nearest")))
        img = self.torgb(h)
        if self.layer_fade:
            img = self._blend(F.interpolate(self.torgb_old(h_prev), scale_factor=2, mode="nearest"), img)
        return img

    def forward(self, z: torch.Tensor, noise: list | None = None, **_: Any) -> torch.Tensor:
        return self.synthesis(self.mapping(z), noise)


class GrowingCritic(_Staged):
    """The critic at one stage (seed Table 3 at the final stage): blocks of two 3×3 convs and 2× average
    pooling, minibatch std over the whole batch (τ blend), d3 3×3, d2 4×4 valid, d1 FC → 1.

    Example:
        >>> D = GrowingCritic(GrowthPlan("clggan", 16, 32), stage=2)
        >>> D(torch.randn(3, 1, 16, 16)).shape
        torch.Size([3, 1])
    """

    def __init__(self, plan: GrowthPlan, stage: int, fading: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__(plan, stage, fading)
        shapes = plan.critic_shapes(stage)
        old = plan.critic_shapes(stage - 1) if fading else {}
        if self.layer_fade:
            old = {k: v for k, v in old.items() if k != "fromrgb"}
        gen = generator
        _, cout = shapes["fromrgb"]
        self.fromrgb = GrowConv2d(1, cout, 1, "lrelu", None, _old(old, "fromrgb")[1], generator=gen)
        if self.layer_fade:
            prev_out = plan.critic_shapes(stage - 1)["fromrgb"][1]
            self.fromrgb_old = GrowConv2d(1, plan.width(plan.res(stage - 1), stage), 1, "lrelu", None, prev_out, generator=gen)
        self.blocks = nn.ModuleDict()
        for name, (cin, cout) in shapes.items():
            if not name.startswith("b"):
                continue
            block, conv = name.split(".")
            oin, oout = _old(old, name)
            self._block_dict(block)[conv] = GrowConv2d(cin, cout, 3, "lrelu", oin, oout, generator=gen)
        (cin, cout), (oin, oout) = shapes["d3"], _old(old, "d3")
        self.mbstd = MinibatchStdBlend(oin)
        self.d3 = StdConv(cin, cout, oin, oout, generator=gen)
        (cin, cout), (oin, oout) = shapes["d2"], _old(old, "d2")
        self.d2 = GrowConv2d(cin, cout, 4, "lrelu", oin, oout, padding=0, generator=gen)
        (cin, _), (oin, _) = shapes["d1"], _old(old, "d1")
        self.d1 = GrowLinear(cin, 1, "linear", oin, None, generator=gen)

    @property
    def input_resolution(self) -> int:
        return self.plan.res(self.stage)

    def _block(self, r: int, h: torch.Tensor) -> torch.Tensor:
        block = self.blocks[f"b{r}"]
        return F.avg_pool2d(block["conv1"](block["conv0"](h)), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N × 1 × res × res`` → ``N × 1`` scores."""
        res = self.plan.resolutions(self.stage)
        if x.shape[-1] != res[-1]:
            raise AssertionError(f"critic at stage {self.stage} expects {res[-1]}x{res[-1]} images, got {tuple(x.shape)}")
        todo = list(reversed(res[1:]))
        if self.layer_fade:
            new = self._block(todo[0], self.fromrgb(x))
            h = self._blend(self.fromrgb_old(F.avg_pool2d(x, 2)), new)
            todo = todo[1:]
        else:
            h = self.fromrgb(x)
        for r in todo:
            h = self._block(r, h)
        h = self.d2(self.d3(h, self.mbstd(h)))
        return self.d1(h.flatten(1))


# --------------------------------------------------------------------------------------------
# Growth


def transfer(src: nn.Module, dst: nn.Module, renames: dict[str, str] | None = None) -> dict[str, str]:
    """Copy every parameter of ``src`` into the leading slice of its counterpart in ``dst``.

    ``renames`` maps a ``src`` prefix to the ``dst`` prefix that continues it (the old toRGB after a
    layer growth); a ``dst`` parameter under a renamed source prefix is a new layer and keeps its init.

    Returns:
        ``dst name -> src name`` of every copied parameter (to carry optimiser state over).
    """
    renames = renames or {}
    src_params = dict(src.named_parameters())
    mapping = {}
    for name, p in dst.named_parameters():
        source = name
        for s_pref, d_pref in renames.items():
            if name.startswith(s_pref):
                source = None
            elif name.startswith(d_pref):
                source = s_pref + name[len(d_pref):]
        if source is not None and source in src_params:
            copy_leading(p.data, src_params[source].data)
            mapping[name] = source
    return mapping


def grow(net: _Staged, generator: torch.Generator | None = None) -> tuple[_Staged, dict[str, str]]:
    """The network of the next stage, fading (α = β = τ = 0), holding ``net``'s function; plus the name map."""
    if net.fading:
        raise BrainlatentError("commit the running fade before growing again")
    cls, kind = (GrowingGenerator, "generator") if isinstance(net, GrowingGenerator) else (GrowingCritic, "critic")
    new = cls(net.plan, net.stage + 1, fading=True, generator=generator)
    mapping = transfer(net, new, LAYER_RENAMES[kind] if new.layer_fade else None)
    new.set_fade(0.0, 0.0, 0.0)
    return new.to(next(net.parameters()).device), mapping


def commit(net: _Staged) -> tuple[_Staged, dict[str, str]]:
    """End a fade: the same stage without the old sizes and the old toRGB/fromRGB (β = α = 1)."""
    new = type(net)(net.plan, net.stage, fading=False)
    mapping = transfer(net, new)
    return new.to(next(net.parameters()).device), mapping


def build(plan: GrowthPlan, stage: int, fading: bool, generator: torch.Generator | None = None) -> tuple[GrowingGenerator, GrowingCritic]:
    """Generator and critic of one stage (fresh weights; a checkpoint's state dict loads into them)."""
    return GrowingGenerator(plan, stage, fading, generator), GrowingCritic(plan, stage, fading, generator)


# --------------------------------------------------------------------------------------------
# Weights-only network files


def network_dict(G: GrowingGenerator, kimg: float, seed: int, fingerprint: str | None = None) -> dict[str, Any]:
    """What ``network.pt`` holds: the plan, stage and weights (weights-only loadable)."""
    return {
        "arch": G.arch, "z_dim": G.z_dim, "kimg": float(kimg), "seed": int(seed), "fingerprint": fingerprint,
        "generator_config": {"plan": G.plan.config(), "stage": G.stage, "fading": G.fading},
        "state_dict": {k: v.detach().cpu().clone() for k, v in G.state_dict().items()},
    }


def save_network(path: str | Path, G: GrowingGenerator, kimg: float, seed: int, fingerprint: str | None = None) -> None:
    from brainlatent.io import save_torch

    save_torch(path, network_dict(G, kimg, seed, fingerprint))


def load_growing(path: str | Path, device: str | torch.device = "cpu") -> GrowingGenerator:
    """Rebuild a growing generator from ``network.pt``, in eval mode, parameters frozen."""
    from brainlatent.io import load_torch

    data = load_torch(path, map_location="cpu")
    try:
        cfg = data["generator_config"]
        G = GrowingGenerator(GrowthPlan(**cfg["plan"]), int(cfg["stage"]), bool(cfg["fading"]))
        G.load_state_dict(data["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BrainlatentError(f"{path}: not a growing-GAN network file or weights do not match ({exc})") from None
    return G.to(device).eval().requires_grad_(False)
