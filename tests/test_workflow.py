"""The workflow end to end on the tiny study (real Snakemake, real files), lint and dry-run."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from brainlatent.config import load_config
from brainlatent.models.families import families, get_family, model_id

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def snakemake(*args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def study_config(tmp_path: Path, base: str, **overrides) -> tuple[Path, dict]:
    cfg = yaml.safe_load((REPO / base).read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    for key, value in overrides.items():
        cfg[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_dry_run_lists_the_data_rules(tmp_path):
    config, _ = study_config(tmp_path, "config/config.yaml")
    result = snakemake("-n", "--configfile", str(config))
    assert result.returncode == 0, result.stderr
    for rule in ("synthesize_cohort", "validate_inputs", "slice_dataset", "train_classifier", "train_gan", "report"):
        assert rule in result.stdout


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """config/studies/tiny.yaml run end to end once (every stage, real files); shared by the tests
    that then ask Snakemake what a change would rerun."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    config, cfg = study_config(tmp_path, "config/studies/tiny.yaml")
    result = snakemake("--cores", "2", "--configfile", str(config), "--workflow-profile", "profiles/local")
    return config, cfg, result


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """``{rule: job count}`` from a dry run's "Job stats" table ({} when nothing is to be done)."""
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    if "Job stats:" not in out:
        return {}
    lines = out.split("Job stats:")[1].strip().splitlines()[2:]  # skip the header and its rule
    jobs = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


def changed_study(tmp_path: Path, cfg: dict, change) -> Path:
    """The same study (same results folder) with ``change(cfg)`` applied, as a new YAML file."""
    cfg = copy.deepcopy(cfg)
    change(cfg)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_study):
    config, cfg, result = tiny_study
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    study = Path(cfg["results_dir"]) / cfg["study"]
    scans = pd.read_csv(study / "inputs" / "scans.tsv", sep="\t")
    assert len(scans) == cfg["synthetic"]["n_subjects"]
    for scan in scans["scan"]:
        assert (study / "preprocessed" / "images" / f"{scan}.nii.gz").exists()
        assert (study / "qc" / f"{scan}.png").stat().st_size > 1000
    images = np.load(study / "slices" / "32" / "images.npy", mmap_mode="r")
    manifest = pd.read_parquet(study / "slices" / "32" / "manifest.parquet")
    assert images.shape[1:] == (1, 32, 32) and len(images) == len(manifest)
    assert manifest.groupby("subject")["split"].nunique().max() == 1
    metrics = json.loads((study / "classifier" / "metrics.json").read_text())
    assert metrics
    for model in ("stylegan-z8", "gan-z8"):
        assert (study / "gan" / model / "network.pt").exists()
        for metric in ("ppl", "path_profile", "separability", "quality"):
            assert (study / "eval" / model / f"{metric}.json").exists()
    table = pd.read_csv(study / "metrics.csv")
    assert set(table["arch"]) == {"stylegan", "gan"}
    assert (study / "report" / "index.html").stat().st_size > 10_000
    # every rule wrote a benchmark file
    assert (study / "benchmarks" / "train_classifier.tsv").exists()
    # the resolved config: the study file with the schema's defaults, nothing from the demo
    assert load_config(study / "config.yaml") == load_config(config)

    # a second run has nothing to do; forcing one rule reruns only it and what depends on it
    again = snakemake("-n", "--configfile", str(config))
    assert "Nothing to be done" in again.stdout + again.stderr
    forced = snakemake("-n", "--configfile", str(config), "--forcerun", "train_classifier")
    out = forced.stdout
    assert "train_classifier" in out and "train_gan" not in out.split("Job stats:")[-1] and "preprocess " not in out


BOOKKEEPING = {"resolved_config", "aggregate", "report", "study"}


@pytest.mark.slow
def test_adding_a_latent_size_plans_only_the_new_models(tiny_study, tmp_path):
    _, cfg, _ = tiny_study
    changed = changed_study(tmp_path, cfg, lambda c: c["gan"].update(latent_sizes=[8, 12]))
    jobs = planned_jobs(snakemake("-n", "--configfile", str(changed)))
    assert jobs.pop("train_gan") == len(cfg["gan"]["archs"])
    assert jobs.pop("evaluate") == sum(len(get_family(arch).metrics) for arch in cfg["gan"]["archs"])
    assert set(jobs) <= BOOKKEEPING, jobs


@pytest.mark.slow
def test_new_attribute_bins_rerun_no_preprocessing(tiny_study, tmp_path):
    _, cfg, _ = tiny_study
    study = Path(cfg["results_dir"]) / cfg["study"]
    resolved = load_config(study / "config.yaml")

    def rebin(c):
        c["attributes"] = copy.deepcopy(resolved["attributes"])
        age = next(a for a in c["attributes"] if a["name"] == "age")
        age["bins"] = [age["bins"][0], 35, 50, 65, age["bins"][-1]]

    jobs = planned_jobs(snakemake("-n", "--configfile", str(changed_study(tmp_path, cfg, rebin))))
    assert "train_classifier" in jobs
    assert not {"synthesize_cohort", "validate_inputs", "preprocess", "slice_dataset", "train_gan"} & set(jobs), jobs


@pytest.mark.slow
def test_an_evaluate_setting_retrains_nothing(tiny_study, tmp_path):
    _, cfg, _ = tiny_study
    changed = changed_study(tmp_path, cfg, lambda c: c["evaluate"]["ppl"].update(num_samples=50))
    jobs = planned_jobs(snakemake("-n", "--configfile", str(changed)))
    assert jobs.pop("evaluate") == len(cfg["gan"]["archs"]) * len(cfg["gan"]["latent_sizes"])  # the ppl jobs only
    assert set(jobs) <= BOOKKEEPING, jobs


@pytest.mark.slow
def test_same_yaml_through_snakemake_and_the_cli_gives_identical_weights(tiny_study, tmp_path):
    """tiny.yaml leaves gan.lr out: under Snakemake and the CLI alike it takes the schema default."""
    config, cfg, _ = tiny_study
    assert "lr" not in cfg["gan"]
    study = Path(cfg["results_dir"]) / cfg["study"]
    threads = str(load_config(config)["resources"]["gpu_threads"])
    cli = subprocess.run(
        [str(BIN / "brainlatent"), "train-gan", "--config", str(config), "--slices", str(study / "slices" / "32"),
         "--arch", "stylegan", "--zdim", "8", "--out", str(tmp_path / "cli")],
        env={**ENV, "OMP_NUM_THREADS": threads}, capture_output=True, text=True, timeout=600,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    a = torch.load(study / "gan" / "stylegan-z8" / "network.pt", weights_only=True)
    b = torch.load(tmp_path / "cli" / "network.pt", weights_only=True)
    assert a["fingerprint"] == b["fingerprint"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


@pytest.fixture(scope="module")
def effects_study(tmp_path_factory) -> tuple[Path, dict]:
    """The data stage of config/studies/effects.yaml (40 synthetic subjects, 64 px slices)."""
    tmp_path = tmp_path_factory.mktemp("effects")
    config, cfg = study_config(tmp_path, "config/studies/effects.yaml")
    study = Path(cfg["results_dir"]) / cfg["study"]
    target = str(study / "slices" / "64" / "manifest.parquet")
    result = snakemake(target, "--cores", "2", "--configfile", str(config))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return study, cfg


@pytest.mark.slow
def test_planted_effects_are_measurable_from_slices(effects_study):
    """Lesion load rises with EDSS and brain area differs by sex, measured on the slices alone."""
    study, _ = effects_study
    images = np.load(study / "slices" / "64" / "images.npy")
    manifest = pd.read_parquet(study / "slices" / "64" / "manifest.parquet")
    # lesion load: FLAIR-hyperintense spots (a pixel brighter than the median of its 9x9
    # neighbourhood by > 0.4, i.e. 20 % of the intensity range) in the brain's core (distance
    # from the brain edge > 40 % of the slice's maximum), summed over a scan's slices
    lesion, area = [], []
    for img in images[:, 0]:
        inside = img > -1.0
        depth = ndi.distance_transform_edt(inside)
        spots = (img - ndi.median_filter(img, size=9)) > 0.4
        lesion.append(int((spots & (depth > 0.4 * depth.max())).sum()))
        area.append(int(inside.sum()))
    per_scan = pd.DataFrame({"scan": manifest["scan"], "lesion": lesion, "area": area, "edss": manifest["edss"],
                             "sex": manifest["sex"]}).groupby("scan").agg(
        lesion=("lesion", "sum"), area=("area", "mean"), edss=("edss", "first"), sex=("sex", "first"))
    rho = spearmanr(per_scan["edss"], per_scan["lesion"]).statistic
    print(f"lesion load vs EDSS: Spearman {rho:.3f} over {len(per_scan)} scans")
    assert rho >= 0.5, f"lesion load vs EDSS Spearman {rho:.2f}"
    area = per_scan.groupby("sex")["area"].mean()
    assert area["M"] > area["F"] * 1.03, area.to_dict()


@pytest.mark.slow
def test_classifier_learns_sex_from_the_pipeline_slices(effects_study, tmp_path):
    """Acceptance: trained on the workflow's own slices, a sex classifier beats the majority baseline
    on held-out subjects (validation and test pooled: 12 of the 40 subjects), with the labels it
    gives (prior-adjusted) and with its class-balanced decision. One head, so that 168 training
    slices suffice (the four-head demo network is scored on the demo cohort, see README)."""
    from brainlatent.train.classifier import train_classifier

    study, cfg = effects_study
    sex = [{"name": "sex", "kind": "categorical", "levels": ["F", "M"]}]
    cfg = {**cfg, "attributes": sex, "classifier": {"width": 16, "fc_width": 128, "epochs": 30, "batch_size": 16, "patience": 30}}
    metrics = train_classifier(cfg, study / "slices" / "64", tmp_path / "classifier")
    heads = [metrics["best"][split]["heads"]["sex"] for split in ("val", "test")]
    n = sum(h["n"] for h in heads)
    accuracy = sum(h["accuracy"] * h["n"] for h in heads) / n
    baseline = sum(h["majority_baseline_accuracy"] * h["n"] for h in heads) / n
    print(f"sex on {n} held-out slices: accuracy {accuracy:.3f}, majority baseline {baseline:.3f}")
    assert accuracy >= max(0.8, baseline + 0.1), (accuracy, baseline)
    assert all(h["balanced_accuracy"] >= 0.7 for h in heads), heads


def table_study(tmp_path: Path, rows: list[dict], **overrides) -> Path:
    """A study over a scans table (no sex column) built on the tiny config."""
    table = tmp_path / "scans.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    cfg = yaml.safe_load((REPO / "config/studies/tiny.yaml").read_text())
    cfg.pop("synthetic")
    cfg.update({
        "study": "odd_names", "results_dir": str(tmp_path / "results"),
        "inputs": {"source": "table", "table": str(table), "modality": "flair"},
        "attributes": [
            {"name": "age", "kind": "numeric", "bins": [18, 40, 60, 80]},
            {"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 10]},
            {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS", "SPMS", "PPMS"]},
        ],
        "slices": {**cfg["slices"], "split": {"train": 0.5, "val": 0.25, "test": 0.25, "stratify": ["ms_type"]}},
        "evaluate": {**cfg["evaluate"], "separability": {"num_samples": 60, "repeats": 2, "attributes": [], "binarise": {"edss": 2.0}}},
        **overrides,
    })
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_table_study_without_sex_and_with_shell_characters_in_file_names(tiny_study, tmp_path):
    """Images named with a space and with `$(touch X)` run through the whole workflow under
    Snakemake: the first works like any file, the second runs nothing but the pipeline. The study
    has no `sex` attribute and runs end to end."""
    _, cfg, _ = tiny_study
    cohort = Path(cfg["results_dir"]) / cfg["study"] / "cohort"
    scans = pd.read_csv(cohort / "scans.tsv", sep="\t", dtype=str)
    marker = "brainlatent-injected-marker"  # `touch` would create it in the directory the shell runs in
    (tmp_path / "images").mkdir()
    rows = []
    for i, scan in enumerate(scans.to_dict("records")):
        name = f"$(touch {marker})x.nii.gz" if i == 0 else f"my scan {i}.nii.gz"
        shutil.copy(cohort / scan["image_flair"], tmp_path / "images" / name)
        rows.append({"subject": scan["subject"], "image_flair": f"images/{name}", "age": scan["age"],
                     "edss": scan["edss"], "ms_type": scan["ms_type"]})
    config = table_study(tmp_path, rows)
    try:
        result = snakemake("--cores", "2", "--configfile", str(config), "--workflow-profile", "profiles/local")
        injected = [p for p in (REPO / marker, tmp_path / marker, Path.cwd() / marker) if p.exists()]
    finally:
        (REPO / marker).unlink(missing_ok=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert not injected, injected
    study = tmp_path / "results" / "odd_names"
    normalised = pd.read_csv(study / "inputs" / "scans.tsv", sep="\t")
    assert normalised["image"].str.contains("my scan", regex=False).sum() == len(rows) - 1
    assert normalised["image"].str.contains("$(touch", regex=False).sum() == 1
    sep = json.loads((study / "eval" / "stylegan-z8" / "separability.json").read_text())
    assert [a["name"] for a in sep["settings"]["attributes"]] == ["edss"]
    assert (study / "report" / "index.html").stat().st_size > 10_000
    assert "sex" not in pd.read_csv(study / "metrics.csv").to_string()


def test_a_failed_job_shows_its_one_line_error_on_the_console(tmp_path):
    """The profile prints a failed job's log; its last line is the stage's one-line error."""
    rows = [{"subject": "s01", "image_flair": "images/missing.nii.gz", "age": 40, "edss": 2, "ms_type": "RRMS"}]
    config = table_study(tmp_path, rows)
    result = snakemake("--cores", "1", "--configfile", str(config), "--workflow-profile", "profiles/local")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "brainlatent validate-inputs: error:" in out and "missing.nii.gz" in out
    log = (tmp_path / "results" / "odd_names" / "logs" / "validate_inputs.log").read_text().strip().splitlines()
    assert log[-1].startswith("brainlatent validate-inputs: error:") or "missing.nii.gz" in log[-1]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "open_ms_sample").is_dir(), reason="open_ms_sample data not available")
def test_qc_failure_stops_the_workflow_or_is_excluded(tmp_path):
    """The open_ms_sample study (real FLAIR, Lesjak et al., Neuroinformatics 2016) with a plausible
    volume range its first patient's masks (about 1300 ml) fall below: Snakemake stops at
    slice_dataset naming both scans and the reason on the console; with qc.on_fail: exclude it
    completes, says so on the console and lists them in excluded.tsv."""
    cfg_path, cfg = study_config(tmp_path, "config/studies/open_ms_sample.yaml")
    cfg["inputs"]["table"] = str(REPO / cfg["inputs"]["table"])
    cfg["preprocess"]["qc"] = {"brain_volume_ml": [1400, 2300]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    study = Path(cfg["results_dir"]) / cfg["study"]
    target = str(study / "slices" / "64" / "manifest.parquet")
    result = snakemake(target, "--cores", "2", "--configfile", str(cfg_path))
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert "2 of 4 scans failed quality control" in log
    for scan in ("patient01_study1", "patient01_study2"):
        assert f"{scan}: brain_volume: mask volume" in log, log[-3000:]
    assert not Path(target).exists()

    cfg["qc"] = {"on_fail": "exclude"}
    cfg_path.write_text(yaml.safe_dump(cfg))
    result = snakemake(target, "--cores", "2", "--configfile", str(cfg_path))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "WARNING: patient01_study1 (subject patient01) excluded: brain_volume" in log
    assert "subject patient01: all its scans were excluded" in log
    excluded = pd.read_csv(study / "slices" / "64" / "excluded.tsv", sep="\t")
    assert sorted(excluded["scan"]) == ["patient01_study1", "patient01_study2"]
    assert set(pd.read_parquet(target)["subject"]) == {"patient12"}


@pytest.mark.parametrize("archs", [list(families()), [list(families())[-1]]], ids=["every-family", "newest-family"])
def test_the_family_registry_drives_the_plan(tmp_path, archs):
    """The plan comes from the registry: every listed family's training jobs and the metrics it
    registers, and no job of a family the study does not list."""
    config, _ = study_config(tmp_path, "config/studies/tiny.yaml", gan={"archs": archs, "latent_sizes": [8, 16]})
    result = snakemake("-n", "--configfile", str(config))
    jobs = planned_jobs(result)
    assert jobs["train_gan"] == 2 * len(archs)
    assert jobs["evaluate"] == 2 * sum(len(get_family(a).metrics) for a in archs)
    out = result.stdout
    for arch in archs:
        for z in (8, 16):
            assert f"gan/{model_id(arch, z)}/network.pt" in out
    for other in set(families()) - set(archs):
        assert f"gan/{model_id(other, 8)}/" not in out


STUDIES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config" / "studies").glob("*.yaml") if "template" not in p.name)


@pytest.mark.parametrize("base", ["config/config.yaml", *STUDIES])
def test_every_documented_study_plans_its_models(tmp_path, base):
    """Each study the README shows (the demo and one per model family) validates and plans a
    training job per (family, latent size) it lists."""
    config, _ = study_config(tmp_path, base)
    jobs = planned_jobs(snakemake("-n", "--configfile", str(config)))
    gan = load_config(config)["gan"]
    assert jobs["train_gan"] == len(gan["archs"]) * len(gan["latent_sizes"]), jobs
