"""FID / KID / precision-recall: closed forms and the real-vs-real floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainlatent.errors import BrainlatentError
from brainlatent.metrics.quality import fid, kid, precision_recall, quality_report

torch.set_num_threads(1)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8)) + rng.normal(size=8)


def test_fid_identical_sets_is_zero(feats):
    assert abs(fid(feats, feats)) < 1e-8


def test_fid_mean_shift_is_squared_shift(feats):
    delta = np.array([1.0, -2.0, 0.5, 0, 0, 0, 3.0, 0])
    assert fid(feats, feats + delta) == pytest.approx(float(delta @ delta), rel=1e-7)


def test_fid_scaled_copy(feats):
    # b = 2a: |mu_a - mu_b|^2 = |mu_a|^2; S_b = 4 S_a, sqrtm(S_a S_b) = 2 S_a, so the trace term is Tr(S_a)
    expected = float(feats.mean(0) @ feats.mean(0) + np.trace(np.cov(feats, rowvar=False, ddof=1)))
    assert fid(feats, 2 * feats) == pytest.approx(expected, rel=1e-7)


def test_kid_identical_sets_closed_form(feats):
    # x = y = the whole set (m = n): the unbiased estimate is (2/n)(mean off-diagonal k - mean diagonal k),
    # an O(1/n) value (not exactly 0: the estimator is unbiased only for independent sets)
    n, d = feats.shape
    k = (feats @ feats.T / d + 1) ** 3
    diag = np.trace(k) / n
    off = (k.sum() - np.trace(k)) / (n * (n - 1))
    mean, std = kid(feats, feats, num_subsets=3, max_subset_size=1000, seed=0)
    assert mean == pytest.approx(2 / n * (off - diag), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9 * abs(mean))


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(1500, 8)), rng.normal(size=(1500, 8))
    same_mean, same_std = kid(a, b, num_subsets=10, max_subset_size=1000, seed=0)
    shift_mean, _ = kid(a, b + 0.5, num_subsets=10, max_subset_size=1000, seed=0)
    assert shift_mean > 0 and same_std > 0
    assert abs(same_mean) < 0.05 * shift_mean
    # the subset size is clamped to the smaller set
    small = kid(a[:50], b, num_subsets=3, max_subset_size=1000, seed=1)[0]
    assert small == pytest.approx(kid(a[:50], b, num_subsets=3, max_subset_size=50, seed=1)[0])


def test_kid_unbiased_formula_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.5
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / 20 - 2 * kxy.sum() / 25
    mean, std = kid(x, y, num_subsets=4, max_subset_size=5)
    assert mean == pytest.approx(expected) and std == pytest.approx(0.0, abs=1e-9)


def test_precision_recall_disjoint_sets():
    rng = np.random.default_rng(0)
    real, gen = rng.normal(size=(100, 4)), rng.normal(size=(80, 4)) + 100.0
    assert precision_recall(real, gen, k=3) == (0.0, 0.0)


def test_precision_recall_collapsed_generator():
    real = np.random.default_rng(0).normal(size=(100, 4))
    gen = np.repeat(real[:1], 50, axis=0)  # every generated sample is real sample 0
    precision, recall = precision_recall(real, gen, k=3)
    assert precision == 1.0
    assert recall == pytest.approx(1 / 100)  # only real sample 0 lies in the (zero) generated radii


def test_precision_recall_identical_sets(feats):
    assert precision_recall(feats, feats.copy(), k=3) == (1.0, 1.0)
    with pytest.raises(BrainlatentError, match="more than k"):
        precision_recall(feats[:3], feats, k=3)


def test_quality_report_floor_and_determinism(feats):
    rng = np.random.default_rng(5)
    gen = rng.normal(size=(300, 8)) * 3
    a = quality_report(feats, gen, kid_subsets=5, kid_subset_size=100, pr_k=3, seed=7)
    b = quality_report(feats, gen, kid_subsets=5, kid_subset_size=100, pr_k=3, seed=7)
    assert a == b
    comparisons = {"generated_vs_real", "generated_vs_real_matched", "real_vs_real"}
    assert set(a["fid"]) == comparisons and set(a["kid"]["real_vs_real"]) == {"mean", "std"}
    assert a["sizes"]["real_half_a"] + a["sizes"]["real_half_b"] == 400
    assert a["sizes"]["generated_matched"] == 200
    assert a["fid"]["real_vs_real"] < a["fid"]["generated_vs_real_matched"]
    assert a["precision"]["real_vs_real"] > a["precision"]["generated_vs_real_matched"]
    assert any("differ in size" in n for n in a["notes"])
    with pytest.raises(BrainlatentError, match="N x D"):
        quality_report(feats[:, 0], gen)
