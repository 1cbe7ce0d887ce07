"""Speed and memory of the synthetic cohort generator.

Synthesises ``--subjects`` subjects into a temporary folder (deleted afterwards) and prints one
table row: subjects, scans, workers, wall seconds, seconds per subject, CPU seconds (user +
system, this process and its workers), CPU seconds per subject, peak RSS (largest of this
process and its largest worker, MB) and the size of the written cohort. The CPU columns do not
depend on how busy the machine is; the wall columns do (the machine's load average is printed).

    python benchmarks/bench_synth.py                        # demo: 120 subjects, FLAIR, 2 mm, 2 workers
    python benchmarks/bench_synth.py --subjects 20 --modalities flair t1w t2w --workers 1
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from brainlatent.config import load_config
from brainlatent.synth import synthesize_cohort


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mb() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, kids.ru_maxrss) / 1024.0  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modalities", nargs="+", default=["flair"], choices=["flair", "t1w", "t2w"])
    parser.add_argument("--resolution", type=int, default=2, choices=[1, 2], help="template resolution (mm)")
    parser.add_argument("--second-session-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=20261124)
    args = parser.parse_args()

    cfg = load_config({
        "seed": args.seed,
        "synthetic": {
            "n_subjects": args.subjects, "workers": args.workers, "modalities": args.modalities,
            "template_resolution_mm": args.resolution, "second_session_fraction": args.second_session_fraction,
        },
    })
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_synth.") as tmp:
        out = Path(tmp) / "cohort"
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        scans = synthesize_cohort(cfg, out)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    n = args.subjects
    header = (
        "subjects", "scans", "workers", "wall s", "s/subject", "CPU s", "CPU s/subject", "peak RSS MB", "output MB",
    )
    row = (n, len(scans), args.workers, f"{wall:.1f}", f"{wall / n:.2f}", f"{cpu:.1f}", f"{cpu / n:.2f}",
           f"{_peak_rss_mb():.0f}", f"{size_mb:.0f}")
    widths = [max(len(h), len(str(v))) for h, v in zip(header, row)]
    print(f"modalities={','.join(args.modalities)} template={args.resolution} mm "
          f"cpus={os.cpu_count()} load average before={load_before:.2f} after={os.getloadavg()[0]:.2f}")
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print(" | ".join(str(v).rjust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main()
