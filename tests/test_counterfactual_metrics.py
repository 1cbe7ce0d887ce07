"""Closed-form checks of the counterfactual metrics on stand-in editors.

An identity editor must score composition 0, reversibility 0, commutativity 0 and effectiveness at
exactly the unedited level with nothing moved; a perfect editor on twins (a lookup of the true
twin) must score true counterfactual error 0 (SSIM 1) and put no change outside the twin's region;
a constant-shift editor has a known composition curve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from brainlatent.counterfactual import axioms, ground_truth, measures
from brainlatent.errors import BrainlatentError
from brainlatent.metrics.features import PerceptualFeatures
from brainlatent.models.vgg import VGG16Classifier

ATTRS = [
    {"name": "age", "kind": "numeric", "bins": [18, 30, 40, 50, 60, 80]},
    {"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 6, 10]},
    {"name": "sex", "kind": "categorical", "levels": ["F", "M"]},
]


def _slices(n: int, seed: int = 0, res: int = 32) -> torch.Tensor:
    """Disc-shaped 'brains' on a -1 background with a few bright 'lesions'."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    disc = ((yy - res / 2) ** 2 + (xx - res / 2) ** 2) < (res * 0.38) ** 2
    x = torch.full((n, 1, res, res), -1.0)
    body = -0.2 + 0.1 * torch.randn(n, 1, res, res, generator=g)
    x[:, :, disc] = body[:, :, disc]
    for i in range(n):
        cy, cx = (torch.randint(res // 3, 2 * res // 3, (2,), generator=g)).tolist()
        x[i, 0, cy - 1:cy + 2, cx - 1:cx + 2] = 0.9
    return x


def _oracle() -> PerceptualFeatures:
    torch.manual_seed(3)
    net = VGG16Classifier({"age": 5, "edss": 4, "sex": 2}, width=4, fc_width=16)
    return PerceptualFeatures(net, "cpu")


def _parents(n: int) -> pd.DataFrame:
    return pd.DataFrame({"age": np.linspace(25, 70, n), "edss": np.linspace(0, 6, n), "sex": ["F", "M"] * (n // 2)})


def identity(images, parents, new_parents):
    return images.clone()


def test_identity_editor_scores_zero_and_unedited_effectiveness():
    x, pa, oracle = _slices(8), _parents(8), _oracle()
    comp = axioms.composition(identity, x, pa, cycles=10, oracle=oracle)
    assert [c["mean"] for c in comp["l1"].values()] == [0.0] * 10
    assert len(comp["domain"]) == 10 and all(d["mean"] == 0.0 for d in comp["domain"].values())
    new = pa.assign(edss=0.0)
    assert axioms.reversibility(identity, x, pa, new, oracle)["l1"]["mean"] == 0.0
    assert axioms.commutativity(identity, x, pa, new, pa.assign(age=70.0), "edss", "age")["l1"]["mean"] == 0.0
    eff = axioms.effectiveness(oracle, x, identity(x, pa, new), pa, new, ATTRS, "edss",
                               real_error={"age": {"error": 5.0}, "sex": {"error": 0.1}})
    t = eff["target"]
    assert t["accuracy"] == t["unedited_accuracy"] and t["mae"] == t["unedited_mae"]
    assert t["probability"] == t["unedited_probability"]
    for name in ("age", "sex"):
        assert eff["others"][name]["moved"]["mean"] == 0.0
        assert eff["others"][name]["kept"] is True
        assert eff["others"][name]["accuracy"] == eff["others"][name]["unedited_accuracy"]


def test_shift_editor_composition_is_linear_in_cycles():
    x, pa = _slices(4), _parents(4)
    brain = measures.brain_mask(x)

    def shift(images, parents, new_parents):
        return torch.where(brain, images - 0.01, images)

    comp = axioms.composition(shift, x, pa, cycles=10)
    got = [comp["l1"][str(i)]["mean"] for i in range(1, 11)]
    assert got == pytest.approx([127.5 * 0.01 * i for i in range(1, 11)], rel=1e-4)
    assert comp["domain"] is None


def test_effectiveness_sees_a_target_reached():
    """An 'editor' that swaps in images the oracle puts in the target class scores accuracy 1."""
    x, pa, oracle = _slices(16), _parents(16), _oracle()
    pred = oracle.predict_proba(x)["sex"].argmax(1).numpy()
    target = np.array(["F", "M"])[pred]  # the class the oracle sees in each image...
    new = pa.assign(sex=target[::-1].copy())  # ...asked of the image in the mirrored position
    edited = x.flip(0)
    eff = axioms.effectiveness(oracle, x, edited, pa, new, ATTRS, "sex")
    assert eff["target"]["accuracy"]["mean"] == 1.0


def _twins(n_sub: int = 6, per: int = 2):
    src = _slices(n_sub * per, seed=1)
    twin = src.clone()
    brain = measures.brain_mask(src)
    for i in range(len(src)):  # the 'intervention' darkens the lesion and shrinks intensity a little
        twin[i] = torch.where(src[i] > 0.5, torch.tensor(-0.3), src[i])
    twin = torch.where(brain, twin - 0.05, twin)
    subjects = np.repeat([f"sub-{k}" for k in range(n_sub)], per)
    groups = np.array(["edss=0"] * len(src))
    return src, twin, subjects, groups


def test_perfect_editor_on_twins_has_zero_true_error_and_beats_the_unedited_slice():
    src, twin, subjects, groups = _twins()
    res = ground_truth.true_counterfactual_error(twin.clone(), twin, src, subjects, groups, lesion_threshold=0.5)
    assert res["editor"]["l1"]["mean"] == 0.0
    assert res["editor"]["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert res["editor"]["lesion_error"]["mean"] == 0.0
    assert res["unedited"]["l1"]["mean"] > 1.0
    assert res["unedited"]["lesion_error"]["mean"] == pytest.approx(9.0)  # each source slice has a 3x3 lesion
    assert res["vs_unedited"]["l1"]["better"] and res["vs_unedited"]["lesion_error"]["better"]
    mini = ground_truth.minimality(twin, src, twin, tau=0.02)
    assert mini["outside_share"]["mean"] == 0.0
    # the identity editor is the unedited baseline exactly: no better, no worse
    same = ground_truth.true_counterfactual_error(src, twin, src, subjects, groups, lesion_threshold=0.5)
    assert same["vs_unedited"]["l1"]["mean"] == 0.0 and not same["vs_unedited"]["l1"]["better"]
    still = ground_truth.minimality(src, src, twin)
    assert still["changed_fraction"]["mean"] == 0.0 and still["outside_share"]["n"] == 0  # nothing changed


def test_population_change_leaves_the_subject_out():
    src = torch.zeros(4, 1, 2, 2)
    twin = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.3, 0.5, 0.7)])
    subjects = np.array(["a", "b", "c", "c"])
    groups = np.array(["g"] * 4)
    out = ground_truth.population_change(src, twin, subjects, groups)
    assert out[0, 0, 0, 0].item() == pytest.approx((0.3 + 0.5 + 0.7) / 3)
    assert out[2, 0, 0, 0].item() == pytest.approx((0.1 + 0.3) / 2)  # both of c's rows are left out
    lone = ground_truth.population_change(src[:1], twin[:1], subjects[:1], groups[:1])
    assert torch.equal(lone, src[:1])


def test_measures_closed_forms():
    a = torch.zeros(2, 1, 16, 16)
    assert measures.l1_255(a, a + 0.2).tolist() == pytest.approx([25.5, 25.5])
    assert measures.psnr(a, a + 0.02).tolist() == pytest.approx([40.0, 40.0])
    x = _slices(3)
    assert measures.ssim(x, x, measures.brain_mask(x)).tolist() == pytest.approx([1.0] * 3)
    truth = (x > 0.5).float()
    thr, d = measures.calibrate_lesion_threshold(x, truth)
    assert d == pytest.approx(1.0) and -0.2 < thr < 0.9
    with pytest.raises(BrainlatentError, match="shapes differ|differ"):
        measures.l1_255(a, torch.zeros(1, 1, 16, 16))
    with pytest.raises(BrainlatentError, match="empty"):
        measures.calibrate_lesion_threshold(x, torch.zeros_like(x))


def test_editor_that_changes_shape_is_refused():
    x, pa = _slices(2), _parents(2)
    with pytest.raises(BrainlatentError, match="editor returned"):
        axioms.composition(lambda im, p, q: im[:1], x, pa, cycles=1)


def test_commutativity_of_two_additive_edits_is_zero_and_of_order_dependent_ones_is_not():
    x, pa = _slices(4), _parents(4).assign(edss=[1.0, 2.0, 3.0, 4.0])  # every row's edss changes
    brain = measures.brain_mask(x)

    def additive(images, parents, new_parents):  # each attribute adds its own change: order-free
        d = (new_parents["edss"].to_numpy() - parents["edss"].to_numpy()) * 0.01
        d = d + (new_parents["age"].to_numpy() - parents["age"].to_numpy()) * 0.001
        return torch.where(brain, images + torch.tensor(d, dtype=torch.float32).view(-1, 1, 1, 1), images)

    def overwrite(images, parents, new_parents):  # the last edit wins: order matters
        changed_edss = (new_parents["edss"] != parents["edss"]).to_numpy()
        value = np.where(changed_edss, 0.3, -0.3)
        return torch.where(brain, torch.tensor(value, dtype=torch.float32).view(-1, 1, 1, 1).expand_as(images), images)

    a, b = pa.assign(edss=0.0), pa.assign(age=pa["age"] + 10)
    assert axioms.commutativity(additive, x, pa, a, b, "edss", "age")["l1"]["mean"] == pytest.approx(0.0, abs=1e-4)
    assert axioms.commutativity(overwrite, x, pa, a, b, "edss", "age")["l1"]["mean"] == pytest.approx(127.5 * 0.6)


def test_an_attribute_a_causal_intervention_changes_is_scored_against_its_new_value():
    x, pa, oracle = _slices(8), _parents(8), _oracle()
    new = pa.assign(age=pa["age"] + 10, edss=pa["edss"] + 1.0)  # age, and EDSS through the causal model
    eff = axioms.effectiveness(oracle, x, identity(x, pa, new), pa, new, ATTRS, "age",
                               real_error={"edss": {"error": 1.0}, "sex": {"error": 0.1}})
    assert eff["others"]["edss"]["changed_by_intervention"] is True and eff["others"]["edss"]["kept"] is None
    assert eff["others"]["sex"]["changed_by_intervention"] is False and eff["others"]["sex"]["kept"] is True
