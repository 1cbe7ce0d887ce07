"""Equalised-learning-rate building blocks shared by the generator and the discriminator.

Equalised learning rate (Karras et al., Progressive GAN): weights are stored as N(0, 1 / lr_mul²)
and scaled at run time by ``lr_mul / sqrt(fan_in)``, so every layer learns at the same speed
under Adam whatever its fan-in. Leaky ReLU outputs are multiplied by ``sqrt(2)`` (He gain), as in
NVlabs StyleGAN2-ADA, so activations keep unit variance at initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: slope of every leaky ReLU in the networks
LRELU_SLOPE = 0.2
#: gain applied after each activation so that activations keep unit variance
ACTIVATION_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0)}


def assert_shape(tensor: torch.Tensor, ref_shape: list[int | None] | tuple[int | None, ...]) -> None:
    """Raise ``AssertionError`` unless ``tensor`` has ``ref_shape`` (``None`` matches any size).

    Example:
        >>> assert_shape(torch.zeros(2, 3), [None, 3])
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f"wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)} {tuple(ref_shape)}")
    for idx, (size, ref) in enumerate(zip(tensor.shape, ref_shape)):
        if ref is not None and size != ref:
            raise AssertionError(f"wrong size for dimension {idx}: got {size}, expected {ref} (shape {tuple(tensor.shape)})")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply ``'linear'`` or ``'lrelu'`` (slope 0.2, gain sqrt(2))."""
    if activation == "linear":
        return x
    if activation == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE) * ACTIVATION_GAIN["lrelu"]
    raise ValueError(f"unknown activation {activation!r}; expected 'linear' or 'lrelu'")


class FullyConnectedLayer(nn.Module):
    """Equalised-LR fully connected layer.

    Args:
        in_features: number of input features.
        out_features: number of output features.
        bias: whether to add a learned bias.
        activation: ``'linear'`` or ``'lrelu'``.
        lr_multiplier: learning-rate multiplier (0.01 in the StyleGAN mapping network).
        bias_init: initial value of the bias (1 for the style scales of AdaIN).

    Example:
        >>> FullyConnectedLayer(32, 64, activation="lrelu")(torch.randn(8, 32)).shape
        torch.Size([8, 64])
    """

    def __init__(
        self,
        in_features: int,                 # number of input features
        out_features: int,                # number of output features
        bias: bool = True,                # add a learned bias?
        activation: str = "linear",       # 'linear' or 'lrelu'
        lr_multiplier: float = 1.0,       # learning-rate multiplier of weight and bias
        bias_init: float = 0.0,           # initial value of the bias
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_features])
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        return activate(F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype)), self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-LR 2D convolution with optional 2× bilinear upsampling before it.

    Downsampling (discriminator) is done by the caller with average pooling so that this layer
    stays one concern: a same-size convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size (1 or 3); padding keeps the spatial size.
        bias: whether to add a learned bias (the synthesis layers add theirs after the noise).
        activation: ``'linear'`` or ``'lrelu'``.
        up: 1, or 2 to upsample the input bilinearly by 2 before the convolution.

    Example:
        >>> Conv2dLayer(16, 8, 3, up=2)(torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,                 # number of input channels
        out_channels: int,                # number of output channels
        kernel_size: int,                 # width and height of the kernel (odd)
        bias: bool = True,                # add a learned bias?
        activation: str = "linear",       # 'linear' or 'lrelu'
        up: int = 1,                      # 2: bilinear 2x upsampling before the convolution
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.in_channels, None, None])
        if self.up == 2:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return activate(F.conv2d(x, w, b, padding=self.padding), self.activation)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.weight.shape[-1]}, up={self.up}, activation={self.activation}")


def channels_at(resolution: int, channels_base: int, channels_max: int) -> int:
    """Feature maps at one resolution: ``min(channels_base // resolution, channels_max)``, at least 1.

    Example:
        >>> [channels_at(r, 1024, 64) for r in (4, 8, 16, 32, 64)]
        [64, 64, 64, 32, 16]
    """
    return max(1, min(channels_base // resolution, channels_max))


def check_resolution(resolution: int) -> int:
    """``log2(resolution)``; raises ``ValueError`` unless it is a power of two ≥ 4."""
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 4 or 2 ** log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return log2
