"""Seed 003's training schedule in images shown, and the real images each phase shows.

Seed (§3.5): 4 epochs at the initial size, then per grow cycle 4 epochs fading in (α, β: 0 → 1,
τ: 0 → 0.5, linearly) and 4 epochs stabilising; the baselines train as long. Here each phase is a
number of images (``initial_kimg``, ``fade_kimg``, ``stabilise_kimg``), so runs at 64² and 128² on
data sets of any size compare; the defaults are 4 epochs of a 5 000-slice training set each.

Real images (§3.5): area-down-sampled to the stage's resolution; during a fade
``(1 − α) · up(previous resolution) + α · current resolution`` (seed Figure 5); bgGAN and cgGAN
(fixed-resolution networks) see them nearest-up-sampled back to the full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brainlatent.models.growing_plan import GrowthPlan


@dataclass(frozen=True)
class Phase:
    """Where training is: ``stage``, whether it is ``fading``, the ramp (0 → 1 over a fade, else 1),
    and the phase's first and last image count."""

    stage: int
    fading: bool
    ramp: float
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.stage}{'f' if self.fading else 's'}"


class Schedule:
    """Phases of a growing model's run, in images shown.

    Args:
        plan: the growth plan (a stage that does not grow, as in bGAN, has no fade).
        initial, fade, stabilise: images of the first stage, of each fade, of each stabilisation.

    Example:
        >>> s = Schedule(GrowthPlan("clggan", 16, 32), 100, 50, 50)
        >>> s.total, s.at(0).name, s.at(125).name, s.at(125).ramp, s.at(150).name
        (300, '0s', '1f', 0.5, '1s')
    """

    def __init__(self, plan: GrowthPlan, initial: int, fade: int, stabilise: int) -> None:
        self.plan = plan
        phases = [(0, False, 0, initial)]
        pos = initial
        for s in range(1, plan.num_stages):
            if plan.changes(s):
                phases.append((s, True, pos, pos + fade))
                pos += fade
            else:
                phases.append((s, False, pos, pos + fade))  # same length, nothing to fade
                pos += fade
            phases.append((s, False, pos, pos + stabilise))
            pos += stabilise
        self.phases = phases
        self.total = pos

    def at(self, nimg: int) -> Phase:
        """The phase that the image count ``nimg`` falls in (the last one at and after the end)."""
        for stage, fading, start, end in self.phases:
            if nimg < end:
                ramp = (nimg - start) / max(end - start, 1) if fading else 1.0
                return Phase(stage, fading, float(ramp), start, end)
        stage, fading, start, end = self.phases[-1]
        return Phase(stage, False, 1.0, start, end)


def area_down(x: torch.Tensor, res: int) -> torch.Tensor:
    """Area (box) down-sampling of ``N × C × R × R`` images to ``res``."""
    factor = x.shape[-1] // res
    return x if factor == 1 else F.avg_pool2d(x, factor)


def real_images(x: torch.Tensor, plan: GrowthPlan, phase: Phase) -> torch.Tensor:
    """The real batch shown in ``phase``: ``N × 1 × R × R`` full-resolution slices → the networks' input.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> real_images(x, GrowthPlan("clggan", 16, 32), Schedule(GrowthPlan("clggan", 16, 32), 1, 1, 1).at(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    res = plan.real_res(phase.stage)
    cur = area_down(x, res)
    if phase.fading:
        prev = F.interpolate(area_down(cur, res // 2), scale_factor=2, mode="nearest")
        cur = (1.0 - phase.ramp) * prev + phase.ramp * cur
    target = plan.res(phase.stage)
    if cur.shape[-1] != target:
        cur = F.interpolate(cur, size=(target, target), mode="nearest")
    return cur
