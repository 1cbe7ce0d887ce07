# Helpers shared by all rule files (the validated config, output paths, per-stage config JSON).
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from brainlatent.config import resolve_study
from brainlatent.metrics.registry import metrics
from brainlatent.models.families import families, get_family, model_id
from brainlatent.stage_keys import stage_view

# One resolved config per study: a --configfile is the whole study (keys it leaves out take the
# schema's defaults, as under `brainlatent <stage> --config` and `batch`); without one, the demo.
CFG = resolve_study(config, bool(workflow.overwrite_configfiles), Path(workflow.current_basedir).parents[1] / "config" / "config.yaml")

# the rules call the `brainlatent` CLI: when it is not on PATH (snakemake started as
# .venv/bin/snakemake without activating the venv), use the one beside this interpreter
if shutil.which("brainlatent") is None and (Path(sys.executable).parent / "brainlatent").exists():
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

S = str(Path(CFG["results_dir"]) / CFG["study"])
LOGS = f"{S}/logs"
BENCH = f"{S}/benchmarks"
RES = CFG["slices"]["resolution"]
SLICES = f"{S}/slices/{RES}"
MODELS = [model_id(arch, z) for arch in CFG["gan"]["archs"] for z in CFG["gan"]["latent_sizes"]]
FAMILY_PATTERN = "|".join(families())
METRIC_PATTERN = "|".join(metrics())
GPU = {"gpu": 1, "runtime": CFG["resources"]["gpu_runtime_min"], "mem_mb": CFG["resources"]["gpu_mem_mb"]}
CPU = {"runtime": CFG["resources"]["cpu_runtime_min"], "mem_mb": CFG["resources"]["cpu_mem_mb"]}
ENV = "../../envs/brainlatent.yaml"


def stage_config(stage):
    """The config keys one stage reads (brainlatent.stage_keys), as a JSON string param.

    Snakemake reruns a job when its params change, so a job reruns exactly when a key its code
    reads has changed. Shell commands quote it with ``{params.config:q}``.
    """
    return json.dumps(stage_view(CFG, stage), sort_keys=True, separators=(",", ":"))


def input_folder(name, up=1):
    """A param that is the folder of input file ``name`` (``up`` levels)."""
    return lambda wildcards, input: str(Path(input[name]).parents[up - 1])


def output_folder(name, up=1):
    """A param that is the folder of output file ``name`` (``up`` levels)."""
    return lambda wildcards, output: str(Path(output[name]).parents[up - 1])


def input_table(wildcards):
    """What validate_inputs reads: the synthetic cohort, the user's table or BIDS participants."""
    source = CFG["inputs"]["source"]
    if source == "synthetic":
        return f"{S}/cohort/scans.tsv"
    if source == "table":
        return CFG["inputs"]["table"]
    return str(Path(CFG["inputs"]["bids_dir"]) / "participants.tsv")


def scans_table():
    """The validated scans table (available once the validate_inputs checkpoint has run)."""
    path = checkpoints.validate_inputs.get().output.scans
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def scan_ids(wildcards=None):
    return scans_table()["scan"].tolist()


def scan_field(field):
    def get(wildcards):
        table = scans_table().set_index("scan")
        return table.loc[wildcards.scan, field]

    return get


def mask_input(wildcards):
    """The scan's mask from the table, when preprocessing uses table masks."""
    if CFG["preprocess"]["mask"]["source"] != "table":
        return []
    return scan_field("mask")(wildcards)


def mask_arg(wildcards, input):
    return ["--mask", input.mask] if input.get("mask") else []


def preprocessed(kind):
    def get(wildcards):
        return expand(f"{S}/preprocessed/{kind}/{{scan}}.nii.gz", scan=scan_ids())

    return get


def qc_pictures(wildcards):
    return expand(f"{S}/qc/{{scan}}.png", scan=scan_ids())


def model_outputs():
    return expand(f"{S}/gan/{{model}}/network.pt", model=MODELS)


def eval_outputs():
    """Every metric JSON: for each model, the metrics its family lists in the registry."""
    return [f"{S}/eval/{model_id(arch, z)}/{metric}.json" for arch in CFG["gan"]["archs"]
            for z in CFG["gan"]["latent_sizes"] for metric in get_family(arch).metrics]


def twins_enabled():
    """Counterfactual twins are made for a synthetic study that asks for them (synthetic.twins.enabled)."""
    return CFG["inputs"]["source"] == "synthetic" and CFG["synthetic"]["twins"]["enabled"]


def twins_targets():
    return [f"{S}/twins/truth.tsv"] if twins_enabled() else []


def twins_manifest():
    """The synthetic twins' slice manifest when the study renders twins, else nothing."""
    return [f"{S}/twins/slices/{RES}/manifest.parquet"] if twins_enabled() else []


def counterfactual_outputs():
    """Every model's counterfactual metrics when counterfactual.enabled."""
    if not CFG["counterfactual"]["enabled"]:
        return []
    return [f"{S}/counterfactual/{model}/metrics.json" for model in MODELS]


def all_targets():
    return [
        *twins_targets(),
        f"{S}/config.yaml",
        f"{S}/inputs/inputs.ok",
        f"{SLICES}/manifest.parquet",
        f"{S}/classifier/metrics.json",
        *model_outputs(),
        *eval_outputs(),
        *counterfactual_outputs(),
        f"{S}/metrics.csv",
        f"{S}/report/index.html",
    ]
