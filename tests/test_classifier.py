"""The VGG-16 attribute classifier: shapes, masked loss, scores, weight import, training, resume."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainlatent.errors import BrainlatentError
from brainlatent.io import load_torch
from brainlatent.models.vgg import VGG16Classifier, VGG16Trunk
from brainlatent.train.classifier import (
    SliceAugment,
    balanced_accuracy_ci,
    class_weights,
    head_loss,
    head_metrics,
    load_classifier,
    numeric_errors,
    total_loss,
    train_classifier,
)

torch.set_num_threads(1)

ATTRS = [
    {"name": "age", "kind": "numeric", "bins": [18, 40, 60, 80]},
    {"name": "sex", "kind": "categorical", "levels": ["F", "M"]},
]


def make_slices(path: Path, n_per_split=(60, 24, 24), res: int = 32, seed: int = 0, missing_sex: float = 0.2) -> Path:
    """A tiny slice dataset in the project's format where the attributes are visible.

    A head-like disc holds a central blob whose radius grows with the age class and whose
    brightness tells the sex; a share of the sex labels is missing.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    n = sum(n_per_split)
    yy, xx = np.mgrid[:res, :res] - (res - 1) / 2
    rr = np.hypot(yy, xx)
    ages = rng.uniform(18, 80, n)
    age_class = np.digitize(ages, [40, 60])
    sex = rng.choice(["F", "M"], n)
    images = np.empty((n, 1, res, res), np.float32)
    for i in range(n):
        im = np.where(rr < res * 0.42, -0.2, -1.0)
        im = np.where(rr < res * (0.08 + 0.1 * age_class[i]), 0.9 if sex[i] == "M" else 0.4, im)
        images[i, 0] = np.clip(im + rng.normal(0, 0.05, im.shape) * (im > -1), -1, 1)
    sex_col = pd.Series(sex, dtype="object")
    sex_col[rng.random(n) < missing_sex] = None
    manifest = pd.DataFrame({
        "index": np.arange(n), "scan": [f"s{i}" for i in range(n)], "subject": [f"p{i}" for i in range(n)],
        "session": "1", "slice": 0, "split": np.repeat(["train", "val", "test"], n_per_split), "age": ages, "sex": sex_col,
    })
    np.save(path / "images.npy", images)
    manifest.to_parquet(path / "manifest.parquet", index=False)
    return path


def stage_json(cfg: dict) -> str:
    """What the workflow passes the stage: its view of the completed config, as inline JSON."""
    from brainlatent.config import load_config
    from brainlatent.stage_keys import stage_view

    return json.dumps(stage_view(load_config(cfg), "train_classifier"))


def tiny_cfg(seed: int = 1, **classifier) -> dict:
    cc = {"width": 4, "fc_width": 16, "epochs": 2, "batch_size": 16, "lr": 3e-3, "dropout": 0.5, "augment": True}
    cc.update(classifier)
    return {"seed": seed, "attributes": ATTRS, "classifier": cc, "slices": {"resolution": 32, "split": {"stratify": []}}}


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> Path:
    return make_slices(tmp_path_factory.mktemp("slices") / "32")


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_torch(path)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# Network


@pytest.mark.parametrize("res", [32, 64, 128])
def test_shapes_per_resolution(res):
    net = VGG16Classifier({"age": 5, "sex": 2}, width=4, fc_width=8, batch_norm=True).eval()
    x = torch.rand(2, 1, res, res) * 2 - 1
    logits = net(x)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"age": (2, 5), "sex": (2, 2)}
    assert net.embed(x).shape == (2, 8)
    feats = net.block_features(x)
    assert len(feats) == 5
    assert [tuple(f.shape[1:]) for f in feats] == [(4 * m, res >> b, res >> b) for b, m in enumerate((1, 2, 4, 8, 8))]
    assert all(float(f.detach().min()) >= 0 for f in feats)  # ReLU outputs


def test_too_small_or_wrong_channels_rejected():
    net = VGG16Classifier({"sex": 2}, width=4, fc_width=8)
    with pytest.raises(BrainlatentError, match="R >= 32"):
        net(torch.zeros(1, 1, 16, 16))
    with pytest.raises(BrainlatentError, match="N x 1 x R x R"):
        net(torch.zeros(1, 3, 32, 32))


def _torchvision_layout(trunk: VGG16Trunk, batch_norm: bool, prefix: str = "features") -> dict[str, torch.Tensor]:
    """A trunk's weights under torchvision's ``features.N`` indices (conv[, bn], relu per layer; pool per block)."""
    state, idx = {}, 0
    for block in trunk.blocks:
        for layer in block.layers:
            state[f"{prefix}.{idx}.weight"] = layer.conv.weight.detach().clone()
            state[f"{prefix}.{idx}.bias"] = torch.randn(layer.conv.out_channels)
            idx += 1
            if batch_norm:
                c = layer.conv.out_channels
                for name, value in (("weight", torch.rand(c)), ("bias", torch.randn(c)), ("running_mean", torch.randn(c)), ("running_var", torch.rand(c) + 0.5)):
                    state[f"{prefix}.{idx}.{name}"] = value
                idx += 1
            idx += 1  # ReLU
        idx += 1  # MaxPool
    return state


@pytest.mark.parametrize("batch_norm", [False, True])
def test_imagenet_import_averages_rgb_filters(tmp_path, batch_norm):
    torch.manual_seed(0)
    rgb = VGG16Trunk(in_channels=3, width=4, batch_norm=batch_norm)
    state = _torchvision_layout(rgb, batch_norm)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    net = VGG16Classifier({"sex": 2}, width=4, fc_width=8, batch_norm=batch_norm)
    net.load_imagenet_weights(path)
    convs = net.trunk.conv_layers()
    assert torch.allclose(convs[0].conv.weight, state["features.0.weight"].mean(1, keepdim=True))
    src = rgb.conv_layers()
    for mine, theirs in zip(convs[1:], src[1:]):
        assert torch.equal(mine.conv.weight, theirs.conv.weight)
    if batch_norm:
        assert torch.equal(convs[0].norm.running_mean, state["features.1.running_mean"])
    else:
        assert torch.equal(convs[12].conv.bias, state["features.28.bias"])


def test_imagenet_import_errors(tmp_path):
    net = VGG16Classifier({"sex": 2}, width=4, fc_width=8)
    with pytest.raises(BrainlatentError, match="nowhere.pth.*not found"):
        net.load_imagenet_weights(tmp_path / "nowhere.pth")
    path = tmp_path / "wide.pth"
    torch.save(_torchvision_layout(VGG16Trunk(3, width=8), False), path)
    with pytest.raises(BrainlatentError, match="wide.pth.*do not fit") as err:
        net.load_imagenet_weights(path)
    assert "conv 0" in str(err.value)
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(BrainlatentError, match="found 1 VGG convolution"):
        net.load_imagenet_weights(path)


# ------------------------------------------------------------------------------------------------
# Loss and class weights


def test_class_weights_inverse_frequency():
    w = class_weights(np.array([0, 0, 0, 1, -1, -1]), 3)
    # N=4 labelled, 2 classes present: w0 = 4/(2*3), w1 = 4/(2*1), absent class 2 -> 0
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0, 0.0]))
    assert float((w[torch.tensor([0, 0, 0, 1])]).mean()) == pytest.approx(1.0)


def test_all_missing_head_gives_zero_loss_and_gradient():
    torch.manual_seed(0)
    net = VGG16Classifier({"age": 3, "sex": 2}, width=4, fc_width=8, dropout=0.0)
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    targets = torch.tensor([[0, -1], [1, -1], [2, -1], [0, -1], [1, -1], [2, -1]])
    logits = net(x)
    loss, parts = total_loss(logits, targets)
    assert parts["sex"] == 0.0
    assert torch.allclose(loss, F.cross_entropy(logits["age"], targets[:, 0]) / math.log(3))
    loss.backward()
    g = net.heads["sex"].weight.grad
    assert g is None or torch.count_nonzero(g) == 0
    assert torch.count_nonzero(net.heads["age"].weight.grad) > 0


def test_mixed_missing_matches_loss_on_labelled_rows():
    torch.manual_seed(1)
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([2, -1, 0, -1, 1])
    weight = torch.tensor([0.5, 1.0, 2.0])
    keep = target >= 0
    expected = F.cross_entropy(logits[keep], target[keep], weight=weight)
    got = head_loss(logits, target, weight)
    assert torch.allclose(got, expected)
    got.backward()
    assert torch.count_nonzero(logits.grad[~keep]) == 0 and torch.count_nonzero(logits.grad[keep]) > 0


# ------------------------------------------------------------------------------------------------
# Scores


def test_numeric_errors_hand_computed():
    attr = {"name": "edss", "kind": "numeric", "bins": [0, 2, 4, 10]}  # centres 1, 3, 7
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 2, 0, 2])
    raw = np.array([0.5, 3.5, 9.0, np.nan])
    out = numeric_errors(attr, y_true, y_pred, raw)
    assert out["mae_bins"] == pytest.approx((0 + 1 + 2 + 0) / 4)
    assert out["mae_centre_vs_true_centre"] == pytest.approx((0 + 4 + 6 + 0) / 4)
    assert out["mae_centre_vs_true_value"] == pytest.approx((0.5 + 3.5 + 8.0) / 3)  # NaN raw value left out


def test_head_metrics_baseline_confusion_and_auc():
    attr = {"name": "age", "kind": "numeric", "bins": [18, 40, 60, 80]}
    y = np.array([0, 0, 1, 2, -1])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [1, 0, 0]])
    m = head_metrics(attr, y, proba, majority_class=0, raw=np.array([20, 30, 50, 70, 25]))
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["majority_baseline_accuracy"] == pytest.approx(2 / 4)
    assert m["majority_class"] == "18-40"
    assert m["mae_bins"] == pytest.approx(1 / 4)
    assert m["majority_baseline_mae_bins"] == pytest.approx((0 + 0 + 1 + 2) / 4)
    assert 0.5 < m["roc_auc_macro_ovr"] <= 1.0
    absent = head_metrics(attr, np.array([0, 1, 1]), proba[:3], majority_class=1)
    assert absent["roc_auc_macro_ovr"] is None  # class 2 absent


def test_head_metrics_balanced_accuracy_uses_the_balanced_decision():
    attr = {"name": "sex", "kind": "categorical", "levels": ["F", "M"]}
    y = np.array([0, 0, 0, 1])
    adjusted = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # always the majority class
    balanced = np.array([[0.6, 0.4], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    m = head_metrics(attr, y, adjusted, majority_class=0, balanced_proba=balanced)
    assert m["accuracy"] == pytest.approx(3 / 4) and m["confusion_matrix"] == [[3, 0], [1, 0]]
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["chance_balanced_accuracy"] == pytest.approx(1 / 2)


def _clustered(n_subjects: int, k: int, per_class: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every subject has ``per_class`` rows of each of ``k`` classes: labels and subject ids."""
    y = np.tile(np.repeat(np.arange(k), per_class), n_subjects)
    groups = np.repeat([f"sub-{i:03d}" for i in range(n_subjects)], k * per_class)
    return y, groups


def test_balanced_accuracy_ci_perfect_predictions_is_one():
    y = np.array([0, 0, 1, 2, 2, 3, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    assert balanced_accuracy_ci(y, y.copy(), groups, seed=3) == (1.0, 1.0)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_balanced_accuracy_ci_constant_predictions_is_chance(k):
    y, groups = _clustered(n_subjects=7, k=k)
    low, high = balanced_accuracy_ci(y, np.zeros_like(y), groups, seed=1)  # recall 1 for class 0, 0 for the rest
    assert low == pytest.approx(1 / k) and high == pytest.approx(1 / k)


def test_balanced_accuracy_ci_resamples_subjects_not_slices():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=40)
    pred = np.where(rng.uniform(size=40) < 0.6, y, rng.integers(0, 3, size=40))
    groups = np.repeat(np.arange(10), 4)
    base = balanced_accuracy_ci(y, pred, groups, seed=5)
    # ten copies of every slice (same subjects): a slice-level bootstrap would narrow, a subject-level one must not
    copies = balanced_accuracy_ci(np.repeat(y, 10), np.repeat(pred, 10), np.repeat(groups, 10), seed=5)
    assert copies == pytest.approx(base)
    assert balanced_accuracy_ci(y, pred, groups, seed=5) == base  # seeded
    from sklearn.metrics import balanced_accuracy_score

    assert base[0] < balanced_accuracy_score(y, pred) < base[1]
    assert base[1] - base[0] > 0.05  # 10 subjects: a wide interval
    assert balanced_accuracy_ci(np.zeros(0, int), np.zeros(0, int), np.zeros(0), seed=0) is None


def test_head_metrics_ci_and_above_baseline():
    attr = {"name": "ms_type", "kind": "categorical", "levels": ["HC", "RRMS", "SPMS", "PPMS"]}
    y, groups = _clustered(n_subjects=12, k=4)
    one_hot = np.eye(4)[y]
    good = head_metrics(attr, y, one_hot, majority_class=1, groups=groups, seed=0)
    assert good["balanced_accuracy_ci"] == {"low": 1.0, "high": 1.0} and good["above_baseline"] is True
    const = np.tile([0.1, 0.7, 0.1, 0.1], (len(y), 1))
    bad = head_metrics(attr, y, const, majority_class=1, groups=groups, seed=0)
    assert bad["balanced_accuracy"] == pytest.approx(0.25) and bad["above_baseline"] is False
    assert "above_baseline" not in head_metrics(attr, y, one_hot, majority_class=1)  # no subjects, no interval


def test_class_priors_shift_the_logits_by_the_log_train_frequencies():
    torch.manual_seed(0)
    net = VGG16Classifier({"age": 3, "sex": 2}, width=4, fc_width=8).eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    before = net(x)
    assert all(torch.equal(before[k], v) for k, v in net(x, adjust_prior=False).items())  # no prior set: the same
    net.set_class_priors({"age": [6, 2, 0], "sex": [0, 0]})
    assert torch.allclose(net.class_prior("age"), torch.tensor([7 / 11, 3 / 11, 1 / 11]))
    assert torch.allclose(net.class_prior("sex"), torch.tensor([0.5, 0.5]))  # no labels: uniform
    after, balanced = net(x), net(x, adjust_prior=False)
    assert torch.allclose(balanced["age"], before["age"])
    assert torch.allclose(after["age"], balanced["age"] + torch.log(torch.tensor([7 / 11, 3 / 11, 1 / 11])))
    assert torch.allclose(torch.softmax(after["sex"], 1), torch.softmax(balanced["sex"], 1))
    with pytest.raises(BrainlatentError, match="'age': 2 class counts for 3 classes"):
        net.set_class_priors({"age": [1, 2]})


def test_augment_keeps_background_and_range():
    x = torch.full((4, 1, 32, 32), -1.0)
    x[:, :, 10:22, 10:22] = 0.3
    y = SliceAugment()(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= -1 and float(y.max()) <= 1
    assert torch.all(y[:, :, :3, :] == -1)  # far background stays background
    assert not torch.equal(y, x)
    z = SliceAugment()(x, torch.Generator().manual_seed(0))
    assert torch.equal(y, z)


# ------------------------------------------------------------------------------------------------
# Training


def test_training_is_deterministic_and_seeded(slices, tmp_path):
    train_classifier(tiny_cfg(seed=1), slices, tmp_path / "a")
    train_classifier(tiny_cfg(seed=1), slices, tmp_path / "b")
    train_classifier(tiny_cfg(seed=2), slices, tmp_path / "c")
    a, b, c = (weights_of(tmp_path / d / "last.pt") for d in "abc")
    assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_after_interruption_matches_uninterrupted(slices, tmp_path):
    cfg = tiny_cfg(epochs=4, keep_checkpoints=4)  # cosine schedule over 4 epochs
    full = tmp_path / "full"
    train_classifier(cfg, slices, full)
    # an interrupted run: only the epoch-2 checkpoint made it to disk
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / "epoch-0002.pt", part / "checkpoints")
    metrics = train_classifier(cfg, slices, part)
    assert metrics["epochs_run"] == 4
    for name in ("last.pt", "model.pt"):
        assert_same_weights(weights_of(full / name), weights_of(part / name))
    assert pd.read_csv(part / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]


def test_continue_from_two_to_four_epochs_in_a_fresh_call(slices, tmp_path, caplog):
    """epochs=2, then a new CLI call with epochs=4 resumes; constant LR makes the runs comparable."""
    from brainlatent.cli import main

    full = tmp_path / "full"
    train_classifier(tiny_cfg(epochs=4, lr_schedule="constant"), slices, full)
    part = tmp_path / "part"
    train_classifier(tiny_cfg(epochs=2, lr_schedule="constant"), slices, part)
    with caplog.at_level(logging.INFO, logger="brainlatent.train.classifier"):
        rc = main(["train-classifier", "--config", stage_json(tiny_cfg(epochs=4, lr_schedule="constant")),
                   "--slices", str(slices), "--out", str(part)])
    assert rc == 0
    assert any("resumed from" in r.getMessage() and "epoch-0002.pt" in r.getMessage() for r in caplog.records)
    assert_same_weights(weights_of(full / "last.pt"), weights_of(part / "last.pt"))
    assert pd.read_csv(part / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]


def test_corrupt_newest_checkpoint_is_skipped(slices, tmp_path, caplog):
    cfg = tiny_cfg(epochs=3, keep_checkpoints=3)
    out = tmp_path / "out"
    train_classifier(cfg, slices, out)
    reference = weights_of(out / "last.pt")
    newest = out / "checkpoints" / "epoch-0003.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # a truncated write
    (out / "last.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="brainlatent.train.classifier"):
        train_classifier(cfg, slices, out)
    assert any("epoch-0003.pt" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    assert_same_weights(reference, weights_of(out / "last.pt"))


def test_changed_config_sets_old_checkpoints_aside_and_trains_afresh(slices, tmp_path, caplog):
    """A checkpoint made with other settings is never resumed: it is moved aside (not deleted), the
    log names what changed, and the result equals a fresh run with the new settings."""
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    train_classifier(tiny_cfg(epochs=1), slices, out)
    with caplog.at_level(logging.WARNING, logger="brainlatent.train.checkpoint"):
        train_classifier(tiny_cfg(epochs=1, lr=1e-3), slices, out)
    assert any("classifier.lr changed" in r.getMessage() and "checkpoints.stale-1" in r.getMessage() for r in caplog.records)
    assert list((out / "checkpoints.stale-1").glob("epoch-*.pt"))
    train_classifier(tiny_cfg(epochs=1, lr=1e-3), slices, fresh)
    assert_same_weights(weights_of(fresh / "last.pt"), weights_of(out / "last.pt"))
    assert torch.load(out / "model.pt", weights_only=True)["fingerprint"] == torch.load(fresh / "model.pt", weights_only=True)["fingerprint"]


def test_training_learns_and_writes_outputs(slices, tmp_path):
    out = tmp_path / "out"
    metrics = train_classifier(tiny_cfg(width=8, fc_width=32, epochs=12, dropout=0.0, augment=False), slices, out)
    for name in ("model.pt", "last.pt", "metrics.json", "history.csv", "curves.png"):
        assert (out / name).stat().st_size > 0
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["best_epoch"] == metrics["best_epoch"] >= 1
    for head in ("age", "sex"):
        val = on_disk["best"]["val"]["heads"][head]
        assert val["accuracy"] > val["majority_baseline_accuracy"] + 0.15, (head, val)
    age = on_disk["best"]["test"]["heads"]["age"]
    assert {"mae_bins", "mae_centre_vs_true_centre", "mae_centre_vs_true_value", "confusion_matrix"} <= age.keys()
    assert on_disk["best"]["val"]["heads"]["sex"]["n"] < 24  # missing sex labels are left out
    history = pd.read_csv(out / "history.csv")
    assert len(history) == metrics["epochs_run"] and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]

    net = load_classifier(out / "model.pt")
    assert not net.training and net.config["width"] == 8
    for head, counts in on_disk["train_class_counts"].items():  # the stored prior is the train split's
        c = torch.tensor(counts, dtype=torch.float32)
        assert torch.allclose(net.class_prior(head), (c + 1) / (c.sum() + len(c)))
    images = np.load(slices / "images.npy")[:4]
    with torch.no_grad():
        assert net(torch.from_numpy(images))["age"].shape == (4, 3)


def test_load_classifier_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(BrainlatentError, match="x.pt: not a brainlatent classifier"):
        load_classifier(path)


def test_cli_reports_missing_dataset(tmp_path, capsys):
    from brainlatent.cli import main

    rc = main(["train-classifier", "--config", stage_json(tiny_cfg()), "--slices", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "images.npy" in capsys.readouterr().err
