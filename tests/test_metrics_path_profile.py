"""The reference study's path profile and the interpolation GIFs/strips."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from metrics_standins import LinearFeatures, LinearGenerator

from brainlatent.explore import write_interpolations
from brainlatent.images import save_strip, to_uint8
from brainlatent.metrics.path_profile import linearity_r2, path_profile, plot_path_profile

torch.set_num_threads(1)


def test_linearity_r2():
    assert linearity_r2(np.linspace(0, 5, 20)) == pytest.approx(1.0)
    assert linearity_r2(np.sqrt(np.linspace(0, 1, 50))) < 0.99
    assert np.isnan(linearity_r2(np.zeros(10)))


def test_linear_generator_gives_straight_profiles():
    # a linear generator and a linear embedding: |e_t - e_0| = t |e_1 - e_0|, R^2 = 1 in Z and W
    G = LinearGenerator(z_dim=6, resolution=8, mapping="linear", noise_scale=0.5)
    out = path_profile(G, LinearFeatures(resolution=8).embed, pairs=3, steps=20, batch_size=7, seed=0)
    assert out["spaces"] == ["z", "w"]
    for space in ("z", "w"):
        r = out[space]
        assert r["curves"].shape == (3, 20) and np.all(r["curves"][:, 0] == 0)
        assert r["r2_mean"] == pytest.approx(1.0, abs=1e-9)
        assert r["curve_mean"][-1] == pytest.approx(r["endpoint_distance_mean"])
        assert np.all(r["curve_q10"] <= r["curve_q90"])


def test_normalising_mapping_bends_z_paths_only():
    # w = z/rms(z): a lerp in Z passes closer to the origin, so the mapped path is a curve; W stays straight
    G = LinearGenerator(z_dim=6, resolution=8, mapping="normalize")
    out = path_profile(G, LinearFeatures(resolution=8).embed, pairs=4, steps=30, seed=1)
    assert out["w"]["r2_mean"] == pytest.approx(1.0, abs=1e-9)
    assert out["z"]["r2_mean"] < out["w"]["r2_mean"] - 1e-3


def test_gan_has_only_z_and_determinism(tmp_path):
    G = LinearGenerator(z_dim=4, resolution=8, arch="gan", nonlinear=True, noise_scale=0.2)
    emb = LinearFeatures(resolution=8).embed
    a = path_profile(G, emb, pairs=2, steps=10, seed=3)
    b = path_profile(G, emb, pairs=2, steps=10, seed=3)
    assert a["spaces"] == ["z"] and "w" not in a
    np.testing.assert_array_equal(a["z"]["curves"], b["z"]["curves"])
    plot_path_profile(a, tmp_path / "profile.png")
    assert imageio.imread(tmp_path / "profile.png").ndim == 3


def test_interpolation_outputs(tmp_path):
    G = LinearGenerator(z_dim=4, resolution=8, mapping="normalize", nonlinear=True)
    written = write_interpolations(G, tmp_path, seed=0, steps=12, strip_frames=5)
    assert set(written) == {"interp_z.gif", "interp_w.gif", "interp_z.png", "interp_w.png"}
    frames = imageio.mimread(tmp_path / "interp_w.gif")
    assert len(frames) == 12 + 10  # forth and back
    from PIL import Image

    with Image.open(tmp_path / "interp_z.gif") as gif:
        gif.seek(1)
        assert gif.info["duration"] > 0
    strip = imageio.imread(tmp_path / "interp_z.png")
    assert strip.shape == (8, 5 * 8 + 4 * 2)
    assert not list(tmp_path.glob("*.tmp*"))


def test_to_uint8_and_strip(tmp_path):
    x = torch.tensor([[[[-1.0, 0.0, 1.0, 3.0]]]])
    assert to_uint8(x).tolist() == [[[0, 128, 255, 255]]]
    save_strip(np.zeros((3, 4, 4), dtype=np.uint8), tmp_path / "s.png", n=10)
    assert imageio.imread(tmp_path / "s.png").shape == (4, 3 * 4 + 2 * 2)
