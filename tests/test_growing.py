"""Seed 003's growing GANs: exact growth, final shapes, schedule, resume mid-growth, walks, variability profile."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainlatent.config import load_config
from brainlatent.latent_groups import groups_for, resample_group, sample_prior
from brainlatent.models.families import get_family, load_network
from brainlatent.models.growing import (
    GrowingCritic,
    GrowingGenerator,
    build,
    commit,
    grow,
)
from brainlatent.models.growing_plan import ARCHS, GROWS_LAYERS, GrowthPlan
from brainlatent.train import growing as growing_module
from brainlatent.train.checkpoint import list_checkpoints
from brainlatent.train.common import TrainingInterrupted
from brainlatent.train.growing import train_growing
from brainlatent.train.growing_schedule import Schedule, real_images

RES = 16
Z = 32
GROWING = [a for a in ARCHS if a != "bgan"]


@pytest.mark.parametrize("arch", GROWING)
def test_growth_at_beta_zero_computes_the_previous_function(arch):
    """Generator and critic: bitwise equal outputs before and after every growth step at α = β = τ = 0."""
    plan = GrowthPlan(arch, 32, 64)
    gen = torch.Generator().manual_seed(0)
    G, D = build(plan, 0, False, gen)
    z = sample_prior(6, 64, torch.Generator().manual_seed(1))
    for s in range(1, plan.num_stages):
        x = torch.rand(6, 1, plan.res(s - 1), plan.res(s - 1), generator=gen) * 2 - 1
        before_g, before_d = G(z), D(x)
        G, _ = grow(G, gen)
        D, _ = grow(D, gen)
        assert G.fading and D.fading and G.stage == s
        up = (lambda t: F.interpolate(t, scale_factor=2, mode="nearest")) if arch in GROWS_LAYERS else (lambda t: t)
        assert torch.equal(G(z), up(before_g)), f"{arch} stage {s}: generator changed"
        assert torch.equal(D(up(x)), before_d), f"{arch} stage {s}: critic changed"
        # half-way through the fade the function does change (the new weights are live)
        G.set_fade(0.5, 0.5, 0.25)
        assert not torch.equal(G(z), up(before_g))
        G.set_fade(1.0, 1.0, 0.5)
        D.set_fade(1.0, 1.0, 0.5)
        end_g, end_d = G(z), D(up(x))
        G, _ = commit(G)
        D, _ = commit(D)
        torch.testing.assert_close(G(z), end_g, rtol=0, atol=1e-5)  # same function, other summation order
        torch.testing.assert_close(D(up(x)), end_d, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_model_ends_with_the_baseline_architecture(arch):
    plan = GrowthPlan(arch, 32, 64)
    G, D = build(plan, 0, False, torch.Generator().manual_seed(0))
    for _ in range(1, plan.num_stages):
        if plan.changes(G.stage + 1):
            (G, _), (D, _) = grow(G), grow(D)
            (G, _), (D, _) = commit(G), commit(D)
        else:
            G, D = build(plan, G.stage + 1, False)
    Gb, Db = build(GrowthPlan("bgan", 32, 64), 3, False)
    shapes = lambda net: {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes(G) == shapes(Gb) and shapes(D) == shapes(Db)
    assert G(torch.randn(2, 64)).shape == (2, 1, 32, 32)


def test_plans_follow_the_seed_tables():
    clg = GrowthPlan("clggan", 128, 256)
    assert [clg.latent(s) for s in range(6)] == [8, 16, 32, 64, 128, 256]
    g8 = clg.generator_shapes(1)
    assert (g8["g1"][1], g8["b4.conv"][1], g8["b8.conv0"][1], g8["b8.conv1"][1]) == (16, 16, 8, 8)
    d16 = clg.critic_shapes(2)
    assert (d16["fromrgb"][1], d16["b16.conv0"][1], d16["b16.conv1"][1], d16["b8.conv1"][1], d16["d3"]) == (8, 8, 16, 32, (32, 32))
    cg = GrowthPlan("cggan", 128, 256)
    assert [cg.generator_shapes(s)["b16.conv1"][1] for s in range(6)] == [8, 16, 32, 64, 64, 64]
    assert [cg.critic_shapes(s)["d3"][0] + 1 for s in range(6)] == [9, 17, 33, 65, 129, 257]  # + minibatch std
    assert cg.generator_shapes(5)["b128.conv1"][1] == 8
    bg = GrowthPlan("bggan", 128, 256)
    assert [bg.generator_shapes(s)["g1"] for s in (0, 5)] == [(8, 256), (256, 256)]
    assert GrowthPlan("bgan", 128, 256).critic_shapes(0)["b128.conv1"] == (8, 16)
    with pytest.raises(Exception, match="divisible"):
        GrowthPlan("clggan", 32, 36)


def test_schedule_and_real_images():
    plan = GrowthPlan("clggan", 16, 32)
    s = Schedule(plan, 100, 40, 60)
    assert s.total == 100 + 2 * 100
    ph = s.at(120)
    assert ph.stage == 1 and ph.fading and ph.ramp == pytest.approx(0.5)
    x = torch.rand(2, 1, 16, 16)
    real = real_images(x, plan, ph)
    cur, prev = F.avg_pool2d(x, 2), F.interpolate(F.avg_pool2d(x, 4), scale_factor=2)
    torch.testing.assert_close(real, 0.5 * prev + 0.5 * cur)
    cg = GrowthPlan("cggan", 16, 32)
    assert real_images(x, cg, Schedule(cg, 1, 1, 1).at(0)).shape == (2, 1, 16, 16)
    assert Schedule(GrowthPlan("bgan", 16, 32), 100, 40, 60).total == s.total
    u = sample_prior(5, 32, torch.Generator().manual_seed(0))
    assert u.shape == (5, 32) and float((u / 16).norm(dim=1).max()) < 1.0
    ref = u[0]
    moved = resample_group(ref, (8, 16), 4, torch.Generator().manual_seed(1))
    assert torch.equal(moved[:, :8], ref[:8].expand(4, 8)) and torch.equal(moved[:, 16:], ref[16:].expand(4, 16))
    assert groups_for(32) == [(0, 8), (8, 16), (16, 32)]


# --------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    n = 24
    images = np.full((n, 1, RES, RES), -1.0, np.float32)
    for i in range(n):
        a, b = rng.uniform(0.5, 0.9, 2)
        images[i, 0][(xx / a) ** 2 + (yy / b) ** 2 < 1] = rng.uniform(0.0, 0.8)
    np.save(out / "images.npy", images)
    split = ["train"] * 18 + ["val"] * 3 + ["test"] * 3
    pd.DataFrame({"index": np.arange(n), "scan": [f"s{i}" for i in range(n)], "subject": [f"p{i}" for i in range(n)],
                  "session": "1", "slice": 0, "split": split}).to_parquet(out / "manifest.parquet", index=False)
    return out


def tiny_cfg(**growing) -> dict:
    base = dict(initial_kimg=0.008, fade_kimg=0.016, stabilise_kimg=0.008, batch_size=4, channels_final=4,
                checkpoint_kimg=0.008, log_kimg=0.008, snapshot_kimg=0.032, keep_checkpoints=20)
    base.update(growing)
    return load_config({"seed": 7, "growing": base})


@pytest.fixture(scope="module")
def finished(slices_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "clggan-z32"
    return out, train_growing(tiny_cfg(), slices_dir, "clggan", Z, out, device="cpu")


def test_run_writes_outputs_and_stage_speeds(finished):
    out, summary = finished
    assert summary["kimg"] == pytest.approx(0.056) and summary["steps"] == 14
    log = pd.read_csv(out / "log.csv")
    assert {"stage", "phase", "ramp", "latent", "resolution", "img_per_s", "wall_s"} <= set(log.columns)
    assert log["resolution"].tolist()[-1] == RES and log["latent"].tolist()[-1] == Z
    stages = pd.read_csv(out / "stages.csv")
    assert stages["phase"].tolist() == ["0s", "1f", "1s", "2f", "2s"] and (stages["img_per_s"] > 0).all()
    G = load_network(out / "network.pt")
    assert isinstance(G, GrowingGenerator) and G.z_dim == Z and not G.fading and G.stage == 2
    assert G.synthesis(G.mapping(torch.randn(3, Z))).shape == (3, 1, RES, RES)
    assert get_family("clggan").loader() is not None and "variability_profile" in get_family("clggan").metrics


def test_resume_mid_growth_is_bit_identical(finished, slices_dir, tmp_path, monkeypatch):
    """Killed in the middle of the first fade (step 3 of 14), resumed: the same final networks bitwise."""
    reference = torch.load(list_checkpoints(finished[0] / "checkpoints")[-1], weights_only=True)
    out = tmp_path / "clggan-z32"
    real_step, calls = growing_module._train_step, {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        result = real_step(*args, **kwargs)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(growing_module, "_train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        train_growing(tiny_cfg(), slices_dir, "clggan", Z, out, device="cpu")
    monkeypatch.setattr(growing_module, "_train_step", real_step)
    ckpt = torch.load(list_checkpoints(out / "checkpoints")[-1], weights_only=True)
    assert ckpt["growth"] == {"stage": 1, "fading": True} and ckpt["nimg"] == 12
    torch.manual_seed(999)  # disturb the global RNG in between
    summary = train_growing(tiny_cfg(), slices_dir, "clggan", Z, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.012.pt")
    state = torch.load(list_checkpoints(out / "checkpoints")[-1], weights_only=True)
    for key in ("G", "D"):
        assert state[key].keys() == reference[key].keys()
        for name in state[key]:
            assert torch.equal(state[key][name], reference[key][name]), f"{key}.{name} differs"
    assert state["growth"] == reference["growth"] and state["nimg"] == reference["nimg"]


def test_other_settings_start_afresh(finished, slices_dir, tmp_path):
    import shutil

    out = tmp_path / "clggan-z32"
    shutil.copytree(finished[0], out)
    summary = train_growing(tiny_cfg(lr=0.0002, initial_kimg=0.004, fade_kimg=0.004, stabilise_kimg=0.004),
                            slices_dir, "clggan", Z, out, device="cpu")
    assert summary["resumed_from"] is None and (out / "checkpoints.stale-1").is_dir()


def test_bad_latent_size_is_a_clear_error(slices_dir, tmp_path):
    from brainlatent.errors import BrainlatentError

    with pytest.raises(BrainlatentError, match="divisible by 4"):
        train_growing(tiny_cfg(), slices_dir, "cggan", 30, tmp_path / "x", device="cpu")


def test_critic_and_generator_protocol():
    G = GrowingGenerator(GrowthPlan("lggan", 16, 16), 2)
    assert (G.has_mapping, G.normalizes_z, G.c_dim, G.noise_shapes()) == (False, False, 0, [])
    z = torch.randn(2, 16)
    assert torch.equal(G.mapping(z), z)
    D = GrowingCritic(GrowthPlan("lggan", 16, 16), 0)
    with pytest.raises(AssertionError):
        D(torch.randn(2, 1, 16, 16))


# --------------------------------------------------------------------------------------------
# Group variability profile and the registered metrics


class FirstGroupOnly(torch.nn.Module):
    """Stand-in generator: a disc whose texture is ``tanh(A z[:8])``; coordinates 9.. change nothing."""

    def __init__(self, z_dim=32, res=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(res * res, 8, generator=g)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
        self.disc = (xx ** 2 + yy ** 2) < 0.6
        self.z_dim, self.w_dim, self.c_dim, self.resolution, self.arch = z_dim, z_dim, 0, res, "standin"
        self.has_mapping = self.normalizes_z = False

    def mapping(self, z, c=None):
        return z

    def noise_shapes(self):
        return []

    def synthesis(self, w, noise=None):
        tex = torch.tanh(w[:, :8] @ self.A.T).view(-1, 1, self.resolution, self.resolution) * 0.5
        return torch.where(self.disc, tex, torch.full_like(tex, -1.0))


def test_variability_profile_is_concentrated_on_the_group_that_acts():
    from brainlatent.metrics.group_variability import variability_profile

    out = variability_profile(FirstGroupOnly(), references=20, images_per_group=8, seed=3, bootstrap=50)
    assert out["groups"] == ["1-8", "9-16", "17-32"] and out["group_sizes"] == [8, 8, 16]
    assert out["per_group"][0] > 0.05 and out["per_group"][1:] == [0.0, 0.0]
    assert out["per_dimension"][0] == pytest.approx(out["per_group"][0] / 8)
    lo, hi = out["per_group_ci95"]
    assert lo[0] <= out["per_group"][0] <= hi[0] and hi[1] == 0.0
    assert out["spearman_per_dimension"] < -0.8 and 0 < out["brain_pixels"] < 16 * 16


def test_registered_metrics_run_on_a_growing_network():
    import brainlatent.metrics.latent_order  # noqa: F401 - registers the metrics
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.metrics.registry import _METRICS, MetricContext
    from brainlatent.models.vgg import VGG16Classifier

    specs = [{"name": "sex", "kind": "categorical", "levels": ["F", "M"]},
             {"name": "age", "kind": "numeric", "bins": [20, 40, 60, 80]}]
    torch.manual_seed(0)
    features = PerceptualFeatures(VGG16Classifier({"sex": 2, "age": 3}, width=4, fc_width=8), "cpu")
    G = GrowingGenerator(GrowthPlan("clggan", 32, 16), 3).eval()
    cfg = load_config({"evaluate": {"batch_size": 16, "variability_profile": {"references": 3, "images_per_group": 4, "bootstrap": 20},
                                    "attribute_saliency": {"references": 3, "images_per_group": 4, "bootstrap": 20},
                                    "axis_alignment": {"num_samples": 60, "bins": 4}}})
    ctx = MetricContext(cfg, G, features, specs, seed=1, device="cpu")
    prof = _METRICS["variability_profile"].fn(ctx).results
    assert len(prof["per_group"]) == 2 and all(v > 0 for v in prof["per_group"])
    sal = _METRICS["attribute_saliency"].fn(ctx).results
    assert set(sal) == {"sex", "age"} and len(sal["age"]["per_dimension"]) == 2
    align = _METRICS["axis_alignment"].fn(ctx)
    assert {"mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"} <= set(align.results)
    assert align.settings["factors"] == {"sex": "discrete", "age": "continuous"}


def test_walks_and_style_transfer(tmp_path):
    from brainlatent.growing_walks import (
        coordinate_walk_latents,
        group_walk_latents,
        style_transfer,
        write_walks,
    )

    G = GrowingGenerator(GrowthPlan("clggan", 16, 32), 2).eval()
    z = group_walk_latents(G, (8, 16), seed=0, points=5, steps=4)
    assert z.shape == (17, 32) and torch.equal(z[:, :8], z[:1, :8].expand(17, 8)) and torch.equal(z[:, 16:], z[:1, 16:].expand(17, 16))
    c = coordinate_walk_latents(G, 4, seed=0, steps=5)
    assert torch.allclose(c[:, 4], torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))  # ±0.125 seed units = ±2 here
    assert torch.equal(c[:, 5:], c[:1, 5:].expand(5, 27))
    a, b = torch.zeros(2, 32), torch.ones(2, 32)
    t = style_transfer(a, b, (8, 16))
    assert t[:, 8:16].eq(0).all() and t[:, :8].eq(1).all() and t[:, 16:].eq(1).all()
    written = write_walks(G, tmp_path, seed=1)
    assert {"group_1-8.gif", "group_17-32.png", "coord_1.gif", "coord_32.png", "style_transfer.png"} <= set(written)
    assert all((tmp_path / name).stat().st_size > 0 for name in written)


def test_adam_state_is_carried_into_the_grown_parameters():
    from brainlatent.train.growing import carry_optimizer

    plan = GrowthPlan("clggan", 16, 32)
    G = GrowingGenerator(plan, 0)
    opt = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.99))
    G(torch.randn(4, 32)).square().mean().backward()
    opt.step()
    G2, mapping = grow(G)
    opt2 = torch.optim.Adam(G2.parameters(), lr=1e-4, betas=(0.0, 0.99))
    carry_optimizer(opt, G, opt2, G2, mapping)
    old, new = opt.state[G.g1.weight], opt2.state[G2.g1.weight]
    assert G2.g1.weight.shape == (16 * 16, 16) and G.g1.weight.shape == (8 * 16, 8)
    assert torch.equal(new["exp_avg_sq"][:128, :8], old["exp_avg_sq"]) and new["exp_avg_sq"][128:].eq(0).all()
    assert int(new["step"]) == int(old["step"]) == 1
    assert G2.torgb.weight not in opt2.state and mapping["torgb_old.weight"] == "torgb.weight"
