"""Train the VGG-16 attribute classifier on the slice dataset (``brainlatent train-classifier``).

* **Data**: the ``train`` split of ``<slices>/`` is used for fitting, ``val`` for model selection
  and early stopping, ``test`` only for the final scores (of both the best and the last model).
* **Targets**: every head is categorical (numeric attributes binned by the config's edges, see
  :mod:`brainlatent.attributes`); a missing value (-1) is masked out of its head's loss. Each
  head's cross-entropy is weighted by inverse train-split class frequency, normalised so the
  average weight of a training sample is 1 (``N / (K_present * n_k)``, sklearn's "balanced");
  the training loss is the sum over heads of each head's weighted mean **divided by ln K** (its
  cross-entropy at chance level), so every head starts at 1. Without this the many-class,
  noisy heads (age, EDSS, MS type bins) dominate the shared trunk and an easy binary head (sex)
  never leaves the majority class: on the demo cohort, sex validation accuracy stayed at the
  majority share (0.72) for 6 epochs with plain summed losses and reached 0.92 with the
  normalisation, close to the 0.91 of a sex-only network.
* **Class priors**: the balanced weights make the heads' logits those of a uniform class prior;
  the model stores the train split's class frequencies and its ``forward`` adds their logarithm
  (see :mod:`brainlatent.models.vgg`), so the probabilities it reports, and the labels it gives
  generated images, are the posterior under the data's class frequencies. ``metrics.json``
  scores that posterior (accuracy against the majority-class baseline, ROC-AUC, confusion matrix,
  MAE); ``balanced_accuracy`` is that of the class-balanced decision (argmax of the un-adjusted
  logits), to compare with chance ``1/K``. In a run on the demo cohort the balanced decision of the
  MS-type head had test accuracy 0.36 (majority baseline 0.57), the prior-adjusted one 0.61.
* **Model selection**: the epoch with the highest **mean over heads of validation balanced
  accuracy** (balanced decision; heads without validation labels are left out); early stopping
  after ``patience`` epochs without a strict improvement.
* **Optimisation**: AdamW; learning rate per epoch ``lr * f(epoch)`` with ``f`` cosine (to 0 at
  ``epochs``), step (``lr_gamma`` every ``lr_step_size`` epochs) or constant.
* **Weight averaging** (``ema_decay`` > 0): an exponential moving average of the weights and
  batch-norm statistics, updated after every optimizer step (``torch.optim.swa_utils``; decay
  ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates), is the model that is validated,
  selected and saved. Without it the validation scores of successive
  epochs jumped (demo cohort: sex validation accuracy 0.73, 0.37, 0.76 in epochs 7-9).
* **Augmentation** (train only, ``augment: true``): a random affine per slice (rotation ±8°,
  translation ±5 % of the field of view, no zoom (size carries sex and atrophy), left-right flip
  with p = 0.5) and a random
  intensity gamma (0.8–1.25) and scale (±10 %) of the [0, 1]-rescaled image; the background stays -1.
* **Checkpoints** every epoch in ``<out>/checkpoints/epoch-NNNN.pt`` (model, optimizer, scheduler,
  early-stopping state, the best weights so far, RNG states, history); a restarted job resumes from
  the newest readable one (:mod:`brainlatent.train.checkpoint`, shared with the GAN trainer: a
  corrupt one is renamed ``*.corrupt`` with a warning). On CPU, an interrupted and
  resumed run gives the same weights as an uninterrupted one.

Outputs in ``<out>/``: ``model.pt`` (best) and ``last.pt`` (``state_dict``, ``model_config``,
``attributes``; loadable with ``weights_only=True`` by :func:`load_classifier`), ``metrics.json``,
``history.csv`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from brainlatent import io
from brainlatent.attributes import bin_centres, class_names, n_classes
from brainlatent.config import derive_seed, load_stage_config, plain
from brainlatent.errors import BrainlatentError
from brainlatent.models.vgg import VGG16Classifier, load_classifier  # noqa: F401 - load_classifier: the trainer's callers load what it wrote
from brainlatent.numerics import strict_float32
from brainlatent.slices import dataset_identity
from brainlatent.train.checkpoint import capture_rng_state, fingerprint_digest, restore_rng_state, resume_matching, save_checkpoint

log = logging.getLogger(__name__)

#: how the best epoch is chosen (written into metrics.json)
SELECTION = "highest mean over heads of validation balanced accuracy"
#: config keys that may change between an interrupted run and its resumption
#: classifier keys that may change between runs without invalidating a checkpoint (a longer run
#: resumes); ``epochs`` only where the learning-rate schedule does not depend on it (not cosine)
RESUMABLE_CHANGES = ("epochs", "patience", "keep_checkpoints")
CHECKPOINT_FORMAT = 2
#: balanced-accuracy confidence interval: subject-level (cluster) bootstrap resamples and level
BOOTSTRAP_RESAMPLES = 2000
CI_LEVEL = 0.95


# ------------------------------------------------------------------------------------------------
# Targets, class weights, loss


def class_weights(targets: np.ndarray, k: int) -> torch.Tensor:
    """Inverse-frequency class weights from one head's train labels (-1 = missing, ignored).

    ``w_k = N / (K_present * n_k)`` for classes present in ``targets`` and 0 for absent ones, so the
    mean weight over the labelled training samples is 1.

    Example:
        >>> class_weights(np.array([0, 0, 0, 1, -1]), 3).tolist()
        [0.6666666865348816, 2.0, 0.0]
    """
    labels = targets[targets >= 0]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    present = counts > 0
    w = np.zeros(k, dtype=np.float64)
    if present.any():
        w[present] = len(labels) / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def head_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted mean cross-entropy over the labelled rows of one head (``target == -1`` masked).

    A batch without labelled rows gives a loss of 0 with zero gradient (not NaN).

    Args:
        logits: ``N x K``.
        target: ``N`` class indices, -1 for missing.
        weight: ``K`` class weights (``None`` = 1).
    """
    valid = target >= 0
    safe = torch.where(valid, target, torch.zeros_like(target))
    per_row = F.cross_entropy(logits, safe, reduction="none")
    w = valid.to(per_row.dtype)
    if weight is not None:
        w = w * weight.to(per_row)[safe]
    return (per_row * w).sum() / w.sum().clamp_min(1e-12)


def total_loss(
    logits: dict[str, torch.Tensor], targets: torch.Tensor, weights: dict[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over heads of :func:`head_loss` / ln K (``targets``: ``N x A`` in head order).

    Each head's loss is divided by ``ln K`` (``K`` = its number of classes, the cross-entropy of a
    uniform guess), so heads with many classes do not outweigh binary ones. ``parts`` holds each
    head's un-normalised cross-entropy.
    """
    parts = {}
    total = None
    for a, (name, lg) in enumerate(logits.items()):
        loss = head_loss(lg, targets[:, a], None if weights is None else weights[name])
        parts[name] = float(loss.detach())
        scaled = loss / math.log(max(lg.shape[1], 2))
        total = scaled if total is None else total + scaled
    return total, parts


# ------------------------------------------------------------------------------------------------
# Augmentation


class SliceAugment:
    """Random affine + intensity augmentation of a batch of slices in [-1, 1] (background -1).

    Random numbers come from the given CPU generator (reproducible, checkpointable); the warp runs
    on the batch's device (``affine_grid`` / ``grid_sample``, bilinear, background padding).

    Args:
        rotate_deg: maximum absolute rotation in degrees.
        translate: maximum shift as a fraction of the image size.
        scale: maximum relative zoom (1 ± scale). Off by default: head and brain size carry the
            attributes (sex, atrophy), and the slices keep a fixed mm-per-pixel scale.
        flip_prob: probability of a left-right flip.
        gamma: maximum gamma; gamma is log-uniform in [1/gamma, gamma].
        intensity: maximum relative intensity scale (1 ± intensity), clipped to the range.

    Example:
        >>> x = torch.full((2, 1, 32, 32), -1.0); x[:, :, 8:24, 8:24] = 0.5
        >>> y = SliceAugment()(x, torch.Generator().manual_seed(0))
        >>> y.shape, float(y.min()) >= -1, float(y[0, 0, 0, 0])
        (torch.Size([2, 1, 32, 32]), True, -1.0)
    """

    def __init__(
        self,
        rotate_deg: float = 8.0,
        translate: float = 0.05,
        scale: float = 0.0,
        flip_prob: float = 0.5,
        gamma: float = 1.25,
        intensity: float = 0.1,
    ) -> None:
        self.rotate_deg, self.translate, self.scale = rotate_deg, translate, scale
        self.flip_prob, self.gamma, self.intensity = flip_prob, gamma, intensity

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        u = torch.rand(n, 7, generator=generator, dtype=torch.float64)
        angle = torch.deg2rad((2 * u[:, 0] - 1) * self.rotate_deg)
        zoom = 1 + (2 * u[:, 1] - 1) * self.scale
        shift = (2 * u[:, 2:4] - 1) * self.translate * 2  # normalised coordinates span 2
        flip = torch.where(u[:, 4] < self.flip_prob, -1.0, 1.0).to(torch.float64)
        gamma = torch.exp((2 * u[:, 5] - 1) * math.log(self.gamma))
        gain = 1 + (2 * u[:, 6] - 1) * self.intensity
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
        ).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample((x + 1) / 2, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
        y = y.pow(gamma.to(y).view(-1, 1, 1, 1)) * gain.to(y).view(-1, 1, 1, 1)
        return y.clamp(0, 1) * 2 - 1


# ------------------------------------------------------------------------------------------------
# Scores


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, pred))


def balanced_accuracy_ci(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
) -> tuple[float, float] | None:
    """Percentile confidence interval of balanced accuracy by a cluster bootstrap over ``groups``.

    Slices of one subject are not independent, so whole subjects are resampled with replacement
    (each keeps all its rows); per resample, balanced accuracy is the mean recall over the classes
    present in the resample (as :func:`sklearn.metrics.balanced_accuracy_score`).

    Args:
        y: ``N`` true class indices (labelled rows only).
        pred: ``N`` predicted class indices.
        groups: ``N`` cluster ids (subjects).
        seed: seed of the resampling.
        resamples: number of bootstrap resamples.
        level: coverage of the interval (0.95: the 2.5 and 97.5 percentiles).

    Returns:
        ``(low, high)``, or ``None`` without rows.

    Example:
        >>> y = np.array([0, 0, 1, 1]); g = np.array(["a", "a", "b", "b"])
        >>> balanced_accuracy_ci(y, y, g, seed=0)
        (1.0, 1.0)
    """
    y, pred = np.asarray(y), np.asarray(pred)
    if len(y) == 0:
        return None
    _, subject = np.unique(np.asarray(groups), return_inverse=True)
    classes, cls = np.unique(y, return_inverse=True)
    n_sub, k = int(subject.max()) + 1, len(classes)
    count = np.zeros((n_sub, k))  # rows of class c per subject
    hits = np.zeros((n_sub, k))  # correctly predicted rows of class c per subject
    np.add.at(count, (subject, cls), 1.0)
    np.add.at(hits, (subject, cls), (pred == y).astype(np.float64))
    rng = np.random.default_rng(seed)
    weight = rng.multinomial(n_sub, np.full(n_sub, 1.0 / n_sub), size=resamples).astype(np.float64)  # B x S
    num, den = weight @ hits, weight @ count  # B x K
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    scores = np.nanmean(recall, axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(scores, [tail, 100.0 - tail])
    return float(low), float(high)


def roc_auc_ovr(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC (sklearn); ``None`` when a class is absent from ``y``."""
    from sklearn.metrics import roc_auc_score

    k = proba.shape[1]
    if len(y) == 0 or len(np.unique(y)) < k:
        return None
    p = proba.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    if k == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))


def numeric_errors(attr: dict, y_true: np.ndarray, y_pred: np.ndarray, raw: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean absolute errors of a binned numeric head.

    Returns:
        ``mae_bins``: ``|predicted bin - true bin|`` in bin units;
        ``mae_centre_vs_true_centre``: ``|centre(predicted bin) - centre(true bin)|`` in the
        attribute's units; ``mae_centre_vs_true_value``: ``|centre(predicted bin) - raw value|`` in
        the attribute's units (rows with a raw value; ``None`` without any).

    Example:
        >>> attr = {"kind": "numeric", "bins": [0, 2, 4, 10]}   # centres 1, 3, 7
        >>> numeric_errors(attr, np.array([0, 1, 2]), np.array([0, 2, 0]), np.array([0.5, 3.5, 9.0]))
        {'mae_bins': 1.0, 'mae_centre_vs_true_centre': 3.3333333333333335, 'mae_centre_vs_true_value': 4.0}
    """
    if len(y_true) == 0:
        return {"mae_bins": None, "mae_centre_vs_true_centre": None, "mae_centre_vs_true_value": None}
    centres = bin_centres(attr)
    out: dict[str, float | None] = {
        "mae_bins": float(np.mean(np.abs(y_pred - y_true))),
        "mae_centre_vs_true_centre": float(np.mean(np.abs(centres[y_pred] - centres[y_true]))),
        "mae_centre_vs_true_value": None,
    }
    if raw is not None:
        raw = np.asarray(raw, dtype=np.float64)
        ok = np.isfinite(raw)
        if ok.any():
            out["mae_centre_vs_true_value"] = float(np.mean(np.abs(centres[y_pred[ok]] - raw[ok])))
    return out


def head_metrics(
    attr: dict,
    y_true: np.ndarray,
    proba: np.ndarray,
    majority_class: int | None,
    raw: np.ndarray | None = None,
    balanced_proba: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Scores of one head on the labelled rows (``y_true >= 0``).

    Args:
        attr: the attribute spec.
        y_true: ``N`` class indices (-1 = missing, left out).
        proba: ``N x K`` predicted class probabilities (posterior under the training class prior):
            accuracy, ROC-AUC, confusion matrix and MAE.
        majority_class: the most frequent train class (the baseline predicts it for every row).
        raw: ``N`` raw values of a numeric attribute (for the error in the attribute's units).
        balanced_proba: ``N x K`` probabilities under a uniform class prior, whose argmax gives
            ``balanced_accuracy`` (default: ``proba``).
        groups: ``N`` subject ids: with them, ``balanced_accuracy_ci`` (subject-level bootstrap,
            :func:`balanced_accuracy_ci`) and ``above_baseline`` (its lower bound above chance 1/K).
        seed: seed of the bootstrap.
    """
    from sklearn.metrics import confusion_matrix

    k = n_classes(attr)
    keep = y_true >= 0
    y, p = y_true[keep], proba[keep]
    pred = p.argmax(axis=1) if len(y) else np.zeros(0, dtype=np.int64)
    pred_balanced = pred if balanced_proba is None or not len(y) else balanced_proba[keep].argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(np.mean(pred == y)) if len(y) else None,
        "balanced_accuracy": _balanced_accuracy(y, pred_balanced) if len(y) else None,
        "chance_balanced_accuracy": 1.0 / len(np.unique(y)) if len(y) else None,
        "roc_auc_macro_ovr": roc_auc_ovr(y, p),
        "class_names": class_names(attr),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(k))).tolist() if len(y) else [[0] * k for _ in range(k)],
        "majority_class": None if majority_class is None else class_names(attr)[majority_class],
        "majority_baseline_accuracy": float(np.mean(y == majority_class)) if len(y) and majority_class is not None else None,
    }
    if groups is not None:
        ci = balanced_accuracy_ci(y, pred_balanced, np.asarray(groups)[keep], seed) if len(y) else None
        out["balanced_accuracy_ci"] = None if ci is None else {"low": ci[0], "high": ci[1]}
        out["above_baseline"] = None if ci is None else bool(ci[0] > out["chance_balanced_accuracy"])
    if attr["kind"] == "numeric":
        out.update(numeric_errors(attr, y, pred, None if raw is None else np.asarray(raw)[keep]))
        if majority_class is not None and len(y):
            base = numeric_errors(attr, y, np.full_like(y, majority_class), None if raw is None else np.asarray(raw)[keep])
            out["majority_baseline_mae_bins"] = base["mae_bins"]
            out["majority_baseline_mae_centre_vs_true_value"] = base["mae_centre_vs_true_value"]
    return out


def selection_score(y_true: np.ndarray, proba: dict[str, np.ndarray]) -> float:
    """Mean over heads of balanced accuracy on labelled rows (heads without labels left out); NaN if none."""
    scores = []
    for a, p in enumerate(proba.values()):
        y = y_true[:, a]
        keep = y >= 0
        if keep.any():
            scores.append(_balanced_accuracy(y[keep], p[keep].argmax(axis=1)))
    return float(np.mean(scores)) if scores else float("nan")


# ------------------------------------------------------------------------------------------------
# Model files


def build_model(cfg: dict) -> VGG16Classifier:
    """The classifier described by the config (``classifier`` section, one head per attribute)."""
    cc = cfg["classifier"]
    heads = {a["name"]: n_classes(a) for a in cfg["attributes"]}
    return VGG16Classifier(heads, in_channels=1, width=cc["width"], fc_width=cc["fc_width"], batch_norm=cc["batch_norm"], dropout=cc["dropout"])


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def model_payload(state_dict: dict, model: VGG16Classifier, cfg: dict, **extra: Any) -> dict:
    """What ``model.pt`` / ``last.pt`` hold: weights, constructor kwargs, attribute specs, provenance."""
    return {"state_dict": state_dict, "model_config": copy.deepcopy(model.config), "attributes": plain(cfg["attributes"]), **extra}


# ------------------------------------------------------------------------------------------------
# Checkpoints


CHECKPOINT_PREFIX = "epoch-"


def checkpoint_path(ckpt_dir: Path, epoch: int) -> Path:
    return ckpt_dir / f"{CHECKPOINT_PREFIX}{epoch:04d}.pt"


def _fingerprint(cfg: dict, datasets: dict, slices_dir: Path) -> dict:
    """Everything that shapes the trained classifier: a checkpoint is resumed only if this matches."""
    resumable = [k for k in RESUMABLE_CHANGES if not (k == "epochs" and cfg["classifier"]["lr_schedule"] == "cosine")]
    cc = {k: v for k, v in plain(cfg["classifier"]).items() if k not in resumable}
    return {
        "classifier": cc,
        "attributes": plain(cfg["attributes"]),
        "seed": cfg["seed"],
        "n": {split: len(ds) for split, ds in datasets.items()},
        "data": dataset_identity(slices_dir),
    }


def lr_factor(cc: dict):
    """The learning-rate multiplier as a function of the epoch index (0-based)."""
    epochs, kind = cc["epochs"], cc["lr_schedule"]
    if kind == "cosine":
        return lambda e: 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
    if kind == "step":
        return lambda e: cc["lr_gamma"] ** (e // cc["lr_step_size"])
    return lambda e: 1.0


# ------------------------------------------------------------------------------------------------
# Training


def _predict(model: VGG16Classifier, ds, batch_size: int, device: torch.device, adjust_prior: bool = True) -> dict[str, np.ndarray]:
    """Logits per head, float64 ``N x K`` (eval mode, no grad; see :meth:`VGG16Classifier.forward`)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in model.head_names}
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    with torch.no_grad():
        for x, _ in loader:
            for name, lg in model(x.to(device), adjust_prior=adjust_prior).items():
                out[name].append(lg.double().cpu().numpy())
    return {
        name: np.concatenate(v) if v else np.zeros((0, model.config["heads"][name])) for name, v in out.items()
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _eval_split(model, ds, weights, batch_size, device) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """Scores of one split.

    Returns:
        (the training loss on the split: weighted, class-balanced logits, summed over heads;
        probabilities per head under the training class prior; probabilities per head under a
        uniform prior; accuracy per head of the prior-adjusted decision).
    """
    logits = _predict(model, ds, batch_size, device, adjust_prior=False)
    log_prior = {k: model.log_class_prior(k).double().cpu().numpy() for k in logits}
    proba = {k: _softmax(v + log_prior[k]) for k, v in logits.items()}
    balanced = {k: _softmax(v) for k, v in logits.items()}
    if len(ds) == 0:
        return float("nan"), proba, balanced, {}
    t = torch.from_numpy(ds.targets)
    loss, _ = total_loss({k: torch.from_numpy(v) for k, v in logits.items()}, t, {k: w.double() for k, w in weights.items()})
    acc = {}
    for a, (name, p) in enumerate(proba.items()):
        keep = ds.targets[:, a] >= 0
        acc[name] = float(np.mean(p[keep].argmax(1) == ds.targets[keep, a])) if keep.any() else float("nan")
    return float(loss), proba, balanced, acc


def _progress(iterable, total: int, desc: str):
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False)
    return iterable


def _load_datasets(slices_dir: Path, attributes: list[dict]) -> dict:
    from brainlatent.slices import SPLITS, SliceDataset

    datasets = {split: SliceDataset(slices_dir, split=split, attributes=attributes) for split in SPLITS}
    if len(datasets["train"]) == 0:
        raise BrainlatentError(f"{slices_dir}/manifest.parquet: no slices in the 'train' split; the classifier needs training data")
    missing = [a["name"] for a in attributes if a["name"] not in datasets["train"].manifest.columns]
    if missing:
        raise BrainlatentError(f"{slices_dir}/manifest.parquet: no column for configured attribute(s) {missing}")
    return datasets


def train_classifier(cfg: dict, slices_dir: str | Path, out_dir: str | Path) -> dict:
    """Train (or resume) the attribute classifier and write ``model.pt``, ``last.pt``, metrics, curves.

    Args:
        cfg: the study config (``classifier``, ``attributes``, ``seed``); defaults are filled in.
        slices_dir: the slice dataset folder (``images.npy`` + ``manifest.parquet``).
        out_dir: the output folder; checkpoints go to ``out_dir/checkpoints/``.

    Returns:
        The contents of ``metrics.json``.
    """
    cfg = load_stage_config(cfg, "train_classifier")  # exactly the keys the workflow gives this stage
    strict_float32()  # TF32 off: the classifier's features define the perceptual metrics' distances
    cc, attrs = cfg["classifier"], cfg["attributes"]
    slices_dir, out_dir = Path(slices_dir), Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [a["name"] for a in attrs]

    seed = derive_seed(cfg["seed"], "train_classifier")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gens = {
        "loader": torch.Generator().manual_seed(derive_seed(cfg["seed"], "train_classifier", "loader")),
        "augment": torch.Generator().manual_seed(derive_seed(cfg["seed"], "train_classifier", "augment")),
    }

    datasets = _load_datasets(slices_dir, attrs)
    train_t = datasets["train"].targets
    weights = {a["name"]: class_weights(train_t[:, i], n_classes(a)) for i, a in enumerate(attrs)}
    train_counts = {a["name"]: np.bincount(train_t[train_t[:, i] >= 0, i], minlength=n_classes(a)).tolist() for i, a in enumerate(attrs)}
    majority = {name: (int(np.argmax(c)) if sum(c) else None) for name, c in train_counts.items()}
    for name, c in train_counts.items():
        if sum(c) == 0:
            log.warning("attribute '%s' has no labelled training slice; its head is not trained", name)
    if len(datasets["val"]) == 0:
        log.warning("%s: no validation slices; the last epoch counts as best and early stopping is off", slices_dir)
    fingerprint = _fingerprint(cfg, datasets, slices_dir)

    model = build_model(cfg)
    model.set_class_priors(train_counts)
    if cc["pretrained_weights"]:
        model.load_imagenet_weights(cc["pretrained_weights"])
        log.info("conv weights initialised from %s", cc["pretrained_weights"])
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cc["lr"], weight_decay=cc["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cc))
    ema = weight_average(model, cc["ema_decay"])
    scored = model if ema is None else ema.module  # the model that is validated, selected and saved
    state: dict[str, Any] = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "since_best": 0, "history": []}
    best_state = _cpu_state(scored)

    path, ckpt = resume_matching(
        ckpt_dir, fingerprint, required_keys=("model", "rng"), prefix=CHECKPOINT_PREFIX,
        still_valid=lambda c: None if c.get("format") == CHECKPOINT_FORMAT else f"in format {c.get('format')}, not {CHECKPOINT_FORMAT}",
    )
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        best_state = ckpt["best_model"]
        state = ckpt["state"]
        restore_rng_state(ckpt["rng"])
        for name, g in gens.items():
            g.set_state(ckpt["generators"][name])
        log.info("resumed from %s (epoch %d, best %.4f at epoch %d)", path, state["epoch"], state["best_score"], state["best_epoch"])

    augment = SliceAugment() if cc["augment"] else None
    loader = DataLoader(datasets["train"], batch_size=cc["batch_size"], shuffle=True, generator=gens["loader"],
                        num_workers=0, pin_memory=device.type == "cuda")
    w_dev = {k: w.to(device) for k, w in weights.items()}

    while state["epoch"] < cc["epochs"] and state["since_best"] < cc["patience"]:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        sums = {"loss": 0.0, **{n: 0.0 for n in names}}
        n_seen = 0
        for x, t in _progress(loader, len(loader), f"epoch {epoch}/{cc['epochs']}"):
            x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, gens["augment"])
            loss, parts = total_loss(model(x, adjust_prior=False), t, w_dev)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            sums["loss"] += float(loss.detach()) * len(x)
            for n in names:
                sums[n] += parts[n] * len(x)
            n_seen += len(x)
        scheduler.step()

        val_loss, _, val_balanced, val_acc = _eval_split(scored, datasets["val"], weights, cc["batch_size"], device)
        score = selection_score(datasets["val"].targets, val_balanced) if len(datasets["val"]) else float("nan")
        if math.isnan(score) or score > state["best_score"]:  # without validation labels the newest epoch is best
            state["best_epoch"], state["since_best"] = epoch, 0
            state["best_score"] = state["best_score"] if math.isnan(score) else score
            best_state = _cpu_state(scored)
        else:
            state["since_best"] += 1
        row = {"epoch": epoch, "lr": lr, "train_loss": sums["loss"] / n_seen, "val_loss": val_loss, "val_score": score}
        row.update({f"train_loss_{n}": sums[n] / n_seen for n in names})
        row.update({f"val_accuracy_{n}": val_acc.get(n, float("nan")) for n in names})
        row["seconds"] = time.perf_counter() - t0
        state["history"].append(row)
        state["epoch"] = epoch

        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "model": _cpu_state(model), "ema": None if ema is None else ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "best_model": best_state, "state": state,
            "rng": capture_rng_state(), "generators": {name: g.get_state() for name, g in gens.items()},
            "fingerprint": fingerprint,
        }, checkpoint_path(ckpt_dir, epoch), keep=cc["keep_checkpoints"], prefix=CHECKPOINT_PREFIX)
        log.info("epoch %d/%d  lr %.2e  train loss %.4f  val loss %.4f  val score %.4f%s  (%.1f s)", epoch, cc["epochs"], lr,
                 row["train_loss"], val_loss, score, "  *" if state["best_epoch"] == epoch else "", row["seconds"])
    if state["since_best"] >= cc["patience"] and state["epoch"] < cc["epochs"]:
        log.info("early stop after epoch %d: no improvement for %d epochs", state["epoch"], cc["patience"])

    return _finish(cfg, scored, best_state, state, datasets, weights, majority, train_counts, device, out_dir,
                   fingerprint_digest(fingerprint))


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """Decay of the weight average after ``n_averaged`` updates: ``min(decay, (1 + n) / (10 + n))``.

    The warm-up (as in TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``) keeps the
    average from clinging to the random initialisation when there are few steps per epoch.

    Example:
        >>> round(ema_decay_at(0.99, 0), 3), round(ema_decay_at(0.99, 90), 3), ema_decay_at(0.99, 10_000)
        (0.1, 0.91, 0.99)
    """
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def weight_average(model: VGG16Classifier, decay: float):
    """A moving average of ``model``'s weights and buffers (``torch.optim.swa_utils.AveragedModel``,
    decay :func:`ema_decay_at`); ``None`` when ``decay`` is 0."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        d = ema_decay_at(decay, int(n_averaged))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, 1.0 - d)
            else:
                a.copy_(c)  # counters (batch-norm num_batches_tracked)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def _finish(cfg, model, best_state, state, datasets, weights, majority, train_counts, device, out_dir: Path, fingerprint: str) -> dict:
    """Score best and last models on val and test; write every output (``model`` = the scored one)."""
    cc, attrs = cfg["classifier"], cfg["attributes"]
    last_state = _cpu_state(model)
    results: dict[str, Any] = {}
    for which, sd in (("best", best_state), ("last", last_state)):
        model.load_state_dict(sd)
        results[which] = {}
        for split in ("val", "test"):
            ds = datasets[split]
            _, proba, balanced, _ = _eval_split(model, ds, weights, cc["batch_size"], device)
            heads = {}
            groups = ds.manifest["subject"].astype(str).to_numpy() if len(ds) else np.zeros(0, dtype=object)
            boot_seed = derive_seed(cfg["seed"], "train_classifier", "bootstrap", split)  # same resamples for every head and model
            for a, attr in enumerate(attrs):
                raw = pd.to_numeric(ds.manifest[attr["name"]], errors="coerce").to_numpy(dtype=np.float64) if attr["kind"] == "numeric" else None
                heads[attr["name"]] = head_metrics(attr, ds.targets[:, a] if len(ds) else np.zeros(0, np.int64),
                                                   proba[attr["name"]], majority[attr["name"]], raw, balanced[attr["name"]],
                                                   groups=groups, seed=boot_seed)
            score = selection_score(ds.targets, balanced) if len(ds) else None
            results[which][split] = {"mean_balanced_accuracy": None if score is None or math.isnan(score) else score, "heads": heads}
    model.load_state_dict(last_state)
    history = state["history"]
    best_epoch = state["best_epoch"]
    metrics = {
        "selection": SELECTION,
        "bootstrap": {"unit": "subject", "resamples": BOOTSTRAP_RESAMPLES, "level": CI_LEVEL},
        "best_epoch": best_epoch,
        "epochs_run": state["epoch"],
        "stopped_early": state["epoch"] < cc["epochs"],
        "n_slices": {split: len(ds) for split, ds in datasets.items()},
        "train_class_counts": train_counts,
        "class_weights": {k: w.tolist() for k, w in weights.items()},
        "notes": {
            "mae_bins": "|predicted bin - true bin|, bin units",
            "mae_centre_vs_true_centre": "|centre of predicted bin - centre of true bin|, attribute units",
            "mae_centre_vs_true_value": "|centre of predicted bin - recorded value|, attribute units",
            "accuracy": "share of correct labels; labels = argmax of the posterior under the train split's class frequencies (what the classifier gives generated images)",
            "majority_baseline_accuracy": "accuracy of always predicting the most frequent train-split class",
            "balanced_accuracy": "mean per-class recall of the class-balanced decision (argmax without the class prior); compare with chance_balanced_accuracy = 1/K",
            "balanced_accuracy_ci": f"low/high: {CI_LEVEL:.0%} percentile interval of balanced_accuracy from {BOOTSTRAP_RESAMPLES} bootstrap resamples of the split's subjects (all slices of a drawn subject kept; seed derived from the config seed and the split)",
            "above_baseline": "lower bound of balanced_accuracy_ci > chance_balanced_accuracy (1/K, K = classes present in the split)",
            "confusion_matrix": "rows = true class, columns = label (prior-adjusted decision)",
            "roc_auc_macro_ovr": "sklearn one-vs-rest macro ROC-AUC; null when a class is absent from the split",
        },
        "best": results["best"],
        "last": results["last"],
        "config": {"classifier": cc, "attributes": attrs, "seed": cfg["seed"]},
        "fingerprint": fingerprint,
    }
    resolution = int(datasets["train"].images.shape[-1])
    best_score = None if not history or math.isinf(state["best_score"]) else state["best_score"]
    io.save_torch(out_dir / "model.pt", model_payload(best_state, model, cfg, epoch=best_epoch, resolution=resolution, fingerprint=fingerprint,
                                                      selection=SELECTION, val_score=best_score))
    io.save_torch(out_dir / "last.pt", model_payload(last_state, model, cfg, epoch=state["epoch"], resolution=resolution, fingerprint=fingerprint,
                                                     selection=SELECTION, val_score=history[-1]["val_score"] if history else None))
    io.write_table(out_dir / "history.csv", pd.DataFrame(history))
    write_curves(out_dir / "curves.png", history, [a["name"] for a in attrs], best_epoch)
    io.write_json(out_dir / "metrics.json", _jsonable(metrics))
    for split in ("val", "test"):
        log.info("%s (best epoch %d): %s", split, best_epoch, ", ".join(
            f"{h} acc {m['accuracy']:.3f} (majority {m['majority_baseline_accuracy'] or 0:.3f}), "
            f"balanced {m['balanced_accuracy']:.3f} [{m['balanced_accuracy_ci']['low']:.3f}, {m['balanced_accuracy_ci']['high']:.3f}] "
            f"(chance {m['chance_balanced_accuracy']:.3f})"
            for h, m in results["best"][split]["heads"].items() if m["n"]) or "no labelled slices")
    return metrics


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_curves(path: Path, history: list[dict], heads: list[str], best_epoch: int) -> None:
    """Loss (train, val) and per-head validation accuracy against epoch, best epoch marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss (sum over heads)", title="loss")
    for h in heads:
        ax_acc.plot(epochs, [r[f"val_accuracy_{h}"] for r in history], label=h)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy per head", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label="best")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# ------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config (YAML path or inline JSON)")
    parser.add_argument("--slices", required=True, metavar="DIR", help="slice dataset folder (images.npy, manifest.parquet)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (model.pt, metrics.json, checkpoints/ ...)")


def run(args: argparse.Namespace) -> None:
    cfg = load_stage_config(args.config, "train_classifier")
    train_classifier(cfg, args.slices, args.out)

