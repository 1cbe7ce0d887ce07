"""2D StyleGAN generator (mapping + synthesis with AdaIN and noise) and its mapping-free ablation.

Layout follows StyleGAN (Karras et al. 2019) as adapted by the reference study: a mapping network of
``mapping_layers`` fully connected layers turns z into w; the synthesis network starts from a
learned 4×4 constant and doubles the resolution block by block up to ``resolution``. Every block
has two layers; each layer is (2× bilinear upsample +) conv3×3 → noise → bias → leaky ReLU → AdaIN,
where AdaIN normalises each channel of each image and applies a scale and bias computed from w by a
learned affine "A" (scales start at 1). The 4×4 block applies the first layer's epilogue (noise,
bias, activation, AdaIN) straight to the constant, then one conv layer. A 1×1 "toRGB" convolution
writes the single image channel at the end. All weights use the equalised learning rate.

``arch="gan"`` is the study's ablation: the very same synthesis network, but no mapping network:
z feeds the affines directly (``w = z``). z is then NOT normalised, so ``‖z‖ ≈ sqrt(z_dim)`` reaches
the synthesis network as drawn (``Generator.normalizes_z`` is False); the StyleGAN mapping network
normalises z by its second moment first (``normalizes_z`` True), which makes its output invariant
to the norm of z.

Networks are stored weights-only (:func:`save_network` / :func:`load_generator`): the file holds
the constructor arguments and a ``state_dict``, never pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainlatent.errors import BrainlatentError
from brainlatent.models.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    activate,
    assert_shape,
    channels_at,
    check_resolution,
)

ARCHS = ("stylegan", "gan")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector so that its mean square is 1 (``‖x‖ = sqrt(d)``)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# --------------------------------------------------------------------------------------------
# Mapping


class MappingNetwork(nn.Module):
    """z → w: second-moment normalisation then ``num_layers`` equalised-LR FC layers (leaky ReLU).

    Tracks ``w_avg``, the running mean of w during training, used by the truncation trick.

    Args:
        z_dim: input latent size.
        w_dim: intermediate latent size.
        num_layers: number of FC layers (3 in the reference study, 8 in StyleGAN).
        lr_multiplier: learning-rate multiplier of the FC layers (0.01 as in NVlabs).
        w_avg_beta: decay of the running mean of w.

    Example:
        >>> MappingNetwork(32, 32)(torch.randn(4, 32)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        z_dim: int,                       # input latent (Z) dimensionality
        w_dim: int,                       # intermediate latent (W) dimensionality
        num_layers: int = 3,              # number of fully connected layers
        lr_multiplier: float = 0.01,      # learning-rate multiplier of the FC layers
        w_avg_beta: float = 0.995,        # decay of the running mean of w (truncation centre)
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(features[i], features[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        assert_shape(z, [None, self.z_dim])
        x = normalize_2nd_moment(z.float())
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.to(x.dtype).lerp(x, truncation_psi)
        return x


class IdentityMapping(nn.Module):
    """The mapping-free ablation: ``w = z`` (z is not normalised), no parameters.

    ``w_avg`` is fixed at zero, the mean of the N(0, I) prior, so truncation scales z toward the
    origin: ``w = psi * z``.

    Example:
        >>> z = torch.randn(4, 32)
        >>> torch.equal(IdentityMapping(32)(z), z)
        True
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = z_dim
        self.register_buffer("w_avg", torch.zeros(z_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        assert_shape(z, [None, self.z_dim])
        if truncation_psi != 1:
            return self.w_avg.to(z.dtype).lerp(z, truncation_psi)
        return z


# --------------------------------------------------------------------------------------------
# Synthesis


class NoiseInjection(nn.Module):
    """Add per-pixel noise (one map per image, shared by all channels) times a learned per-channel scale.

    Args:
        channels: number of feature maps; each gets its own noise strength (initialised to 0).
        resolution: spatial size of the feature maps (for shape checks and fresh noise).
    """

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        assert_shape(x, [None, self.channels, self.resolution, self.resolution])
        if noise is None:
            noise = torch.randn(n, 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
        else:
            if noise.ndim != 4 or noise.shape[1] != 1 or noise.shape[0] not in (1, n) or tuple(noise.shape[2:]) != (self.resolution,) * 2:
                raise AssertionError(f"noise of shape {tuple(noise.shape)} is not broadcastable to ({n}, 1, {self.resolution}, {self.resolution})")
            noise = noise.to(device=x.device, dtype=x.dtype)
        return x + noise * self.weight.to(x.dtype).view(1, -1, 1, 1)


class AdaIN(nn.Module):
    """Adaptive instance normalisation: per-image, per-channel normalisation then a style from w.

    The learned affine "A" maps w to a scale (bias initialised to 1) and a bias (initialised to 0)
    per channel.

    Args:
        channels: number of feature maps.
        w_dim: size of w.

    Example:
        >>> AdaIN(8, 32)(torch.randn(2, 8, 4, 4), torch.randn(2, 32)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, w_dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.affine = FullyConnectedLayer(w_dim, 2 * channels, bias_init=0.0)
        with torch.no_grad():
            self.affine.bias[:channels].fill_(1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        assert_shape(x, [None, self.channels, None, None])
        style = self.affine(w).float()
        scale, bias = style[:, : self.channels, None, None], style[:, self.channels:, None, None]
        xf = x.float()
        xf = xf - xf.mean(dim=(2, 3), keepdim=True)
        xf = xf * (xf.square().mean(dim=(2, 3), keepdim=True) + self.eps).rsqrt()
        return (xf * scale + bias).to(x.dtype)


class LayerEpilogue(nn.Module):
    """noise → bias → leaky ReLU → AdaIN(w): everything a synthesis layer does after its convolution."""

    def __init__(
        self,
        channels: int,                    # number of feature maps
        w_dim: int,                       # size of w
        resolution: int,                  # spatial size of the feature maps
    ) -> None:
        super().__init__()
        self.noise = NoiseInjection(channels, resolution)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.adain = AdaIN(channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.noise(x, noise)
        x = activate(x + self.bias.to(x.dtype).view(1, -1, 1, 1), "lrelu")
        return self.adain(x, w)


class SynthesisLayer(nn.Module):
    """(2× upsample +) conv3×3 followed by the :class:`LayerEpilogue`.

    Example:
        >>> SynthesisLayer(16, 8, 32, resolution=8, up=2)(torch.randn(2, 16, 4, 4), torch.randn(2, 32)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,                 # input feature maps
        out_channels: int,                # output feature maps
        w_dim: int,                       # size of w
        resolution: int,                  # output resolution
        up: int = 1,                      # 2: upsample the input by 2 first
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = Conv2dLayer(in_channels, out_channels, 3, bias=False, up=up)
        self.epilogue = LayerEpilogue(out_channels, w_dim, resolution)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.epilogue(self.conv(x), w, noise)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: two styled layers (two w's, two noise maps).

    The 4×4 block starts from a learned constant (``in_channels`` is then ignored); the others
    upsample their input by 2 in the first layer.
    """

    num_layers = 2

    def __init__(
        self,
        in_channels: int,                 # input feature maps (ignored at 4x4)
        out_channels: int,                # output feature maps
        w_dim: int,                       # size of w
        resolution: int,                  # output resolution of this block
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.layer0 = LayerEpilogue(out_channels, w_dim, resolution)
        else:
            self.layer0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2)
        self.layer1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)

    def forward(self, x: torch.Tensor | None, ws: torch.Tensor, noise: list[torch.Tensor | None]) -> torch.Tensor:
        assert_shape(ws, [None, self.num_layers, None])
        if self.resolution == 4:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
        x = self.layer0(x, ws[:, 0], noise[0])
        return self.layer1(x, ws[:, 1], noise[1])


class SynthesisNetwork(nn.Module):
    """w → image: learned 4×4 constant, blocks doubling the resolution, 1×1 toRGB.

    Args:
        w_dim: size of w.
        resolution: output resolution (a power of two ≥ 4); sets the number of blocks.
        channels_base: feature maps at resolution r are ``min(channels_base // r, channels_max)``.
        channels_max: cap on the number of feature maps.
        img_channels: image channels (1 for MRI slices).

    Example:
        >>> net = SynthesisNetwork(32, 16, channels_base=128, channels_max=16)
        >>> net(torch.randn(2, 32)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        w_dim: int,                       # intermediate latent (W) dimensionality
        resolution: int,                  # output resolution
        channels_base: int = 1024,        # overall multiplier for the number of channels
        channels_max: int = 64,           # maximum number of channels in any layer
        img_channels: int = 1,            # number of output image channels
    ) -> None:
        super().__init__()
        log2 = check_resolution(resolution)
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        blocks = []
        in_ch = 0
        for res in self.block_resolutions:
            out_ch = channels_at(res, channels_base, channels_max)
            blocks.append(SynthesisBlock(in_ch, out_ch, w_dim, res))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.torgb = Conv2dLayer(in_ch, img_channels, 1, bias=True)
        self.num_ws = SynthesisBlock.num_layers * len(blocks)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """One ``(1, 1, H, W)`` per noise layer, in the order :meth:`forward` takes them."""
        return [(1, 1, res, res) for res in self.block_resolutions for _ in range(SynthesisBlock.num_layers)]

    def forward(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Synthesise images.

        Args:
            ws: ``N × w_dim`` (one w for every layer) or ``N × num_ws × w_dim`` (style mixing).
            noise: None for fresh N(0, 1) noise per image, or one tensor per noise layer,
                broadcastable to ``(N, 1, H, W)`` (shapes from :meth:`noise_shapes`), used as given.

        Returns:
            ``N × img_channels × resolution × resolution`` images (about [-1, 1] once trained).
        """
        if ws.ndim == 2:
            assert_shape(ws, [None, self.w_dim])
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        assert_shape(ws, [None, self.num_ws, self.w_dim])
        if noise is None:
            noise = [None] * self.num_ws
        elif len(noise) != self.num_ws:
            raise AssertionError(f"expected {self.num_ws} noise tensors (see noise_shapes()), got {len(noise)}")
        x = None
        k = SynthesisBlock.num_layers
        for i, block in enumerate(self.blocks):
            x = block(x, ws[:, i * k:(i + 1) * k], noise[i * k:(i + 1) * k])
        img = self.torgb(x)
        assert_shape(img, [ws.shape[0], self.img_channels, self.resolution, self.resolution])
        return img


# --------------------------------------------------------------------------------------------
# Generator


class Generator(nn.Module):
    """StyleGAN generator (``arch="stylegan"``) or its mapping-free ablation (``arch="gan"``).

    Args:
        z_dim: latent size.
        w_dim: intermediate latent size; defaults to ``z_dim`` (must equal it for ``arch="gan"``).
        resolution: image resolution (power of two ≥ 4).
        arch: ``"stylegan"`` (mapping network) or ``"gan"`` (w = z, no mapping parameters).
        mapping_layers: FC layers of the mapping network (ignored for ``"gan"``).
        channels_base, channels_max: feature maps ``min(channels_base // r, channels_max)``.
        img_channels: image channels.
        mapping_lr_multiplier: learning-rate multiplier of the mapping network.
        w_avg_beta: decay of the running mean of w.

    Interface used by the metrics: ``z_dim``, ``w_dim``, ``resolution``, ``arch``,
    ``has_mapping``, ``normalizes_z``, ``num_ws``, ``w_avg``, ``mapping(z, truncation_psi)``,
    ``noise_shapes()``, ``synthesis(w, noise)``, ``forward(z, truncation_psi, noise)``.

    Example:
        >>> G = Generator(32, resolution=16, channels_base=128, channels_max=16)
        >>> G(torch.randn(2, 32)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(
        self,
        z_dim: int,                       # input latent (Z) dimensionality
        w_dim: int | None = None,         # intermediate latent (W) dimensionality, default z_dim
        resolution: int = 64,             # output resolution
        arch: str = "stylegan",           # 'stylegan' or 'gan' (no mapping network)
        mapping_layers: int = 3,          # FC layers in the mapping network
        channels_base: int = 1024,        # overall multiplier for the number of channels
        channels_max: int = 64,           # maximum number of channels in any layer
        img_channels: int = 1,            # number of output image channels
        mapping_lr_multiplier: float = 0.01,  # learning-rate multiplier of the mapping network
        w_avg_beta: float = 0.995,        # decay of the running mean of w
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        w_dim = z_dim if w_dim is None else w_dim
        if arch == "gan" and w_dim != z_dim:
            raise ValueError(f"arch 'gan' has no mapping network, so w_dim must equal z_dim ({z_dim}), got {w_dim}")
        self.config: dict[str, Any] = dict(
            z_dim=z_dim, w_dim=w_dim, resolution=resolution, arch=arch, mapping_layers=mapping_layers,
            channels_base=channels_base, channels_max=channels_max, img_channels=img_channels,
            mapping_lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
        )
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.resolution = resolution
        self.arch = arch
        self.img_channels = img_channels
        self.has_mapping = arch == "stylegan"
        self.normalizes_z = self.has_mapping
        self.c_dim = 0  # unconditional (see brainlatent.models.families for the protocol)
        self.synthesis = SynthesisNetwork(w_dim, resolution, channels_base, channels_max, img_channels)
        if self.has_mapping:
            self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_multiplier, w_avg_beta)
        else:
            self.mapping = IdentityMapping(z_dim)
        self.num_ws = self.synthesis.num_ws

    @property
    def w_avg(self) -> torch.Tensor:
        """Running mean of w (the truncation centre; zeros for ``arch="gan"``)."""
        return self.mapping.w_avg

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """One ``(1, 1, H, W)`` per noise layer."""
        return self.synthesis.noise_shapes()

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        noise: list[torch.Tensor] | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """``synthesis(mapping(z, truncation_psi), noise)``; ``N × z_dim`` → ``N × C × R × R``."""
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi, update_w_avg=update_w_avg), noise=noise)


# --------------------------------------------------------------------------------------------
# Weights-only storage


def network_dict(G: Generator, kimg: float, seed: int, fingerprint: str | None = None) -> dict[str, Any]:
    """What ``network.pt`` holds: constructor arguments and weights (weights-only loadable), and the
    digest of the training fingerprint that made it (:func:`brainlatent.train.checkpoint.fingerprint_digest`)."""
    return {
        "generator_config": dict(G.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in G.state_dict().items()},
        "w_avg": G.w_avg.detach().cpu().clone(),
        "arch": G.arch,
        "z_dim": G.z_dim,
        "kimg": float(kimg),
        "seed": int(seed),
        "fingerprint": fingerprint,
    }


def save_network(path: str | Path, G: Generator, kimg: float, seed: int, fingerprint: str | None = None) -> None:
    """Write ``network.pt`` atomically (see :func:`network_dict`)."""
    from brainlatent.io import save_torch

    save_torch(path, network_dict(G, kimg, seed, fingerprint))


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Rebuild a generator from ``network.pt`` (``torch.load(weights_only=True)``), in eval mode.

    Parameters do not require gradients (gradients with respect to inputs still work).

    Raises:
        BrainlatentError: the file is missing, corrupt or not a brainlatent network.
    """
    from brainlatent.io import load_torch

    data = load_torch(path, map_location="cpu")
    missing = [k for k in ("generator_config", "state_dict") if not isinstance(data, dict) or k not in data]
    if missing:
        raise BrainlatentError(f"{path}: not a brainlatent network file; missing keys {missing}")
    try:
        G = Generator(**data["generator_config"])
        G.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BrainlatentError(f"{path}: network weights do not match its generator_config ({exc})") from None
    return G.to(device).eval().requires_grad_(False)
