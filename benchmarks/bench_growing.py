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
    parser.add_argument("--classifier", default=None, help="classifier model.pt: also attribute saliency and MIG/SAP/DCI")
    parser.add_argument("--config", default=None, help="study config for those two metrics' settings (default: schema defaults)")
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
        if args.classifier:
            _classifier_metrics(G, run, args)


def _classifier_metrics(G, run: Path, args) -> None:
    """attribute_saliency and axis_alignment through the metric registry; JSON beside the network."""
    from brainlatent.config import load_config
    from brainlatent.metrics import latent_order
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.metrics.registry import MetricContext

    cfg = load_config(args.config or {})
    features = PerceptualFeatures.from_file(args.classifier, "cpu")
    from brainlatent.metrics.evaluate import classifier_specs

    specs, _ = classifier_specs(features.classifier, args.classifier, cfg)
    ctx = MetricContext(cfg, G, features, specs, seed=args.seed, device="cpu")
    sal = latent_order.attribute_saliency_metric(ctx).results
    align = latent_order.axis_alignment_metric(ctx).results
    (run / "attribute_saliency.json").write_text(json.dumps(sal, indent=1))
    (run / "axis_alignment.json").write_text(json.dumps(align, indent=1))
    for name, prof in sal.items():
        print(f"saliency {name:<8} per group " + " ".join(f"{v:.4f}" for v in prof["per_group"])
              + f"  rho per dim {prof['spearman_per_dimension']:+.2f}, per group {prof['spearman_per_group']:+.2f}")
    print("axis alignment: " + ", ".join(f"{k} {align[k]:.3f}" for k in
                                         ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")))


if __name__ == "__main__":
    main()
