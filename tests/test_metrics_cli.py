"""``brainlatent evaluate`` and ``brainlatent aggregate`` end to end on tiny random networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.cli import main
from brainlatent.config import load_config
from brainlatent.io import save_torch
from brainlatent.metrics.aggregate import COLUMNS, flatten
from brainlatent.metrics.evaluate import sha256_file
from brainlatent.models.stylegan import Generator, save_network
from brainlatent.train.classifier import build_model, model_payload

torch.set_num_threads(1)

RES = 32
CONFIG = {
    "study": "tiny",
    "seed": 7,
    "slices": {"resolution": RES},
    "classifier": {"width": 4, "fc_width": 8},
    "evaluate": {
        "batch_size": 16,
        "ppl": {"num_samples": 20},
        "path_profile": {"pairs": 2, "steps": 6},
        "separability": {"num_samples": 40, "repeats": 2, "attributes": ["sex"], "binarise": {"age": 40}},
        "quality": {"num_generated": 24, "kid_subsets": 3, "kid_subset_size": 10},
    },
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = load_config(CONFIG)
    # what the workflow passes: only the sections the stage reads (stage_config in common.smk)
    stage = json.dumps({k: cfg[k] for k in ("study", "seed", "results_dir", "attributes", "evaluate", "gan")})
    torch.manual_seed(0)
    for arch in ("stylegan", "gan"):
        G = Generator(8, resolution=RES, arch=arch, channels_base=64, channels_max=8)
        save_network(root / f"{arch}.pt", G, kimg=0, seed=0)
    clf = build_model(cfg)
    save_torch(root / "model.pt", model_payload(clf.state_dict(), clf, cfg))
    slices = root / "slices"
    slices.mkdir()
    rng = np.random.default_rng(0)
    np.save(slices / "images.npy", rng.uniform(-1, 1, size=(30, 1, RES, RES)).astype(np.float32))
    pd.DataFrame({"index": np.arange(30), "split": ["train"] * 10 + ["test"] * 20}).to_parquet(slices / "manifest.parquet")
    return root, stage


def evaluate(root, cfg, metric, arch="stylegan", *extra):
    out = root / "eval" / f"{arch}-z8" / f"{metric}.json"
    argv = ["evaluate", "--metric", metric, "--config", cfg, "--network", str(root / f"{arch}.pt"),
            "--classifier", str(root / "model.pt"), "--slices", str(root / "slices"), "--out", str(out), "--device", "cpu", *extra]
    assert main(argv) == 0
    return out, json.loads(out.read_text())


def test_every_metric_and_aggregate(study):
    root, cfg = study
    outs = []
    out, doc = evaluate(root, cfg, "ppl")
    outs.append(out)
    assert set(doc["results"]) == {"z_full", "w_full", "z_end", "w_end"}
    assert all(r["n_total"] == 20 for r in doc["results"].values())
    assert all(r["se"] > 0 and r["ci_low"] <= r["mean"] <= r["ci_high"] for r in doc["results"].values())
    assert set(doc["comparisons"]) == {"z_full-w_full", "z_end-w_end"}
    assert any("use at least 1000 pairs" in n for n in doc["notes"])  # 20 pairs: the errors are flagged as fragile
    s = doc["settings"]
    assert s["numerics"]["cuda_matmul_allow_tf32"] is False and s["numerics"]["cudnn_allow_tf32"] is False
    assert (s["numerics"]["device"], s["numerics"]["dtype"]) == ("cpu", "float32")
    assert s["feature_network"]["classifier_sha256"] == sha256_file(root / "model.pt")
    assert s["network_sha256"] == sha256_file(root / "stylegan.pt")
    assert (s["arch"], s["z_dim"], s["num_samples"], s["epsilon"], s["device"]) == ("stylegan", 8, 20, 1e-4, "cpu")
    assert s["package_version"] and isinstance(s["seed"], int)

    out, doc = evaluate(root, cfg, "ppl", "gan")
    outs.append(out)
    assert Path(out).with_suffix("").is_dir()  # the picture folder the workflow declares exists, empty for ppl
    assert set(doc["results"]) == {"z_full", "z_end"}
    assert doc["settings"]["variants"]["z_full"]["z_rescaled"] is True

    pictures = root / "pictures"
    out, doc = evaluate(root, cfg, "path_profile", "stylegan", "--out-dir", str(pictures))
    outs.append(out)
    assert sorted(p.name for p in pictures.iterdir()) == ["interp_w.gif", "interp_w.png", "interp_z.gif", "interp_z.png", "path_profile.png"]
    assert len(doc["results"]["w"]["curve_mean"]) == 6 and np.asarray(doc["curves"]["z"]).shape == (2, 6)

    out, doc = evaluate(root, cfg, "separability")
    outs.append(out)
    assert set(doc["results"]) == {"z/sex", "z/age", "z/combined", "w/sex", "w/age", "w/combined"}
    assert doc["settings"]["attributes"][1] == {"name": "age", "threshold": 40, "classes": ["<40", ">=40"]}
    assert doc["results"]["w/sex"]["entropy_bits_se"] is not None and doc["results"]["w/sex"]["interpretable"] is None
    assert any("interpretability unknown" in n for n in doc["notes"])  # no classifier metrics.json in this fixture

    out, doc = evaluate(root, cfg, "quality")
    outs.append(out)
    assert doc["settings"]["sizes"]["real"] == 20 and doc["settings"]["sizes"]["generated"] == 24
    assert set(doc["results"]["fid"]) == {"generated_vs_real", "generated_vs_real_matched", "real_vs_real"}

    # same seed -> the same numbers
    _, again = evaluate(root, cfg, "separability")
    assert again["results"] == json.loads(outs[3].read_text())["results"]

    csv = root / "metrics.csv"
    assert main(["aggregate", "--config", cfg, "--inputs", *map(str, outs), "--out", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(table.columns) == COLUMNS
    n_numbers = sum(len(list(flatten(json.loads(p.read_text())["results"]))) for p in outs)
    assert len(table) == n_numbers
    assert set(table["metric"]) == {"ppl", "path_profile", "separability", "quality"}
    row = table[(table.metric == "ppl") & (table.arch == "gan") & (table.variant == "z_end") & (table.statistic == "mean")]
    assert row["value"].item() == pytest.approx(json.loads(outs[1].read_text())["results"]["z_end"]["mean"])
    se = table[(table.metric == "ppl") & (table.arch == "gan") & (table.variant == "z_end") & (table.statistic == "se")]
    assert se["value"].item() == pytest.approx(json.loads(outs[1].read_text())["results"]["z_end"]["se"])
    assert {"entropy_bits_se", "interpretable"} <= set(table[table.metric == "separability"]["statistic"])
    assert (table["study"] == "tiny").all()


def test_errors_exit_2(study, tmp_path, capsys):
    root, cfg = study
    base = ["evaluate", "--config", cfg, "--classifier", str(root / "model.pt"), "--out", str(tmp_path / "x.json")]
    assert main([*base, "--metric", "ppl", "--network", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: file not found" in capsys.readouterr().err
    assert main([*base, "--metric", "quality", "--network", str(root / "stylegan.pt")]) == 2
    assert "--slices" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metric": "ppl"}))
    assert main(["aggregate", "--config", cfg, "--inputs", str(bad), "--out", str(tmp_path / "m.csv")]) == 2
    assert "missing key(s)" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "x.json").exists()


def test_separability_is_flagged_from_the_classifier_metrics(study, tmp_path, capsys):
    # the classifier's metrics.json beside model.pt: sex test accuracy 0.55 against a majority baseline of 0.6
    root, cfg = study
    clf = tmp_path / "classifier"
    clf.mkdir()
    (clf / "model.pt").write_bytes((root / "model.pt").read_bytes())
    head = {"n": 20, "accuracy": 0.55, "majority_baseline_accuracy": 0.6, "class_names": ["F", "M"], "majority_class": "F",
            "confusion_matrix": [[11, 1], [8, 0]]}
    (clf / "metrics.json").write_text(json.dumps({"best": {"test": {"heads": {"sex": head}}}}))
    out = tmp_path / "separability.json"
    argv = ["evaluate", "--metric", "separability", "--config", cfg, "--network", str(root / "stylegan.pt"),
            "--classifier", str(clf / "model.pt"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["results"]["w/sex"]["interpretable"] is False and doc["results"]["z/sex"]["interpretable"] is False
    assert doc["results"]["w/age"]["interpretable"] is None  # no age head in that metrics.json
    assert doc["results"]["w/combined"]["interpretable"] is False
    check = doc["settings"]["classifier_check"]["sex"]
    assert (check["score"], check["baseline"], check["split"]) == (0.55, 0.6, "test")
    assert doc["settings"]["feature_network"]["classifier_metrics_sha256"] == sha256_file(clf / "metrics.json")
    assert any("sex: NOT INTERPRETABLE" in n for n in doc["notes"])
    assert main([*argv, "--classifier-metrics", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: file not found" in capsys.readouterr().err
