"""A counterfactual study under Snakemake: twins, every model's counterfactual metrics and the report
section, from one config; and a counterfactual setting reruns only the counterfactual jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from test_workflow import REPO, snakemake, study_config

TWINS = {"enabled": True, "split": "test", "modes": ["single", "causal"],
         "interventions": [{"attribute": "edss", "value": 0}, {"attribute": "age", "shift": 10}]}
COUNTERFACTUAL = {"enabled": True, "num_slices": 4, "max_per_intervention": 4, "reversibility_slices": 2, "cycles": 2,
                  "interventions": [{"attribute": "edss", "value": 0}, {"attribute": "age", "shift": 10}],
                  "projector": {"steps": 5, "batch_size": 8}, "directions": {"num_samples": 60}, "pictures": 2}


@pytest.fixture(scope="module")
def cf_study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cf")
    base = yaml.safe_load((REPO / "config/studies/tiny.yaml").read_text())
    synthetic = dict(base["synthetic"], n_subjects=16, twins=TWINS)
    gan = dict(base["gan"], archs=["stylegan", "cstylegan"])
    config, cfg = study_config(tmp_path, "config/studies/tiny.yaml", study="tinycf", synthetic=synthetic, gan=gan,
                               counterfactual=COUNTERFACTUAL)
    result = snakemake("--cores", "2", "--configfile", str(config), "--workflow-profile", "profiles/local")
    return config, cfg, result


@pytest.mark.slow
def test_counterfactual_study_end_to_end(cf_study):
    config, cfg, result = cf_study
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = Path(cfg["results_dir"]) / "tinycf"
    assert (root / "twins" / "truth.tsv").exists()
    for model in ("stylegan-z8", "cstylegan-z8"):
        doc = json.loads((root / "counterfactual" / model / "metrics.json").read_text())
        assert {e["attribute"] for e in doc["interventions"].values()} <= {"edss", "age"}
        assert any("true_error" in e for e in doc["interventions"].values())
        assert doc["space"] == ("w" if model.startswith("stylegan") else "zy")
    page = (root / "report" / "index.html").read_text()
    assert 'id="counterfactuals"' in page and 'id="table-cf-truth-stylegan-z8"' in page


@pytest.mark.slow
def test_a_counterfactual_setting_reruns_only_the_counterfactual_jobs(cf_study, tmp_path):
    config, cfg, result = cf_study
    assert result.returncode == 0
    changed = dict(cfg, counterfactual=dict(cfg["counterfactual"], projector={"steps": 6, "batch_size": 8}))
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    dry = snakemake("-n", "--configfile", str(path), "--workflow-profile", "profiles/local")
    assert dry.returncode == 0, dry.stderr
    planned = {line.split()[0] for line in dry.stdout.splitlines() if line[:1].isalpha() and line.split()[-1].isdigit()}
    assert "counterfactual" in planned
    assert not planned & {"synthesize_cohort", "synthesize_twins", "preprocess", "slice_dataset", "train_classifier",
                          "train_gan", "evaluate"}
