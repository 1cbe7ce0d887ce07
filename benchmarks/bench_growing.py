"""Seed 003's claim on trained growing models: variability profile, Spearman ρ, img/s per phase, walks.

Prints one table per model (per-group and per-dimension variability with bootstrap 95 % CIs), the
Spearman ρ over groups, and the training speed from the run's ``stages.csv``; writes the profile
JSON and the walks (group walks, coordinate walks, style transfer) beside each network.

Example:
    PYTHONPATH=src python benchmarks/bench_growing.py results/growing/gan/clggan-z64 results/growing/gan/bgan-z64 \\
        --references 200 --images-per-group 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from brainlatent.growing_walks import write_walks
from brainlatent.metrics.group_variability import variability_profile
from brainlatent.models.families import load_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders with network.pt (and stages.csv)")
    parser.add_argument("--references", type=int, default=200)
    parser.add_argument("--images-per-group", type=int, default=32)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    for run in map(Path, args.runs):
        G = load_network(run / "network.pt")
        prof = variability_profile(G, args.references, args.images_per_group, args.seed, bootstrap=args.bootstrap)
        (run / "variability_profile.json").write_text(json.dumps(prof, indent=1))
        write_walks(G, run / "walks", seed=args.seed)
        lo_g, hi_g = prof["per_group_ci95"]
        lo_d, hi_d = prof["per_dimension_ci95"]
        table = pd.DataFrame({"group": prof["groups"], "V_g": prof["per_group"], "V_g lo": lo_g, "V_g hi": hi_g,
                              "V_g/|g|": prof["per_dimension"], "per-dim lo": lo_d, "per-dim hi": hi_d})
        print(f"\n== {run.name} (brain pixels {prof['brain_pixels']}, {args.references} references x {args.images_per_group} images)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
        print(f"Spearman rho per dimension {prof['spearman_per_dimension']:+.3f} "
              f"[{prof['spearman_per_dimension_ci95'][0]:+.3f}, {prof['spearman_per_dimension_ci95'][1]:+.3f}]; "
              f"per group {prof['spearman_per_group']:+.3f} "
              f"[{prof['spearman_per_group_ci95'][0]:+.3f}, {prof['spearman_per_group_ci95'][1]:+.3f}]")
        if (run / "stages.csv").exists():
            stages = pd.read_csv(run / "stages.csv")
            total = stages["kimg"].sum() * 1000 / stages["seconds"].sum()
            print(stages[["phase", "latent", "resolution", "kimg", "seconds", "img_per_s", "params_G", "params_D"]]
                  .to_string(index=False, float_format=lambda v: f"{v:.1f}"))
            print(f"overall {total:.1f} img/s over {stages['seconds'].sum():.0f} s of training steps")


if __name__ == "__main__":
    main()
