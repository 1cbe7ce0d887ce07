"""Project real 1-channel slices into a generator's latent spaces (Z, W, W+, and (z, y)), offline.

Optimisation-based inversion in the style of the NVlabs StyleGAN2-ADA projector (Adam, learning
rate ramped up over the first 5 % of the steps and cosine-ramped down over the last 25 %, Gaussian
latent noise decaying quadratically to zero at 75 % of the steps), adapted to this project:

* **1-channel, offline distance.** The loss per image is
  ``pixel_weight * pixel + feature_weight * feature``:

  - ``pixel``: the squared (``pixel_loss="l2"``, default) or absolute (``"l1"``) error averaged over
    the **union of the real slice's brain mask and the reconstruction's brain mask** (pixels above
    ``mask_threshold``, default -0.95; the reconstruction's mask is taken without gradient at every
    step). Background that both images leave at about -1 does not count, so a slice's brain is not
    outweighed by its empty field of view, and brain the reconstruction paints where the real slice
    has none is still penalised. Normalised by the mask's area (pixels), so it is a per-pixel error.
  - ``feature``: the study classifier's LPIPS-style distance without learned weights
    (:func:`brainlatent.metrics.features.layered_distance` over the five VGG block outputs, as
    :class:`~brainlatent.metrics.features.PerceptualFeatures` computes it); ``features=None`` leaves it
    out (pixel only). The classifier needs slices of at least 32 px.

* **Noise inputs are fixed, not optimised** (NVlabs optimises them with a regulariser): one seeded
  N(0, 1) draw per image and noise layer (``noise_mode="random"``) or zeros (``"zero"``), kept in the
  :class:`Inversion` so that :func:`render` re-synthesises an edited latent with the same noise: an
  edit then changes only the latent (or labels).

* **Spaces** (``space``):

  - ``"z"``: the generator's input; for a family with a mapping network Z is reached through it.
    For a conditional family ``"z"`` is the same as ``"zy"``.
  - ``"w"``: one w for every layer (``N x w_dim``); needs a mapping network, except for a family
    without one that is unconditional (``gan``, whose W is Z: the result is the same as ``"z"``).
    For ``cstylegan`` the labels ``c`` are absorbed into w by the initialisation and held.
  - ``"w+"``: one w per synthesis layer (``N x num_ws x w_dim``), initialised with ``num_ws`` copies
    of the W initialisation; families with ``num_ws`` (the StyleGAN synthesis network).
  - ``"zy"`` (conditional families ``cwgan``, ``cstylegan``): z is optimised with the labels y
    given (``c``, e.g. ``G.labels.encode(manifest_rows)``), or with y optimised too
    (``optimise_labels``). Optimised labels stay valid: a categorical attribute's one-hot units are
    the softmax of free logits (on the simplex), a numeric attribute's unit and the slice position
    are the sigmoid of a free logit (in the training range [0, 1]); the mask unit of every optimised
    attribute is set to 1 (known). ``optimise_labels=True`` optimises every attribute and the slice
    position; a list of names (``["edss", "slice"]``) optimises only those and holds the rest.
    Categorical units come back soft (probabilities): set an exact value with
    ``G.labels.set_value`` before rendering an edit.

* **Initialisation** (``init``): ``"bank"`` (default) draws ``bank_size`` seeded samples from the
  family's prior (:func:`brainlatent.latents.sample_z`; labels from ``G.sample_labels`` when they are
  optimised and not given) and starts each image from the sample whose image has the lowest pixel
  term (with given labels, the bank is rendered under each image's own labels: ``N x bank_size``
  syntheses); ``"mean"`` starts from ``G.w_avg`` in W/W+ and from the mean of the bank's z in Z; a
  tensor starts from that latent (``N x z_dim`` | ``N x w_dim`` | ``N x num_ws x w_dim``; an
  ``N x w_dim`` tensor is copied to every layer for W+), e.g. an encoder's prediction.

* **Deterministic** for a seed on CPU (and for a given ``batch_size``: images are optimised in
  chunks of ``batch_size``; each image's loss is summed, not averaged, so its gradient does not
  depend on the chunk's other images, but the latent-noise draws do). On CUDA TF32 is turned off
  (:func:`brainlatent.numerics.strict_float32`) for reproducible arithmetic.

Gradients are taken with :func:`torch.autograd.grad` with respect to the latents only, so neither
the generator's nor the classifier's parameters collect gradients; both run in eval mode during the
call (batch norm with running statistics, no dropout) and get their previous mode back.

Example:
    >>> from brainlatent.models.stylegan import Generator
    >>> G = Generator(8, resolution=8, channels_base=64, channels_max=8)
    >>> real = sample(G, 2, seed=1).images
    >>> inv = project(G, real, "w", steps=5, bank_size=8)
    >>> inv.latent.shape, inv.images.shape, inv.loss.shape
    (torch.Size([2, 8]), torch.Size([2, 1, 8, 8]), (2,))
    >>> torch.equal(render(G, inv), inv.images)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from brainlatent.counterfactual.measures import BRAIN_THRESHOLD, brain_mask
from brainlatent.errors import BrainlatentError
from brainlatent.labels import SLICE
from brainlatent.latents import sample, sample_z, to_w  # noqa: F401  (sample: used in the docstring)
from brainlatent.metrics.features import layered_distance

SPACES = ("z", "w", "w+", "zy")
PIXEL_LOSSES = ("l2", "l1")
INITS = ("bank", "mean")
NOISE_MODES = ("random", "zero")
#: background of a slice is exactly -1; pixels above this belong to the brain
MASK_THRESHOLD = BRAIN_THRESHOLD
#: NVlabs' schedule: lr ramp-up / ramp-down fractions, latent-noise end fraction
LR_RAMPUP, LR_RAMPDOWN, NOISE_RAMP = 0.05, 0.25, 0.75
#: smoothing of a given one-hot label before taking its logits (optimise_labels)
LABEL_SMOOTHING = 0.02


@dataclass
class Inversion:
    """The result of :func:`project` (all tensors on the CPU).

    Attributes:
        space: ``"z"``, ``"w"``, ``"w+"`` or ``"zy"`` (a conditional family's ``"z"`` is ``"zy"``).
        latent: ``N x z_dim`` (z, zy; W of a family without mapping), ``N x w_dim`` (w) or
            ``N x num_ws x w_dim`` (w+).
        c: ``N x c_dim`` labels of a conditional family (given or optimised), else None.
        noise: the fixed noise inputs, one ``N x 1 x H x W`` tensor per noise layer
            (``G.noise_shapes()`` order; ``[]`` for a family without noise).
        images: ``N x 1 x R x R`` reconstructions (``render(G, self)``).
        loss: ``N`` final losses (numpy float64).
        history: mean loss per step (numpy, ``steps``).
        terms: the final ``"pixel"`` and ``"feature"`` terms per image (numpy; feature is 0 without features).
        settings: the arguments the projection ran with (plain values).
    """

    space: str
    latent: torch.Tensor
    c: torch.Tensor | None
    noise: list[torch.Tensor]
    images: torch.Tensor
    loss: np.ndarray
    history: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Helpers


def _arch(G) -> str:
    return str(getattr(G, "arch", type(G).__name__))


def _device_of(module) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for t in (*module.parameters(), *module.buffers()):
            return t.device
    return torch.device("cpu")


@contextmanager
def _eval_mode(*modules):
    """Eval mode for the duration, then each module's previous mode back."""
    mods = [m for m in modules if isinstance(m, torch.nn.Module)]
    before = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, was in zip(mods, before):
            m.train(was)


def _feature_net(features):
    """The classifier module behind ``features`` (a PerceptualFeatures or a VGG16Classifier), or None."""
    if features is None:
        return None
    net = getattr(features, "classifier", features)
    if not hasattr(net, "block_features"):
        raise BrainlatentError(
            f"project: features is a {type(features).__name__}; expected a PerceptualFeatures, a VGG16Classifier or None"
        )
    return net


def resolve_space(G, space: str) -> str:
    """The space :func:`project` optimises for ``space`` on ``G`` (``"z"`` → ``"zy"`` on a conditional
    family); a one-line error when the family has no such space."""
    if space not in SPACES:
        raise BrainlatentError(f"projection space {space!r}: expected one of {list(SPACES)}")
    conditional = bool(getattr(G, "c_dim", 0))
    if space == "z" and conditional:
        return "zy"
    if space == "zy" and not conditional:
        raise BrainlatentError(f"projection space 'zy': the '{_arch(G)}' network is unconditional; expected 'z', 'w' or 'w+'")
    if space in ("w", "w+") and conditional and not G.has_mapping:
        raise BrainlatentError(f"projection space {space!r}: the '{_arch(G)}' network has no W (its input is z ⊕ y); expected 'zy'")
    if space == "w+" and not hasattr(G, "num_ws"):
        raise BrainlatentError(f"projection space 'w+': the '{_arch(G)}' network has no per-layer styles (num_ws); expected 'z' or 'w'")
    return space


def _uses_mapping_input(G, space: str) -> bool:
    """Whether the optimised latent goes through ``G.mapping`` (Z spaces, and W of a mapping-free family)."""
    return space in ("z", "zy") or not G.has_mapping


def synthesise(G, space: str, latent: torch.Tensor, c: torch.Tensor | None, noise: list[torch.Tensor]) -> torch.Tensor:
    """Images of ``latent`` in ``space`` (with labels ``c`` for Z of a conditional family) and fixed ``noise``."""
    if space in ("z", "zy") or not G.has_mapping:
        w = to_w(G, latent, c if getattr(G, "c_dim", 0) else None) if space != "w+" else latent
    else:
        w = latent
    return G.synthesis(w, noise=list(noise))


def pixel_term(recon: torch.Tensor, target: torch.Tensor, real_mask: torch.Tensor, kind: str = "l2",
               threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Per-image mean squared (``"l2"``) or absolute (``"l1"``) error inside real mask ∪ reconstruction mask; ``N``."""
    mask = (real_mask | (recon.detach() > threshold)).to(recon.dtype)
    diff = recon - target
    err = diff.square() if kind == "l2" else diff.abs()
    return (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)


def _lr_at(step: int, steps: int, lr: float) -> float:
    """NVlabs' schedule: linear ramp-up over 5 %, cosine ramp-down over the last 25 %."""
    t = step / max(steps, 1)
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / LR_RAMPUP)


def _check_images(G, images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise BrainlatentError(f"project: images are a {type(images).__name__}; expected a tensor or array N x 1 x R x R")
    r = int(getattr(G, "resolution", x.shape[-1] if x.ndim else 0))
    if x.ndim != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != (r, r) or len(x) == 0:
        raise BrainlatentError(f"project: images have shape {tuple(x.shape)}; expected N x 1 x {r} x {r} in [-1, 1] (N > 0)")
    if not torch.isfinite(x).all():
        raise BrainlatentError("project: images contain NaN or infinite values; expected finite values in [-1, 1]")
    return x.float()


# --------------------------------------------------------------------------------------------
# Labels kept valid while optimised


class LabelParameters:
    """Free parameters for some label units of ``c`` that keep them valid (see the module docstring).

    Args:
        encoder: the network's :class:`brainlatent.labels.LabelEncoder` (``G.labels``).
        c0: ``N x c_dim`` starting labels (units not optimised are held at these values).
        names: attributes (and/or ``"slice"``) to optimise.
    """

    def __init__(self, encoder, c0: torch.Tensor, names: Sequence[str]) -> None:
        self.encoder, self.base = encoder, c0.detach().clone()
        self.params: dict[str, torch.Tensor] = {}
        for name in names:
            units = encoder.units(name)  # a one-line error for an unknown name
            v = self.base[:, units]
            if name != SLICE and encoder.attribute(name)["kind"] == "categorical":
                k = v.shape[1]
                known = v.sum(1, keepdim=True) > 0.5
                p = torch.where(known, (1 - LABEL_SMOOTHING) * v + LABEL_SMOOTHING / k, torch.full_like(v, 1.0 / k))
                logits = p.clamp_min(1e-6).log()
            else:
                p = v.clamp(0.01, 0.99)
                logits = torch.log(p / (1 - p))
            self.params[name] = logits.clone().requires_grad_(True)

    def tensors(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def value(self) -> torch.Tensor:
        """The current ``N x c_dim`` labels (differentiable in the parameters)."""
        parts = []
        c = self.base.clone()
        for name, logits in self.params.items():
            units = self.encoder.units(name)
            categorical = name != SLICE and self.encoder.attribute(name)["kind"] == "categorical"
            val = torch.softmax(logits, dim=1) if categorical else torch.sigmoid(logits)
            parts.append((units, val))
            if name != SLICE:
                c[:, self.encoder.mask_unit(name)] = 1.0
        cols = list(c.unbind(1))
        for units, val in parts:
            for j, col in zip(range(units.start, units.stop), val.unbind(1)):
                cols[j] = col
        return torch.stack(cols, dim=1)


def _label_names(G, optimise_labels) -> list[str]:
    if optimise_labels is False or optimise_labels is None:
        return []
    if optimise_labels is True:
        return list(G.labels.names) + [SLICE]
    names = [optimise_labels] if isinstance(optimise_labels, str) else list(optimise_labels)
    for n in names:
        G.labels.units(n)  # one-line error naming the network's labels
    return names


# --------------------------------------------------------------------------------------------
# Initialisation


def _bank(G, bank_size: int, seed: int, device, draw_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    rng = torch.Generator().manual_seed(int(seed))
    z = sample_z(G, bank_size, rng)
    c = G.sample_labels(bank_size, rng).float() if draw_labels else None
    return z.to(device), (c.to(device) if c is not None else None)


def _space_latent(G, space: str, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The latent in ``space`` of prior samples ``z`` (and labels): z itself, or w (one per layer for w+)."""
    if _uses_mapping_input(G, space):
        lat = z
    else:
        lat = to_w(G, z, c)
    if space == "w+":
        lat = lat.unsqueeze(1).repeat(1, G.num_ws, 1)
    return lat


@torch.no_grad()
def _init_from_bank(G, space, target, real_mask, c, noise, draw_labels, bank_z, bank_c, pixel_kind, threshold, batch):
    """Per target image, the bank latent (and labels) with the lowest pixel term."""
    n = len(target)
    fixed_labels = c is not None
    if not fixed_labels:  # one bank rendered once (unconditional, or labels drawn with z)
        images = torch.cat([synthesise(G, space if space != "w+" else "w", _space_latent(G, "w" if space == "w+" else space, zb, cb),
                                       cb, [t[:1].expand(len(zb), -1, -1, -1) for t in noise])
                            for zb, cb in _chunks(bank_z, bank_c, batch)])
        best = torch.stack([
            pixel_term(images, target[i:i + 1].expand_as(images), real_mask[i:i + 1].expand_as(images), pixel_kind, threshold).argmin()
            for i in range(n)
        ])
        lat = _space_latent(G, space, bank_z[best], bank_c[best] if bank_c is not None else None)
        return lat, (bank_c[best] if bank_c is not None else None)
    lats = []
    for i in range(n):  # labels given: the bank under each image's own labels
        ci = c[i:i + 1].expand(len(bank_z), -1)
        ni = [t[i:i + 1].expand(len(bank_z), -1, -1, -1) for t in noise]
        flat_space = "w" if space == "w+" else space
        images = synthesise(G, flat_space, _space_latent(G, flat_space, bank_z, ci), ci, ni)
        k = pixel_term(images, target[i:i + 1].expand_as(images), real_mask[i:i + 1].expand_as(images), pixel_kind, threshold).argmin()
        lats.append(_space_latent(G, space, bank_z[k:k + 1], c[i:i + 1]))
    return torch.cat(lats), c


def _chunks(z, c, size):
    for s in range(0, len(z), size):
        yield z[s:s + size], (c[s:s + size] if c is not None else None)


@torch.no_grad()
def _latent_std(G, space, bank_z, bank_c) -> float:
    """NVlabs' ``w_std``: root mean squared distance of the bank's latents from their mean."""
    flat = _space_latent(G, "w" if space == "w+" else space, bank_z, bank_c)
    return float((flat - flat.mean(0)).square().sum(1).mean().sqrt())


# --------------------------------------------------------------------------------------------
# The projector


def project(
    G,
    images: torch.Tensor | np.ndarray,
    space: str,
    *,
    features=None,
    c: torch.Tensor | np.ndarray | None = None,
    optimise_labels: bool | str | Sequence[str] = False,
    steps: int = 300,
    lr: float = 0.05,
    pixel_weight: float = 1.0,
    feature_weight: float = 1.0,
    pixel_loss: str = "l2",
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    init: str | torch.Tensor = "bank",
    bank_size: int = 256,
    latent_noise: float = 0.05,
    noise_mode: str = "random",
    mask_threshold: float = MASK_THRESHOLD,
) -> Inversion:
    """Invert real slices into ``space`` of ``G`` (see the module docstring for the method).

    Args:
        G: any family's network (the protocol of :mod:`brainlatent.models.families`), on ``device``.
        images: ``N x 1 x R x R`` real slices in [-1, 1], background exactly -1, ``R = G.resolution``.
        space: ``"z"``, ``"w"``, ``"w+"`` or ``"zy"``.
        features: a :class:`~brainlatent.metrics.features.PerceptualFeatures` or the classifier itself
            (on ``device``) for the feature term; None = pixel term only.
        c: ``N x c_dim`` labels of a conditional family (the encoded real labels); required unless
            every label is optimised from the bank (``optimise_labels=True``).
        optimise_labels: ``False``, ``True`` (every attribute and the slice position) or names.
        steps: Adam steps (0 = the initialisation alone).
        lr: peak learning rate (NVlabs: 0.1 in W; 0.05 here, for small generators).
        pixel_weight, feature_weight: weights of the two terms.
        pixel_loss: ``"l2"`` or ``"l1"``.
        seed: seeds the bank, the fixed noise inputs and the latent-noise draws.
        batch_size: images optimised together.
        device: where to run; default the generator's device.
        init: ``"bank"``, ``"mean"`` or a latent tensor (see the module docstring).
        bank_size: prior samples for ``init="bank"`` (and for the latent noise scale).
        latent_noise: initial latent-noise factor times the bank's latent spread (0 = none).
        noise_mode: ``"random"`` (seeded) or ``"zero"`` noise inputs, held fixed.
        mask_threshold: the brain-mask threshold.

    Returns:
        an :class:`Inversion` (CPU tensors).

    Example:
        >>> from brainlatent.models.stylegan import Generator
        >>> G = Generator(8, resolution=8, channels_base=64, channels_max=8, arch="gan")
        >>> project(G, sample(G, 1, seed=0).images, "z", steps=3, bank_size=4).latent.shape
        torch.Size([1, 8])
    """
    space = resolve_space(G, space)
    target_all = _check_images(G, images)
    n = len(target_all)
    if pixel_loss not in PIXEL_LOSSES:
        raise BrainlatentError(f"project: pixel_loss {pixel_loss!r}; expected one of {list(PIXEL_LOSSES)}")
    if noise_mode not in NOISE_MODES:
        raise BrainlatentError(f"project: noise_mode {noise_mode!r}; expected one of {list(NOISE_MODES)}")
    if isinstance(init, str) and init not in INITS:
        raise BrainlatentError(f"project: init {init!r}; expected one of {list(INITS)} or a latent tensor")
    if int(steps) < 0 or int(batch_size) < 1 or int(bank_size) < 1:
        raise BrainlatentError(f"project: steps={steps}, batch_size={batch_size}, bank_size={bank_size}; expected steps >= 0 and sizes >= 1")
    if pixel_weight < 0 or feature_weight < 0 or (pixel_weight == 0 and (features is None or feature_weight == 0)):
        raise BrainlatentError(f"project: pixel_weight={pixel_weight}, feature_weight={feature_weight}; expected non-negative weights and a non-zero loss")
    conditional = bool(getattr(G, "c_dim", 0))
    names = _label_names(G, optimise_labels) if conditional else []
    if optimise_labels and not conditional:
        raise BrainlatentError(f"project: optimise_labels: the '{_arch(G)}' network is unconditional (it has no labels)")
    if names and space != "zy":
        raise BrainlatentError(f"project: labels can be optimised only in space 'zy' (W absorbs them), not {space!r}")
    if c is not None:
        if not conditional:
            raise BrainlatentError(f"project: labels c given, but the '{_arch(G)}' network is unconditional")
        c = torch.as_tensor(np.asarray(c, dtype=np.float32)) if isinstance(c, np.ndarray) else c.float()
        if tuple(c.shape) != (n, G.c_dim):
            raise BrainlatentError(f"project: labels c of shape {tuple(c.shape)}; expected {n} x {G.c_dim} (G.labels.encode of the slices' rows)")
    elif conditional and set(names) != set(G.labels.names) | {SLICE}:
        raise BrainlatentError(
            f"project: the '{_arch(G)}' network is conditional: give labels c ({n} x {G.c_dim}, e.g. G.labels.encode(manifest rows)) "
            "or optimise every label (optimise_labels=True)"
        )
    device = torch.device(device) if device is not None else _device_of(G)
    net = _feature_net(features)
    if net is not None and _device_of(net) != device:
        raise BrainlatentError(f"project: the classifier is on {_device_of(net)} but the projection runs on {device}; move it first")
    if _device_of(G) != device:
        raise BrainlatentError(f"project: the generator is on {_device_of(G)} but device is {device}; move it first")
    if device.type == "cuda":
        from brainlatent.numerics import strict_float32

        strict_float32()

    rng = torch.Generator().manual_seed(int(seed))
    if noise_mode == "random":
        noise_all = [torch.randn((n, *tuple(s[1:])), generator=rng) for s in G.noise_shapes()]
    else:
        noise_all = [torch.zeros((n, *tuple(s[1:]))) for s in G.noise_shapes()]
    init_all = _check_init(G, space, init, n) if isinstance(init, torch.Tensor) else None

    latents, labels, recons, losses, pix, feat = [], [], [], [], [], []
    history = np.zeros(int(steps))
    with _eval_mode(G, net):
        bank_z, bank_c = _bank(G, int(bank_size), int(seed), device, draw_labels=conditional and c is None)
        latent_std = _latent_std(G, space, bank_z, bank_c if bank_c is not None else (c[:1].expand(len(bank_z), -1).to(device) if c is not None else None))
        for start in range(0, n, int(batch_size)):
            sl = slice(start, start + int(batch_size))
            out = _project_chunk(
                G, space, target_all[sl].to(device), None if c is None else c[sl].to(device),
                [t[sl].to(device) for t in noise_all], names, net, init, None if init_all is None else init_all[sl].to(device),
                bank_z, bank_c, int(steps), float(lr), float(pixel_weight), float(feature_weight), pixel_loss,
                latent_std * float(latent_noise), mask_threshold, int(batch_size),
                torch.Generator(device="cpu").manual_seed(int(seed) + 1 + start),
            )
            latents.append(out["latent"])
            labels.append(out["c"])
            recons.append(out["images"])
            losses.append(out["loss"])
            pix.append(out["pixel"])
            feat.append(out["feature"])
            history += out["history"] * (out["loss"].size / n)
    return Inversion(
        space=space,
        latent=torch.cat(latents),
        c=torch.cat(labels) if labels[0] is not None else None,
        noise=noise_all,
        images=torch.cat(recons),
        loss=np.concatenate(losses),
        history=history,
        terms={"pixel": np.concatenate(pix), "feature": np.concatenate(feat)},
        settings={"space": space, "steps": int(steps), "lr": float(lr), "pixel_weight": float(pixel_weight),
                  "feature_weight": float(feature_weight) if net is not None else 0.0, "pixel_loss": pixel_loss,
                  "seed": int(seed), "batch_size": int(batch_size), "init": init if isinstance(init, str) else "tensor",
                  "bank_size": int(bank_size), "latent_noise": float(latent_noise), "noise_mode": noise_mode,
                  "mask_threshold": float(mask_threshold), "optimise_labels": names},
    )


def _check_init(G, space: str, init: torch.Tensor, n: int) -> torch.Tensor:
    init = init.detach().float()
    d = G.z_dim if _uses_mapping_input(G, space) else G.w_dim
    if space == "w+" and init.ndim == 2 and init.shape == (n, d):
        return init.unsqueeze(1).repeat(1, G.num_ws, 1)
    want = (n, G.num_ws, d) if space == "w+" else (n, d)
    if tuple(init.shape) != want:
        raise BrainlatentError(f"project: init latent of shape {tuple(init.shape)}; expected {' x '.join(map(str, want))} for space {space!r}")
    return init


def _project_chunk(G, space, target, c, noise, names, net, init, init_latent, bank_z, bank_c, steps, lr, pixel_weight,
                   feature_weight, pixel_kind, noise_std, threshold, batch, rng) -> dict:
    real_mask = brain_mask(target, threshold=threshold)
    with torch.no_grad():
        target_feats = net.block_features(target) if net is not None else None
    # ---- initial latent (and labels)
    if init_latent is not None:
        lat0, c0 = init_latent, c
    elif init == "mean":
        if _uses_mapping_input(G, space):
            lat0 = bank_z.mean(0, keepdim=True).expand(len(target), -1)
            if space == "w+":
                lat0 = lat0.unsqueeze(1).repeat(1, G.num_ws, 1)
        else:
            w_avg = G.w_avg.detach().to(target.device).float()
            lat0 = w_avg.view(1, -1).expand(len(target), -1)
            if space == "w+":
                lat0 = lat0.unsqueeze(1).repeat(1, G.num_ws, 1)
        c0 = c if c is not None else (bank_c[:1].expand(len(target), -1) if bank_c is not None else None)
    else:
        lat0, c0 = _init_from_bank(G, space, target, real_mask, c, noise, bool(names), bank_z, bank_c, pixel_kind, threshold, batch)
    latent = lat0.detach().clone().float().requires_grad_(True)
    label_params = LabelParameters(G.labels, c0, names) if names else None
    params = [latent] + (label_params.tensors() if label_params is not None else [])
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))

    def current_c():
        return label_params.value() if label_params is not None else c0

    def losses(images):
        pix = pixel_term(images, target, real_mask, pixel_kind, threshold)
        if net is None:
            return pix, torch.zeros_like(pix)
        return pix, layered_distance(net.block_features(images), target_feats)

    history = np.zeros(steps)
    for step in range(steps):
        t = step / max(steps, 1)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        scale = noise_std * max(0.0, 1.0 - t / NOISE_RAMP) ** 2
        noisy = latent
        if scale > 0:
            noisy = latent + scale * torch.randn(latent.shape, generator=rng).to(latent.device)
        pix, feat = losses(synthesise(G, space, noisy, current_c(), noise))
        per_image = pixel_weight * pix + feature_weight * feat
        grads = torch.autograd.grad(per_image.sum(), params)
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        history[step] = float(per_image.detach().mean())
    with torch.no_grad():
        c_final = current_c()
        c_final = c_final.detach() if c_final is not None else None
        images = synthesise(G, space, latent, c_final, noise)
        pix, feat = losses(images)
        per_image = pixel_weight * pix + feature_weight * feat
    return {
        "latent": latent.detach().cpu(),
        "c": c_final.cpu() if c_final is not None else None,
        "images": images.float().cpu(),
        "loss": per_image.double().cpu().numpy(),
        "pixel": pix.double().cpu().numpy(),
        "feature": feat.double().cpu().numpy(),
        "history": history,
    }


@torch.no_grad()
def render(G, inversion: Inversion, latent: torch.Tensor | None = None, c: torch.Tensor | None = None,
           batch_size: int = 64) -> torch.Tensor:
    """Re-synthesise an inversion (or an edit of it) with its fixed noise: ``N x 1 x R x R`` on the CPU.

    Args:
        G: the network the inversion was made with.
        inversion: the :class:`Inversion`.
        latent: an edited latent of the inversion's shape (default: the inversion's own).
        c: edited labels ``N x c_dim`` (conditional families; default: the inversion's own).
        batch_size: images per synthesis call.
    """
    latent = inversion.latent if latent is None else latent
    c = inversion.c if c is None else c
    if tuple(latent.shape) != tuple(inversion.latent.shape):
        raise BrainlatentError(f"render: latent of shape {tuple(latent.shape)}; expected the inversion's {tuple(inversion.latent.shape)}")
    if (c is None) != (inversion.c is None) or (c is not None and tuple(c.shape) != tuple(inversion.c.shape)):
        want = "no labels" if inversion.c is None else f"labels of shape {tuple(inversion.c.shape)}"
        raise BrainlatentError(f"render: expected {want} for this inversion, got {None if c is None else tuple(c.shape)}")
    device = _device_of(G)
    out = []
    with _eval_mode(G):
        for s in range(0, len(latent), batch_size):
            sl = slice(s, s + batch_size)
            out.append(synthesise(G, inversion.space, latent[sl].to(device).float(),
                                  None if c is None else c[sl].to(device).float(),
                                  [t[sl].to(device) for t in inversion.noise]).float().cpu())
    return torch.cat(out)
