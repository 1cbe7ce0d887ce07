"""Every generator family, through the registry: it trains a few steps, its network file loads, it
samples through the one sampler, and every metric it lists runs on it (tiny sizes, real code paths)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.config import load_config
from brainlatent.latents import sample
from brainlatent.metrics.evaluate import evaluate
from brainlatent.metrics.features import PerceptualFeatures
from brainlatent.models.families import families, get_family, load_network
from brainlatent.train.classifier import build_model

RES = 32
#: one family of every kind (the gmmgan<K> and growing variants share their code with these)
FAMILIES = ["stylegan", "gan", "cwgan", "cstylegan", "dcgan", "gmmgan2", "bgan", "clggan"]


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """48 ellipse 'slices' with attributes, 4 per scan, split by subject."""
    out = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    n = 48
    images = np.full((n, 1, RES, RES), -1.0, np.float32)
    sex = np.repeat(rng.choice(["F", "M"], n // 4), 4)
    for i in range(n):
        a = 0.8 if sex[i] == "M" else 0.6
        images[i, 0][(xx / a) ** 2 + (yy / 0.7) ** 2 < 1] = rng.uniform(0.0, 0.8)
    np.save(out / "images.npy", images)
    subjects = np.repeat(np.arange(n // 4), 4)
    split = np.where(subjects < 8, "train", np.where(subjects < 10, "val", "test"))
    pd.DataFrame({
        "index": np.arange(n), "scan": [f"s{s}" for s in subjects], "subject": [f"p{s}" for s in subjects],
        "session": "", "slice": np.tile(np.arange(40, 44), n // 4), "split": split, "sex": sex,
        "age": np.repeat(rng.uniform(20, 70, n // 4), 4), "edss": np.repeat(rng.choice([0.0, 2.5, 6.0], n // 4), 4),
        "ms_type": np.repeat(rng.choice(["HC", "RRMS", "SPMS"], n // 4), 4),
    }).to_parquet(out / "manifest.parquet", index=False)
    return out


def tiny_study() -> dict:
    steps = {"checkpoint_kimg": 0.016, "snapshot_kimg": 0.016, "log_kimg": 0.008, "batch_size": 4}
    return load_config({
        "study": "families", "seed": 3,
        "classifier": {"width": 4, "fc_width": 8},
        "gan": {"kimg": 0.016, "channels_base": 32, "channels_max": 8, "mapping_layers": 2, **steps},
        "cwgan": {"width": 2, "kimg": 0.016, "critic_steps": 1, **steps},
        "gmm": {"width": 0.0625, "kimg": 0.016, **steps},
        "growing": {"initial_kimg": 0.008, "fade_kimg": 0.008, "stabilise_kimg": 0.008, "channels_max": 16, **steps},
        "evaluate": {
            "batch_size": 8,
            "ppl": {"num_samples": 10}, "path_profile": {"pairs": 1, "steps": 4},
            "separability": {"num_samples": 40, "repeats": 2, "attributes": ["sex"]},
            "quality": {"num_generated": 16, "kid_subsets": 2, "kid_subset_size": 4},
            "attribute_control": {"num_labels": 4, "z_per_label": 2, "swap_samples": 4, "interpolation_z": 2, "interpolation_steps": 3},
            "mode_discovery": {"num_per_component": 4, "kmeans_restarts": 1, "interpolation_paths": 2, "interpolation_steps": 3},
            "variability_profile": {"references": 2, "images_per_group": 3, "bootstrap": 20},
            "attribute_saliency": {"references": 2, "images_per_group": 3, "bootstrap": 20},
            "axis_alignment": {"num_samples": 40, "bins": 4},
        },
    })


@pytest.fixture(scope="module")
def features():
    cfg = tiny_study()
    torch.manual_seed(0)
    return PerceptualFeatures(build_model(cfg).eval(), "cpu")


def test_the_test_covers_every_kind_of_family():
    modules = {get_family(name).train for name in families()}
    assert modules == {get_family(name).train for name in FAMILIES}


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_trains_loads_samples_and_every_listed_metric_runs(arch, slices, features, tmp_path):
    family = get_family(arch)
    cfg = tiny_study()
    z_dim = 16
    summary = family.trainer()(cfg, slices, arch, z_dim, tmp_path / arch, device="cpu")
    assert (tmp_path / arch / "network.pt").exists(), summary
    G = load_network(tmp_path / arch / "network.pt").eval().requires_grad_(False)
    assert G.arch == arch and G.resolution == RES and bool(G.c_dim) == family.conditional

    s = sample(G, 5, seed=1, batch_size=4)
    assert s.images.shape == (5, 1, RES, RES) and torch.isfinite(s.images).all()
    assert set(s.latents) == set(family.spaces)
    assert torch.equal(sample(G, 5, seed=1, batch_size=4).images, s.images)  # seeded

    specs = cfg["attributes"]
    for metric in family.metrics:
        doc = evaluate(metric, cfg, G, features, specs, "cpu", slices, tmp_path / "pictures" / metric)
        assert doc["metric"] == metric and doc["arch"] == arch and doc["results"], (metric, doc.get("notes"))
        assert doc["settings"]["numerics"]["cuda_matmul_allow_tf32"] is False
