"""PPL: closed-form values for linear generators, the NVlabs percentile filter, determinism."""

from __future__ import annotations

from math import lgamma

import numpy as np
import pytest
import torch
from metrics_standins import LinearGenerator, squared_l2
from scipy.integrate import quad

from brainlatent.errors import BrainlatentError
from brainlatent.metrics.ppl import (
    all_variants,
    bootstrap_filtered_means,
    compare_variants,
    paired_difference,
    percentile_filter,
    perceptual_path_length,
    ppl_distances,
    slerp,
    summarise,
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


def expected_norm(d: int) -> float:
    """E|z| for z ~ N(0, I_d): sqrt(2) Gamma((d + 1) / 2) / Gamma(d / 2)."""
    return float(np.sqrt(2.0) * np.exp(lgamma((d + 1) / 2) - lgamma(d / 2)))


def gan_z_closed_form(d: int, s: float) -> dict[str, float]:
    """PPL of the constant-norm Z path of G(z) = s Q z (Q orthonormal columns), squared L2 distance.

    The path is r(t) u(t) with r(t) = (1 - t)|z1| + t|z2| and u the unit slerp (angular speed theta), so
    |path'|^2 = (|z2| - |z1|)^2 + r(t)^2 theta^2. Norms and angle are independent for Gaussian z:
    E(|z2| - |z1|)^2 = 2 (d - m^2) with m = E|z|; E r(0)^2 = d; E r(t)^2 over t ~ U(0, 1) = (2 d + m^2) / 3.
    """
    th2, m2 = expected_theta_sq(d), expected_norm(d) ** 2
    radial = 2 * (d - m2)
    return {"end": s * s * (radial + d * th2), "full": s * s * (radial + (2 * d + m2) / 3 * th2)}


def test_mapping_free_gan_z_path_has_constant_norm_closed_form():
    # arch gan, an isometry G(z) = Q z at d = 32: z_end 80.9 and z_full 80.5 (closed form). The old path,
    # scaled by |lerp(z1, z2, t)|, dips to |z| / sqrt(2) mid-path and gave z_end 112 and z_full 67.
    d = 32
    G = LinearGenerator(z_dim=d, resolution=8, arch="gan", scale=1.0, orthonormal=True, noise_scale=1.0)
    expected = gan_z_closed_form(d, 1.0)
    end, full = ppl(G, "z", "end"), ppl(G, "z", "full")
    assert end["z_rescaled"] and end["notes"]
    assert end["mean"] == pytest.approx(expected["end"], rel=0.03)
    assert full["mean"] == pytest.approx(expected["full"], rel=0.03)
    assert full["mean"] == pytest.approx(end["mean"], rel=0.04)
    # comparable with StyleGAN's Z: a normalising mapping (w = sqrt(d) z/|z|) and the same isometry
    # gives d E[theta^2] = 79.9, within the radial term (2 (d - m^2) = 1.0) of the GAN's value
    S = LinearGenerator(z_dim=d, resolution=8, mapping="normalize", scale=1.0, orthonormal=True)
    assert ppl(S, "z", "end")["mean"] == pytest.approx(end["mean"], rel=0.03)
    assert variants_for(G) == ["z_full", "z_end"]
    with pytest.raises(BrainlatentError, match="mapping network"):
        ppl(G, "w", "full", n=10)


def test_rescaled_slerp_interpolates_the_norms_and_keeps_endpoints():
    g = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = torch.rand(5, generator=g, dtype=torch.float64)
    p = z_path_point(z0, z1, t, rescale=True)
    torch.testing.assert_close(p.norm(dim=1), (1 - t) * z0.norm(dim=1) + t * z1.norm(dim=1))
    # same direction as the unit slerp
    torch.testing.assert_close(p / p.norm(dim=1, keepdim=True), slerp(z0, z1, t))
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


def test_bootstrap_standard_error_matches_the_spread_over_independent_runs():
    # the filtered mean of n lognormal values, computed on 150 independent data sets: the bootstrap
    # SE of one data set must estimate the spread of the filtered mean across data sets
    rng = np.random.default_rng(5)
    n, runs = 400, 150
    data = rng.lognormal(np.log(100.0), 0.6, size=(runs, n))
    means = [summarise(x, resamples=10)["mean"] for x in data]
    true_se = float(np.std(means, ddof=1))
    boot_se = [summarise(x, seed=i, resamples=300)["se"] for i, x in enumerate(data[:40])]
    assert np.mean(boot_se) == pytest.approx(true_se, rel=0.15)
    # the 95 % interval covers the mean of the 150 runs (≈ the population value) in most runs
    covered = [(r["ci_low"] <= np.mean(means) <= r["ci_high"]) for r in (summarise(x, seed=i, resamples=300) for i, x in enumerate(data[:40]))]
    assert 0.85 <= np.mean(covered) <= 1.0


def test_bootstrap_reapplies_the_filter_and_is_seeded():
    values = np.random.default_rng(1).lognormal(0.0, 1.0, 2000)
    a, b = summarise(values, seed=3), summarise(values, seed=3)
    assert a == b and summarise(values, seed=4)["se"] != a["se"]
    assert a["ci_low"] < a["mean"] < a["ci_high"]
    # one huge outlier: the filter drops it from the data and from (almost) every resample (it would
    # survive only when drawn more often than the 20 values the filter drops), so the error barely moves
    spiked = values.copy()
    spiked[0] = 1e9
    s = summarise(spiked, seed=3)
    assert s["se"] == pytest.approx(a["se"], rel=0.2) and s["ci_high"] < 2 * a["ci_high"]
    means = bootstrap_filtered_means([values], seed=3, resamples=50, max_block=4500)  # 2 rows per block
    assert means.shape == (1, 50) and np.all(np.isfinite(means))


def test_paired_difference_uses_the_pairing():
    rng = np.random.default_rng(2)
    x = rng.lognormal(np.log(50.0), 0.8, 2000)
    a, b = 2.0 * x + rng.normal(0, 1.0, x.size), x
    d = paired_difference(a, b, seed=0)
    sa, sb = summarise(a, seed=0), summarise(b, seed=0)
    assert d["difference"] == pytest.approx(sa["mean"] - sb["mean"])
    # a and b move together, so the paired error is far below the independent-samples error
    assert d["se"] < 0.9 * np.hypot(sa["se"], sb["se"])
    assert d["ci_low"] < d["difference"] < d["ci_high"]
    same = paired_difference(x, x, seed=0)
    assert same["difference"] == 0.0 and same["se"] == 0.0


def test_compare_variants_states_the_sample_count_rule():
    # W and Z of a normalising StyleGAN differ by 2 d / (d E[theta^2]) - 1 ≈ 25 %: resolved at 2000 pairs
    G = LinearGenerator(z_dim=8, mapping="normalize")
    dists = {v: ppl_distances(G, squared_l2, *v.split("_"), 2000, batch_size=500, seed=0) for v in ("z_full", "w_full")}
    c = compare_variants(dists, seed=0)["z_full-w_full"]
    assert c["se"] > 0 and c["se_below_quarter_gap"] is (c["se"] <= abs(c["difference"]) / 4)
    assert c["se_below_quarter_gap"]
    # 20 pairs cannot resolve it
    few = {v: x[:20] for v, x in dists.items()}
    tiny = compare_variants(few, seed=0)["z_full-w_full"]
    assert tiny["se"] > c["se"]
