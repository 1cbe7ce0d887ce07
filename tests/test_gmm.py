"""Seed 002's mixture-prior GAN: prior, toy mixture, collapse guard, resume, operations, mode discovery."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainlatent import latents
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.models import gmm_ops
from brainlatent.models.families import get_family, load_network
from brainlatent.models.gmm import GMMGANNetwork, MixturePrior
from brainlatent.train import gmm as gmm_train
from brainlatent.train.checkpoint import list_checkpoints
from brainlatent.train.common import TrainingInterrupted
from brainlatent.train.gmm_losses import StepSettings, gmm_step, mutual_information_loss

RES = 16
BATCH = 4


# --------------------------------------------------------------------------------------------
# The prior


@pytest.mark.parametrize("covariance,eps", [("cholesky", 0.0), ("cholesky", 1e-3), ("full", 1e-3)])
def test_prior_sampling_is_differentiable_and_sigma_stays_pd(covariance, eps):
    torch.manual_seed(0)
    prior = MixturePrior(3, 5, covariance=covariance, eps=eps)
    z, k = prior.sample(64, torch.Generator().manual_seed(1))
    assert z.shape == (64, 5) and k.shape == (64,)
    z.square().sum().backward()
    grads = [p.grad for p in prior.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # push the factors far (large, negative diagonal raw values, big off-diagonals): Σ stays PD
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 4 - 2)
    eig = torch.linalg.eigvalsh(prior.covariance_matrices().double())
    if covariance == "cholesky":  # A triangular with a positive diagonal: Σ = AAᵀ (+ εI) is PD by construction
        a = prior.A()
        assert (torch.diagonal(a, dim1=1, dim2=2) > 0).all() and torch.equal(a, torch.tril(a))
    if eps > 0:
        assert (eig >= eps * 0.99).all()
        torch.linalg.cholesky(prior.covariance_matrices().double())  # raises if not PD
    assert torch.isfinite(prior.log_prob(torch.randn(4, 5))).all()


def test_prior_samples_have_the_mixture_moments():
    prior = MixturePrior(2, 2)
    with torch.no_grad():
        prior.mu.copy_(torch.tensor([[-4.0, 0.0], [4.0, 1.0]]))
        prior.pi.copy_(torch.tensor([0.25, 0.75]))
    z, k = prior.sample(20000, torch.Generator().manual_seed(0))
    assert (k == 1).float().mean().item() == pytest.approx(0.75, abs=0.02)
    assert z[k == 0].mean(0).tolist() == pytest.approx([-4.0, 0.0], abs=0.05)
    cov = torch.cov(z[k == 1].T.detach())
    assert cov.numpy() == pytest.approx(prior.covariance_matrices()[1].detach().numpy(), abs=0.05)


def test_full_covariance_needs_eps():
    with pytest.raises(ValueError, match="eps > 0"):
        MixturePrior(2, 3, covariance="full", eps=0.0)


# --------------------------------------------------------------------------------------------
# The losses on a 2-D toy mixture (no images): G is the identity, so the prior must match the data


class PointClassifier(nn.Module):
    def __init__(self, k: int, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(32, k)

    def forward(self, x, detach_encoder=False):
        h = self.encoder(x)
        return self.head(h.detach() if detach_encoder else h)


class PointCritic(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(1)


def test_toy_mixture_means_move_to_the_true_modes():
    torch.manual_seed(0)
    modes = torch.tensor([[-3.0, 2.0], [3.0, -2.0]])
    prior = MixturePrior(2, 2, mean_std=0.3)
    with torch.no_grad():  # start both components near the origin, away from the modes
        prior.mu.copy_(torch.tensor([[-0.3, 0.0], [0.3, 0.0]]))
    encoder = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2))
    D, C = PointCritic(encoder), PointClassifier(2, encoder)
    G = nn.Identity()
    opt_d = torch.optim.Adam(list(D.parameters()) + list(C.head.parameters()), lr=2e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(prior.parameters(), lr=2e-2, betas=(0.5, 0.999))
    s = StepSettings(pi_beta=0.95)
    for _ in range(600):
        which = torch.randint(0, 2, (64,))
        real = modes[which] + 0.3 * torch.randn(64, 2)
        stats = gmm_step(G, prior, D, C, opt_d, opt_g, real, s)
    found = prior.mu.detach()
    found = found[found[:, 0].argsort()]
    assert torch.allclose(found, modes, atol=0.5), found
    assert prior.pi.tolist() == pytest.approx([0.5, 0.5], abs=0.15)
    assert float(stats["c_acc"]) > 0.9


def test_literal_mutual_information_equals_infogan_for_one_hot_responsibilities():
    logits = torch.randn(6, 3)
    comp = torch.arange(3).repeat(2)
    alpha = torch.eye(3)[[0, 2]]  # two reals, one-hot responsibilities
    literal = mutual_information_loss(logits, comp, alpha, "literal")
    # only the fake of each real's own component counts, with CE against that component, / K
    logq = torch.log_softmax(logits, 1)
    expected = -(logq[0, 0] + logq[5, 2]) / 2 / 3
    assert literal.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Training on images: outputs, collapse guard, resume


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory):
    """24 ellipse 'slices' (two sizes: a factor to find) in the slice-dataset format."""
    out = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    n = 24
    images = np.full((n, 1, RES, RES), -1.0, np.float32)
    big = np.arange(n) % 2 == 0
    for i in range(n):
        a = 0.85 if big[i] else 0.45
        images[i, 0][(xx / a) ** 2 + (yy / rng.uniform(0.5, 0.9)) ** 2 < 1] = rng.uniform(0.0, 0.8)
    np.save(out / "images.npy", images)
    split = ["train"] * 16 + ["test"] * 8
    pd.DataFrame({"index": np.arange(n), "scan": [f"s{i // 2}" for i in range(n)], "subject": [f"p{i // 4}" for i in range(n)],
                  "session": "1", "slice": np.arange(n) % 2, "split": split,
                  "sex": np.where(big, "M", "F"), "ms_type": np.where(np.arange(n) % 4 < 2, "HC", "RRMS")}).to_parquet(out / "manifest.parquet", index=False)
    return out


def tiny_cfg(**over) -> dict:
    gmm = {"width": 0.0625, "kimg": 0.032, "batch_size": BATCH, "lr": 0.002, "checkpoint_kimg": 0.016, "snapshot_kimg": 0.016,
               "log_kimg": 0.008, "keep_checkpoints": 5, "components": 2, "mixture": {"collapse": {"warmup_kimg": 0.0, "max_pi": 0.99}}}
    gmm.update(over)
    return load_config({"seed": 7, "gmm": gmm})


@pytest.fixture(scope="module")
def finished_run(slices_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gmmgan2-z4"
    summary = gmm_train.train_gmmgan(tiny_cfg(), slices_dir, "gmmgan2", 4, out, device="cpu")
    return out, summary


def test_run_writes_outputs_and_the_network_loads(finished_run):
    out, summary = finished_run
    assert summary["steps"] == 8 and summary["components"] == 2 and len(summary["pi"]) == 2
    log = pd.read_csv(out / "log.csv")
    assert {"pi_entropy", "resp_entropy", "pi_0", "pi_1", "mi", "c_acc"} <= set(log.columns)
    assert log["step"].tolist() == [2, 4, 6, 8] and np.isfinite(log["pi_entropy"]).all()
    assert (out / "samples" / "fakes-000000.032.png").exists()
    net = load_network(out / "network.pt")
    assert isinstance(net, GMMGANNetwork) and net.arch == "gmmgan2" and net.components == 2
    assert net.prior.pi.tolist() == pytest.approx(summary["pi"])
    # the common sampler draws z from the learned mixture
    s = latents.sample(net, 5, seed=3)
    z_own = net.sample_z(5, torch.Generator().manual_seed(3))
    assert torch.equal(s.latents["z"], z_own) and s.images.shape == (5, 1, RES, RES)


def test_dcgan_trains_and_samples_from_the_standard_normal(slices_dir, tmp_path):
    summary = gmm_train.train_dcgan(tiny_cfg(kimg=0.008), slices_dir, "dcgan", 4, tmp_path / "dcgan-z4", device="cpu")
    net = load_network(summary["network"])
    assert not hasattr(net, "sample_z") and net.arch == "dcgan"
    assert torch.equal(latents.sample(net, 3, seed=1).latents["z"], torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))
    assert get_family("dcgan").stage_keys == ("seed", "gmm", "-gmm.components", "-gmm.mixture")


def test_collapse_guard_fires_on_a_forced_collapse(slices_dir, tmp_path, monkeypatch):
    real_build = gmm_train.build_networks

    def collapsed(*args, **kwargs):  # C puts every real on component 0
        net, D = real_build(*args, **kwargs)
        with torch.no_grad():
            net.classifier.head.bias.copy_(torch.tensor([30.0, -30.0]))
        return net, D

    monkeypatch.setattr(gmm_train, "build_networks", collapsed)
    cfg = tiny_cfg(mixture={"pi_halflife_kimg": 0.002, "collapse": {"warmup_kimg": 0.008, "max_pi": 0.9}})
    with pytest.raises(BrainlatentError, match=r"mixture collapse at kimg 0\.008.*max π_k 0\.9\d* > gmm\.mixture\.collapse\.max_pi 0\.9"):
        gmm_train.train_gmmgan(cfg, slices_dir, "gmmgan2", 4, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "network.pt").exists()
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert log["pi_max"].iloc[-1] > 0.9 and log["pi_entropy"].iloc[-1] < 0.33


def test_kill_and_resume_is_bit_identical(finished_run, slices_dir, tmp_path, monkeypatch):
    reference = torch.load(list_checkpoints(finished_run[0] / "checkpoints")[-1], weights_only=True)
    out = tmp_path / "gmmgan2-z4"
    real_step, calls = gmm_train.gmm_step, {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        result = real_step(*args, **kwargs)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(gmm_train, "gmm_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        gmm_train.train_gmmgan(tiny_cfg(), slices_dir, "gmmgan2", 4, out, device="cpu")
    monkeypatch.setattr(gmm_train, "gmm_step", real_step)
    torch.manual_seed(999)
    summary = gmm_train.train_gmmgan(tiny_cfg(), slices_dir, "gmmgan2", 4, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.012.pt")
    state = torch.load(list_checkpoints(out / "checkpoints")[-1], weights_only=True)
    for key in ("net", "D", "net_ema"):
        for name, value in reference[key].items():
            assert torch.equal(state[key][name], value), f"{key}.{name} differs"
    assert pd.read_csv(out / "log.csv")["step"].tolist() == [2, 4, 6, 8]


# --------------------------------------------------------------------------------------------
# Operations and mode discovery


def test_operations_shapes_and_shared_noise():
    torch.manual_seed(0)
    net = GMMGANNetwork(4, 3, resolution=RES, width=0.0625).eval()
    grid = gmm_ops.component_grid(net, 5, seed=1)
    assert grid.shape == (3, 5, 1, RES, RES)
    e, e2 = gmm_ops.shared_normals(net, 2, seed=2)
    path, imgs = gmm_ops.interpolate_pair(net, 0, 2, e, 7, e2)
    z = gmm_ops.component_latents(net, e, e2)
    assert torch.allclose(path[:, 0], z[0]) and torch.allclose(path[:, -1], z[2]) and imgs.shape == (2, 7, 1, RES, RES)
    w, blend = gmm_ops.interpolate_three(net, (0, 1, 2), e, 4, e2)
    assert w.shape == (10, 3) and torch.allclose(w.sum(1), torch.ones(10)) and blend.shape == (10, 1, RES, RES)
    labels, resp = gmm_ops.segment(net, torch.rand(6, 1, RES, RES) * 2 - 1)
    assert labels.shape == (6,) and torch.allclose(resp.sum(1), torch.ones(6))


def test_nmi_ari_are_one_when_c_equals_an_attribute():
    from brainlatent.metrics.mode_discovery import (
        cluster_scores,
        factors,
        slice_tercile,
    )

    manifest = pd.DataFrame({"scan": ["a"] * 3 + ["b"] * 3, "subject": ["p", "p", "p", "q", "q", "q"], "slice": [5, 6, 7, 1, 2, 3],
                             "sex": ["F", "F", "F", "M", "M", "M"], "ms_type": ["HC", "HC", "HC", "RRMS", "RRMS", "RRMS"]})
    assert slice_tercile(manifest).tolist() == [0, 1, 2, 0, 1, 2]
    facs, notes = factors(manifest, [{"name": "sex", "kind": "categorical"}], "HC", None)
    assert set(facs) == {"sex", "healthy_vs_ms", "slice_tercile"} and any("site" in n for n in notes)
    argmax_c = np.array([1, 1, 1, 0, 0, 0])  # C's components equal sex (labels permuted)
    assert cluster_scores(argmax_c, facs["sex"]) == {"nmi": 1.0, "ari": 1.0, "n": 6, "levels": 2}
    assert cluster_scores(argmax_c, facs["healthy_vs_ms"])["ari"] == 1.0
    assert cluster_scores(argmax_c, facs["slice_tercile"])["nmi"] == pytest.approx(0.0, abs=1e-12)


def test_mode_discovery_metric_end_to_end(finished_run, slices_dir, tmp_path):
    from brainlatent.metrics.registry import MetricContext, get_metric

    class Features:  # stand-in oracle: brightness and area decide the two heads
        def embed(self, images, batch_size=64):
            x = torch.as_tensor(images).float()
            return torch.stack([x.mean((1, 2, 3)), (x > -0.5).float().mean((1, 2, 3))], 1)

        def predict_proba(self, images, batch_size=64):
            area = self.embed(images)[:, 1:]
            p = torch.sigmoid((area - 0.3) * 20)
            return {"sex": torch.cat([1 - p, p], 1), "ms_type": torch.cat([p, 1 - p], 1)}

    net = load_network(finished_run[0] / "network.pt")
    features = Features()
    specs = [{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}, {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS"]}]
    cfg = load_config({"attributes": specs, "evaluate": {"mode_discovery": {"num_per_component": 4, "interpolation_paths": 2, "interpolation_steps": 4, "kmeans_restarts": 2}}})
    res = get_metric("mode_discovery").fn(MetricContext(cfg, net, features, specs, 5, "cpu", slices_dir, tmp_path))
    assert set(res.results["nmi"]) == {"sex", "ms_type", "healthy_vs_ms", "slice_tercile"}
    assert all(0.0 <= v[m] <= 1.0 for v in res.results["nmi"].values() for m in ("gmm", "kmeans", "kmeans_pixels"))
    assert res.results["nmi"]["sex"]["kmeans_pixels"] == pytest.approx(1.0)  # two ellipse sizes = sex in the stand-in
    assert set(res.results["component_recovery"]) == {"0", "1"} and (tmp_path / "components.png").exists()
    assert res.extra["discovered"] is None or res.extra["discovered"] in res.results["nmi"]


def test_best_factor_is_none_without_any_information():
    from brainlatent.metrics.mode_discovery import best_factor

    scores = {"sex": {"gmm": {"nmi": 0.0}}, "site": {"gmm": {"nmi": 0.0}}}
    assert best_factor(scores, ["sex", "site"]) is None
    scores["site"]["gmm"]["nmi"] = 0.4
    assert best_factor(scores, ["sex", "site"]) == "site" and best_factor(scores, ["sex"]) is None


def test_evaluate_cli_runs_mode_discovery_and_quality_on_a_gmmgan(tmp_path):
    import json

    from brainlatent.cli import main
    from brainlatent.io import save_torch
    from brainlatent.models.gmm import save_network
    from brainlatent.train.classifier import build_model, model_payload

    res = 32
    cfg = load_config({"study": "t", "seed": 1, "slices": {"resolution": res}, "classifier": {"width": 4, "fc_width": 8},
                       "evaluate": {"batch_size": 16, "quality": {"num_generated": 20, "kid_subsets": 2, "kid_subset_size": 5},
                                    "mode_discovery": {"num_per_component": 3, "interpolation_paths": 2, "interpolation_steps": 3, "kmeans_restarts": 1}}})
    torch.manual_seed(0)
    save_network(tmp_path / "network.pt", GMMGANNetwork(4, 2, resolution=res, width=0.0625, arch="gmmgan2").eval(), kimg=0, seed=0)
    clf = build_model(cfg)
    save_torch(tmp_path / "model.pt", model_payload(clf.state_dict(), clf, cfg))
    slices = tmp_path / "slices"
    slices.mkdir()
    n = 16
    np.save(slices / "images.npy", np.random.default_rng(0).uniform(-1, 1, size=(n, 1, res, res)).astype(np.float32))
    pd.DataFrame({"index": np.arange(n), "split": ["train"] * 4 + ["test"] * 12, "scan": [f"s{i // 4}" for i in range(n)],
                  "subject": [f"p{i // 4}" for i in range(n)], "slice": np.arange(n) % 4, "sex": ["F", "M"] * 8,
                  "ms_type": ["HC", "RRMS", "SPMS", "PPMS"] * 4}).to_parquet(slices / "manifest.parquet")
    for metric in ("mode_discovery", "quality"):
        out = tmp_path / "eval" / f"{metric}.json"
        argv = ["evaluate", "--metric", metric, "--config", str(_write_yaml(tmp_path, cfg)), "--network", str(tmp_path / "network.pt"),
                "--classifier", str(tmp_path / "model.pt"), "--slices", str(slices), "--out", str(out), "--device", "cpu"]
        assert main(argv) == 0
        doc = json.loads(out.read_text())
        assert doc["arch"] == "gmmgan2" and doc["metric"] == metric
    assert set(doc["results"]["fid"]) == {"generated_vs_real", "generated_vs_real_matched", "real_vs_real"}
    md = json.loads((tmp_path / "eval" / "mode_discovery.json").read_text())
    assert {"sex", "ms_type", "healthy_vs_ms", "slice_tercile"} <= set(md["results"]["nmi"])
    assert (tmp_path / "eval" / "mode_discovery" / "components.png").exists()  # the metric's picture folder


def _write_yaml(tmp_path, cfg):
    import yaml

    from brainlatent.config import plain

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(plain(cfg)))
    return path
