"""Generator, discriminator and loss pieces: shapes, parameter layout, noise, truncation, GP, EMA."""

from __future__ import annotations

import pytest
import torch

from brainlatent.models.discriminator import Discriminator, MinibatchStdLayer
from brainlatent.models.layers import channels_at
from brainlatent.models.stylegan import Generator
from brainlatent.train.gan import ema_beta, ema_update, mix_styles
from brainlatent.train.losses import critic_loss, generator_loss, gradient_penalty

TINY = dict(channels_base=64, channels_max=8)


@pytest.mark.parametrize("arch", ["stylegan", "gan"])
@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("z_dim", [32, 64, 128, 512])
def test_generator_output_shapes(arch, resolution, z_dim):
    torch.manual_seed(0)
    G = Generator(z_dim, resolution=resolution, arch=arch, mapping_layers=3, **TINY)
    z = torch.randn(3, z_dim)
    w = G.mapping(z)
    assert w.shape == (3, G.w_dim) and G.w_dim == z_dim
    img = G.synthesis(w)
    assert img.shape == (3, 1, resolution, resolution)
    assert G(z).shape == (3, 1, resolution, resolution)
    assert torch.isfinite(img).all()
    # two noise layers per block, blocks from 4x4 up to the resolution
    n_blocks = resolution.bit_length() - 2  # 4x4, 8x8, ..., resolution
    assert G.num_ws == 2 * n_blocks == len(G.noise_shapes())
    assert G.noise_shapes()[0] == (1, 1, 4, 4) and G.noise_shapes()[-1] == (1, 1, resolution, resolution)


@pytest.mark.parametrize("resolution", [32, 64])
def test_discriminator_output_shape(resolution):
    D = Discriminator(resolution, **TINY)
    assert D(torch.randn(5, 1, resolution, resolution)).shape == (5, 1)  # 5: not a multiple of the mbstd group


def test_channels_follow_base_and_max():
    assert [channels_at(r, 1024, 64) for r in (4, 8, 16, 32, 64)] == [64, 64, 64, 32, 16]
    G = Generator(8, resolution=32, channels_base=256, channels_max=16)
    assert [b.out_channels for b in G.synthesis.blocks] == [16, 16, 16, 8]


def test_minibatch_std_appends_group_std():
    x = torch.randn(8, 4, 4, 4)
    y = MinibatchStdLayer(group_size=4, num_channels=1)(x)
    assert y.shape == (8, 5, 4, 4)
    assert torch.equal(y[:, :4], x)
    # NVlabs grouping: sample i is grouped with i + N/G, i + 2N/G, ...
    group = x[[0, 2, 4, 6]]
    expected = group.std(dim=0, unbiased=False).mean()
    assert torch.allclose(y[0, 4], expected.expand(4, 4), atol=1e-5)
    assert torch.allclose(y[6, 4], y[0, 4])


@pytest.mark.parametrize("z_dim", [32, 64])
def test_mapping_free_variant_has_no_mapping_parameters(z_dim):
    sg = Generator(z_dim, resolution=32, arch="stylegan", **TINY)
    gan = Generator(z_dim, resolution=32, arch="gan", **TINY)
    assert sum(p.numel() for p in gan.mapping.parameters()) == 0
    assert sum(p.numel() for p in sg.mapping.parameters()) == 3 * z_dim * z_dim + 3 * z_dim
    assert sum(p.numel() for p in sg.synthesis.parameters()) == sum(p.numel() for p in gan.synthesis.parameters())
    assert sg.has_mapping and sg.normalizes_z and not gan.has_mapping and not gan.normalizes_z
    z = torch.randn(4, z_dim) * 3
    assert torch.equal(gan.mapping(z), z)  # w = z, not normalised


def test_stylegan_mapping_normalises_z():
    G = Generator(16, resolution=16, **TINY)
    z = torch.randn(2, 16)
    assert torch.allclose(G.mapping(z), G.mapping(5 * z), atol=1e-5)


def test_identical_noise_gives_identical_images_and_fresh_noise_differs():
    torch.manual_seed(1)
    G = Generator(16, resolution=16, **TINY)
    with torch.no_grad():  # make the noise visible (noise strengths start at 0)
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)
    w = G.mapping(torch.randn(1, 16)).repeat(2, 1)
    noise = [torch.randn(s) for s in G.noise_shapes()]  # (1,1,H,W): broadcast over the batch
    a = G.synthesis(w, noise=noise)
    assert torch.equal(a[0], a[1])
    assert torch.equal(a, G.synthesis(w, noise=noise))
    b = G.synthesis(w)
    assert not torch.allclose(b[0], b[1])
    with pytest.raises(AssertionError):
        G.synthesis(w, noise=noise[:-1])


def test_truncation():
    torch.manual_seed(2)
    G = Generator(16, resolution=16, **TINY)
    G.mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(3, 16)
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.w_avg.expand(3, -1))
    w = G.mapping(z)
    assert torch.allclose(G.mapping(z, truncation_psi=0.5), G.w_avg + 0.5 * (w - G.w_avg), atol=1e-6)
    gan = Generator(16, resolution=16, arch="gan", **TINY)
    assert torch.allclose(gan.mapping(z, truncation_psi=0.5), 0.5 * z)


def test_w_avg_tracks_running_mean():
    G = Generator(8, resolution=16, w_avg_beta=0.5, **TINY)
    z = torch.randn(4, 8)
    w = G.mapping(z, update_w_avg=True)
    assert torch.allclose(G.w_avg, 0.5 * w.mean(0), atol=1e-6)


def test_broadcast_ws_equal_per_layer_ws_and_style_mixing():
    torch.manual_seed(3)
    G = Generator(8, resolution=16, **TINY)
    z = torch.randn(2, 8)
    noise = [torch.zeros(s) for s in G.noise_shapes()]
    w = G.mapping(z)
    ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
    assert torch.allclose(G.synthesis(w, noise=noise), G.synthesis(ws, noise=noise))
    assert torch.equal(mix_styles(G, z, prob=0.0), ws)
    mixed = mix_styles(G, z, prob=1.0)
    assert mixed.shape == ws.shape
    assert torch.equal(mixed[:, 0], ws[:, 0]) and not torch.equal(mixed[:, -1], ws[:, -1])


def test_gradient_penalty_of_linear_critic_is_exact():
    torch.manual_seed(4)
    a = torch.randn(1, 1, 8, 8)
    real, fake = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)

    def critic(x):
        return (x * a).flatten(1).sum(1, keepdim=True)

    gp = gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx((a.norm().item() - 1) ** 2, rel=1e-5)
    unit = a / a.norm()
    assert gradient_penalty(lambda x: (x * unit).flatten(1).sum(1), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_differentiable_for_the_critic():
    D = Discriminator(16, **TINY)
    gp = gradient_penalty(D, torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16))
    gp.backward()
    # every weight shapes the input gradient (the output bias alone does not)
    weights = {n: p for n, p in D.named_parameters() if n.endswith("weight")}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights.values())
    assert D.epilogue.out.bias.grad is None


def test_critic_and_generator_losses_on_a_constant_critic():
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)

    def critic(x):
        return x.flatten(1)[:, :1] * 0 + 2.0

    loss, stats = critic_loss(critic, real, fake, gp_lambda=10.0, drift=0.5)
    # D = 2 everywhere: Wasserstein term 0; gradient 0 so GP = (0 - 1)^2 = 1; drift 0.5 * 2^2
    assert loss.item() == pytest.approx(10.0 * 1.0 + 0.5 * 4.0)
    assert stats["wasserstein"].item() == pytest.approx(0.0) and stats["gp"].item() == pytest.approx(1.0)
    assert generator_loss(critic, fake).item() == pytest.approx(-2.0)


def test_ema_update_arithmetic():
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
        model.bias.fill_(-2.0)
        ema.weight.copy_(torch.tensor([[0.0, 1.0]]))
        ema.bias.fill_(4.0)
    ema_update(ema, model, beta=0.75)
    assert torch.allclose(ema.weight, torch.tensor([[0.25, 1.5]]))  # 0.75 * ema + 0.25 * model
    assert torch.allclose(ema.bias, torch.tensor([2.5]))
    assert ema_beta(16, 1.0) == pytest.approx(0.5 ** (16 / 1000))
    assert ema_beta(1000, 1.0) == pytest.approx(0.5)
