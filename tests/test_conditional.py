"""Conditional families (cwgan, cstylegan): labels, conditioning, training and resume, files, editing,
generate --labels, and the attribute-control metric's closed form on a stand-in."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.cli import main as cli_main
from brainlatent.conditional import edit_pictures, render, swap_labels
from brainlatent.config import load_config
from brainlatent.errors import BrainlatentError
from brainlatent.labels import LabelEncoder, LabelTable, parse_labels, slice_positions
from brainlatent.latents import sample
from brainlatent.metrics.attribute_control import attribute_control, spearman
from brainlatent.metrics.registry import MetricContext
from brainlatent.models.cstylegan import CStyleGANGenerator, ProjectionDiscriminator
from brainlatent.models.cwgan import CWGANCritic, CWGANGenerator
from brainlatent.models.families import families, load_network
from brainlatent.models.labelled import LabelledNetwork
from brainlatent.stage_keys import stage_view
from brainlatent.train import conditional as cond_module
from brainlatent.train.checkpoint import list_checkpoints
from brainlatent.train.common import TrainingInterrupted

RES = 16
ATTRS = [
    {"name": "age", "kind": "numeric", "bins": [18, 30, 40, 50, 60, 80]},
    {"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 6, 10]},
    {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS", "SPMS", "PPMS"]},
    {"name": "sex", "kind": "categorical", "levels": ["F", "M"]},
]


def manifest(n: int = 32, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    split = (["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * n)[:n]
    ms = rng.choice(["HC", "RRMS", "SPMS"], n).astype(object)
    ms[::7] = None  # missing MS type
    age = rng.uniform(20, 70, n).round(1)
    age[3] = np.nan  # a missing age in the training split
    return pd.DataFrame({
        "index": np.arange(n), "scan": [f"s{i // 4}" for i in range(n)], "subject": [f"p{i // 4}" for i in range(n)],
        "session": "1", "slice": [20 + 2 * (i % 4) for i in range(n)], "split": split, "age": age,
        "edss": rng.uniform(0, 7, n).round(1), "ms_type": ms, "sex": rng.choice(["F", "M"], n),
    })


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("slices")
    m = manifest()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    images = np.full((len(m), 1, RES, RES), -1.0, np.float32)
    for i, sex in enumerate(m["sex"]):
        a = 0.8 if sex == "M" else 0.6
        images[i, 0][(xx / a) ** 2 + (yy / 0.8) ** 2 < 1] = rng.uniform(0.0, 0.8)
    np.save(out / "images.npy", images)
    m.to_parquet(out / "manifest.parquet", index=False)
    return out


def encoder() -> LabelEncoder:
    return LabelEncoder.fit(ATTRS, manifest())


# --------------------------------------------------------------------------------------------
# Labels


def test_label_scaler_round_trips():
    m = manifest()
    enc = encoder()
    again = LabelEncoder.from_state(json.loads(json.dumps(enc.state())))
    assert again == enc
    y = enc.encode(m)
    assert np.array_equal(again.encode(m), y)
    assert enc.c_dim == 1 + 1 + 4 + 2 + 1 + 4 and y.shape == (len(m), enc.c_dim)
    train = m[m["split"] == "train"]
    age = enc.attribute("age")
    assert (age["min"], age["max"]) == (train["age"].min(), train["age"].max())  # fitted on train only
    back = enc.decode(y)
    for name in ("age", "edss"):
        known = m[name].notna().to_numpy()
        assert np.allclose(back[name][known].astype(float), m[name][known], atol=1e-4)
        assert back[name][~known].isna().all()
    for name in ("ms_type", "sex"):
        assert back[name].tolist() == [None if v is None else v for v in m[name].tolist()]
    # missing values: zero one-hot (categorical) or the train mean (numeric), mask 0
    row = y[0]
    assert row[enc.units("ms_type")].sum() == 0 and row[enc.mask_unit("ms_type")] == 0
    assert y[3, enc.units("age").start] == pytest.approx(age["fill"]) and y[3, enc.mask_unit("age")] == 0
    assert back["slice_position"].tolist() == pytest.approx(slice_positions(m).tolist())
    with pytest.raises(BrainlatentError, match="format"):
        LabelEncoder.from_state({"attributes": []})


def test_slice_position_and_label_parsing():
    m = pd.DataFrame({"scan": ["a", "a", "a", "b"], "slice": [30, 34, 38, 9]})
    assert slice_positions(m).tolist() == [0.0, 0.5, 1.0, 0.5]
    assert parse_labels("sex=F, edss=6") == {"sex": "F", "edss": "6"}
    with pytest.raises(BrainlatentError, match="name=value"):
        parse_labels("sex")


def test_consistent_swap_resamples_from_the_matching_rows():
    enc = LabelEncoder.fit(ATTRS[2:], pd.DataFrame({
        "ms_type": ["HC"] * 10 + ["SPMS"] * 10, "sex": ["F"] * 10 + ["M"] * 10, "split": "train"}))
    table = LabelTable(enc, torch.from_numpy(enc.encode(pd.DataFrame({"ms_type": ["HC"] * 10 + ["SPMS"] * 10,
                                                                      "sex": ["F"] * 10 + ["M"] * 10}))))
    y = table.sample(8, torch.Generator().manual_seed(0))
    single = enc.decode(enc.set_value(y, "ms_type", "SPMS"))
    consistent = enc.decode(table.consistent(y, "ms_type", "SPMS", torch.Generator().manual_seed(1)))
    assert (single["ms_type"] == "SPMS").all() and (single["sex"] == enc.decode(y)["sex"]).all()
    assert (consistent["ms_type"] == "SPMS").all() and (consistent["sex"] == "M").all()  # p(sex | SPMS) puts all mass on M
    assert not table.has("ms_type", "PPMS")


# --------------------------------------------------------------------------------------------
# Networks: conditioning really enters


def tiny_networks(arch: str, enc: LabelEncoder):
    torch.manual_seed(0)
    if arch == "cwgan":
        return CWGANGenerator(8, RES, enc.state(), 4, width=2), CWGANCritic(RES, enc.c_dim, width=2)
    return (CStyleGANGenerator(8, RES, enc.state(), 4, channels_base=32, channels_max=8, mapping_layers=2),
            ProjectionDiscriminator(RES, enc.c_dim, channels_base=32, channels_max=8))


@pytest.mark.parametrize("arch", ["cwgan", "cstylegan"])
def test_changing_y_changes_the_image_and_the_critic(arch):
    enc = encoder()
    G, D = tiny_networks(arch, enc)
    G.eval()
    y = torch.from_numpy(enc.encode(manifest()))[:4]
    y_f, y_m = enc.set_value(y, "sex", "F"), enc.set_value(y, "sex", "M")
    z = torch.randn(4, 8)
    noise = [torch.zeros((4, *s[1:])) for s in G.noise_shapes()] or None
    with torch.no_grad():
        a, b = G.synthesis(G.mapping(z, y_f), noise=noise), G.synthesis(G.mapping(z, y_m), noise=noise)
        again = G.synthesis(G.mapping(z, y_f), noise=noise)
        assert torch.equal(a, again)
        assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-6  # every image changes
        x = torch.randn(4, 1, RES, RES)
        assert (D(x, y_f) - D(x, y_m)).abs().min() > 1e-7
    assert a.shape == (4, 1, RES, RES) and D(x, y_f).shape == (4, 1)
    with pytest.raises(BrainlatentError, match="conditional"):
        G.mapping(z)


# --------------------------------------------------------------------------------------------
# Training, resume, files


def tiny_cfg(kimg: float = 0.16) -> dict:
    return load_config({
        "seed": 3, "attributes": ATTRS,
        "cwgan": {"width": 2, "kimg": kimg, "batch_size": 4, "checkpoint_kimg": 0.08, "log_kimg": 0.04,
                  "snapshot_kimg": 0.08, "keep_checkpoints": 5},
        "gan": {"kimg": 0.024, "batch_size": 4, "channels_base": 32, "channels_max": 8, "mapping_layers": 2,
                "checkpoint_kimg": 0.012, "snapshot_kimg": 0.012, "log_kimg": 0.008, "ema_kimg": 0.01},
    })


def ckpt(run_dir) -> dict:
    return torch.load(list_checkpoints(run_dir / "checkpoints")[-1], weights_only=True)


def assert_same(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert (a["step"], a["nimg"]) == (b["step"], b["nimg"])


@pytest.fixture(scope="module")
def cwgan_run(slices_dir, tmp_path_factory):
    """An uninterrupted cwgan run: 8 generator steps of 5 critic steps x 4 images (checkpoints at 4 and 8)."""
    out = tmp_path_factory.mktemp("run") / "cwgan-z8"
    return out, cond_module.train_conditional(tiny_cfg(), slices_dir, "cwgan", 8, out, device="cpu")


def test_cwgan_run_and_network_file(cwgan_run, slices_dir):
    out, summary = cwgan_run
    assert summary["steps"] == 8 and summary["kimg"] == pytest.approx(0.16)
    assert pd.read_csv(out / "log.csv")["step"].tolist() == [2, 4, 6, 8]
    G = load_network(out / "network.pt")
    assert isinstance(G, CWGANGenerator) and not G.training
    assert G.labels == LabelEncoder.fit(ATTRS, pd.read_parquet(slices_dir / "manifest.parquet"))
    assert len(G.label_table) == 16  # the training split's slices
    s = sample(G, 5, seed=2)
    assert s.images.shape == (5, 1, RES, RES) and s.labels.shape == (5, G.c_dim) and sorted(s.latents) == ["z"]
    assert torch.equal(sample(G, 5, seed=2).images, s.images)


def test_killed_cwgan_run_resumes_bit_identically(cwgan_run, slices_dir, tmp_path, monkeypatch):
    reference = ckpt(cwgan_run[0])
    out = tmp_path / "cwgan-z8"
    real_step, calls = cond_module.train_step, {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        calls["n"] += 1
        result = real_step(*args, **kwargs)
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(cond_module, "train_step", step_then_sigterm)
    with pytest.raises(TrainingInterrupted):
        cond_module.train_conditional(tiny_cfg(), slices_dir, "cwgan", 8, out, device="cpu")
    monkeypatch.setattr(cond_module, "train_step", real_step)
    assert not (out / "network.pt").exists()
    torch.manual_seed(999)  # the global RNG disturbed between the runs
    summary = cond_module.train_conditional(tiny_cfg(), slices_dir, "cwgan", 8, out, device="cpu")
    assert summary["resumed_from"].endswith("ckpt-000000.060.pt")
    assert_same(ckpt(out), reference)
    a, b = load_network(out / "network.pt"), load_network(cwgan_run[0] / "network.pt")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert pd.read_csv(out / "log.csv")["step"].tolist() == [2, 4, 6, 8]


def test_cstylegan_trains_through_the_cli_and_generates_with_labels(slices_dir, tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(json.dumps(tiny_cfg()))
    out = tmp_path / "cstylegan-z8"
    assert cli_main(["train-gan", "--config", str(cfg), "--slices", str(slices_dir), "--arch", "cstylegan",
                     "--zdim", "8", "--out", str(out), "--device", "cpu"]) in (None, 0)
    G = load_network(out / "network.pt")
    assert isinstance(G, CStyleGANGenerator) and sorted(sample(G, 3, seed=0).latents) == ["w", "z"]
    png = tmp_path / "f.png"
    assert cli_main(["generate", "--network", str(out / "network.pt"), "--seeds", "0-3", "--labels", "sex=F,edss=6",
                     "--out", str(png)]) in (None, 0)
    assert png.exists()
    from brainlatent.generate import generate_images

    one = generate_images(G, [3], labels={"sex": "F", "edss": "6"})
    assert torch.allclose(one, generate_images(G, [1, 3], labels={"sex": "F", "edss": "6"})[1:], atol=1e-5)
    assert [p.name for p in edit_pictures(G, tmp_path / "pics", 0, rows=2, steps=3)][-2:] == ["zpath.png", "corners.png"]


def test_unconditional_network_refuses_labels(tmp_path):
    from brainlatent.generate import generate_images
    from brainlatent.models.stylegan import Generator

    with pytest.raises(BrainlatentError, match="unconditional"):
        generate_images(Generator(8, resolution=8, channels_base=32, channels_max=8), [0], labels={"sex": "F"})


def test_registry_entries():
    fams = families()
    for name, spaces in (("cwgan", ("z",)), ("cstylegan", ("z", "w"))):
        assert fams[name].conditional and fams[name].spaces == spaces and "attribute_control" in fams[name].metrics
    view = stage_view(load_config({}), "train:cwgan")
    assert sorted(view) == ["attributes", "cwgan", "seed"]
    assert all("bins" not in a for a in view["attributes"])  # new classifier bins do not retrain a generator
    assert view["cwgan"]["critic_steps"] == 5 and view["cwgan"]["betas"] == [0.0, 0.9] and view["cwgan"]["lr"] == 1e-4


# --------------------------------------------------------------------------------------------
# Attribute control: closed form on a stand-in


SPECS = [{"name": "age", "kind": "numeric", "bins": [10, 30, 50, 70, 90]},
         {"name": "sex", "kind": "categorical", "levels": ["F", "M"]}]
Z_DIM = 4


class StandInGenerator(LabelledNetwork):
    """Image pixels = ``[y, z, 0 ...]`` (8 x 8); ``flip`` writes the age unit as 1 - s and swaps the sex units."""

    arch, has_mapping, normalizes_z, resolution, z_dim = "standin", False, False, 8, Z_DIM

    def __init__(self, enc: LabelEncoder, table: torch.Tensor, flip: bool = False) -> None:
        super().__init__(enc.state(), len(table))
        self.label_table.copy_(table)
        self.flip, self.w_dim = flip, Z_DIM + enc.c_dim

    def mapping(self, z, c=None, **_):
        return torch.cat([z, self.check_labels(c, len(z))], dim=1)

    def noise_shapes(self):
        return []

    def synthesis(self, w, noise=None):
        z, y = w[:, :Z_DIM], w[:, Z_DIM:].clone()
        if self.flip:
            a, s = self.labels.units("age").start, self.labels.units("sex")
            y[:, a] = 1 - y[:, a]
            y[:, s] = y[:, s].flip(1)
        img = torch.zeros(len(w), 64)
        img[:, : y.shape[1]] = y
        img[:, y.shape[1]: y.shape[1] + Z_DIM] = z
        return img.view(-1, 1, 8, 8)


class StandInFeatures:
    """Reads the label pixels back: sex from its two units, age as a two-bin mix whose mean is the age."""

    def __init__(self, enc: LabelEncoder) -> None:
        self.enc = enc

    def predict_proba(self, images, batch_size=64):
        px = images.reshape(len(images), -1).double()
        s = px[:, self.enc.units("sex")].clamp(min=0) + 1e-12
        age = self.enc.attribute("age")
        value = (age["min"] + px[:, self.enc.units("age").start] * (age["max"] - age["min"])).clamp(20, 80)
        centres = torch.tensor([20.0, 40, 60, 80], dtype=torch.float64)
        pos = ((value - 20) / 20).clamp(0, 3 - 1e-9)
        lo, frac = pos.floor().long(), pos - pos.floor()
        p_age = torch.zeros(len(px), 4, dtype=torch.float64)
        p_age[torch.arange(len(px)), lo] = 1 - frac
        p_age[torch.arange(len(px)), lo + 1] += frac
        assert torch.allclose(p_age @ centres, value)
        return {"age": p_age.float(), "sex": (s / s.sum(1, keepdim=True)).float()}

    def distance(self, a, b, batch_size=64):
        return (a - b).reshape(len(a), -1).square().mean(1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """Training table, and a slice dataset whose test images are the stand-in's rendering of the true labels with
    the age unit +0.1 (real-test age MAE 6 years) and the sex units swapped in a quarter of them (accuracy 0.75)."""
    rng = np.random.default_rng(0)
    ages = np.array([23, 27, 33, 37, 43, 47, 53, 57, 63, 67, 73, 77.0])
    n = 48
    m = pd.DataFrame({"index": np.arange(n), "scan": [f"s{i}" for i in range(n)], "slice": 5,
                      "split": ["train"] * 24 + ["test"] * 24,
                      "age": np.r_[20.0, 80.0, rng.choice(ages, 22), rng.choice(ages[:-2], 24)],
                      "sex": rng.choice(["F", "M"], n)})
    enc = LabelEncoder.fit([{"name": "age", "kind": "numeric"}, SPECS[1]], m)
    assert (enc.attribute("age")["min"], enc.attribute("age")["max"]) == (20.0, 80.0)
    y = torch.from_numpy(enc.encode(m))
    G = StandInGenerator(enc, y[:24])
    test = y[24:].clone()
    test[:, enc.units("age").start] += 0.1
    test[:6, enc.units("sex")] = test[:6, enc.units("sex")].flip(1)
    images = torch.zeros(n, 1, 8, 8)
    images[24:] = G.synthesis(G.mapping(torch.zeros(24, Z_DIM), test))
    out = tmp_path_factory.mktemp("standin")
    np.save(out / "images.npy", images.numpy())
    m.to_parquet(out / "manifest.parquet", index=False)
    return enc, y[:24], out


def control_ctx(G, enc, slices, tmp_path) -> MetricContext:
    s = {"num_labels": 40, "z_per_label": 3, "swap_samples": 300, "interpolation_z": 100, "interpolation_steps": 6}
    return MetricContext(cfg={"evaluate": {"batch_size": 64, "attribute_control": s}}, generator=G,
                         features=StandInFeatures(enc), specs=SPECS, seed=11, device="cpu", slices=slices, out_dir=tmp_path)


def test_attribute_control_closed_form_on_a_perfect_standin(standin, tmp_path):
    enc, table, slices = standin
    r = attribute_control(control_ctx(StandInGenerator(enc, table), enc, slices, tmp_path)).results
    assert r["sex"]["accuracy"] == 1 and r["sex"]["balanced_accuracy"] == 1
    assert r["age"]["mae"] == pytest.approx(0, abs=1e-3) and r["age"]["mae_bins"] == 0
    assert r["sex"]["real_accuracy"] == 0.75 and r["age"]["real_mae"] == pytest.approx(6, abs=1e-3)
    assert r["sex"]["vs_real"] == pytest.approx(1 / 0.75) and r["age"]["vs_real"] == pytest.approx(0, abs=1e-3)
    for name in ("age", "sex"):
        for mode in ("single", "consistent"):
            assert r[name][f"swap_{mode}_hit"] == 1
    assert r["age"]["swap_single_mae"] == pytest.approx(0, abs=1e-3)
    assert r["sex"]["leak_age"] == pytest.approx(0, abs=1e-4) and r["age"]["leak_sex"] == 0
    assert r["sex"]["leak_age_ratio"] == pytest.approx(0, abs=1e-4) and r["age"]["leak_sex_ratio"] == 0
    # a sex swap moves two pixels by 1 (distance 2/64); two random z move four pixels by N(0, 2) each
    # (distance chi2_4 * 2 / 64): ratio 2 / (2 * 4) = 0.25, kept when chi2_4 > 1 (p = 0.910)
    assert r["sex"]["identity_ratio"] == pytest.approx(0.25, rel=0.15)
    assert r["sex"]["identity_kept"] == pytest.approx(0.910, abs=0.06)
    assert r["age"]["monotonic_rho"] == pytest.approx(1) and r["age"]["monotonic_share"] == 1
    assert (tmp_path / "swap-sex-single.png").exists() and (tmp_path / "ypath-age.png").exists()


def test_attribute_control_closed_form_on_a_reversed_standin(standin, tmp_path):
    enc, table, slices = standin
    r = attribute_control(control_ctx(StandInGenerator(enc, table, flip=True), enc, slices, tmp_path)).results
    assert r["sex"]["accuracy"] == 0 and r["sex"]["swap_single_hit"] == 0
    assert r["age"]["monotonic_rho"] == pytest.approx(-1) and r["age"]["monotonic_share"] == 0


def test_spearman_and_render_shapes():
    assert spearman(np.arange(4), np.ones(4)) == 0.0
    assert spearman(np.arange(4), -np.arange(4.0)) == pytest.approx(-1)
    enc = encoder()
    G, _ = tiny_networks("cwgan", enc)
    G.eval()
    y = torch.from_numpy(enc.encode(manifest()))[:3]
    assert render(G, torch.randn(3, 8), swap_labels(G, y, "sex", "M")).shape == (3, 1, RES, RES)
