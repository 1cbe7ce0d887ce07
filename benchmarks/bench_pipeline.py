"""Per-stage wall time and peak memory of a study, from Snakemake's ``benchmark:`` files.

Runs the workflow for one config up to a target rule (default: the data stage, ``slice_dataset``)
into a fresh results folder, then prints one row per rule: jobs, summed and longest wall time,
peak RSS, and the stage's elapsed time (first job start to last job end, from the wall clock).

    python benchmarks/bench_pipeline.py --config config/config.yaml --until slice_dataset
    python benchmarks/bench_pipeline.py --study-dir results/demo      # summarise an existing run
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def summarise(study_dir: Path) -> pd.DataFrame:
    """One row per rule from ``<study_dir>/benchmarks/**.tsv``."""
    rows = []
    for tsv in sorted((study_dir / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(study_dir / "benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        bench = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": rule, "s": float(bench["s"].iloc[-1]), "max_rss_mb": float(bench["max_rss"].iloc[-1]),
                     "end": tsv.stat().st_mtime})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    out = df.groupby("rule", sort=False).agg(jobs=("s", "size"), sum_s=("s", "sum"), max_job_s=("s", "max"),
                                              peak_rss_mb=("max_rss_mb", "max"))
    return out.reset_index()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--until", default="slice_dataset", help="last rule to run (default: the data stage)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--study-dir", help="only summarise this existing study folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary results folder")
    args = parser.parse_args()
    if args.study_dir:
        print(summarise(Path(args.study_dir)).to_string(index=False))
        return 0
    cfg = yaml.safe_load((REPO / args.config).read_text())
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    cfg["results_dir"] = str(tmp)
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    result = subprocess.run([str(snakemake), "--until", args.until, "--cores", str(args.cores), "--configfile", str(config)],
                            cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        return result.returncode
    study = tmp / cfg.get("study", "demo")
    table = summarise(study)
    n_scans = len(pd.read_csv(study / "inputs" / "scans.tsv", sep="\t"))
    print(f"study {cfg.get('study')}: {n_scans} scans, {args.cores} cores, until {args.until}: {wall:.1f} s wall in total")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if not args.keep:
        shutil.rmtree(tmp)
    else:
        print(f"results kept in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
