"""Linear separability: entropy closed forms, separable vs. independent labels, binarising, pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_standins import LinearFeatures, LinearGenerator

from brainlatent.errors import BrainlatentError
from brainlatent.metrics.separability import (
    attribute_plan,
    binary_probabilities,
    classifier_check,
    combine_repeats,
    conditional_entropy_bits,
    generate_labelled,
    linear_separability,
    most_confident,
    separability_from_latents,
)

torch.set_num_threads(1)

SEX = {"name": "sex", "kind": "categorical", "levels": ["F", "M"]}
AGE = {"name": "age", "kind": "numeric", "bins": [18, 30, 40, 50, 60, 80]}
MS = {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS", "SPMS", "PPMS"]}


def h_b(p: float) -> float:
    return float(-p * np.log2(p) - (1 - p) * np.log2(1 - p))


def test_conditional_entropy_closed_forms():
    y = np.array([0, 1] * 50)
    assert conditional_entropy_bits(y, y) == 0.0
    assert conditional_entropy_bits(y, 1 - y) == 0.0  # a flipped predictor is still fully informative
    assert conditional_entropy_bits(y, np.array([0, 0, 1, 1] * 25)) == pytest.approx(1.0)
    # symmetric channel with 10 % flips and balanced classes: H(Y|X) = H_b(0.1)
    pred = y.copy()
    pred[:10] = 1 - pred[:10]
    assert conditional_entropy_bits(y, pred) == pytest.approx(h_b(0.1), abs=1e-12)
    # constant predictions: H(Y|X) = H(Y)
    y3 = np.array([1] * 75 + [0] * 25)
    assert conditional_entropy_bits(y3, np.zeros(100)) == pytest.approx(h_b(0.25))
    with pytest.raises(BrainlatentError):
        conditional_entropy_bits(np.array([0, 2]), np.array([0, 1]))


def _sigmoid_probs(s: np.ndarray) -> np.ndarray:
    p1 = 1.0 / (1.0 + np.exp(-s))
    return np.stack([1 - p1, p1], axis=1)


def test_perfectly_separable_latents():
    x = np.random.default_rng(0).normal(size=(2000, 4))
    r = separability_from_latents(x, _sigmoid_probs(4 * (x[:, 0] - 0.5 * x[:, 2])), seed=1)
    assert r["entropy_bits"] == 0.0
    assert r["accuracy"] == 1.0 and r["heldout_accuracy"] == 1.0
    assert r["n_kept"] == 1000 and sum(r["class_counts"]) == 1000


def test_labels_independent_of_latents():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 4))
    r = separability_from_latents(x, _sigmoid_probs(rng.normal(size=4000) * 3), seed=2)
    assert r["entropy_bits"] > 0.95
    assert abs(r["heldout_accuracy"] - 0.5) < 0.05
    assert r["accuracy"] < 0.6


def test_one_class_kept_follows_nvlabs_fallback():
    x = np.random.default_rng(0).normal(size=(100, 3))
    probs = _sigmoid_probs(np.full(100, 5.0))  # every sample says class 1
    r = separability_from_latents(x, probs)
    assert r["entropy_bits"] == 0.0 and r["accuracy"] == 1.0 and r["heldout_accuracy"] == 1.0
    assert any("only class 1" in n for n in r["notes"])


def test_most_confident_is_a_stable_descending_sort():
    probs = np.array([[0.6, 0.4], [0.9, 0.1], [0.4, 0.6], [0.1, 0.9], [0.5, 0.5]])
    assert most_confident(probs, 4).tolist() == [1, 3, 0, 2]


def test_binarise_numeric_head_and_errors():
    probs = np.array([[0.1, 0.2, 0.3, 0.3, 0.1], [0.5, 0.5, 0.0, 0.0, 0.0]])
    p2, classes = binary_probabilities(AGE, probs, 50)
    np.testing.assert_allclose(p2, [[0.6, 0.4], [1.0, 0.0]])
    assert classes == ["<50", ">=50"]
    for bad in (45, 18, 80):
        with pytest.raises(BrainlatentError, match="inner bin edge"):
            binary_probabilities(AGE, probs, bad)
    with pytest.raises(BrainlatentError, match="needs a threshold"):
        binary_probabilities(AGE, probs)
    with pytest.raises(BrainlatentError, match="2 levels"):
        binary_probabilities(MS, np.full((2, 4), 0.25))
    p2, classes = binary_probabilities(SEX, np.array([[0.3, 0.7]]))
    assert classes == ["F", "M"] and p2.tolist() == [[0.3, 0.7]]
    assert [s["name"] for s, _ in attribute_plan([AGE, SEX], ["sex"], {"age": 40})] == ["sex", "age"]
    with pytest.raises(BrainlatentError, match="not a head"):
        attribute_plan([SEX], ["edss"], {})


def test_pipeline_linear_generator_is_separable_and_deterministic():
    # sex comes from the sign of a linear function of the image = of w = of z: separable in Z and W
    G = LinearGenerator(z_dim=6, resolution=8, mapping="linear", noise_scale=0.0)
    feats = LinearFeatures(resolution=8, sharpness=20.0)
    kw = dict(specs=[AGE, SEX], attributes=["sex"], binarise={"age": 40}, num_samples=400, repeats=2, batch_size=128, seed=5)
    a = linear_separability(G, feats.predict_proba, **kw)
    b = linear_separability(G, feats.predict_proba, **kw)
    assert a == b
    res = a["results"]
    assert set(res) == {"z/sex", "z/age", "z/combined", "w/sex", "w/age", "w/combined"}
    for space in ("z", "w"):
        assert res[f"{space}/sex"]["entropy_bits_mean"] < 0.1
        assert res[f"{space}/sex"]["accuracy_mean"] > 0.98
        assert len(res[f"{space}/sex"]["entropy_bits_per_repeat"]) == 2
        expected = [2.0 ** (res[f"{space}/sex"]["entropy_bits_per_repeat"][r] + res[f"{space}/age"]["entropy_bits_per_repeat"][r]) for r in range(2)]
        assert res[f"{space}/combined"]["score_per_repeat"] == pytest.approx(expected)
    z5, w5, p5 = generate_labelled(G, feats.predict_proba, 50, 16, seed=5)
    z5b, _, _ = generate_labelled(G, feats.predict_proba, 50, 16, seed=5)
    z6, _, _ = generate_labelled(G, feats.predict_proba, 50, 16, seed=6)
    assert w5.shape == (50, 6) and p5["age"].shape == (50, 5)
    np.testing.assert_array_equal(z5, z5b)
    assert not np.array_equal(z5, z6)


def test_pipeline_mapping_free_gan_has_only_z():
    G = LinearGenerator(z_dim=4, resolution=8, arch="gan")
    out = linear_separability(G, LinearFeatures(resolution=8).predict_proba, [SEX], num_samples=60, repeats=1, batch_size=64)
    assert out["spaces"] == ["z"] and set(out["results"]) == {"z/sex", "z/combined"}


def _repeat(h: float, acc: float) -> dict:
    return {"entropy_bits": h, "accuracy": acc, "heldout_accuracy": acc - 0.01, "heldout_entropy_bits": h + 0.01,
            "n_kept": 10, "class_counts": [5, 5], "convergence_warnings": 0, "notes": []}


def test_standard_errors_over_repeats_and_paired_z_minus_w():
    hz, hw = [0.30, 0.42, 0.35, 0.51], [0.10, 0.25, 0.12, 0.30]
    per_repeat = [{"z": {"sex": _repeat(a, 0.9)}, "w": {"sex": _repeat(b, 0.95)}} for a, b in zip(hz, hw)]
    out = combine_repeats(per_repeat, ["z", "w"], ["sex"])
    assert out["z/sex"]["entropy_bits_se"] == pytest.approx(np.std(hz, ddof=1) / 2.0)
    assert out["w/sex"]["entropy_bits_se"] == pytest.approx(np.std(hw, ddof=1) / 2.0)
    assert out["z/sex"]["accuracy_se"] == pytest.approx(0.0, abs=1e-15)
    scores = [2.0**h for h in hz]
    assert out["z/combined"]["score_se"] == pytest.approx(np.std(scores, ddof=1) / 2.0)
    # the spaces share each repeat's samples: the paired difference is far tighter than the two SEs combined
    diff = np.subtract(hz, hw)
    assert out["z/sex"]["z_minus_w_entropy_bits_mean"] == pytest.approx(diff.mean())
    assert out["z/sex"]["z_minus_w_entropy_bits_se"] == pytest.approx(np.std(diff, ddof=1) / 2.0)
    assert out["z/sex"]["z_minus_w_entropy_bits_se"] < np.hypot(out["z/sex"]["entropy_bits_se"], out["w/sex"]["entropy_bits_se"])
    one = combine_repeats(per_repeat[:1], ["z"], ["sex"])
    assert one["z/sex"]["entropy_bits_se"] is None and one["z/combined"]["score_se"] is None


def _head(y_true: list[int], y_pred: list[int], names: list[str], majority: int) -> dict:
    from sklearn.metrics import confusion_matrix

    y, p = np.asarray(y_true), np.asarray(y_pred)
    return {"n": len(y), "accuracy": float(np.mean(y == p)), "majority_baseline_accuracy": float(np.mean(y == majority)),
            "class_names": names, "majority_class": names[majority],
            "confusion_matrix": confusion_matrix(y, p, labels=list(range(len(names)))).tolist()}


def _metrics(**heads) -> dict:
    return {"best": {"test": {"heads": heads}}, "last": {"test": {"heads": {}}}}


def test_classifier_check_categorical_head():
    # 10 test rows, 7 F: always-F scores 0.7
    y = [0] * 7 + [1] * 3
    good = _head(y, [0] * 7 + [1, 1, 0], ["F", "M"], 0)  # 0.9
    tie = _head(y, [0] * 6 + [1, 1, 0, 0], ["F", "M"], 0)  # 0.7: not above the baseline
    bad = _head(y, [1] * 10, ["F", "M"], 0)  # 0.3
    assert classifier_check(_metrics(sex=good), SEX, None)["interpretable"] is True
    c = classifier_check(_metrics(sex=tie), SEX, None)
    assert (c["score"], c["baseline"], c["interpretable"]) == (pytest.approx(0.7), pytest.approx(0.7), False)
    assert classifier_check(_metrics(sex=bad), SEX, None)["interpretable"] is False
    unknown = classifier_check(None, SEX, None)
    assert unknown["interpretable"] is None and "no classifier metrics" in unknown["reason"]
    assert classifier_check(_metrics(), SEX, None)["interpretable"] is None


def test_classifier_check_binarised_numeric_head():
    # age bins [18, 30, 40, 50, 60, 80], threshold 40 -> bins 0, 1 below and 2, 3, 4 above.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    names = ["18-30", "30-40", "40-50", "50-60", "60-80"]
    # a head that is always one bin off: bin accuracy 0, but the side of 40 is right except around it
    off = np.where(y < 4, y + 1, 3)
    head = _head(y.tolist(), off.tolist(), names, majority=1)
    c = classifier_check(_metrics(age=head), AGE, 40)
    expected_score = float(np.mean((y >= 2) == (off >= 2)))
    expected_baseline = float(np.mean(y < 2))  # the majority bin (1) lies below 40
    assert c["score"] == pytest.approx(expected_score) and c["baseline"] == pytest.approx(expected_baseline)
    assert c["interpretable"] is (expected_score > expected_baseline) is True
    assert head["accuracy"] < head["majority_baseline_accuracy"]  # the bin accuracy alone would say otherwise
    # a head that always predicts the top bin is no better than guessing the majority side
    top = _head(y.tolist(), [4] * 200, names, majority=4)
    c = classifier_check(_metrics(age=top), AGE, 40)
    assert c["score"] == pytest.approx(c["baseline"]) and c["interpretable"] is False


def test_pipeline_flags_not_interpretable_results():
    G = LinearGenerator(z_dim=6, resolution=8, mapping="linear")
    feats = LinearFeatures(resolution=8, sharpness=20.0)
    y = [0] * 7 + [1] * 3
    metrics = _metrics(sex=_head(y, [1] * 10, ["F", "M"], 0), age=_head([0, 1, 2, 3], [0, 1, 2, 3], ["a", "b", "c", "d", "e"], 0))
    kw = dict(specs=[AGE, SEX], attributes=["sex"], binarise={"age": 40}, num_samples=200, repeats=2, batch_size=100, seed=1)
    out = linear_separability(G, feats.predict_proba, classifier_metrics=metrics, **kw)
    res = out["results"]
    for space in ("z", "w"):
        assert res[f"{space}/sex"]["interpretable"] is False
        assert res[f"{space}/age"]["interpretable"] is True
        assert res[f"{space}/combined"]["interpretable"] is False
    assert out["classifier_check"]["sex"]["score"] == pytest.approx(0.3)
    plain = linear_separability(G, feats.predict_proba, **kw)
    assert plain["results"]["z/sex"]["interpretable"] is None and plain["results"]["z/combined"]["interpretable"] is None
