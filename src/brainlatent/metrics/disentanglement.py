"""Axis-dependent disentanglement scores: MIG, SAP and DCI, for discrete and continuous factors.

Codes ``z`` (``N × D``, one column per latent coordinate) against factors, each either discrete
(integer labels) or continuous (real values). Definitions (docs/metrics.md):

* **MIG** (Chen et al. 2018, "Isolating sources of disentanglement in VAEs", eq. 6): per factor
  ``k``, ``(I(z_a; v_k) − I(z_b; v_k)) / H(v_k)`` with ``a, b`` the coordinates of largest and
  second-largest mutual information; mean over factors. Mutual information is the plug-in
  estimate (bits) on discretised values: a variable with at most ``bins`` distinct values keeps
  them, otherwise it is cut into ``bins`` equal-frequency bins (Locatello et al. 2019 use 20
  histogram bins).
* **SAP** (Kumar et al. 2018, "Variational inference of disentangled latent concepts", §3): a
  score matrix ``S[j, k]`` of how well coordinate ``j`` alone predicts factor ``k``; per factor the
  gap between the two largest scores; mean over factors. Continuous factor: ``R²`` of the linear
  regression on ``z_j`` (the paper's choice); discrete factor: the correlation ratio ``η²``
  (between-class share of ``z_j``'s variance; the linear-predictability analogue of the paper's
  classification accuracy, 1 when ``z_j`` determines the class, 0 when independent).
* **DCI** (Eastwood & Williams 2018, "A framework for the quantitative evaluation of disentangled
  representations", §3): importance ``R[j, k] = Σ |lasso coefficient|`` (penalty ``3/√N``) of standardised ``z_j``
  when predicting factor ``k`` (standardised; a discrete factor one-hot, one column per level,
  two levels one column); disentanglement ``Σ_j ρ_j (1 − H_K(P_j·))`` with ``ρ_j`` the code's share
  of all importance; completeness mean over factors of ``1 − H_D(P_·k)``; informativeness the
  held-out ``R²`` of least squares on all codes (fit on the first half, scored on the second), clipped to [0, 1]. A code or
  factor without any importance counts 0.

All three are invariant to scaling a coordinate and depend on the axes (a rotation changes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def discretise(x: np.ndarray, bins: int) -> np.ndarray:
    """Integer codes: the distinct values when there are at most ``bins``, else equal-frequency bins.

    Example:
        >>> discretise(np.array([0.5, 0.1, 0.5]), 20).tolist()
        [1, 0, 1]
        >>> np.bincount(discretise(np.arange(100.0), 4)).tolist()
        [25, 25, 25, 25]
    """
    x = np.asarray(x)
    values, codes = np.unique(x, return_inverse=True)
    if len(values) <= bins:
        return codes.reshape(-1)
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return (ranks * bins // len(x)).astype(np.int64)


def entropy_bits(labels: np.ndarray) -> float:
    """Plug-in entropy (bits) of integer labels."""
    p = np.bincount(labels) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in ``I(a; b)`` (bits) of two integer label arrays."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pa @ pb)[nz])).sum())


def _factor_matrix(factors: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(f).reshape(-1) for f in factors]


def mig(z: np.ndarray, factors: Sequence[np.ndarray], discrete: Sequence[bool], bins: int = 20) -> dict:
    """Mutual information gap.

    Args:
        z: ``N × D`` codes (``D ≥ 2``).
        factors: one length-``N`` array per factor.
        discrete: per factor, whether its values are labels (else they are binned like ``z``).
        bins: equal-frequency bins for continuous variables.

    Returns:
        ``{"mig": mean, "per_factor": [...], "mi": D × K matrix (bits), "entropy": [...]}``; a
        constant factor (zero entropy) gets NaN and is left out of the mean.

    Example:
        >>> v = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 5)
        >>> round(mig(v.astype(float), [v[:, 0], v[:, 1]], [True, True])["mig"], 6)
        1.0
    """
    z = np.asarray(z, dtype=np.float64)
    zc = [discretise(z[:, j], bins) for j in range(z.shape[1])]
    per, ent, mi = [], [], np.zeros((z.shape[1], len(factors)))
    for k, (f, disc) in enumerate(zip(_factor_matrix(factors), discrete, strict=True)):
        fc = discretise(f, len(f)) if disc else discretise(f, bins)
        h = entropy_bits(fc)
        ent.append(h)
        mi[:, k] = [mutual_information_bits(c, fc) for c in zc]
        top = np.sort(mi[:, k])[::-1]
        per.append(float((top[0] - top[1]) / h) if h > 0 else float("nan"))
    valid = [p for p in per if np.isfinite(p)]
    return {"mig": float(np.mean(valid)) if valid else float("nan"), "per_factor": per, "mi": mi.tolist(), "entropy": ent}


def _r2_single(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    r = float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))
    return r * r


def _eta2(x: np.ndarray, labels: np.ndarray) -> float:
    total = x.var()
    if total == 0:
        return 0.0
    means = np.array([x[labels == c].mean() for c in np.unique(labels)])
    counts = np.array([(labels == c).sum() for c in np.unique(labels)])
    between = float((counts * (means - x.mean()) ** 2).sum() / len(x))
    return between / total


def sap(z: np.ndarray, factors: Sequence[np.ndarray], discrete: Sequence[bool]) -> dict:
    """Separated attribute predictability: ``{"sap", "per_factor", "scores": D × K}``.

    Example:
        >>> v = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 5, dtype=float)
        >>> round(sap(v, [v[:, 0], v[:, 1]], [False, False])["sap"], 6)
        1.0
    """
    z = np.asarray(z, dtype=np.float64)
    scores = np.zeros((z.shape[1], len(factors)))
    for k, (f, disc) in enumerate(zip(_factor_matrix(factors), discrete, strict=True)):
        for j in range(z.shape[1]):
            scores[j, k] = _eta2(z[:, j], f) if disc else _r2_single(z[:, j], np.asarray(f, dtype=np.float64))
    top = np.sort(scores, axis=0)[::-1]
    per = (top[0] - top[1]).tolist()
    return {"sap": float(np.mean(per)), "per_factor": per, "scores": scores.tolist()}


def _targets(f: np.ndarray, disc: bool) -> np.ndarray:
    """``N × c`` standardised regression targets of one factor (one-hot for > 2 levels)."""
    if disc:
        levels = np.unique(f)
        cols = [(f == lv).astype(np.float64) for lv in (levels[1:] if len(levels) == 2 else levels)]
        y = np.stack(cols, 1) if cols else np.zeros((len(f), 1))
    else:
        y = np.asarray(f, dtype=np.float64).reshape(-1, 1)
    sd = y.std(0)
    return (y - y.mean(0)) / np.where(sd > 0, sd, 1.0)


def _entropy_base(p: np.ndarray, base: int) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(base)) if base > 1 else 0.0


def dci(z: np.ndarray, factors: Sequence[np.ndarray], discrete: Sequence[bool], alpha: float | None = None) -> dict:
    """Disentanglement, completeness, informativeness with lasso importances.

    Args:
        z: ``N × D`` codes.
        factors, discrete: as in :func:`mig`.
        alpha: lasso penalty on standardised variables (``sklearn.linear_model.Lasso``); default
            ``3 / √N``, three standard errors of a sample correlation under independence, so a
            code unrelated to every factor gets no importance (D = C = 0) instead of noise.

    Returns:
        ``{"disentanglement", "completeness", "informativeness", "importance": D × K, ...}``.
    """
    from sklearn.linear_model import Lasso, LinearRegression

    z = np.asarray(z, dtype=np.float64)
    sd = z.std(0)
    zs = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)
    n = len(zs)
    half = n // 2
    alpha = 3.0 / np.sqrt(n) if alpha is None else float(alpha)
    D, K = z.shape[1], len(factors)
    R = np.zeros((D, K))
    info = []
    for k, (f, disc) in enumerate(zip(_factor_matrix(factors), discrete, strict=True)):
        y = _targets(f, disc)
        r2s = []
        for c in range(y.shape[1]):
            full = Lasso(alpha=alpha, max_iter=10000).fit(zs, y[:, c])
            R[:, k] += np.abs(full.coef_)
            part = LinearRegression().fit(zs[:half], y[:half, c])
            r2s.append(max(0.0, float(part.score(zs[half:], y[half:, c]))) if y[half:, c].std() > 0 else 0.0)
        info.append(float(np.mean(r2s)))
    total = R.sum()
    d_per = [1.0 - _entropy_base(R[j] / R[j].sum(), K) if R[j].sum() > 0 else 0.0 for j in range(D)]
    rho = R.sum(1) / total if total > 0 else np.zeros(D)
    c_per = [1.0 - _entropy_base(R[:, k] / R[:, k].sum(), D) if R[:, k].sum() > 0 else 0.0 for k in range(K)]
    return {
        "disentanglement": float((rho * np.array(d_per)).sum()) if K > 1 else float("nan"),
        "completeness": float(np.mean(c_per)),
        "informativeness": float(np.mean(info)),
        "per_code_disentanglement": d_per, "per_factor_completeness": c_per, "per_factor_informativeness": info,
        "importance": R.tolist(),
    }
