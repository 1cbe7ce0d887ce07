"""PPL: closed-form values for linear generators, the NVlabs percentile filter, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_standins import LinearGenerator, squared_l2
from scipy.integrate import quad

from brainlatent.errors import BrainlatentError
from brainlatent.metrics.ppl import (
    all_variants,
    perceptual_path_length,
    percentile_filter,
    slerp,
    variants_for,
    z_path_point,
)

torch.set_num_threads(1)

N = 3000  # pairs per estimate: Monte-Carlo error about 1 % for these generators


def expected_theta_sq(d: int) -> float:
    """E[theta^2] for the angle between two independent N(0, I_d) vectors (density ∝ sin^(d-2))."""
    num = quad(lambda t: t * t * np.sin(t) ** (d - 2), 0, np.pi)[0]
    den = quad(lambda t: np.sin(t) ** (d - 2), 0, np.pi)[0]
    return num / den


def ppl(G, space, sampling, n=N, seed=0, **kw):
    return perceptual_path_length(G, squared_l2, space, sampling, n, batch_size=500, seed=seed, **kw)


@pytest.mark.parametrize("sampling", ["full", "end"])
def test_linear_generator_w_ppl_is_twice_frobenius_norm(sampling):
    # G(w) = A w, w = z: the pair difference is eps A (z2 - z1), so PPL = E|A (z2 - z1)|^2 = 2 |A|_F^2.
    # noise_scale=1: pairs that did not share their noise would be off by ~1e10.
    G = LinearGenerator(z_dim=16, resolution=8, noise_scale=1.0)
    expected = 2 * float(G.A.double().square().sum())
    r = ppl(G, "w", sampling)
    assert r["mean"] == pytest.approx(expected, rel=0.05)
    assert r["n_total"] == N and 0.97 * N <= r["n_kept"] < N


def test_linear_mapping_w_ppl():
    G = LinearGenerator(z_dim=12, resolution=8, mapping="linear", w_dim=10)
    expected = 2 * float((G.A.double() @ G.M.double()).square().sum())
    assert ppl(G, "w", "full")["mean"] == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("sampling", ["full", "end"])
def test_normalising_mapping_z_and_w_closed_form(sampling):
    # w = sqrt(d) z/|z|, A = s Q (orthonormal columns): slerp moves at angular speed theta, so
    # PPL_z = s^2 d E[theta^2]; lerp of the mapped endpoints gives PPL_w = s^2 d E|u1 - u2|^2 = 2 s^2 d.
    d, s = 16, 0.5
    G = LinearGenerator(z_dim=d, resolution=8, mapping="normalize", scale=s, orthonormal=True)
    z = ppl(G, "z", sampling, n=2000)
    w = ppl(G, "w", sampling, n=2000)
    assert z["mean"] == pytest.approx(s * s * d * expected_theta_sq(d), rel=0.03)
    assert w["mean"] == pytest.approx(2 * s * s * d, rel=0.05)
    assert not z["z_rescaled"] and z["interpolation"] == "slerp" and w["interpolation"] == "lerp"


def test_mapping_free_gan_z_end_closed_form_with_rescaling():
    # arch gan, G(z) = A z: the path is |lerp(t)| * slerp(t); at t = 0 its velocity has the radial part
    # (u1 . z2 - |z1|) and the tangential part |z1| theta, so PPL_z_end = s^2 (1 + d + d E[theta^2]).
    d, s = 16, 0.5
    G = LinearGenerator(z_dim=d, resolution=8, arch="gan", scale=s, orthonormal=True, noise_scale=1.0)
    r = ppl(G, "z", "end")
    assert r["z_rescaled"] and r["notes"]
    assert r["mean"] == pytest.approx(s * s * (1 + d + d * expected_theta_sq(d)), rel=0.05)
    assert variants_for(G) == ["z_full", "z_end"]
    with pytest.raises(BrainlatentError, match="mapping network"):
        ppl(G, "w", "full", n=10)


def test_rescaled_slerp_keeps_lerp_norm_and_endpoints():
    g = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    p = z_path_point(z0, z1, t, rescale=True)
    torch.testing.assert_close(p.norm(dim=1), (z0 + (z1 - z0) * t[:, None]).norm(dim=1))
    torch.testing.assert_close(z_path_point(z0, z1, torch.zeros(5, dtype=torch.float64), True), z0)
    torch.testing.assert_close(z_path_point(z0, z1, torch.ones(5, dtype=torch.float64), True), z1)
    torch.testing.assert_close(slerp(z0, z1, t).norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_shared_noise_cancels():
    # the same seed draws the same z and t; with shared noise, adding noise changes nothing
    quiet = ppl(LinearGenerator(z_dim=8, noise_scale=0.0), "w", "full", n=500)
    noisy = ppl(LinearGenerator(z_dim=8, noise_scale=3.0), "w", "full", n=500)
    assert noisy["mean"] == pytest.approx(quiet["mean"], rel=0.02)


def test_percentile_filter_uses_lower_and_higher():
    # 1..200: P1 'lower' = 2 and P99 'higher' = 199 keep 198 values; linear interpolation would
    # give 2.99 and 198.01 and keep 196.
    values = np.random.default_rng(0).permutation(np.arange(1.0, 201.0))
    mask, lo, hi = percentile_filter(values)
    assert (lo, hi) == (2.0, 199.0)
    assert int(mask.sum()) == 198
    assert set(values[~mask]) == {1.0, 200.0}
    # ties at the bounds are all kept
    tied = np.array([0.0] * 5 + list(range(1, 96)) + [1000.0] * 5)
    mask, lo, hi = percentile_filter(tied)
    assert lo == 0.0 and hi == 1000.0 and mask.all()


def test_same_seed_same_numbers():
    G = LinearGenerator(z_dim=8, mapping="normalize", noise_scale=0.5)
    a = all_variants(G, squared_l2, 200, batch_size=64, seed=11)
    b = all_variants(G, squared_l2, 200, batch_size=64, seed=11)
    c = all_variants(G, squared_l2, 200, batch_size=64, seed=12)
    assert list(a) == ["z_full", "w_full", "z_end", "w_end"]
    assert a == b
    assert a["w_full"]["mean"] != c["w_full"]["mean"]


def test_bad_arguments():
    G = LinearGenerator()
    with pytest.raises(BrainlatentError, match="space"):
        ppl(G, "x", "full", n=10)
    with pytest.raises(BrainlatentError, match="sampling"):
        ppl(G, "w", "middle", n=10)
