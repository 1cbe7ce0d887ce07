"""Progressive-GAN style critic (discriminator) for the WGAN-GP loss.

fromRGB 1×1 at the image resolution, then blocks of conv3×3 → conv3×3 → 2× average pooling down
to 4×4, then the epilogue: minibatch standard deviation (group 4, one feature map) → conv3×3 →
FC → FC → one unbounded score per image. Equalised learning rate and leaky ReLU (0.2) throughout;
no normalisation layers, as the gradient penalty requires.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainlatent.models.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    assert_shape,
    channels_at,
    check_resolution,
)


class DiscriminatorBlock(nn.Module):
    """conv3×3 → conv3×3 → 2× average pooling (halves the resolution).

    Example:
        >>> DiscriminatorBlock(8, 16, 16)(torch.randn(2, 8, 16, 16)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,                 # input feature maps
        tmp_channels: int,                # feature maps after the first conv
        out_channels: int,                # output feature maps
        resolution: int | None = None,    # input resolution (shape check), None: any
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.conv0 = Conv2dLayer(in_channels, tmp_channels, 3, activation="lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, self.resolution, self.resolution])
        return F.avg_pool2d(self.conv1(self.conv0(x)), 2)


class MinibatchStdLayer(nn.Module):
    """Append the standard deviation across groups of images as extra feature maps (Karras 2017).

    The batch is split into groups of ``group_size`` samples, strided as in NVlabs (sample ``i`` is
    with ``i + N/G``, ``i + 2N/G``...; ``G`` is the largest divisor of the batch size not above
    ``group_size``); for each group the std over
    the group is averaged over channels (within ``num_channels`` channel groups) and pixels and
    appended as ``num_channels`` constant maps.

    Example:
        >>> MinibatchStdLayer(4, 1)(torch.randn(8, 16, 4, 4)).shape
        torch.Size([8, 17, 4, 4])
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, n) + 1) if n % d == 0)
        f = self.num_channels
        if c % f != 0:
            raise AssertionError(f"channels ({c}) must be a multiple of num_channels ({f})")
        y = x.float().reshape(g, -1, f, c // f, h, w)  # [GnFcHW]: group member first
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()     # [nFcHW]
        y = y.mean(dim=(2, 3, 4))                      # [nF]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [NFHW]
        return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """minibatch std → conv3×3 → FC → FC → score, at 4×4."""

    def __init__(
        self,
        in_channels: int,                 # feature maps at 4x4
        mbstd_group_size: int = 4,        # group size of the minibatch std layer
        mbstd_num_channels: int = 1,      # feature maps it appends (0 disables it)
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu")
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, 4, 4])
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class Discriminator(nn.Module):
    """WGAN-GP critic: ``N × C × R × R`` images → ``N × 1`` scores.

    Args:
        resolution: input resolution (power of two ≥ 4).
        channels_base, channels_max: feature maps ``min(channels_base // r, channels_max)``.
        img_channels: image channels.
        mbstd_group_size: group size of the minibatch std layer.
        mbstd_num_channels: feature maps appended by it.

    Example:
        >>> D = Discriminator(16, channels_base=128, channels_max=16)
        >>> D(torch.randn(4, 1, 16, 16)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        resolution: int,                  # input resolution
        channels_base: int = 1024,        # overall multiplier for the number of channels
        channels_max: int = 64,           # maximum number of channels in any layer
        img_channels: int = 1,            # number of input image channels
        mbstd_group_size: int = 4,        # minibatch std group size
        mbstd_num_channels: int = 1,      # minibatch std feature maps
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.config = dict(resolution=resolution, channels_base=channels_base, channels_max=channels_max,
                           img_channels=img_channels, mbstd_group_size=mbstd_group_size,
                           mbstd_num_channels=mbstd_num_channels)
        self.resolution = resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]

        def ch(res: int) -> int:
            return channels_at(res, channels_base, channels_max)

        self.fromrgb = Conv2dLayer(img_channels, ch(resolution), 1, activation="lrelu")
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch(res), ch(res), ch(res // 2), resolution=res) for res in self.block_resolutions
        )
        self.epilogue = DiscriminatorEpilogue(ch(4), mbstd_group_size, mbstd_num_channels)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        assert_shape(img, [None, self.img_channels, self.resolution, self.resolution])
        x = self.fromrgb(img)
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x)
