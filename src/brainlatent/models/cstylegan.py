"""Conditional StyleGAN: the study's StyleGAN synthesis network with the label entering the mapping
network (NVlabs StyleGAN2-ADA conditioning), and a projection critic.

Mapping: ``embed = FC(c_dim → w_dim)`` (equalised LR); ``x = concat(norm(z), norm(embed(c)))``
(each normalised by its second moment) → the ``mapping_layers`` FC layers of
:class:`brainlatent.models.stylegan.MappingNetwork` → w. Synthesis is
:class:`brainlatent.models.stylegan.SynthesisNetwork` unchanged (AdaIN, noise).

Critic: the study's WGAN-GP critic (:class:`brainlatent.models.discriminator.Discriminator`) with
projection conditioning (Miyato & Koyama 2018): ``D(x, c) = out(h) + ⟨embed(c), h⟩ / sqrt(C)`` with
``h`` the critic's last hidden features (``C`` of them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from brainlatent.models.discriminator import Discriminator
from brainlatent.models.labelled import LabelledNetwork, load_network
from brainlatent.models.layers import FullyConnectedLayer, assert_shape, channels_at
from brainlatent.models.stylegan import (
    MappingNetwork,
    SynthesisNetwork,
    normalize_2nd_moment,
)

ARCH = "cstylegan"


class ConditionalMapping(torch.nn.Module):
    """``(z, c) → w``: label embedding, both normalised, concatenated, then the StyleGAN mapping layers.

    Example:
        >>> ConditionalMapping(8, 3, 8)(torch.randn(2, 8), torch.rand(2, 3)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        z_dim: int,                       # latent (Z) size
        c_dim: int,                       # label size
        w_dim: int,                       # intermediate latent (W) size; also the label embedding size
        num_layers: int = 3,              # FC layers after the concatenation
        lr_multiplier: float = 0.01,      # learning-rate multiplier of the FC layers
        w_avg_beta: float = 0.995,        # decay of the running mean of w
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.embed = FullyConnectedLayer(c_dim, w_dim)
        # the concatenation of two unit-mean-square vectors has unit mean square, so the inner
        # network's own normalisation leaves it unchanged
        self.net = MappingNetwork(z_dim + w_dim, w_dim, num_layers, lr_multiplier, w_avg_beta)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.net.w_avg

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        assert_shape(z, [None, self.z_dim])
        assert_shape(c, [z.shape[0], self.c_dim])
        x = torch.cat([normalize_2nd_moment(z.float()), normalize_2nd_moment(self.embed(c.float()))], dim=1)
        return self.net(x, truncation_psi=truncation_psi, update_w_avg=update_w_avg)


class CStyleGANGenerator(LabelledNetwork):
    """Conditional StyleGAN generator: ``synthesis(mapping(z, c), noise)``.

    Args:
        z_dim: latent size (also w size unless ``w_dim`` is given).
        resolution: image side (power of two ≥ 4).
        label_state, label_rows: the label encoder and table size (:class:`LabelledNetwork`).
        w_dim, mapping_layers, channels_base, channels_max, img_channels, mapping_lr_multiplier,
        w_avg_beta: as :class:`brainlatent.models.stylegan.Generator`.

    Example:
        >>> from brainlatent.labels import LabelEncoder
        >>> enc = LabelEncoder([{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}])
        >>> G = CStyleGANGenerator(8, 8, enc.state(), 4, channels_base=32, channels_max=8)
        >>> G.synthesis(G.mapping(torch.randn(2, 8), torch.zeros(2, G.c_dim))).shape
        torch.Size([2, 1, 8, 8])
    """

    arch = ARCH
    has_mapping = True
    normalizes_z = True

    def __init__(
        self,
        z_dim: int,                       # latent (Z) size
        resolution: int,                  # output resolution
        label_state: dict,                # LabelEncoder.state() of the training split
        label_rows: int,                  # rows of the training label table
        w_dim: int | None = None,         # W size (default z_dim)
        mapping_layers: int = 3,          # FC layers of the mapping network
        channels_base: int = 1024,        # feature maps = min(channels_base / res, channels_max)
        channels_max: int = 64,           # cap on feature maps
        img_channels: int = 1,            # image channels
        mapping_lr_multiplier: float = 0.01,  # learning-rate multiplier of the mapping network
        w_avg_beta: float = 0.995,        # decay of the running mean of w
    ) -> None:
        super().__init__(label_state, label_rows)
        w_dim = z_dim if w_dim is None else w_dim
        self.config: dict[str, Any] = dict(
            z_dim=z_dim, resolution=resolution, label_state=label_state, label_rows=int(label_rows), w_dim=w_dim,
            mapping_layers=mapping_layers, channels_base=channels_base, channels_max=channels_max,
            img_channels=img_channels, mapping_lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
        )
        self.z_dim, self.w_dim, self.resolution, self.img_channels = z_dim, w_dim, resolution, img_channels
        self.mapping_net = ConditionalMapping(z_dim, self.c_dim, w_dim, mapping_layers, mapping_lr_multiplier, w_avg_beta)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels_base, channels_max, img_channels)
        self.num_ws = self.synthesis.num_ws

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping_net.w_avg

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """``N x z_dim`` and ``N x c_dim`` → ``N x w_dim``."""
        c = self.check_labels(c, len(z))
        return self.mapping_net(z, c.to(z.device), truncation_psi=truncation_psi, update_w_avg=update_w_avg)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        return self.synthesis.noise_shapes()

    def forward(self, z: torch.Tensor, c: torch.Tensor, noise: list[torch.Tensor] | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi=truncation_psi), noise=noise)


class ProjectionDiscriminator(Discriminator):
    """The study's WGAN-GP critic conditioned by projection: ``(N x 1 x R x R, N x c_dim)`` → ``N x 1``.

    Example:
        >>> D = ProjectionDiscriminator(8, 3, channels_base=32, channels_max=8)
        >>> D(torch.randn(4, 1, 8, 8), torch.rand(4, 3)).shape
        torch.Size([4, 1])
    """

    def __init__(self, resolution: int, c_dim: int, channels_base: int = 1024, channels_max: int = 64, **kwargs: Any) -> None:
        super().__init__(resolution, channels_base, channels_max, **kwargs)
        self.c_dim = c_dim
        self.config["c_dim"] = c_dim
        self.hidden = channels_at(4, channels_base, channels_max)
        self.embed = FullyConnectedLayer(c_dim, self.hidden)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
        assert_shape(c, [img.shape[0], self.c_dim])
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        ep = self.epilogue
        if ep.mbstd is not None:
            x = ep.mbstd(x)
        h = ep.fc(ep.conv(x).flatten(1))
        proj = (self.embed(c.to(h.dtype)) * h).sum(dim=1, keepdim=True) / math.sqrt(self.hidden)
        return ep.out(h) + proj


def load_generator(path: str | Path, device: Any = "cpu") -> CStyleGANGenerator:
    """Rebuild a trained cstylegan from ``network.pt``."""
    return load_network(path, CStyleGANGenerator, device)
