"""Tiny stand-ins implementing the generator and feature interfaces the metrics consume.

``LinearGenerator``: ``G(w) = A w`` reshaped to an ``R x R`` image, plus ``noise_scale`` times the
noise inputs (so a pair that did not share its noise would blow up PPL), with an identity, linear or
second-moment-normalising mapping network, or none (``arch="gan"``). Closed-form PPL values follow.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class LinearGenerator(torch.nn.Module):
    """``synthesis(w) = (A w).view(R, R) + noise_scale * (upsampled noise0 + noise1)``.

    Args:
        z_dim: latent size (w_dim too, unless ``mapping="linear"`` with ``w_dim``).
        resolution: image side R (``R*R >= w_dim`` for an orthonormal ``A``).
        mapping: ``"identity"``, ``"linear"`` (w = M z), ``"normalize"`` (w = z / rms(z)).
        arch: ``"stylegan"`` or ``"gan"`` (no mapping network; w = z, z not normalised).
        scale: ``A = scale * Q`` with ``Q`` orthonormal columns (``orthonormal=True``) or Gaussian.
        noise_scale: weight of the noise inputs in the image.
        nonlinear: apply ``tanh`` to the image (a non-linear generator).
    """

    def __init__(self, z_dim=8, resolution=8, mapping="identity", arch="stylegan", scale=1.0,
                 orthonormal=False, noise_scale=0.0, nonlinear=False, w_dim=None, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.arch = arch
        self.z_dim = z_dim
        self.w_dim = w_dim if (w_dim is not None and mapping == "linear") else z_dim
        self.resolution = resolution
        self.has_mapping = arch == "stylegan"
        self.kind = mapping if self.has_mapping else "identity"
        self.normalizes_z = self.kind == "normalize"
        p = resolution * resolution
        a = torch.randn(p, self.w_dim, generator=g, dtype=torch.float64)
        if orthonormal:
            a, _ = torch.linalg.qr(a)
        else:
            a = a / np.sqrt(p)
        self.register_buffer("A", (scale * a).float())
        self.register_buffer("M", (torch.randn(self.w_dim, z_dim, generator=g) / np.sqrt(z_dim)).float())
        self.noise_scale = noise_scale
        self.nonlinear = nonlinear

    def mapping(self, z, truncation_psi=1.0):
        if self.kind == "linear":
            return z @ self.M.T
        if self.kind == "normalize":
            return z * z.square().mean(dim=1, keepdim=True).rsqrt()
        return z

    def noise_shapes(self):
        return [(1, 1, 4, 4), (1, 1, self.resolution, self.resolution)]

    def synthesis(self, w, noise=None):
        n, r = w.shape[0], self.resolution
        x = (w @ self.A.T).view(n, 1, r, r)
        if self.nonlinear:
            x = torch.tanh(2.0 * x)
        if noise is None:
            noise = [torch.randn(n, *s[1:]) for s in self.noise_shapes()]
        n0 = F.interpolate(noise[0].expand(n, -1, -1, -1), size=(r, r), mode="nearest")
        return x + self.noise_scale * (n0 + noise[1].expand(n, -1, -1, -1))

    def forward(self, z, truncation_psi=1.0, noise=None):
        return self.synthesis(self.mapping(z), noise)


def squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of squared pixel differences per image, ``N``."""
    return (a - b).double().square().flatten(1).sum(dim=1)


class LinearFeatures:
    """``embed`` = a fixed linear projection of the pixels; ``distance`` = squared L2;
    ``predict_proba``: ``sex`` from the sign of the image's projection on a fixed direction and
    ``age`` (5 bins) from its magnitude."""

    def __init__(self, resolution=8, dim=6, seed=1, sharpness=4.0):
        g = torch.Generator().manual_seed(seed)
        self.P = torch.randn(resolution * resolution, dim, generator=g) / resolution
        self.u = torch.randn(resolution * resolution, generator=g) / resolution
        self.sharpness = sharpness

    def embed(self, images, batch_size=64):
        return torch.as_tensor(images).flatten(1).float() @ self.P

    def distance(self, a, b):
        return squared_l2(a, b)

    def predict_proba(self, images):
        s = torch.as_tensor(images).flatten(1).float() @ self.u
        sex = torch.softmax(torch.stack([-self.sharpness * s, self.sharpness * s], 1), 1)
        centres = torch.linspace(-1.5, 1.5, 5)
        age = torch.softmax(-4.0 * (s.unsqueeze(1) - centres).square(), 1)
        return {"sex": sex, "age": age}
