"""WGAN-GP losses (Gulrajani et al. 2017) with the Progressive-GAN drift term.

Critic:    ``L_D = E[D(fake)] - E[D(real)] + λ · E[(‖∇D(x̂)‖₂ - 1)²] + drift · E[D(real)²]``
with ``x̂ = α·real + (1-α)·fake``, ``α ~ U(0, 1)`` per sample.
Generator: ``L_G = -E[D(fake)]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


def gradient_penalty(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean of ``(‖∇ₓ D(x̂)‖₂ - 1)²`` over random interpolates ``x̂`` (per-sample gradient norm).

    Args:
        critic: maps ``N × ...`` inputs to ``N`` or ``N × 1`` scores.
        real: real samples, ``N × C × H × W`` (any shape with the batch first).
        fake: generated samples, same shape (detached or not; only ``x̂`` is differentiated).
        generator: optional RNG for the interpolation weights (the global RNG otherwise).

    Returns:
        A scalar tensor that carries a graph to the critic's parameters (``create_graph=True``).

    Example:
        >>> a = torch.full((1, 2, 2), 0.5)
        >>> float(gradient_penalty(lambda x: (x * a).flatten(1).sum(1), torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)))
        0.0
    """
    if real.shape != fake.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} must have the same shape")
    alpha_shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    alpha = torch.rand(alpha_shape, generator=generator, device=real.device if generator is None else generator.device)
    alpha = alpha.to(device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(outputs=scores.float().sum(), inputs=x_hat, create_graph=True)
    norm = grad.float().flatten(1).norm(2, dim=1)
    return (norm - 1).square().mean()


def critic_loss(
    critic: Critic,
    real: torch.Tensor,
    fake: torch.Tensor,
    gp_lambda: float = 10.0,
    drift: float = 0.001,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """WGAN-GP critic loss and its parts.

    Returns:
        ``(loss, stats)`` with stats ``loss_d``, ``gp``, ``wasserstein`` (mean D(real) − mean D(fake)),
        ``d_real`` and ``d_fake`` as detached scalar tensors (no device sync until read).
    """
    fake = fake.detach()
    d_real = critic(real).float()
    d_fake = critic(fake).float()
    gp = gradient_penalty(critic, real, fake, generator=generator) if gp_lambda > 0 else d_real.new_zeros(())
    loss = d_fake.mean() - d_real.mean() + gp_lambda * gp + drift * d_real.square().mean()
    stats = {
        "loss_d": loss.detach(),
        "gp": gp.detach(),
        "wasserstein": (d_real.mean() - d_fake.mean()).detach(),
        "d_real": d_real.mean().detach(),
        "d_fake": d_fake.mean().detach(),
    }
    return loss, stats


def generator_loss(critic: Critic, fake: torch.Tensor) -> torch.Tensor:
    """``-E[D(fake)]``."""
    return -critic(fake).float().mean()
