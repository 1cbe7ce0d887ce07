"""MIG, SAP and DCI against hand-computed cases: aligned 1, rotated lower (45°: 0), independent 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainlatent.metrics.disentanglement import (
    dci,
    discretise,
    mig,
    mutual_information_bits,
    sap,
)

# a balanced design of two binary factors: every combination equally often, so the factors are
# exactly uncorrelated and every mutual information below is a fraction of a bit by hand
V = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 25, dtype=np.float64)
FACTORS = [V[:, 0], V[:, 1]]


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return x @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]).T


def test_mutual_information_by_hand():
    a = np.array([0, 0, 1, 1])
    assert mutual_information_bits(a, a) == pytest.approx(1.0)
    assert mutual_information_bits(a, np.array([0, 1, 0, 1])) == pytest.approx(0.0)


def test_axis_aligned_code_scores_one():
    z = V * [3.0, -0.5]  # scaling and sign do not matter
    assert mig(z, FACTORS, [True, True])["mig"] == pytest.approx(1.0)
    assert sap(z, FACTORS, [False, False])["sap"] == pytest.approx(1.0)
    assert sap(z, FACTORS, [True, True])["sap"] == pytest.approx(1.0)  # correlation ratio for labels
    d = dci(z, FACTORS, [False, False])
    assert d["disentanglement"] == pytest.approx(1.0) and d["completeness"] == pytest.approx(1.0)
    assert d["informativeness"] > 0.95


def test_45_degree_rotation_scores_zero_by_hand():
    """z1 = (v1 + v2)/√2 takes 0, 1/√2, √2 with probabilities 1/4, 1/2, 1/4: I(z1; v1) = 1 − 1/2 = 0.5 bit,
    and the same for z2 = (v1 − v2)/√2, so the gap is 0; both R² are 1/2, so SAP is 0; lasso puts equal
    weight on both codes for each factor, so D = C = 0."""
    z = np.stack([V[:, 0] + V[:, 1], V[:, 0] - V[:, 1]], 1) / math.sqrt(2)  # exact ties (rotate() rounds cos ≠ sin)
    m = mig(z, FACTORS, [True, True])
    assert np.allclose(m["mi"], 0.5) and m["mig"] == pytest.approx(0.0, abs=1e-12)
    s = sap(z, FACTORS, [False, False])
    assert np.allclose(s["scores"], 0.5) and s["sap"] == pytest.approx(0.0, abs=1e-12)
    d = dci(z, FACTORS, [False, False])
    assert d["disentanglement"] == pytest.approx(0.0, abs=1e-9) and d["completeness"] == pytest.approx(0.0, abs=1e-9)


def test_small_rotation_scores_between():
    z = rotate(V, 20)
    s = sap(z, FACTORS, [False, False])["sap"]
    # R² of z1 on v1 is cos²20°, of z2 is sin²20°: SAP = cos 40°
    assert s == pytest.approx(math.cos(math.radians(40)))
    d = dci(z, FACTORS, [False, False])
    assert 0.0 < d["disentanglement"] < 1.0 and 0.0 < d["completeness"] < 1.0


def test_continuous_factors_aligned_rotated_independent():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((4000, 2))
    factors = [v[:, 0], v[:, 1]]
    aligned = mig(v, factors, [False, False])
    rotated = mig(rotate(v, 45), factors, [False, False])
    independent = mig(rng.standard_normal((4000, 3)), factors, [False, False])
    assert aligned["mig"] > 0.95 and rotated["mig"] < 0.05 and independent["mig"] < 0.05
    assert aligned["entropy"][0] == pytest.approx(math.log2(20))
    z_ind = rng.standard_normal((4000, 3))
    assert sap(z_ind, factors, [False, False])["sap"] < 0.01
    d = dci(z_ind, factors, [False, False])
    assert d["informativeness"] < 0.01 and d["disentanglement"] == 0.0 and d["completeness"] == 0.0


def test_three_level_factor_and_discretise():
    labels = np.repeat([0, 1, 2], 30)
    z = np.stack([labels + 0.0, np.tile([0.0, 1.0, 2.0], 30)], 1)
    assert mig(z, [labels], [True])["mig"] == pytest.approx(1.0)
    assert sap(z, [labels], [True])["sap"] == pytest.approx(1.0)
    assert dci(z, [labels, z[:, 1]], [True, False])["completeness"] > 0.95
    assert np.bincount(discretise(np.linspace(0, 1, 40), 4)).tolist() == [10, 10, 10, 10]
