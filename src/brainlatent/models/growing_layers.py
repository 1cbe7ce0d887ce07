"""Layers that grow: new channels faded in by β, the minibatch-std layer with the τ blend.

Seed 003 (§3.5): new weights are He-initialised when they are created and multiplied at run time
by β, which ramps 0 → 1 over a fade. Every layer here knows its ``old`` input/output sizes (the
sizes before the growth step); while they differ from the current ones, every weight that touches
a new input or a new output (and the bias of a new output) is multiplied by ``beta``. At β = 0 the
new outputs are exactly zero and the new inputs contribute exactly nothing, so the grown network
computes exactly the previous function. No equalised learning rate: He init at creation only.

Parameters are laid out so that the old parameters are the leading slice of the grown ones
(:func:`copy_leading`), which is how growth copies weights and optimiser state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
#: He gain of a leaky ReLU with slope 0.2
LRELU_GAIN = math.sqrt(2.0 / (1.0 + LRELU_SLOPE ** 2))


def he_normal(shape: tuple[int, ...], fan_in: int, gain: float, generator: torch.Generator | None) -> torch.Tensor:
    """``N(0, (gain / √fan_in)²)`` weights (kaiming-normal, fan-in mode)."""
    return torch.randn(shape, generator=generator) * (gain / math.sqrt(max(fan_in, 1)))


def copy_leading(new: torch.Tensor, old: torch.Tensor) -> None:
    """``new[:old.shape[0], :old.shape[1], ...] = old`` (in place, no autograd)."""
    if new.ndim != old.ndim or any(o > n for o, n in zip(old.shape, new.shape)):
        raise ValueError(f"cannot place {tuple(old.shape)} into the leading slice of {tuple(new.shape)}")
    with torch.no_grad():
        new[tuple(slice(0, s) for s in old.shape)] = old


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "lrelu":
        return F.leaky_relu(x, LRELU_SLOPE)
    if activation == "tanh":
        return torch.tanh(x)
    return x


class Fadeable(nn.Module):
    """Base of layers with a run-time ``beta`` for weights that touch new channels."""

    def __init__(self, in_features: int, out_features: int, old_in: int | None, old_out: int | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.old_in = in_features if old_in is None else old_in
        self.old_out = out_features if old_out is None else old_out
        if not (0 < self.old_in <= in_features and 0 < self.old_out <= out_features):
            raise ValueError(f"old sizes ({self.old_in}, {self.old_out}) must be within ({in_features}, {out_features})")
        self.beta = 1.0

    @property
    def fading(self) -> bool:
        return self.old_in < self.in_features or self.old_out < self.out_features

    def _new_part(self, weight: torch.Tensor, rows_old: int, cols_old: int) -> torch.Tensor:
        """``weight`` with the old block ``[:rows_old, :cols_old]`` zeroed and everything else × β."""
        mask = torch.full(weight.shape[:2], float(self.beta), dtype=weight.dtype, device=weight.device)
        mask[:rows_old, :cols_old] = 0.0
        return weight * mask.view(*mask.shape, *([1] * (weight.ndim - 2)))

    def _new_bias(self, bias: torch.Tensor, rows_old: int) -> torch.Tensor:
        scale = torch.full_like(bias, float(self.beta))
        scale[:rows_old] = 0.0
        return bias * scale

    def _faded(self, op, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               rows_old: int, cols_old: int) -> torch.Tensor:
        """``op(x, weight, bias)`` (pre-activation, outputs on dim 1) with the growth fade applied.

        Outside a fade: ``op`` itself. During a fade the old outputs are computed by ``op`` on the
        old inputs and the old weights alone (the very computation of the network before the growth,
        so at β = 0 they are bitwise unchanged), and the β-scaled rest is added to them.
        """
        if not self.fading:
            return op(x, weight, bias)
        old = op(x[:, :cols_old], weight[:rows_old, :cols_old], None if bias is None else bias[:rows_old])
        rest = op(x, self._new_part(weight, rows_old, cols_old), None if bias is None else self._new_bias(bias, rows_old))
        k = old.shape[1]
        return torch.cat([old + rest[:, :k], rest[:, k:]], dim=1)

    def extra_repr(self) -> str:
        return f"{self.old_in}->{self.in_features}, {self.old_out}->{self.out_features}"


class GrowConv2d(Fadeable):
    """Conv ``k×k`` (same padding, or ``padding=0`` for the critic's 4×4 valid conv) with activation.

    Args:
        in_channels, out_channels: current sizes.
        kernel: kernel size.
        activation: ``"lrelu"``, ``"tanh"`` or ``"linear"``.
        old_in, old_out: sizes before the growth step being faded in (None: no fade).
        padding: default ``kernel // 2``.
        generator: RNG of the He initialisation.

    Example:
        >>> conv = GrowConv2d(4, 6, 3, old_in=2, old_out=3); conv.beta = 0.0
        >>> x = torch.randn(1, 4, 5, 5); x2 = x.clone(); x2[:, 2:] = 7
        >>> bool((conv(x)[:, 3:] == 0).all()) and torch.equal(conv(x), conv(x2))
        True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, activation: str = "lrelu",
                 old_in: int | None = None, old_out: int | None = None, padding: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(in_channels, out_channels, old_in, old_out)
        gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(he_normal((out_channels, in_channels, kernel, kernel), in_channels * kernel * kernel, gain, generator))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.activation = activation
        self.padding = kernel // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = lambda x_, w_, b_: F.conv2d(x_, w_, b_, padding=self.padding)
        return _activate(self._faded(op, x, self.weight, self.bias, self.old_out, self.old_in), self.activation)


class GrowLinear(Fadeable):
    """Fully connected layer ``in → out`` with activation (the critic's d1)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 old_in: int | None = None, old_out: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__(in_features, out_features, old_in, old_out)
        gain = LRELU_GAIN if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(he_normal((out_features, in_features), in_features, gain, generator))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(self._faded(F.linear, x, self.weight, self.bias, self.old_out, self.old_in), self.activation)


class LatentInput(Fadeable):
    """g1: the latent (``N × m``) as a 1×1 map through a 4×4 "full" conv = FC without bias, reshape, bias.

    Weight rows are channel-major (row ``c·16 + p`` is channel ``c``, pixel ``p``), so the old
    channels are the leading rows. New latent columns and new channels are faded by β.

    Example:
        >>> LatentInput(8, 16)(torch.randn(2, 8)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, latent: int, channels: int, old_latent: int | None = None, old_channels: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(latent, channels, old_latent, old_channels)
        self.weight = nn.Parameter(he_normal((channels * 16, latent), latent, LRELU_GAIN, generator))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        def op(z_, w_, b_):
            return F.linear(z_, w_).view(z_.shape[0], -1, 4, 4) + b_.view(1, -1, 1, 1)

        if not self.fading:
            return F.leaky_relu(op(z, self.weight, self.bias), LRELU_SLOPE)
        # rows are channel-major: the old channels are the first 16·old_out rows
        old = op(z[:, :self.old_in], self.weight[:self.old_out * 16, :self.old_in], self.bias[:self.old_out])
        rest = op(z, self._new_part(self.weight, self.old_out * 16, self.old_in), self._new_bias(self.bias, self.old_out))
        h = torch.cat([old + rest[:, :self.old_out], rest[:, self.old_out:]], dim=1)
        return F.leaky_relu(h, LRELU_SLOPE)


class StdConv(Fadeable):
    """d3: conv 3×3 over the features and the minibatch-std map.

    The std map has its own weight (``weight_std``, ``out × 1 × 3 × 3``), so inserting feature
    channels never moves it (the seed moves the std column to the new last input index; this is
    the same function). Example:
        >>> StdConv(8, 8)(torch.randn(2, 8, 4, 4), torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, old_in: int | None = None, old_out: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(in_channels, out_channels, old_in, old_out)
        fan_in = (in_channels + 1) * 9
        self.weight = nn.Parameter(he_normal((out_channels, in_channels, 3, 3), fan_in, LRELU_GAIN, generator))
        self.weight_std = nn.Parameter(he_normal((out_channels, 1, 3, 3), fan_in, LRELU_GAIN, generator))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, std_map: torch.Tensor) -> torch.Tensor:
        def op(x_, w_, b_):
            w_x, w_s = w_[:, :-1], w_[:, -1:]
            return F.conv2d(x_[:, :-1], w_x, b_, padding=1) + F.conv2d(x_[:, -1:], w_s, padding=1)

        # the std map is appended as the last input and its weight column as the last column: the
        # old block is then [:old_out, :old_in] plus the std column, which is old too
        xs = torch.cat([x, std_map], dim=1)
        w = torch.cat([self.weight, self.weight_std], dim=1)
        if not self.fading:
            return F.leaky_relu(op(xs, w, self.bias), LRELU_SLOPE)
        keep = list(range(self.old_in)) + [self.in_features]
        old = op(xs[:, keep], w[:self.old_out][:, keep], self.bias[:self.old_out])
        mask = torch.full(w.shape[:2], float(self.beta), dtype=w.dtype, device=w.device)
        mask[:self.old_out, keep] = 0.0
        rest = op(xs, w * mask.view(*mask.shape, 1, 1), self._new_bias(self.bias, self.old_out))
        return F.leaky_relu(torch.cat([old + rest[:, :self.old_out], rest[:, self.old_out:]], dim=1), LRELU_SLOPE)


class MinibatchStdBlend(nn.Module):
    """Minibatch standard deviation over the **whole** minibatch, with the seed's old/new blend (eq. 15).

    Per channel and pixel the std over the batch; averaged into one number as
    ``(1 − τ)·mean(old channels) + τ·mean(new channels)`` while ``old_channels`` < C, else the plain
    mean; returned as one constant ``N × 1 × H × W`` map. τ ramps 0 → 0.5 during a fade
    (0.5 equals the plain mean when the channels double).

    Example:
        >>> MinibatchStdBlend(4)(torch.randn(8, 4, 4, 4)).shape
        torch.Size([8, 1, 4, 4])
    """

    def __init__(self, old_channels: int | None = None) -> None:
        super().__init__()
        self.old_channels = old_channels
        self.tau = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        std = (x.float().var(dim=0, unbiased=False) + 1e-8).sqrt()  # C x H x W
        old = c if self.old_channels is None else self.old_channels
        if old < c:
            value = (1.0 - self.tau) * std[:old].mean() + self.tau * std[old:].mean()
        else:
            value = std.mean()
        return value.to(x.dtype).expand(n, 1, h, w)
