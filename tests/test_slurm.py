"""The workflow on a real one-node SLURM cluster (``scripts/slurm-up.sh``), through ``--profile slurm``.

What is shown, with the tiny study (shrunk a little further so the module runs in a few minutes on
2 cores):

0. (cheap, no cluster) the profiles use real option names and no rule names a partition/account;
1. the data stage, the classifier and one GAN run as SLURM jobs (one log per SLURM job id, known
   to the controller; GPU rules ask for and get the fake GPU);
2. a training job cancelled with ``scancel`` fails the run, and the next run resumes it from its
   checkpoint;
3. a failing job is reported with its SLURM log (and its own log on the console), and ``--retries 1``
   submits it a second time;
4. ``--forcerun RULE`` (dry run) schedules only that rule and what depends on it.

The cluster is brought up once for the module and always stopped again by the PIDs of the daemons
the bring-up started. Snakemake runs with the study folder as its working directory and the
repository's profile given by path (``--profile <repo>/slurm``), so nothing is written to the
checkout. Needs root (apt packages, daemons); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "slurm"
UP, DOWN = REPO / "scripts" / "slurm-up.sh", REPO / "scripts" / "slurm-down.sh"

STUDY = "tiny"
DATA_TARGETS = [f"results/{STUDY}/inputs/scans.tsv", f"results/{STUDY}/slices/32/manifest.parquet"]
CLASSIFIER = f"results/{STUDY}/classifier/model.pt"
GAN = f"results/{STUDY}/gan/stylegan-z8/network.pt"
MAIN_TARGETS = [*DATA_TARGETS, CLASSIFIER, GAN]
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: ([^)]+)\)")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: scripts/slurm-up.sh installs Debian packages and starts SLURM daemons"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


def _env() -> dict[str, str]:
    """The environment Snakemake and (via sbatch --export=ALL) every job sees."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin", "/sbin"])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SLURM_JOB_ID", None)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node SLURM; stopped afterwards if this fixture started it."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    up = subprocess.run([str(UP), str(state)], capture_output=True, text=True, timeout=900, env=_env())
    started = up.returncode == 0
    try:
        if up.returncode == 3:
            pytest.skip(f"cannot bring up SLURM here: {up.stderr.strip().splitlines()[-1]}")
        if up.returncode not in (0, 4):  # 4: a cluster from another state folder is up; use it
            pytest.fail(f"scripts/slurm-up.sh failed (rc {up.returncode}):\n{up.stdout}\n{up.stderr}")
        conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, env=_env()).stdout
        ctld_log = Path(re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", conf, re.M).group(1))
        yield {"state": state, "ctld_log": ctld_log}
    finally:
        if started or up.returncode == 1:
            down = subprocess.run([str(DOWN), str(state)], capture_output=True, text=True, timeout=120)
            print(down.stderr)


def _study_config(path: Path, **sections) -> Path:
    """The tiny study, smaller still, with cluster resources that fit one small node."""
    cfg = yaml.safe_load((REPO / "config" / "studies" / f"{STUDY}.yaml").read_text())
    cfg["results_dir"] = "results"
    cfg["synthetic"]["n_subjects"] = min(cfg["synthetic"].get("n_subjects", 8), 8)
    cfg.setdefault("preprocess", {})["bias_correction"] = {"enabled": False}
    cfg["resources"] = {"gpu_runtime_min": 15, "gpu_mem_mb": 1500, "cpu_runtime_min": 15, "cpu_mem_mb": 1000}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start(work: Path, config: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = work / f"snakemake-{time.monotonic_ns()}.out"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--profile", str(PROFILE),
           f"--configfile={config}", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake cancels its SLURM jobs on SIGINT
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pytest.fail(f"snakemake did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    return rc, log.read_text()


def snakemake(work: Path, config: Path, *args: str, timeout: float = 480) -> tuple[int, str]:
    proc, log = _start(work, config, *args)
    return _finish(proc, log, timeout)


def _job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> job count."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    return counts


@pytest.fixture(scope="module")
def tiny_run(cluster, tmp_path_factory):
    """The data stage, the classifier and one GAN of the tiny study, run through SLURM."""
    work = tmp_path_factory.mktemp("study")
    config = _study_config(work / "study.yaml")
    started = time.monotonic()
    rc, out = snakemake(work, config, *MAIN_TARGETS)
    assert rc == 0, out[-6000:]
    return {"work": work, "config": config, "output": out, "seconds": time.monotonic() - started}


@pytest.mark.slurm
def test_study_runs_as_slurm_jobs(cluster, tiny_run):
    work, out = tiny_run["work"], tiny_run["output"]
    for target in MAIN_TARGETS:
        assert (work / target).stat().st_size > 0, target

    submitted = dict(SUBMITTED.findall(out))  # SLURM job id -> its log file
    logs = sorted((work / ".snakemake" / "slurm_logs").glob("rule_*/**/*.log"))
    assert {str(p) for p in logs} == set(submitted.values())
    by_rule = {}
    for path in logs:
        assert path.stem.isdigit(), f"{path}: a SLURM log is named after the numeric job id"
        rule = path.relative_to(work / ".snakemake" / "slurm_logs").parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(path.stem)
        assert f"(Rule: {rule})" in path.read_text(), f"{path} does not show the job finishing rule {rule}"
    n_scans = len(pd.read_csv(work / DATA_TARGETS[0], sep="\t"))
    assert {rule: len(ids) for rule, ids in by_rule.items()} == {
        "synthesize_cohort": 1, "preprocess": n_scans, "slice_dataset": 1, "train_classifier": 1, "train_gan": 1,
    }  # validate_inputs (like resolved_config, aggregate and report) is a local rule: no SLURM job
    assert (work / DATA_TARGETS[0]).exists() and "rule_validate_inputs" not in out

    # the controller ran and completed every one of these jobs
    ctld = cluster["ctld_log"].read_text()
    for job_id in submitted:
        assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0\b", ctld), f"job {job_id} unknown to slurmctld"
    # GPU rules asked SLURM for the GPU (the CPU rules did not)
    for rule, gpu in [("train_gan", True), ("train_classifier", True), ("slice_dataset", False)]:
        job = subprocess.run(["scontrol", "show", "job", by_rule[rule][0]], capture_output=True, text=True).stdout
        assert ("gpu" in job) is gpu, f"{rule}: {job}"
    print(f"tiny study through SLURM: {tiny_run['seconds']:.0f} s, {len(submitted)} jobs")


@pytest.mark.slurm
def test_forcerun_schedules_only_the_rule_and_its_dependents(tiny_run):
    work, config = tiny_run["work"], tiny_run["config"]
    rc, out = snakemake(work, config, "-n", *MAIN_TARGETS, timeout=120)
    assert rc == 0 and "Nothing to be done" in out, out[-3000:]
    rc, out = snakemake(work, config, "-n", "--forcerun=train_classifier", *MAIN_TARGETS, timeout=120)
    assert rc == 0, out[-3000:]
    assert _job_stats(out) == {"train_classifier": 1}
    rc, out = snakemake(work, config, "-n", "--forcerun=slice_dataset", *MAIN_TARGETS, timeout=120)
    assert rc == 0, out[-3000:]
    assert _job_stats(out) == {"slice_dataset": 1, "train_classifier": 1, "train_gan": 1}


@pytest.mark.slurm
def test_cancelled_training_resumes_from_its_checkpoint(tiny_run):
    work = tiny_run["work"]
    # a longer run of the other architecture (~20 s on 2 CPU cores), checkpointed every 1/6 of it
    kimg = 30.0 if torch.cuda.is_available() else 3.0
    gan = {"kimg": kimg, "checkpoint_kimg": kimg / 6, "snapshot_kimg": kimg / 2, "log_kimg": kimg / 12}
    config = _study_config(work / "long.yaml", gan=gan)
    run_dir = work / f"results/{STUDY}/gan/gan-z8"
    target = f"{run_dir.relative_to(work)}/network.pt"
    proc, log = _start(work, config, target)
    deadline = time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("ckpt-*.pt")):
        assert proc.poll() is None, f"snakemake ended before the first checkpoint:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    job_id, slurm_log = SUBMITTED.findall(log.read_text())[-1]
    subprocess.run(["scancel", job_id])
    rc, out = _finish(proc, log, timeout=180)

    assert rc != 0, "the job finished before it was cancelled (raise gan.kimg) or its cancellation went unnoticed"
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in out
    assert slurm_log in out, "the failed job's SLURM log is reported"
    assert not (run_dir / "network.pt").exists()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert checkpoints, "the cancelled job's checkpoints are kept"

    rc, out = snakemake(work, config, target, timeout=300)
    assert rc == 0, out[-6000:]
    trainer_log = (work / f"results/{STUDY}/logs/train_gan/gan-z8.log").read_text()
    resumed = re.search(r"resumed from (\S*ckpt-[\d.]+\.pt)", trainer_log)
    assert resumed, trainer_log[-3000:]
    assert Path(resumed.group(1)).name in checkpoints
    assert (run_dir / "network.pt").stat().st_size > 0
    # the training log survives the cancellation: one header, rows from the start to the end
    rows = pd.read_csv(run_dir / "log.csv")
    assert "kimg" in rows.columns, f"log.csv lost its header across the cancel/resume: {list(rows.columns)}"
    assert rows["kimg"].min() < gan["checkpoint_kimg"], "rows written before the first checkpoint are kept"
    assert rows["kimg"].max() == pytest.approx(kimg, abs=0.01)
    assert rows["kimg"].is_monotonic_increasing and not rows["kimg"].duplicated().any()


@pytest.mark.slurm
def test_failing_job_reports_its_slurm_log_and_is_retried(cluster, tmp_path):
    """A scan whose header is fine but whose voxel data is cut short passes the (header-only) input
    checks and fails in its preprocess job on the cluster."""
    import nibabel as nib
    import numpy as np

    work = tmp_path
    image = work / "broken" / "sub-01.nii"
    image.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((24, 28, 20), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(image))
    image.write_bytes(image.read_bytes()[:600])  # header + a few voxels: truncated by a failed copy
    table = work / "broken" / "scans.tsv"
    table.write_text(f"subject\timage_flair\tage\tedss\tms_type\tsex\nsub-01\t{image.name}\t40\t2\tRRMS\tF\n")
    config = _study_config(work / "broken.yaml", study="broken", inputs={"source": "table", "table": str(table)})
    rc, out = snakemake(work, config, "--retries", "1", "results/broken/preprocessed/images/sub-01.nii.gz", timeout=240)

    assert rc != 0
    attempts = SUBMITTED.findall(out)
    assert len(attempts) == 2, out[-4000:]  # the first attempt and one retry
    assert "Trying to restart job" in out
    for job_id, slurm_log in attempts:
        assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in out
        assert slurm_log in out.split(f"SLURM-job '{job_id}' failed", 1)[1], "error names the SLURM log"
        assert "rule_preprocess" in Path(slurm_log).parts and Path(slurm_log).exists()  # .../rule_preprocess/sub-01/<id>.log
    rule_log = (work / "results/broken/logs/preprocess/sub-01.log").read_text()
    assert "error" in rule_log.lower() and image.name in rule_log, rule_log  # the rule's own log names the bad file
    assert "brainlatent preprocess: error:" in out  # show-failed-logs: the job's one-line error is on the console


def test_profiles_use_real_options_and_leave_site_settings_to_the_profile():
    """Cheap (no SLURM needed): every profile key is a Snakemake/plugin option; no rule names a site."""
    from snakemake.cli import get_argument_parser

    options = get_argument_parser()._option_string_actions
    slurm = yaml.safe_load((PROFILE / "config.yaml").read_text())
    local = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    for profile in (slurm, local):
        unknown = [key for key in profile if f"--{key}" not in options]
        assert not unknown, f"not Snakemake options: {unknown}"
    assert slurm["executor"] == "slurm" and slurm["slurm-requeue"] is True
    assert "slurm_partition" in slurm["default-resources"]
    assert "executor" not in local and local["cores"] == 2
    rules = "\n".join(p.read_text() for p in (REPO / "workflow").rglob("*") if p.is_file() and p.suffix in ("", ".smk"))
    assert not re.search(r"slurm_(partition|account)|--partition|--account", rules), "site settings belong in the profile"
