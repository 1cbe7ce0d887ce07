"""Seed 002's losses and one training step, for any G, prior, D and C (images or toy points).

For a batch of ``B`` reals ``x_i`` with responsibilities ``α_i = softmax(C(x_i))`` (``B × K``) and
one fake per component per real, ``x̂_ik = G(μ_k + A_k e_ik)`` (row ``i·K + k`` of one batched G
call), with ``ℓ(d) = softplus(−d) = −log σ(d)``:

* D minimises ``(1/K) mean_i [ℓ(D(x_i)) + Σ_k α_ik ℓ(−D(x̂_ik))]`` (seed eq. 3; α detached).
* G (and μ, A) minimise ``(1/K) mean_i Σ_k α_ik g_ik``: ``g = ℓ(D(x̂))`` (non-saturating, default,
  seed gap §2.7 #4) or ``g = −ℓ(−D(x̂)) = log(1 − D(x̂))`` (the literal saturating form).
* C descends the same ``(1/K) mean_i Σ_k α_ik g_ik`` with ``g`` detached (``classifier_adversarial``;
  §2.7 #3), its gradient stopping at C's head when C shares D's encoder (§2.7 #5).
* Mutual information (§2.7 #1), weight λ: ``infogan`` (default): ``mean_{i,k} CE(C(x̂_ik), k)``;
  ``literal``: ``mean_i (1/K) Σ_k α_ik CE(α_i, C(x̂_ik))`` (α detached). It updates C (with the shared
  encoder, as InfoGAN) in the D step and, with ``mi_updates_generator`` (§2.7 #2), G, μ and A.

Update order per batch (InfoGAN practice, seed Algorithm 1 merged into two optimiser steps):
D and C step on ``L_D + L_C,adv + λ L_I`` (fakes detached); then G and the prior step on
``L_G + λ L_I`` (D and C frozen). π follows ``π ← β π + (1 − β) mean_i α_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

ADVERSARIAL = ("nonsaturating", "saturating")
MUTUAL_INFORMATION = ("infogan", "literal")


@dataclass
class StepSettings:
    """The loss choices of one step (``gmm`` config keys; see the module docstring)."""

    adversarial: str = "nonsaturating"
    mutual_information: str = "infogan"
    mi_weight: float = 1.0
    mi_updates_generator: bool = True
    classifier_adversarial: bool = True
    pi_beta: float = 0.99


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim`` (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=dim)


def generator_terms(d_fake: torch.Tensor, form: str) -> torch.Tensor:
    """Per-fake generator loss ``g`` from logits: ``−log D`` (non-saturating) or ``log(1 − D)``."""
    if form == "nonsaturating":
        return F.softplus(-d_fake)
    if form == "saturating":
        return -F.softplus(d_fake)
    raise ValueError(f"adversarial form must be one of {ADVERSARIAL}, got {form!r}")


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1/K) mean_i [−log D(x_i) − Σ_k α_ik log(1 − D(x̂_ik))]``; ``d_real`` B, ``d_fake`` and ``alpha`` B×K."""
    k = alpha.shape[1]
    return (F.softplus(-d_real) + (alpha * F.softplus(d_fake)).sum(1)).mean() / k


def weighted_generator_loss(g: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1/K) mean_i Σ_k α_ik g_ik`` (B×K each)."""
    return (alpha * g).sum(1).mean() / alpha.shape[1]


def mutual_information_loss(logits_fake: torch.Tensor, comp: torch.Tensor, alpha: torch.Tensor, form: str) -> torch.Tensor:
    """The MI term to minimise (−L_I up to the constant H(c)).

    Args:
        logits_fake: C's logits on the fakes, ``(B·K) × K``, row ``i·K + k``.
        comp: the generating component of each fake, ``B·K``.
        alpha: responsibilities of the reals (detached), ``B × K``.
        form: ``infogan`` or ``literal``.
    """
    if form == "infogan":
        return F.cross_entropy(logits_fake, comp)
    if form == "literal":
        b, k = alpha.shape
        logq = torch.log_softmax(logits_fake, dim=1).view(b, k, k)  # [i, generating k, class j]
        ce = -(alpha.unsqueeze(1) * logq).sum(2)  # B × K: CE(α_i, C(x̂_ik))
        return (alpha * ce).sum(1).mean() / k
    raise ValueError(f"mutual_information must be one of {MUTUAL_INFORMATION}, got {form!r}")


def _grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        m.requires_grad_(flag)


def gmm_step(
    G: nn.Module,
    prior: nn.Module,
    D: nn.Module,
    C: nn.Module,
    opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    real: torch.Tensor,
    s: StepSettings,
) -> dict[str, torch.Tensor]:
    """One seed-002 step on a batch of reals; draws its noise from the global torch RNG.

    Args:
        G: latents ``N × z_dim`` → samples shaped like ``real``.
        prior: :class:`brainlatent.models.gmm.MixturePrior` (its ``pi`` buffer is updated here).
        D: samples → ``N`` logits. C: samples → ``N × K`` logits (``forward(x, detach_encoder)``).
        opt_d: optimiser of D and C; opt_g: optimiser of G and the prior.
        real: ``B × ...`` real samples.
        s: :class:`StepSettings`.

    Returns:
        Detached statistics: ``loss_d``, ``loss_g``, ``mi``, ``c_acc`` (share of fakes C assigns to
        their own component), ``d_real``/``d_fake`` (mean D probabilities), ``pi_entropy``,
        ``resp_entropy`` (mean per-image entropy of α), ``pi_max``.
    """
    b, k = len(real), prior.components
    dev = real.device
    comp = torch.arange(k, device=dev).repeat(b)  # row i*K + k is component k
    e, e2 = prior.draw_normals(b * k)
    z = prior.transform(comp, e.to(dev), None if e2 is None else e2.to(dev))
    fake = G(z)

    # D and C
    logits_real = C(real, detach_encoder=True)
    alpha = torch.softmax(logits_real, dim=1)
    d_real = D(real)
    d_fake = D(fake.detach()).view(b, k)
    loss_d = discriminator_loss(d_real, d_fake, alpha.detach())
    loss_c_adv = weighted_generator_loss(generator_terms(d_fake, s.adversarial).detach(), alpha) if s.classifier_adversarial else 0.0
    logits_fake = C(fake.detach())
    mi_d = mutual_information_loss(logits_fake, comp, alpha.detach(), s.mutual_information)
    opt_d.zero_grad(set_to_none=True)
    (loss_d + loss_c_adv + s.mi_weight * mi_d).backward()
    opt_d.step()

    # G and the prior
    _grad([D, C], False)
    with torch.no_grad():
        alpha_g = torch.softmax(C(real), dim=1)
    loss_g = weighted_generator_loss(generator_terms(D(fake).view(b, k), s.adversarial), alpha_g)
    total = loss_g
    if s.mi_updates_generator and s.mi_weight > 0:
        total = total + s.mi_weight * mutual_information_loss(C(fake), comp, alpha_g, s.mutual_information)
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()
    _grad([D, C], True)

    with torch.no_grad():
        a = alpha.detach()
        prior.pi.mul_(s.pi_beta).add_((1 - s.pi_beta) * a.mean(0).to(prior.pi))
        return {
            "loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "mi": mi_d.detach(),
            "c_acc": (logits_fake.argmax(1) == comp).float().mean(),
            "d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean(),
            "pi_entropy": entropy(prior.pi), "resp_entropy": entropy(a).mean(), "pi_max": prior.pi.max(),
        }


def plain_step(
    G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, opt_g: torch.optim.Optimizer,
    real: torch.Tensor, z_dim: int, adversarial: str = "nonsaturating",
) -> dict[str, torch.Tensor]:
    """One step of the plain GAN of the same networks: z ~ N(0, I), BCE losses, one fake per real."""
    b, dev = len(real), real.device
    fake = G(torch.randn(b, z_dim).to(dev))
    d_real, d_fake = D(real), D(fake.detach())
    loss_d = (F.softplus(-d_real) + F.softplus(d_fake)).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    D.requires_grad_(False)
    loss_g = generator_terms(D(fake), adversarial).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    D.requires_grad_(True)
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(d_real).mean().detach(), "d_fake": torch.sigmoid(d_fake).mean().detach()}


def uniform_entropy(k: int) -> float:
    """``log K``: the entropy of uniform mixture weights (for messages)."""
    return math.log(k)
