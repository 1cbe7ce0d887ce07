"""Family sections of the report: a template plus a context function, shown only for their families."""

from __future__ import annotations

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
