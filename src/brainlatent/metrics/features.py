"""The study's perceptual feature space: embeddings, class probabilities and LPIPS-style distances.

Two distances share one API, ``distance(a, b) -> N`` for image batches in [-1, 1] (``N x 1 x R x R``):

* :class:`PerceptualFeatures` uses the study's own attribute classifier (a data-specific VGG-16).
  The distance is LPIPS's formula **without learned weights**: at each of the five block outputs
  (``relu1_2 ... relu5_3``), each spatial position's channel vector is divided by its L2 norm
  (+1e-10), the squared difference of the two images is summed over channels and averaged over
  space, and the five layer values are summed. Every channel counts equally; LPIPS instead weights
  channels with linear layers learned from human judgements of natural images, which do not exist
  for brain MRI.
* :class:`LPIPSVGG16Distance` is LPIPS-VGG16 (Zhang et al. 2018) from a weights file the user
  supplies (never downloaded); grayscale images are repeated to three channels.

The classifier's penultimate embedding (:meth:`PerceptualFeatures.embed`) is the reference study's
perceptual space (path profile) and the feature space of FID/KID/precision-recall.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.models.vgg import VGG16Classifier, VGG16Trunk, load_vgg16_conv_weights, read_state_dict

ArrayLike = torch.Tensor | np.ndarray

#: added to the channel-vector norm before dividing (as in LPIPS's ``normalize_tensor``)
NORM_EPS = 1e-10


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unit_normalise(feat: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (+ ``eps``); ``N x C x H x W``."""
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + eps)


def layered_distance(
    feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor], channel_weights: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """LPIPS's formula over matching feature maps: ``sum_l mean_hw sum_c w_lc (â_lchw - b̂_lchw)^2``.

    Args:
        feats_a: per layer ``N x C_l x H_l x W_l`` features of the first images.
        feats_b: the same for the second images.
        channel_weights: per layer a ``C_l`` weight vector (LPIPS's linear layers); ``None`` = all 1.

    Returns:
        ``N`` distances (0 for identical inputs).

    Example:
        >>> f = [torch.rand(2, 3, 4, 4)]
        >>> layered_distance(f, f).tolist()
        [0.0, 0.0]
    """
    total = None
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b, strict=True)):
        diff = (unit_normalise(fa) - unit_normalise(fb)).square()
        if channel_weights is not None:
            diff = diff * channel_weights[i].to(diff).view(1, -1, 1, 1)
        d = diff.sum(dim=1).mean(dim=(1, 2))
        total = d if total is None else total + d
    return total


def _check_images(images: ArrayLike, what: str) -> None:
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1] != 1 or shape[2] != shape[3]:
        raise BrainlatentError(f"{what}: images have shape {shape}; expected N x 1 x R x R in [-1, 1]")


def iter_batches(images: ArrayLike, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Float32 batches of a tensor or a (memory-mapped) array, moved to ``device``."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        yield chunk.to(device=device, dtype=torch.float32)


class PerceptualFeatures:
    """Embeddings, class probabilities and LPIPS-style distances from the study's attribute classifier.

    The classifier is put in eval mode (dropout off, batch-norm running statistics) and no
    gradients are computed. Inputs are ``N x 1 x R x R`` tensors or arrays (a memmap is read batch
    by batch) in [-1, 1] on any device; results come back as CPU float32 tensors.

    Args:
        classifier: a trained (or random-init) :class:`VGG16Classifier`.
        device: where to run it; default ``cuda`` when available, else ``cpu``.

    Example:
        >>> pf = PerceptualFeatures(VGG16Classifier({"sex": 2}, width=4, fc_width=8), "cpu")
        >>> x = torch.rand(3, 1, 32, 32) * 2 - 1
        >>> pf.embed(x).shape, pf.distance(x, x).tolist(), pf.predict_proba(x)["sex"].shape
        (torch.Size([3, 8]), [0.0, 0.0, 0.0], torch.Size([3, 2]))
    """

    def __init__(self, classifier: VGG16Classifier, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.classifier = classifier.to(self.device).eval()

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device | None = None) -> PerceptualFeatures:
        """Load a classifier written by ``train-classifier`` (``model.pt``)."""
        from brainlatent.train.classifier import load_classifier

        dev = torch.device(device) if device is not None else default_device()
        return cls(load_classifier(path, device=dev), dev)

    @property
    def dim(self) -> int:
        """Embedding size (``fc_width``)."""
        return self.classifier.config["fc_width"]

    @torch.no_grad()
    def embed(self, images: ArrayLike, batch_size: int = 64) -> torch.Tensor:
        """Penultimate embeddings, ``N x fc_width``."""
        _check_images(images, "PerceptualFeatures.embed")
        out = [self.classifier.embed(x).float().cpu() for x in iter_batches(images, batch_size, self.device)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def predict_proba(self, images: ArrayLike, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Softmax class probabilities per head: ``{attribute: N x K}``."""
        _check_images(images, "PerceptualFeatures.predict_proba")
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.classifier.head_names}
        for x in iter_batches(images, batch_size, self.device):
            for name, logits in self.classifier(x).items():
                parts[name].append(torch.softmax(logits.float(), dim=1).cpu())
        return {name: torch.cat(p) if p else torch.zeros(0, self.classifier.config["heads"][name]) for name, p in parts.items()}

    @torch.no_grad()
    def distance(self, a: ArrayLike, b: ArrayLike, batch_size: int = 64) -> torch.Tensor:
        """LPIPS-style distance without learned weights between ``a[i]`` and ``b[i]``; ``N``."""
        _check_images(a, "PerceptualFeatures.distance (a)")
        _check_images(b, "PerceptualFeatures.distance (b)")
        if tuple(a.shape) != tuple(b.shape):
            raise BrainlatentError(f"PerceptualFeatures.distance: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        out = []
        for xa, xb in zip(iter_batches(a, batch_size, self.device), iter_batches(b, batch_size, self.device)):
            out.append(layered_distance(self.classifier.block_features(xa), self.classifier.block_features(xb)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


_LIN_KEY = re.compile(r"^(?:module\.)?lin(\d)\.model\.\d+\.weight$")
#: LPIPS's input scaling (``ScalingLayer``): x -> (x - shift) / scale, per RGB channel
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPSVGG16Distance:
    """LPIPS-VGG16 (Zhang et al. 2018, v0.1) from a local weights file; never downloads anything.

    The file is a state dict in the ``lpips`` package's layout: the VGG trunk as
    ``net.slice1.0.weight ... net.slice5.28.bias`` and the five linear layers as
    ``lin0.model.1.weight ... lin4.model.1.weight`` (``1 x C x 1 x 1``), e.g. written with
    ``torch.save(lpips.LPIPS(net="vgg").state_dict(), "lpips_vgg16.pth")``. The ``lpips`` package's
    own ``weights/v0.1/vgg.pth`` holds only the linear layers: pass the torchvision ImageNet VGG-16
    state dict (``features.N.weight``) as ``trunk_path`` in that case.

    Images in [-1, 1], ``N x 1 x R x R``, are repeated to three channels and scaled as LPIPS does
    (``ScalingLayer``); no resizing.

    Args:
        weights_path: the LPIPS state-dict file (``.pt``/``.pth``).
        device: default ``cuda`` when available, else ``cpu``.
        trunk_path: optional separate VGG-16 trunk weights (torchvision layout).
    """

    def __init__(self, weights_path: str | Path, device: str | torch.device | None = None, trunk_path: str | Path | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        weights_path = Path(weights_path)
        if not weights_path.exists():
            raise BrainlatentError(
                f"{weights_path}: LPIPS-VGG16 weights file not found (classifier.lpips_weights); "
                "it is never downloaded, give a local state dict in the lpips package's layout"
            )
        state = read_state_dict(weights_path)
        self.trunk = VGG16Trunk(in_channels=3, width=64, batch_norm=False)
        has_trunk = any(k.split(".")[0] in ("net", "module") and ".slice" in k for k in state)
        if trunk_path is not None:
            load_vgg16_conv_weights(self.trunk, trunk_path)
        elif has_trunk:
            load_vgg16_conv_weights(self.trunk, weights_path, state)
        else:
            raise BrainlatentError(
                f"{weights_path}: holds no VGG trunk ('net.sliceK.N.weight' keys); save the whole "
                "lpips.LPIPS(net='vgg') state dict, or also give the torchvision VGG-16 weights as trunk_path"
            )
        self.channel_weights = self._read_lin(state, weights_path)
        shift = state.get("scaling_layer.shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        scale = state.get("scaling_layer.scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.shift = shift.float().view(1, 3, 1, 1).to(self.device)
        self.scale = scale.float().view(1, 3, 1, 1).to(self.device)
        self.trunk = self.trunk.to(self.device).eval().requires_grad_(False)

    def _read_lin(self, state: dict, path: Path) -> list[torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        for key, value in state.items():
            m = _LIN_KEY.match(key)
            if m:
                found[int(m.group(1))] = value
        problems = []
        weights = []
        for i, c in enumerate(self.trunk.channels):
            w = found.get(i)
            if w is None:
                problems.append(f"lin{i}.model.1.weight: missing (expected shape (1, {c}, 1, 1))")
            elif w.numel() != c:
                problems.append(f"lin{i}.model.1.weight: shape {tuple(w.shape)}, expected (1, {c}, 1, 1)")
            else:
                weights.append(w.float().reshape(c).to(self.device))
        if problems:
            raise BrainlatentError(f"{path}: not an LPIPS-VGG16 state dict", problems)
        return weights

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.expand(-1, 3, -1, -1)
        return self.trunk((x - self.shift) / self.scale)

    @torch.no_grad()
    def distance(self, a: ArrayLike, b: ArrayLike, batch_size: int = 64) -> torch.Tensor:
        """LPIPS distance between ``a[i]`` and ``b[i]``; ``N`` (CPU float32)."""
        _check_images(a, "LPIPSVGG16Distance.distance (a)")
        _check_images(b, "LPIPSVGG16Distance.distance (b)")
        if tuple(a.shape) != tuple(b.shape):
            raise BrainlatentError(f"LPIPSVGG16Distance.distance: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        out = []
        for xa, xb in zip(iter_batches(a, batch_size, self.device), iter_batches(b, batch_size, self.device)):
            out.append(layered_distance(self._features(xa), self._features(xb), self.channel_weights).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
