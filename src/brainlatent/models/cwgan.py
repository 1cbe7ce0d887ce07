"""Seed 004's conditional WGAN-GP networks (Fabbri 2018): a DCGAN generator on ``z ⊕ y`` and a
patch critic with y tiled as input channels.

Generator (paper §IV-C, code ``netG``): ``concat(z, y)`` → linear → ``4·4·C`` (no activation, no
BN) → reshape → ConvT 5×5 stride 2 with BN + ReLU, doubling the resolution up to ``R/2`` → ConvT
5×5 stride 2 to one channel, tanh (no BN). Weights N(0, 0.02). Feature maps at ``r`` px:
``min(width · R / r, 8 · width)``: at ``R = 64`` and ``width = 64`` that is 512, 512, 256, 128 as in
the paper.

Critic (code ``netD``, no normalisation): ``concat_channels(x, tile(y))`` → Conv 5×5 stride 2 with
leaky ReLU 0.2, halving down to 4×4 (``min(width · R / (2r), 8 · width)`` maps at ``r`` px: 64, 128,
256, 512 at 64 px) → Conv 4×4 stride 1 "same" → 4×4×1 → mean = one score per image.

The family has no W: ``mapping(z, c)`` is ``concat(z, c)``, the generator's input (``w_dim =
z_dim + c_dim``), and the metrics walk Z only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainlatent.models.labelled import LabelledNetwork, load_network, save_network
from brainlatent.models.layers import assert_shape, check_resolution

ARCH = "cwgan"
INIT_STD = 0.02


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def generator_channels(r: int, resolution: int, width: int) -> int:
    """Feature maps of the generator at ``r`` px: ``min(width · R / r, 8 · width)``."""
    return min(width * resolution // r, 8 * width)


def critic_channels(r: int, resolution: int, width: int) -> int:
    """Feature maps of the critic at ``r`` px: ``min(width · R / (2r), 8 · width)``."""
    return min(max(width * resolution // (2 * r), 1), 8 * width)


class CWGANGenerator(LabelledNetwork):
    """DCGAN-style conditional generator ``G(z ⊕ y)``.

    Args:
        z_dim: latent size.
        resolution: image side (power of two ≥ 8).
        label_state, label_rows: the label encoder and table size (:class:`LabelledNetwork`).
        width: feature-map multiplier (64 = the paper's widths; the CPU study uses 8).
        img_channels: image channels.

    Example:
        >>> from brainlatent.labels import LabelEncoder
        >>> enc = LabelEncoder([{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}])
        >>> G = CWGANGenerator(8, 16, enc.state(), 4, width=4)
        >>> G.synthesis(G.mapping(torch.randn(2, 8), torch.zeros(2, G.c_dim))).shape
        torch.Size([2, 1, 16, 16])
    """

    arch = ARCH
    has_mapping = False
    normalizes_z = False

    def __init__(
        self,
        z_dim: int,                       # latent (Z) size
        resolution: int,                  # output resolution
        label_state: dict,                # LabelEncoder.state() of the training split
        label_rows: int,                  # rows of the training label table
        width: int = 64,                  # feature-map multiplier (paper: 64)
        img_channels: int = 1,            # image channels
    ) -> None:
        super().__init__(label_state, label_rows)
        log2 = check_resolution(resolution)
        if resolution < 8:
            raise ValueError(f"cwgan needs resolution >= 8, got {resolution}")
        self.config: dict[str, Any] = dict(z_dim=z_dim, resolution=resolution, label_state=label_state,
                                           label_rows=int(label_rows), width=width, img_channels=img_channels)
        self.z_dim, self.resolution, self.img_channels = z_dim, resolution, img_channels
        self.w_dim = z_dim + self.c_dim

        def ch(r: int) -> int:
            return generator_channels(r, resolution, width)

        self.c4 = ch(4)
        self.fc = nn.Linear(self.w_dim, 4 * 4 * self.c4)
        layers: list[nn.Module] = []
        for r in (2 ** i for i in range(3, log2 + 1)):
            last = r == resolution
            out = img_channels if last else ch(r)
            layers.append(nn.ConvTranspose2d(ch(r // 2), out, 5, stride=2, padding=2, output_padding=1))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        _init(self)

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        """``concat(z, c)``: ``N x (z_dim + c_dim)`` (no W; ``truncation_psi`` scales z toward 0)."""
        assert_shape(z, [None, self.z_dim])
        c = self.check_labels(c, len(z))
        return torch.cat([z * truncation_psi if truncation_psi != 1 else z, c.to(z)], dim=1)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        return []

    def synthesis(self, w: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``N x (z_dim + c_dim)`` → ``N x 1 x R x R`` in (-1, 1); ``noise`` must be empty or None."""
        assert_shape(w, [None, self.w_dim])
        if noise:
            raise AssertionError("cwgan has no noise inputs (noise_shapes() is [])")
        x = self.fc(w).view(-1, self.c4, 4, 4)
        return self.net(x)

    def forward(self, z: torch.Tensor, c: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, c), noise)


class CWGANCritic(nn.Module):
    """Patch critic with the labels tiled as constant input planes; ``(N x 1 x R x R, N x c_dim)`` → ``N x 1``.

    Example:
        >>> D = CWGANCritic(16, 3, width=4)
        >>> D(torch.randn(2, 1, 16, 16), torch.rand(2, 3)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        resolution: int,                  # input resolution
        c_dim: int,                       # label size (tiled as c_dim extra channels)
        width: int = 64,                  # feature-map multiplier (paper: 64)
        img_channels: int = 1,            # image channels
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.config = dict(resolution=resolution, c_dim=c_dim, width=width, img_channels=img_channels)
        self.resolution, self.c_dim, self.img_channels = resolution, c_dim, img_channels
        layers: list[nn.Module] = []
        in_ch = img_channels + c_dim
        for r in (2 ** i for i in range(log2 - 1, 1, -1)):  # output sizes R/2 ... 4
            out = critic_channels(r, resolution, width)
            layers += [nn.Conv2d(in_ch, out, 5, stride=2, padding=2), nn.LeakyReLU(0.2)]
            in_ch = out
        # 4x4 stride 1 "SAME" as in TensorFlow: pad 1 before and 2 after
        layers += [nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(in_ch, 1, 4, stride=1)]
        self.net = nn.Sequential(*layers)
        _init(self)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
        assert_shape(c, [img.shape[0], self.c_dim])
        planes = c.to(img.dtype)[:, :, None, None].expand(-1, -1, self.resolution, self.resolution)
        score_map = self.net(torch.cat([img, planes], dim=1))
        assert_shape(score_map, [img.shape[0], 1, 4, 4])
        return score_map.mean(dim=(2, 3))


def save_generator(path: str | Path, G: CWGANGenerator, kimg: float, seed: int, fingerprint: str | None = None) -> None:
    save_network(path, G, kimg, seed, fingerprint)


def load_generator(path: str | Path, device: Any = "cpu") -> CWGANGenerator:
    """Rebuild a trained cwgan from ``network.pt`` (eval mode: batch norm uses its running statistics)."""
    return load_network(path, CWGANGenerator, device)
