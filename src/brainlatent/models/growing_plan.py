"""Growth plans of seed 003's five models: latent size, resolution and every layer's width per stage.

Stages ``s = 0 .. S-1`` with ``S = log2(R / 4) + 1`` (R the final resolution). All five models end
at stage S-1 with the bGAN architecture (seed Tables 2-3):

* width of a layer working at resolution ``r`` in the final network: ``min(c_f · R / r, c_max)``
  (``c_f`` = ``channels_final``, the width at the output resolution; the seed has 8 at 128²,
  i.e. 256 at 4²);
* latent: ``z_dim`` (the final size); growing latents start at ``z_dim / 2^(S-1)`` and double each
  stage (8 → 16 → … → 256 at 128², 8 → … → 128 at 64²).

============  ================  ===================  ==========================================
model         latent grows      resolution grows     widths at stage s
============  ================  ===================  ==========================================
``bgan``      no                no                   final
``bggan``     yes (g1 input)    no                   final
``cggan``     yes               no                   ``min(final, c_f · 2^s)`` (seed Tables 4-5)
``lggan``     no                yes (4 · 2^s)        final
``clggan``    yes               yes (4 · 2^s)        ``min(c_f · (4·2^s) / r, c_max)`` (Tables 10-15)
============  ================  ===================  ==========================================

Layer names (the same in every model, so final parameter shapes can be compared):
generator ``g1`` (latent → 4×4), ``b4.conv`` (g2), ``b<r>.conv0/conv1`` for r = 8..R, ``torgb``;
critic ``fromrgb``, ``b<r>.conv0/conv1`` for r = R..8 (each followed by 2× average pooling),
``d3`` (with the minibatch-std map), ``d2`` (4×4 valid), ``d1`` (FC → 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from brainlatent.errors import BrainlatentError

ARCHS = ("bgan", "bggan", "cggan", "lggan", "clggan")
GROWS_LATENT = frozenset({"bggan", "cggan", "clggan"})
GROWS_LAYERS = frozenset({"lggan", "clggan"})
GROWS_CHANNELS = frozenset({"cggan", "clggan"})

Shapes = dict[str, tuple[int, int]]  # layer name -> (in, out)


@dataclass(frozen=True)
class GrowthPlan:
    """What a growing model looks like at every stage.

    Args:
        arch: one of :data:`ARCHS`.
        resolution: final image resolution R (power of two ≥ 4).
        z_dim: final latent size (divisible by ``2^(S-1)`` for the latent-growing models).
        channels_final: width at the output resolution (the seed: 8).
        channels_max: cap on any width (the seed: 256, i.e. no cap at 128²).
        prior_dim: dimensionality of the unit-norm Gaussian prior (the seed: 256).

    Example:
        >>> p = GrowthPlan("clggan", 16, 32)
        >>> [p.latent(s) for s in range(p.num_stages)], [p.res(s) for s in range(p.num_stages)]
        ([8, 16, 32], [4, 8, 16])
        >>> p.generator_shapes(1)["g1"], p.generator_shapes(2)["g1"]
        ((16, 16), (32, 32))
    """

    arch: str
    resolution: int
    z_dim: int
    channels_final: int = 8
    channels_max: int = 256
    prior_dim: int = 256

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise BrainlatentError(f"growing model {self.arch!r}: expected one of {list(ARCHS)}")
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise BrainlatentError(f"{self.arch}: resolution {r} must be a power of two >= 4")
        if self.arch in GROWS_LATENT and (self.z_dim % 2 ** (self.num_stages - 1) or self.z_dim < 2 ** (self.num_stages - 1)):
            raise BrainlatentError(
                f"{self.arch}-z{self.z_dim}: a latent that doubles over the {self.num_stages} stages of a {r}x{r} model "
                f"needs a final size divisible by {2 ** (self.num_stages - 1)} (the seed: z = 2 x resolution = {2 * r})")
        if self.z_dim > self.prior_dim:
            raise BrainlatentError(f"{self.arch}-z{self.z_dim}: the latent is larger than growing.prior_dim ({self.prior_dim})")

    @property
    def num_stages(self) -> int:
        return int(math.log2(self.resolution // 4)) + 1

    @property
    def final(self) -> int:
        return self.num_stages - 1

    def latent(self, s: int) -> int:
        """Latent size fed at stage ``s``."""
        return self.z_dim // 2 ** (self.final - s) if self.arch in GROWS_LATENT else self.z_dim

    def res(self, s: int) -> int:
        """Resolution of the networks at stage ``s`` (the generator's output, the critic's input)."""
        return 4 * 2 ** s if self.arch in GROWS_LAYERS else self.resolution

    def real_res(self, s: int) -> int:
        """Resolution the real images carry at stage ``s`` (before nearest up-sampling to ``res``)."""
        return self.resolution if self.arch == "bgan" else 4 * 2 ** s

    def width(self, r: int, s: int) -> int:
        """Width of the layers working at resolution ``r`` at stage ``s``."""
        final = min(self.channels_final * self.resolution // r, self.channels_max)
        if self.arch == "cggan":
            return min(final, self.channels_final * 2 ** s)
        if self.arch == "clggan":
            return min(self.channels_final * self.res(s) // r, self.channels_max)
        return final

    def resolutions(self, s: int) -> list[int]:
        """4, 8, ..., res(s)."""
        return [4 * 2 ** i for i in range(int(math.log2(self.res(s) // 4)) + 1)]

    def generator_shapes(self, s: int) -> Shapes:
        """``name -> (in, out)`` of every generator layer at stage ``s``."""
        w = lambda r: self.width(r, s)
        shapes: Shapes = {"g1": (self.latent(s), w(4)), "b4.conv": (w(4), w(4))}
        for r in self.resolutions(s)[1:]:
            shapes[f"b{r}.conv0"] = (w(r // 2), w(r))
            shapes[f"b{r}.conv1"] = (w(r), w(r))
        shapes["torgb"] = (w(self.res(s)), 1)
        return shapes

    def critic_shapes(self, s: int) -> Shapes:
        """``name -> (in, out)`` of every critic layer at stage ``s``."""
        w = lambda r: self.width(r, s)
        shapes: Shapes = {"fromrgb": (1, w(self.res(s)))}
        for r in reversed(self.resolutions(s)[1:]):
            shapes[f"b{r}.conv0"] = (w(r), w(r))
            shapes[f"b{r}.conv1"] = (w(r), w(r // 2))
        shapes.update({"d3": (w(4), w(4)), "d2": (w(4), w(4)), "d1": (w(4), 1)})
        return shapes

    def changes(self, s: int) -> bool:
        """Whether stage ``s`` differs from stage ``s - 1`` (bGAN never grows)."""
        return s > 0 and (self.generator_shapes(s) != self.generator_shapes(s - 1) or self.critic_shapes(s) != self.critic_shapes(s - 1))

    def config(self) -> dict:
        return asdict(self)
