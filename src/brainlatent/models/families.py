"""Generator families: the one place that knows which generative models exist.

A family is a kind of generator (``stylegan``, ``gan`` without a mapping network, the conditional
``cwgan`` ...). The registry says, for each, how to train it, how to load a trained network, which
latent spaces the metrics walk, which metrics apply, and which config keys its trainer reads. The
workflow's wildcards and rules, the CLI (``train-gan --arch``), the metrics, the report and
``batch`` all read it; adding a family is one module (its network and trainer) plus one
:func:`register_family` call below.

Every family's network follows one protocol (see :class:`brainlatent.models.stylegan.Generator`):
attributes ``arch``, ``z_dim``, ``w_dim``, ``c_dim`` (0 = unconditional), ``resolution``,
``has_mapping``, ``normalizes_z``; methods ``mapping(z, c=None)`` (Z → W; the identity where the
family has no W), ``synthesis(w, noise=None)`` and ``noise_shapes()`` (``[]`` without noise inputs).
:mod:`brainlatent.latents` samples from any of them.

A model id is ``<arch>-z<zdim>`` (:func:`model_id`, :func:`parse_model_id`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainlatent.errors import BrainlatentError

#: metrics every family gets
COMMON_METRICS = ("ppl", "path_profile", "separability", "quality")


@dataclass(frozen=True)
class GeneratorFamily:
    """One kind of generator.

    Args:
        name: the id used in configs (``gan.archs``), wildcards and folder names; ``[a-z][a-z0-9]*``.
        label: how the report names it.
        spaces: the latent spaces the metrics walk, in order (``("z", "w")`` or ``("z",)``).
        train: ``"module:function"`` of its trainer, called as
            ``train(cfg, slices_dir, arch, z_dim, out_dir, device=None) -> summary dict``; it writes
            ``<out_dir>/network.pt`` and resumes by :func:`brainlatent.train.checkpoint.resume_matching`.
        load: ``"module:function"`` that rebuilds a trained network, ``load(path, device)``.
        stage_keys: the config keys its trainer reads (selectors of :mod:`brainlatent.stage_keys`).
        metrics: the evaluation metrics that apply (ids of :mod:`brainlatent.metrics.registry`).
        conditional: whether it generates from labels as well as latents.
        description: one sentence for the report.
    """

    name: str
    label: str
    spaces: tuple[str, ...]
    train: str
    load: str
    stage_keys: tuple[str, ...]
    metrics: tuple[str, ...] = COMMON_METRICS
    conditional: bool = False
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def trainer(self) -> Callable[..., dict]:
        return _resolve(self.train)

    def loader(self) -> Callable[..., Any]:
        return _resolve(self.load)


_FAMILIES: dict[str, GeneratorFamily] = {}
_NAME = re.compile(r"^[a-z][a-z0-9]*$")


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_family(family: GeneratorFamily) -> GeneratorFamily:
    """Add a family to the registry (its name must be new and ``[a-z][a-z0-9]*``)."""
    if not _NAME.match(family.name):
        raise ValueError(f"family name {family.name!r}: expected [a-z][a-z0-9]*")
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered already")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, GeneratorFamily]:
    """Every registered family, in registration order."""
    return dict(_FAMILIES)


def get_family(name: str) -> GeneratorFamily:
    """The family called ``name``; a clear error naming the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise BrainlatentError(f"generator family {name!r} is not known; known families: {list(_FAMILIES)}") from None


def model_id(arch: str, z_dim: int) -> str:
    """``"stylegan-z32"``: the folder name of one trained model."""
    return f"{arch}-z{int(z_dim)}"


_MODEL_ID = re.compile(r"^([a-z][a-z0-9]*)-z(\d+)$")


def parse_model_id(text: str) -> tuple[str, int]:
    """``"stylegan-z32"`` → ``("stylegan", 32)``; a clear error for anything else."""
    m = _MODEL_ID.match(str(text))
    if not m:
        raise BrainlatentError(f"model id {text!r}: expected <family>-z<latent size>, e.g. stylegan-z32")
    return m.group(1), int(m.group(2))


def load_network(path: str | Path, device: Any = "cpu"):
    """Rebuild any family's trained network from its ``network.pt`` (the file names its family)."""
    from brainlatent.io import load_torch

    data = load_torch(path, map_location="cpu")
    arch = data.get("arch") if isinstance(data, dict) else None
    if arch is None:
        raise BrainlatentError(f"{path}: not a brainlatent network file (no 'arch' key)")
    return get_family(str(arch)).loader()(path, device)


# --------------------------------------------------------------------------------------------
# The families

_UNCONDITIONAL_GAN_KEYS = ("seed", "gan", "-gan.archs", "-gan.latent_sizes")

register_family(GeneratorFamily(
    name="stylegan", label="StyleGAN", spaces=("z", "w"),
    train="brainlatent.train.gan:train_gan", load="brainlatent.models.stylegan:load_generator",
    stage_keys=_UNCONDITIONAL_GAN_KEYS,
    description="mapping network + AdaIN synthesis + noise, WGAN-GP",
))
register_family(GeneratorFamily(
    name="gan", label="GAN (no mapping network)", spaces=("z",),
    train="brainlatent.train.gan:train_gan", load="brainlatent.models.stylegan:load_generator",
    stage_keys=_UNCONDITIONAL_GAN_KEYS,
    description="the StyleGAN synthesis network fed z directly (W = Z), WGAN-GP",
))

_CONDITIONAL_METRICS = COMMON_METRICS + ("attribute_control",)
#: the label vector needs each attribute's name, kind and levels (not the classifier's bins)
_LABEL_KEYS = ("attributes[].name", "attributes[].kind", "attributes[].levels")

register_family(GeneratorFamily(
    name="cwgan", label="Conditional WGAN-GP (seed 004)", spaces=("z",),
    train="brainlatent.train.conditional:train_conditional", load="brainlatent.models.cwgan:load_generator",
    stage_keys=("seed", *_LABEL_KEYS, "cwgan"), metrics=_CONDITIONAL_METRICS, conditional=True,
    description="DCGAN generator on z ⊕ y, patch critic with y tiled as input planes, WGAN-GP (Fabbri 2018)",
))
register_family(GeneratorFamily(
    name="cstylegan", label="Conditional StyleGAN", spaces=("z", "w"),
    train="brainlatent.train.conditional:train_conditional", load="brainlatent.models.cstylegan:load_generator",
    stage_keys=("seed", *_LABEL_KEYS, "gan", "-gan.archs", "-gan.latent_sizes"), metrics=_CONDITIONAL_METRICS,
    conditional=True,
    description="StyleGAN synthesis, label embedded and concatenated with z at the mapping input; projection critic, WGAN-GP",
))

# seed 002: the mixture-prior GAN (K from gmm.components, or from the name: gmmgan2 ... gmmgan5, so
# that one study can hold several K) and the plain GAN of the same networks
_GMM_TRAIN = "brainlatent.train.gmm:train_gmmgan"
_GMM_LOAD = "brainlatent.models.gmm:load_network"
_GMM_METRICS = COMMON_METRICS + ("mode_discovery",)
#: the K a gmmgan<K> family may carry in its name
GMM_NAMED_COMPONENTS = (2, 3, 4, 5)

register_family(GeneratorFamily(
    name="dcgan", label="DCGAN (seed 002's networks, N(0, I) prior)", spaces=("z",),
    train="brainlatent.train.gmm:train_dcgan", load=_GMM_LOAD,
    stage_keys=("seed", "gmm", "-gmm.components", "-gmm.mixture"),
    description="seed 002's DCGAN generator and discriminator without the learned prior or C: the plain-GAN baseline",
))
register_family(GeneratorFamily(
    name="gmmgan", label="GM-prior GAN (K = gmm.components)", spaces=("z",),
    train=_GMM_TRAIN, load=_GMM_LOAD, stage_keys=("seed", "gmm"), metrics=_GMM_METRICS,
    description="learned Gaussian-mixture prior, one fake per component per real, responsibility classifier C (seed 002)",
))
for _k in GMM_NAMED_COMPONENTS:
    register_family(GeneratorFamily(
        name=f"gmmgan{_k}", label=f"GM-prior GAN (K = {_k})", spaces=("z",),
        train=_GMM_TRAIN, load=_GMM_LOAD, stage_keys=("seed", "gmm", "-gmm.components"), metrics=_GMM_METRICS,
        description=f"seed 002 with K = {_k} mixture components",
    ))

# seed 003: latent-space growing GANs (models.growing, train.growing)
_GROWING_KEYS = ("seed", "growing")
_GROWING_METRICS = COMMON_METRICS + ("variability_profile", "attribute_saliency", "axis_alignment")
for _name, _label, _text in (
    ("bgan", "bGAN (baseline)", "seed 003 baseline: fixed latent and resolution, WGAN-GP"),
    ("bggan", "bgGAN", "seed 003: the latent grows into the first generator layer only"),
    ("cggan", "cgGAN", "seed 003: every layer's channels grow with the latent"),
    ("lggan", "lgGAN", "seed 003: progressive layer growing, fixed latent"),
    ("clggan", "clgGAN", "seed 003: channels and layers grow, the latent doubles with the resolution"),
):
    register_family(GeneratorFamily(
        name=_name, label=_label, spaces=("z",),
        train="brainlatent.train.growing:train_growing", load="brainlatent.models.growing:load_growing",
        stage_keys=_GROWING_KEYS, metrics=_GROWING_METRICS, description=_text,
        extra={"growing": True},
    ))
