"""``brainlatent counterfactual`` end to end on tiny trained networks: the study mode (with twins)
writes every metric and picture, the one-scan mode writes original, counterfactual and difference
as PNG and NIfTI, and bad requests get one-line errors."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.cli import main
from brainlatent.config import load_config
from brainlatent.counterfactual.stage import run_scan, run_study
from brainlatent.models.families import get_family
from brainlatent.train.classifier import build_model, model_payload

RES = 32


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Ellipse 'slices' (4 per scan), a random-init classifier, tiny trained stylegan and cstylegan,
    and 'twins' of the test slices: EDSS 0 removes the bright 'lesion' the source has."""
    root = tmp_path_factory.mktemp("cf")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / (RES - 1) * 2 - 1
    n = 64
    sex = np.repeat(rng.choice(["F", "M"], n // 4), 4)
    edss = np.repeat(rng.choice([2.5, 6.0], n // 4), 4)
    images = np.full((n, 1, RES, RES), -1.0, np.float32)
    lesion = np.zeros_like(images)
    for i in range(n):
        a = 0.8 if sex[i] == "M" else 0.6
        images[i, 0][(xx / a) ** 2 + (yy / 0.7) ** 2 < 1] = rng.uniform(-0.3, 0.1)
        spot = (xx - 0.1) ** 2 + (yy + 0.1) ** 2 < 0.02
        images[i, 0][spot] = 0.9
        lesion[i, 0][spot] = 1.0
    slices = root / "slices" / str(RES)
    slices.mkdir(parents=True)
    np.save(slices / "images.npy", images)
    subjects = np.repeat(np.arange(n // 4), 4)
    split = np.where(subjects < 10, "train", np.where(subjects < 12, "val", "test"))
    manifest = pd.DataFrame({
        "index": np.arange(n), "scan": [f"sub-{s:02d}_ses-01" for s in subjects], "subject": [f"sub-{s:02d}" for s in subjects],
        "session": "ses-01", "slice": np.tile(np.arange(40, 44), n // 4), "split": split, "sex": sex,
        "age": np.repeat(rng.uniform(25, 65, n // 4), 4), "edss": edss, "ms_type": np.repeat(rng.choice(["RRMS", "SPMS"], n // 4), 4),
    })
    manifest.to_parquet(slices / "manifest.parquet", index=False)
    # twins of the test slices: edss=0 (the lesion gone) and sex=other (the ellipse's width changed)
    test = manifest[manifest["split"] == "test"]
    t_images, t_rows, src_les = [], [], []
    for _, r in test.iterrows():
        for name, value in (("edss", 0.0), ("sex", "M" if r["sex"] == "F" else "F")):
            img = images[r["index"]].copy()
            if name == "edss":
                img[0][lesion[r["index"], 0] > 0] = float(np.median(img[0][img[0] > -0.95]))
            else:
                a = 0.8 if value == "M" else 0.6
                img[0] = -1.0
                img[0][(xx / a) ** 2 + (yy / 0.7) ** 2 < 1] = float(images[r["index"], 0, RES // 2, RES // 2 - 8])
            t_images.append(img)
            src_les.append(lesion[r["index"]])
            row = {k: r[k] for k in ("scan", "subject", "session", "slice", "age", "edss", "ms_type", "sex")}
            row.update({f"source_{k}": r[k] for k in ("age", "edss", "ms_type", "sex")}, **{name: value})
            label = "edss=0" if name == "edss" else "sex=other"
            row.update(twin=f"{r['scan']}+{label}+single", source_index=int(r["index"]), intervention=name, label=label, mode="single")
            t_rows.append(row)
    twins = root / "twins" / "slices" / str(RES)
    twins.mkdir(parents=True)
    np.save(twins / "images.npy", np.stack(t_images))
    np.save(twins / "source_lesions.npy", np.stack(src_les))
    pd.DataFrame(t_rows).assign(index=lambda d: np.arange(len(d))).to_parquet(twins / "manifest.parquet", index=False)

    steps = {"checkpoint_kimg": 0.016, "snapshot_kimg": 0.016, "log_kimg": 0.008, "batch_size": 4}
    cfg = load_config({
        "study": "cf", "seed": 5, "slices": {"resolution": RES},
        "classifier": {"width": 4, "fc_width": 8},
        "gan": {"kimg": 0.016, "channels_base": 32, "channels_max": 8, "mapping_layers": 2, **steps},
        "counterfactual": {"enabled": True, "num_slices": 4, "max_per_intervention": 4, "reversibility_slices": 2, "cycles": 2,
                           "projector": {"steps": 5, "batch_size": 8}, "directions": {"num_samples": 60}, "pictures": 2},
    })
    torch.manual_seed(0)
    clf = build_model(cfg).eval()
    torch.save(model_payload(clf.state_dict(), clf, cfg), root / "classifier.pt")
    nets = {}
    for arch in ("stylegan", "cstylegan"):
        get_family(arch).trainer()(cfg, slices, arch, 8, root / "gan" / f"{arch}-z8", device="cpu")
        nets[arch] = root / "gan" / f"{arch}-z8" / "network.pt"
    return {"root": root, "cfg": cfg, "slices": slices, "twins": twins, "nets": nets, "classifier": root / "classifier.pt"}


@pytest.mark.parametrize("arch", ["stylegan", "cstylegan"])
def test_study_mode_writes_every_metric_with_twins(study, arch, tmp_path):
    out = tmp_path / "metrics.json"
    res = run_study(study["cfg"], study["nets"][arch], study["classifier"], study["slices"], out, tmp_path / "pictures",
                    twins_dir=study["twins"], device="cpu")
    doc = json.loads(out.read_text())
    assert doc["space"] == ("w" if arch == "stylegan" else "zy")
    assert set(doc["interventions"]) == {"edss-single", "sex-single"}
    assert doc["lesion_threshold"]["dice"] == pytest.approx(1.0)  # the 'lesion' is the only bright spot
    for key, entry in doc["interventions"].items():
        assert entry["n"] == 4 and entry["n_subjects"] == 4
        truth = entry["true_error"]
        for base in ("editor", "unedited", "population"):
            assert math.isfinite(truth[base]["l1"]["mean"]) and math.isfinite(truth[base]["ssim"]["mean"])
        assert truth["unedited"]["l1"]["mean"] > 0  # the twins differ from their sources
        assert 0 <= entry["minimality"]["outside_share"]["mean"] <= 1 or entry["minimality"]["outside_share"]["n"] == 0
        assert entry["effectiveness"]["intervened"] == key.split("-")[0]
        assert math.isfinite(entry["realism"]["edited"]["fid"])
        assert (tmp_path / "pictures" / f"{key}.png").exists()
    assert set(doc["composition"]["l1"]) == {"1", "2"}
    assert doc["commutativity"]["a"] == "edss" and math.isfinite(doc["commutativity"]["l1"]["mean"])
    assert math.isfinite(doc["inversion"]["psnr"]["mean"])
    assert doc["settings"]["numerics"]["cuda_matmul_allow_tf32"] is False
    # same config, same numbers
    again = run_study(study["cfg"], study["nets"][arch], study["classifier"], study["slices"], tmp_path / "again.json",
                      tmp_path / "pictures2", twins_dir=study["twins"], device="cpu")
    assert again["interventions"]["edss-single"]["true_error"]["editor"] == res["interventions"]["edss-single"]["true_error"]["editor"]


def test_one_scan_writes_png_and_nifti(study, tmp_path):
    scan = "sub-13_ses-01"
    out = tmp_path / "one"
    summary = run_scan(study["cfg"], study["nets"]["cstylegan"], study["classifier"], study["slices"], scan, "edss=0", out, "cpu")
    assert summary["set"] == ["edss=0"] and summary["new_parents"]["edss"] == 0.0 and len(summary["slices"]) == 4
    z = summary["slices"][0]["slice"]
    orig = nib.load(out / f"{scan}_z{z}_original.nii.gz").get_fdata()
    cf = nib.load(out / f"{scan}_z{z}_counterfactual.nii.gz").get_fdata()
    diff = nib.load(out / f"{scan}_z{z}_difference.nii.gz").get_fdata()
    assert orig.shape == (RES, RES, 1)
    np.testing.assert_allclose(diff, cf - orig, atol=1e-5)
    for kind in ("original", "counterfactual", "difference"):
        assert (out / f"{scan}_z{z}_{kind}.png").stat().st_size > 0


def test_bad_requests_are_one_line_errors(study, tmp_path, capsys):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(study["cfg"]))
    common = ["counterfactual", "--config", str(cfg_path), "--network", str(study["nets"]["stylegan"]),
              "--classifier", str(study["classifier"]), "--slices", str(study["slices"]), "--out-dir", str(tmp_path / "x")]
    assert main(common + ["--scan", "sub-99_ses-01", "--set", "edss=0"]) == 2
    assert "no slice of that scan" in capsys.readouterr().err
    assert main(common + ["--scan", "sub-13_ses-01", "--set", "edss=high"]) == 2
    assert "expected a number" in capsys.readouterr().err
    assert main(common + ["--scan", "sub-13_ses-01", "--set", "colour=red"]) == 2
    assert "not a study attribute" in capsys.readouterr().err
    assert main(common + ["--scan", "sub-13_ses-01"]) == 2
    assert "needs --set" in capsys.readouterr().err
    other = tmp_path / "twins"
    other.mkdir()
    np.save(other / "images.npy", np.load(study["twins"] / "images.npy"))
    pd.read_parquet(study["twins"] / "manifest.parquet").drop(columns="label").to_parquet(other / "manifest.parquet")
    assert main(common + ["--twins", str(other), "--out", str(tmp_path / "m.json")]) == 2
    assert "columns ['label'] missing" in capsys.readouterr().err and not (tmp_path / "m.json").exists()


def test_report_section_numbers_map_to_the_metrics_file(study, tmp_path):
    import re

    from brainlatent.report.build import render_report
    from brainlatent.report.primitives import lookup

    root = tmp_path / "cf"
    folder = root / "counterfactual" / "stylegan-z8"
    doc = run_study(study["cfg"], study["nets"]["stylegan"], study["classifier"], study["slices"], folder / "metrics.json",
                    folder / "pictures", twins_dir=study["twins"], device="cpu")
    cfg = dict(study["cfg"], gan=dict(study["cfg"]["gan"], archs=["stylegan"], latent_sizes=[8]))
    page = render_report(cfg, root)
    section = page[page.index('id="counterfactuals"'):]
    section = section[: section.index("</section>")]
    spans = re.findall(r'data-source="([^"]+)" data-key="([^"]+)"(?: data-format="([^"]*)")?>([^<]*)<', section)
    assert len(spans) > 30
    for source, key, fmt, shown in spans:
        assert source == "counterfactual/stylegan-z8/metrics.json"
        value = lookup(doc, key)
        if shown == "n/a":
            assert value is None or not math.isfinite(value), key
        else:
            assert format(value, fmt) == shown, (key, value, shown)
    assert 'id="table-cf-truth-stylegan-z8"' in section and section.count("<img") == 2  # edss and sex pictures
