"""``brainlatent batch``: sweep expansion, the Snakemake commands, and the comparison across seeds."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from brainlatent import batch
from brainlatent.cli import main, stage_parser
from brainlatent.errors import BrainlatentError
from test_report import make_study

REPO = Path(__file__).resolve().parents[1]


def write_base(tmp_path: Path, **extra) -> Path:
    base = {"study": "base", "seed": 5, "results_dir": str(tmp_path / "results"), **extra}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def write_sweep(tmp_path: Path, grid: dict, **extra) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "sw", "base": str(write_base(tmp_path)), "grid": grid, **extra}, sort_keys=False))
    return path


def parse_args(*argv: str):
    parser, _ = stage_parser("batch")
    return parser.parse_args(list(argv))


class FakeSnakemake:
    """Records the commands; fails the studies named in ``fail``."""

    def __init__(self, fail=()):
        self.commands, self.fail = [], set(fail)

    def __call__(self, cmd, env=None):
        self.commands.append(cmd)
        assert str(Path(sys.executable).parent) in env["PATH"].split(os.pathsep)  # this environment's 'brainlatent'
        config = yaml.safe_load(Path(cmd[cmd.index("--configfile") + 1]).read_text())
        return type("Done", (), {"returncode": 1 if config["study"] in self.fail else 0})()


# --------------------------------------------------------------------------------------------
# Sweeps


def test_sweep_expands_the_grid_into_valid_named_configs(tmp_path):
    sweep = write_sweep(tmp_path, {"seed": [1, 2, 3], "gan.latent_sizes": [[8], [8, 16]]})
    name, runs, replicate = batch.load_sweep(sweep)
    assert name == "sw" and replicate == ["seed"]
    assert [r.study for r in runs] == [
        "base-seed1-latent_sizes8", "base-seed1-latent_sizes8_16", "base-seed2-latent_sizes8",
        "base-seed2-latent_sizes8_16", "base-seed3-latent_sizes8", "base-seed3-latent_sizes8_16"]
    assert runs[1].config["gan"]["latent_sizes"] == [8, 16] and runs[1].config["seed"] == 1
    assert runs[0].values == {"seed": 1, "gan.latent_sizes": [8]}
    batch.write_configs(runs, tmp_path / "configs")
    written = yaml.safe_load((tmp_path / "configs" / "base-seed2-latent_sizes8.yaml").read_text())
    assert written["study"] == "base-seed2-latent_sizes8" and written["seed"] == 2


@pytest.mark.parametrize("grid, message", [
    ({"gan.latent_size": [[8]]}, "unknown key"),                 # typo in a config key
    ({"seed": [1, "x"]}, "run base-seedx: seed: 'x' is not of type 'integer'"),
    ({"seed": 3}, "grid.seed: expected a non-empty list"),
    ({}, "'grid' must map config keys"),
])
def test_sweep_errors_name_the_problem(tmp_path, grid, message):
    with pytest.raises(BrainlatentError, match=re_escape(message)):
        batch.load_sweep(write_sweep(tmp_path, grid))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_example_sweep_is_valid():
    name, runs, replicate = batch.load_sweep(REPO / "config" / "batch" / "seeds.yaml")
    assert name == "seeds" and replicate == ["seed"]
    assert [r.config["seed"] for r in runs] == [1, 2, 3]
    assert all(r.config["gan"]["latent_sizes"] == [8] and r.study.startswith("tiny-seed") for r in runs)


# --------------------------------------------------------------------------------------------
# Running


def test_each_study_runs_snakemake_with_the_pass_through_options(tmp_path):
    sweep = write_sweep(tmp_path, {"seed": [1, 2]})
    fake = FakeSnakemake()
    batch.run(parse_args("--sweep", str(sweep), "--cores", "3", "--jobs", "4", "--snakemake-args", "--rerun-triggers mtime"), fake)
    assert len(fake.commands) == 2
    cmd = fake.commands[0]
    assert cmd[cmd.index("--configfile") + 1] == str(tmp_path / "results" / "batch" / "sw" / "configs" / "base-seed1.yaml")
    assert cmd[cmd.index("--cores") + 1] == "3" and cmd[cmd.index("--jobs") + 1] == "4"
    assert cmd[cmd.index("--workflow-profile") + 1] == "profiles/local" and "--profile" not in cmd
    assert cmd[-2:] == ["--rerun-triggers", "mtime"] and "--dry-run" not in cmd
    assert (tmp_path / "results" / "batch" / "sw" / "comparison.html").exists()
    # a cluster profile replaces the local workflow profile; a dry run skips the comparison
    (tmp_path / "results" / "batch" / "sw" / "comparison.html").unlink()
    fake = FakeSnakemake()
    batch.run(parse_args("--sweep", str(sweep), "--profile", "slurm", "--dry-run"), fake)
    cmd = fake.commands[0]
    assert cmd[cmd.index("--profile") + 1] == "slurm" and "--workflow-profile" not in cmd and "--dry-run" in cmd
    assert not (tmp_path / "results" / "batch" / "sw" / "comparison.html").exists()


def test_a_failed_study_does_not_stop_the_others(tmp_path):
    sweep = write_sweep(tmp_path, {"seed": [1, 2, 3]})
    fake = FakeSnakemake(fail={"base-seed2"})
    with pytest.raises(BrainlatentError, match="base-seed2: snakemake failed"):
        batch.run(parse_args("--sweep", str(sweep)), fake)
    assert len(fake.commands) == 3
    assert (tmp_path / "results" / "batch" / "sw" / "comparison.html").exists()  # built anyway (no results: a note)


def test_real_snakemake_dry_run_of_the_tiny_study(tmp_path):
    if not (REPO / "workflow" / "Snakefile").exists():
        pytest.skip("no workflow in this checkout")
    cfg = yaml.safe_load((REPO / "config" / "studies" / "tiny.yaml").read_text())
    cfg["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        args = parse_args("--configs", str(path), "--dry-run", "--snakemake-args", "--nolock --quiet")
        batch.run(args, lambda cmd, env=None: subprocess.run(cmd, env=env, capture_output=True))
    finally:
        os.chdir(cwd)


# --------------------------------------------------------------------------------------------
# Comparison


@pytest.fixture(scope="module")
def seed_studies(tmp_path_factory):
    """Six fixture studies: seeds 1-3 x classifier.epochs 2 and 3 (two settings to group by)."""
    tmp = tmp_path_factory.mktemp("batch")
    sweep = write_sweep(tmp, {"seed": [1, 2, 3], "classifier.epochs": [2, 3]})
    name, runs, _ = batch.load_sweep(sweep)
    for run in runs:
        make_study(tmp / "results", run.study, run.config["seed"] * 10 + run.config["classifier"]["epochs"],
                   models=[("stylegan", 8)], parts=("classifier", "eval"))
    assert main(["batch", "--sweep", str(sweep), "--compare-only"]) == 0
    return tmp, runs, tmp / "results" / "batch" / name


def _sources(tmp: Path, runs) -> pd.DataFrame:
    """Every run's metrics from its own files (metrics.csv + the classifier's test accuracy)."""
    frames = []
    for run in runs:
        folder = tmp / "results" / run.study
        df = pd.read_csv(folder / "metrics.csv")
        metrics = json.loads((folder / "classifier" / "metrics.json").read_text())
        clf = []
        for which in ("best", "last"):
            for split, part in metrics[which].items():
                clf.append({"variant": f"{which}/{split}", "statistic": "mean_balanced_accuracy", "value": part["mean_balanced_accuracy"]})
                for h, head in part["heads"].items():
                    # numbers, flags (above_baseline as 0/1) and one level of dicts (balanced_accuracy_ci.low/high)
                    stats = [(f"{k}.{sub}", x) for k, v in head.items() if isinstance(v, dict) for sub, x in v.items()]
                    stats += [(k, v) for k, v in head.items() if not isinstance(v, (dict, list, str))]
                    clf += [{"variant": f"{which}/{split}/{h}", "statistic": k, "value": float(v) if v is not None else None}
                            for k, v in stats]
        clf = pd.DataFrame(clf).assign(arch="classifier", metric="classifier").astype({"value": float})
        frames.append(pd.concat([df, clf]).assign(epochs=run.config["classifier"]["epochs"], seed=run.config["seed"]))
    return pd.concat(frames, ignore_index=True)


def test_comparison_is_mean_and_std_over_seeds(seed_studies):
    tmp, runs, out = seed_studies
    comp = pd.read_csv(out / "comparison.csv")
    src = _sources(tmp, runs)
    checked = 0
    for (epochs, metric, variant, stat), part in src[~src["statistic"].str.contains(r"\[")].groupby(
            ["epochs", "metric", "variant", "statistic"]):
        row = comp[(comp["classifier.epochs"] == epochs) & (comp["metric"] == metric) & (comp["variant"] == variant)
                   & (comp["statistic"] == stat)]
        assert len(row) == 1, (epochs, metric, variant, stat)
        values = part["value"].dropna().to_numpy()
        assert row["n"].iloc[0] == len(values) == (3 if len(values) else 0)
        if len(values):
            assert row["mean"].iloc[0] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-15)
            assert row["std"].iloc[0] == pytest.approx(np.std(values, ddof=1), rel=1e-9, abs=1e-15)
        checked += 1
    assert checked > 50


def test_all_metrics_has_every_row_with_grid_columns(seed_studies):
    tmp, runs, out = seed_studies
    allm = pd.read_csv(out / "all_metrics.csv")
    assert list(allm.columns[:4]) == ["batch", "study", "seed", "classifier.epochs"]
    for run in runs:
        folder = tmp / "results" / run.study
        mine = allm[allm["study"] == run.study]
        n_eval = len(pd.read_csv(folder / "metrics.csv"))
        assert (mine["metric"] != "classifier").sum() == n_eval
        assert (mine["metric"] == "classifier").sum() > 0
        assert set(mine["seed"]) == {run.config["seed"]} and set(mine["classifier.epochs"]) == {run.config["classifier"]["epochs"]}
    assert allm["study"].nunique() == 6


class Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self._cell, self.images = [], None, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-row" in a:
            self._cell = {**a, "spans": {}}
            self.cells.append(self._cell)
        elif tag == "span" and self._cell is not None and "data-stat" in a:
            self._cell["spans"][a["data-stat"]] = a
            self._span = a
            a["text"] = ""
        elif tag == "img":
            self.images += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        if tag == "span":
            self._span = None

    def handle_data(self, data):
        if getattr(self, "_span", None) is not None:
            self._span["text"] += data


def test_comparison_page_prints_the_numpy_values(seed_studies):
    tmp, runs, out = seed_studies
    page = Cells()
    page.feed((out / "comparison.html").read_text())
    src = _sources(tmp, runs)
    src["model"] = np.where(src["metric"] == "classifier", "classifier", src["arch"] + "-z" + src["z_dim"].fillna(0).astype(int).astype(str))
    checked = 0
    for cell in page.cells:
        model, metric, variant, stat = cell["data-row"].split("|")
        epochs = int(cell["data-setting"].split("=")[1])
        values = src[(src["model"] == model) & (src["metric"] == metric) & (src["variant"] == variant) & (src["statistic"] == stat)
                     & (src["epochs"] == epochs)]["value"].dropna().to_numpy()
        mean = cell["spans"]["mean"]
        if not len(values):
            assert "data-value" not in mean
            continue
        assert float(mean["data-value"]) == pytest.approx(np.mean(values), rel=1e-12, abs=1e-15)
        assert mean["text"] == format(np.mean(values), mean["data-format"]) or math.isclose(float(mean["text"]), np.mean(values), rel_tol=1e-3, abs_tol=1e-12)
        std = cell["spans"]["std"]
        assert float(std["data-value"]) == pytest.approx(np.std(values, ddof=1), rel=1e-9, abs=1e-15)
        assert cell["spans"]["n"]["text"] == str(len(values))
        checked += 1
    assert checked > 100
    assert "table-headline" in (out / "comparison.html").read_text()


def test_configs_list_derives_the_grid_from_differences(tmp_path):
    paths = []
    for seed in (1, 2):
        cfg, folder = make_study(tmp_path / "results", f"run{seed}", seed, models=[("stylegan", 8)], parts=("eval",))
        path = tmp_path / f"run{seed}.yaml"
        path.write_text(yaml.safe_dump({k: cfg[k] for k in ("study", "seed", "results_dir")}))
        paths.append(str(path))
    assert main(["batch", "--configs", *paths, "--compare-only", "--name", "pair"]) == 0
    out = tmp_path / "results" / "batch" / "pair"
    allm = pd.read_csv(out / "all_metrics.csv")
    assert "seed" in allm.columns and set(allm["seed"]) == {1, 2}
    comp = pd.read_csv(out / "comparison.csv")
    assert set(comp["n"]) <= {0, 2} and (comp["n"] == 2).any()
    shutil.rmtree(out)
