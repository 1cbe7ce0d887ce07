"""The VGG-16 attribute classifier: five conv blocks, two hidden FC layers, one head per attribute.

The topology is VGG-16's (Simonyan & Zisserman 2015, configuration D): 13 3x3 convolutions in five
blocks of (2, 2, 3, 3, 3) layers with ``width x (1, 2, 4, 8, 8)`` channels, each followed by
optional batch-norm and ReLU, a 2x2 max-pool after every block. Instead of flattening a fixed
7x7 map, the last map is **globally average-pooled**, so one network works at any resolution from
32 to 256. Two hidden FC layers (``fc_width``, ReLU, dropout) give the penultimate embedding, the
study's data-specific perceptual space; one linear head per attribute gives the class logits
(every head is categorical, see :mod:`brainlatent.attributes`).

**Class priors.** The trainer fits the heads with class-balanced (inverse-frequency) weights, so
the heads' own logits are those of a classifier for a uniform class prior. Each head keeps the
log class frequencies of the training split as a buffer (``log_prior_<name>``, set by
:meth:`VGG16Classifier.set_class_priors`), and :meth:`VGG16Classifier.forward` adds them: its
logits are the posterior under the data's own class frequencies (prior-shift correction, Saerens
et al. 2002; "logit adjustment", Menon et al. 2021), the right labels for images drawn from the
data distribution, such as a generator's. ``forward(x, adjust_prior=False)`` gives the balanced
logits the training loss uses. With no priors set (all zero) both are the same.

ImageNet VGG-16 weights can be loaded from a user-supplied state-dict file (torchvision layout,
``features.N.weight``; also the ``lpips`` package's ``net.sliceK.N.weight``); nothing is ever
downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from brainlatent.errors import BrainlatentError

#: convolutions per block in VGG-16 (configuration D)
BLOCK_DEPTHS: tuple[int, ...] = (2, 2, 3, 3, 3)
#: channel multiplier of each block relative to ``width``
BLOCK_MULTIPLIERS: tuple[int, ...] = (1, 2, 4, 8, 8)


class ConvLayer(nn.Module):
    """3x3 convolution (padding 1), optional batch-norm, ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        batch_norm: insert ``BatchNorm2d`` between convolution and ReLU (the conv then has no bias).

    Example:
        >>> ConvLayer(1, 8, True)(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 8, 32, 32])
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvBlock(nn.Module):
    """``depth`` :class:`ConvLayer` s at one resolution; returns the last ReLU output (before pooling).

    Args:
        in_channels: input channels.
        out_channels: channels of every layer of the block.
        depth: number of conv layers.
        batch_norm: batch-norm in every layer.

    Example:
        >>> ConvBlock(8, 16, 3, False)(torch.zeros(2, 8, 16, 16)).shape
        torch.Size([2, 16, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, batch_norm: bool) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * depth
        self.layers = nn.Sequential(*[ConvLayer(chans[i], chans[i + 1], batch_norm) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VGG16Trunk(nn.Module):
    """The 13-layer convolutional part of VGG-16.

    ``forward`` returns the five block outputs (ReLU at the end of each block, before its max-pool):
    VGG-16's ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3``, the layers LPIPS compares.

    Args:
        in_channels: image channels (1 for MRI slices, 3 for the ImageNet/LPIPS network).
        width: channels of the first block; block ``b`` has ``width * (1, 2, 4, 8, 8)[b]``.
        batch_norm: batch-norm after every convolution.

    Example:
        >>> [f.shape[1:] for f in VGG16Trunk(1, 4)(torch.zeros(1, 1, 32, 32))][-1]
        torch.Size([32, 2, 2])
    """

    def __init__(self, in_channels: int = 1, width: int = 64, batch_norm: bool = False) -> None:
        super().__init__()
        self.channels = [width * m for m in BLOCK_MULTIPLIERS]
        ins = [in_channels] + self.channels[:-1]
        self.blocks = nn.ModuleList(
            [ConvBlock(ins[b], self.channels[b], BLOCK_DEPTHS[b], batch_norm) for b in range(len(BLOCK_DEPTHS))]
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def conv_layers(self) -> list[ConvLayer]:
        """The 13 conv layers in order (for weight import)."""
        return [layer for block in self.blocks for layer in block.layers]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for b, block in enumerate(self.blocks):
            if b:
                x = self.pool(x)
            x = block(x)
            feats.append(x)
        return feats


class VGG16Classifier(nn.Module):
    """VGG-16 with global average pooling, two hidden FC layers and one categorical head per attribute.

    Input: ``N x in_channels x R x R`` images in [-1, 1], R in [32, 256] (R >= 32 keeps a spatial
    map after the five max-pools). Output of :meth:`forward`: ``{attribute: N x K logits}``.

    Example:
        >>> net = VGG16Classifier({"age": 5, "sex": 2}, width=4, fc_width=16)
        >>> {k: v.shape for k, v in net(torch.zeros(3, 1, 64, 64)).items()}
        {'age': torch.Size([3, 5]), 'sex': torch.Size([3, 2])}
        >>> net.embed(torch.zeros(3, 1, 64, 64)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        heads: Mapping[str, int],      # Attribute name -> number of classes; one linear head each (config order).
        in_channels: int = 1,          # Image channels (1 for MRI slices).
        width: int = 64,               # Channels of the first conv block; VGG-16 uses 64.
        fc_width: int = 4096,          # Width of the two hidden FC layers = embedding size; VGG-16 uses 4096.
        batch_norm: bool = False,      # Batch-norm after every convolution (VGG-16-BN).
        dropout: float = 0.5,          # Dropout probability after each hidden FC layer (training only).
    ) -> None:
        super().__init__()
        for name, k in dict(heads).items():
            if int(k) < 2:
                raise BrainlatentError(f"classifier head '{name}': needs at least 2 classes, got {k}")
        self.config = dict(
            heads={str(k): int(v) for k, v in dict(heads).items()},
            in_channels=int(in_channels),
            width=int(width),
            fc_width=int(fc_width),
            batch_norm=bool(batch_norm),
            dropout=float(dropout),
        )
        self.trunk = VGG16Trunk(in_channels, width, batch_norm)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        c = self.trunk.channels[-1]
        self.fc = nn.Sequential(
            nn.Linear(c, fc_width),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=False),
            nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(fc_width, k) for name, k in self.config["heads"].items()})
        for name, k in self.config["heads"].items():
            self.register_buffer(f"log_prior_{name}", torch.zeros(k))
        self.reset_parameters()

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.keys())

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation: Kaiming (fan-out) convs, N(0, 0.01) linears, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"] or min(x.shape[-2:]) < 32:
            raise BrainlatentError(
                f"classifier input has shape {tuple(x.shape)}; expected N x {self.config['in_channels']} x R x R with R >= 32"
            )

    def block_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five block outputs (ReLU, before pooling): ``N x width*m x R/2^b x R/2^b``."""
        self._check_input(x)
        return self.trunk(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding, ``N x fc_width`` (after the second hidden FC layer's ReLU/dropout)."""
        feats = self.block_features(x)
        pooled = self.gap(self.pool(feats[-1])).flatten(1)
        return self.fc(pooled)

    def set_class_priors(self, counts: Mapping[str, list[int]]) -> None:
        """Store each head's log class prior from its training class counts (add-one smoothed).

        ``log((n_k + 1) / (N + K))``: a class absent from training keeps a small prior, and a head
        without any labels gets the uniform prior (no adjustment).

        Example:
            >>> net = VGG16Classifier({"sex": 2}, width=4, fc_width=8)
            >>> net.set_class_priors({"sex": [5, 1]})
            >>> net.class_prior("sex").tolist()
            [0.75, 0.25]
        """
        for name, k in self.config["heads"].items():
            c = torch.as_tensor(list(counts.get(name, [0] * k)), dtype=torch.float64)
            if c.numel() != k:
                raise BrainlatentError(f"classifier head '{name}': {c.numel()} class counts for {k} classes")
            buf = self.log_class_prior(name)
            buf.copy_(torch.log((c + 1.0) / (c.sum() + k)).to(buf))

    def log_class_prior(self, name: str) -> torch.Tensor:
        """Head ``name``'s log class prior, the buffer ``log_prior_<name>`` (``K``)."""
        return getattr(self, f"log_prior_{name}")

    def class_prior(self, name: str) -> torch.Tensor:
        """Head ``name``'s class prior (probabilities, ``K``)."""
        return self.log_class_prior(name).exp()

    def forward(self, x: torch.Tensor, adjust_prior: bool = True) -> dict[str, torch.Tensor]:
        """``{attribute: N x K logits}``: posterior logits under the training class frequencies
        (``adjust_prior=True``) or the class-balanced logits the heads are trained on."""
        z = self.embed(x)
        if not adjust_prior:
            return {name: head(z) for name, head in self.heads.items()}
        return {name: head(z) + self.log_class_prior(name) for name, head in self.heads.items()}

    def load_imagenet_weights(self, path: str | Path) -> None:
        """Copy ImageNet VGG-16 convolution weights from a state-dict file into the trunk.

        The RGB filters of the first layer are averaged to one input channel when the network takes
        grayscale input. With ``batch_norm`` and a VGG-16-BN file, the batch-norm parameters and
        running statistics are copied too; from a plain VGG-16 file the batch-norm layers keep their
        initialisation and the conv biases (absent in a batch-norm network) are dropped. FC layers
        and heads keep their initialisation.

        Args:
            path: a ``.pt``/``.pth`` file holding a state dict with torchvision's key layout
                (``features.N.weight``) or the ``lpips`` layout (``net.sliceK.N.weight``); a dict
                with a ``state_dict`` entry is accepted too. ``width`` must be 64.
        """
        load_vgg16_conv_weights(self.trunk, path)


# ------------------------------------------------------------------------------------------------
# Importing VGG-16 weights from a state-dict file


_FEATURE_KEY = re.compile(r"^(?:module\.)?(?:features|net\.slice\d+)\.(\d+)\.(weight|bias|running_mean|running_var)$")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A weights-only state dict from ``path`` (accepts ``{"state_dict": ...}`` wrappers)."""
    from brainlatent.io import load_torch

    path = Path(path)
    if not path.exists():
        raise BrainlatentError(f"{path}: VGG-16 weights file not found (weights are never downloaded; give a local .pt/.pth file)")
    obj = load_torch(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BrainlatentError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return dict(obj)


def vgg16_feature_layers(state: Mapping[str, torch.Tensor], source: str) -> list[dict[str, torch.Tensor]]:
    """The 13 conv layers of a VGG-16 state dict, in order: ``[{"weight", "bias", ["bn": {...}]}, ...]``.

    Keys are ``features.N.*`` (torchvision ``vgg16``/``vgg16_bn``) or ``net.sliceK.N.*`` (``lpips``);
    a batch-norm entry (one with ``running_mean``) is attached to the conv before it.
    """
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _FEATURE_KEY.match(key)
        if m:
            by_index.setdefault(int(m.group(1)), {})[m.group(2)] = value
    layers: list[dict] = []
    for idx in sorted(by_index):
        entry = by_index[idx]
        if "weight" in entry and entry["weight"].ndim == 4:
            layers.append({"weight": entry["weight"], "bias": entry.get("bias")})
        elif "running_mean" in entry and layers:
            layers[-1]["bn"] = entry
    if len(layers) != 13:
        raise BrainlatentError(
            f"{source}: found {len(layers)} VGG convolution weights; expected the 13 of VGG-16 "
            "(keys 'features.N.weight' as in torchvision, or 'net.sliceK.N.weight' as in lpips)"
        )
    return layers


def load_vgg16_conv_weights(trunk: VGG16Trunk, path: str | Path, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Copy the 13 VGG-16 conv layers of a state-dict file into ``trunk`` (shapes checked).

    Args:
        trunk: the destination; its first layer may have 1 input channel (RGB filters averaged) or 3.
        path: the file (named in error messages).
        state: the already-read state dict (else it is read from ``path``).
    """
    source = str(path)
    state = read_state_dict(path) if state is None else state
    layers = vgg16_feature_layers(state, source)
    dest = trunk.conv_layers()
    problems = []
    new: list[tuple[ConvLayer, dict]] = []
    for i, (layer, src) in enumerate(zip(dest, layers)):
        w = src["weight"].float()
        if i == 0 and layer.conv.weight.shape[1] == 1 and w.shape[1] == 3:
            w = w.mean(dim=1, keepdim=True)
        if w.shape != layer.conv.weight.shape:
            problems.append(f"conv {i}: file has {tuple(src['weight'].shape)}, network expects {tuple(layer.conv.weight.shape)}")
        new.append((layer, {**src, "weight": w}))
    if problems:
        raise BrainlatentError(f"{source}: VGG-16 weights do not fit this network (is classifier.width 64?)", problems)
    with torch.no_grad():
        for layer, src in new:
            layer.conv.weight.copy_(src["weight"])
            bn = src.get("bn")
            if isinstance(layer.norm, nn.BatchNorm2d) and bn is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer.norm, name).copy_(bn[name].float())
            if layer.conv.bias is not None and src["bias"] is not None:
                layer.conv.bias.copy_(src["bias"].float())


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> VGG16Classifier:
    """Rebuild a classifier from ``model.pt``/``last.pt`` (weights-only load); returned in eval mode."""
    from brainlatent.io import load_torch

    payload = load_torch(path)
    if not isinstance(payload, dict) or "state_dict" not in payload or "model_config" not in payload:
        raise BrainlatentError(f"{path}: not a brainlatent classifier file (expected keys 'state_dict' and 'model_config')")
    try:
        model = VGG16Classifier(**payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise BrainlatentError(f"{path}: classifier weights do not match its model_config ({exc})".splitlines()[0]) from None
    return model.to(device).eval()
