"""Family sections of the report: a template plus a context function, shown only for their families."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainlatent import io
from brainlatent.config import load_config
from brainlatent.report.build import render_report


def _mixture_study(root):
    io.write_json(root / "eval" / "gmmgan2-z8" / "mode_discovery.json", {
        "metric": "mode_discovery", "arch": "gmmgan2", "z_dim": 8,
        "results": {"nmi": {"sex": {"gmm": 0.25, "kmeans": 0.125, "kmeans_pixels": 0.0625}},
                    "ari": {"sex": {"gmm": 0.5, "kmeans": 0.25, "kmeans_pixels": 0.0}},
                    "segment_share": {"0": 0.75, "1": 0.25}, "pi": {"0": 0.6, "1": 0.4}},
        "discovered": "sex", "notes": ["a note <b>escaped</b>"],
    })
    io.write_table(root / "gan" / "gmmgan2-z8" / "log.csv",
                   pd.DataFrame({"kimg": [1.0, 2.0], "loss_d": [0.5, 0.4], "pi_0": [0.5, 0.6], "pi_1": [0.5, 0.4]}))


def test_mixture_prior_section_shows_the_table_with_provenance(tmp_path):
    root = tmp_path / "gmm"
    _mixture_study(root)
    cfg = load_config({"study": "gmm", "gan": {"archs": ["gmmgan2"], "latent_sizes": [8]}})
    page = render_report(cfg, root)
    assert 'id="mixture-prior"' in page and 'id="table-mixture-gmmgan2-z8"' in page
    assert 'data-source="eval/gmmgan2-z8/mode_discovery.json" data-key="results.nmi.sex.gmm"' in page
    assert "<strong>sex</strong>" in page and "a note &lt;b&gt;escaped&lt;/b&gt;" in page
    assert "mixture weights gmmgan2-z8" in page  # the π trajectory from log.csv


def test_mixture_prior_section_is_absent_without_its_families(tmp_path):
    cfg = load_config({"study": "plain", "gan": {"archs": ["stylegan"], "latent_sizes": [8]}})
    (tmp_path / "plain").mkdir()
    assert 'id="mixture-prior"' not in render_report(cfg, tmp_path / "plain")


def test_conditional_section_shows_control_beside_the_ceiling(tmp_path):
    root = tmp_path / "cond"
    io.write_json(root / "eval" / "cwgan-z8" / "attribute_control.json", {
        "metric": "attribute_control", "arch": "cwgan", "z_dim": 8,
        "results": {"sex": {"accuracy": 0.75, "real_accuracy": 0.875, "swap_single_hit": 0.5, "identity_kept": 0.25}},
        "notes": [],
    })
    from brainlatent.images import save_png

    save_png(np.zeros((8, 8), np.uint8), root / "eval" / "cwgan-z8" / "attribute_control" / "corners.png")
    cfg = load_config({"study": "cond", "gan": {"archs": ["cwgan"], "latent_sizes": [8]}})
    page = render_report(cfg, root)
    assert 'id="conditional"' in page and 'id="table-control-cwgan-z8"' in page
    for key in ("results.sex.accuracy", "results.sex.real_accuracy", "results.sex.swap_single_hit"):
        assert f'data-source="eval/cwgan-z8/attribute_control.json" data-key="{key}"' in page
    assert "Four-corner grid" in page and 'id="growing"' not in page


def test_growing_section_shows_profiles_and_axis_alignment(tmp_path):
    root = tmp_path / "grow"
    for arch, per_dim in (("clggan", [0.4, 0.2, 0.1]), ("bgan", [0.2, 0.2, 0.2])):
        io.write_json(root / "eval" / f"{arch}-z32" / "variability_profile.json", {
            "metric": "variability_profile", "arch": arch, "z_dim": 32,
            "results": {"groups": ["1-8", "9-16", "17-32"], "per_dimension": per_dim,
                        "spearman_per_dimension": -1.0 if arch == "clggan" else 0.0, "spearman_per_group": 0.5}})
        io.write_json(root / "eval" / f"{arch}-z32" / "axis_alignment.json", {
            "metric": "axis_alignment", "arch": arch, "z_dim": 32,
            "results": {"mig": 0.5, "sap": 0.25, "dci_disentanglement": 0.75, "dci_completeness": 0.5, "dci_informativeness": 0.25}})
    cfg = load_config({"study": "grow", "gan": {"archs": ["clggan", "bgan"], "latent_sizes": [32]}})
    page = render_report(cfg, root)
    assert 'id="growing"' in page and 'id="table-variability-profile"' in page and 'id="table-axis-alignment"' in page
    assert 'data-source="eval/clggan-z32/variability_profile.json" data-key="results.spearman_per_dimension"' in page
    assert 'data-source="eval/bgan-z32/axis_alignment.json" data-key="results.mig"' in page
    assert "Per-coordinate variability of each growing model" in page  # the side-by-side plot
