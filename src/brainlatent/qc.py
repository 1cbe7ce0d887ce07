"""Quality control: plausibility checks of each preprocessed scan, and QC pictures.

Checks (:func:`measure_mask` measures, :func:`evaluate_checks` compares with ``preprocess.qc``;
the result goes into the scan's JSON summary under ``qc``):

* ``brain_volume``: the mask's volume (ml) inside ``brain_volume_ml`` (an adult brain with the CSF
  inside the skull is about 1.1-1.9 l; a mask of 25-175 ml or one that took the scalp is wrong);
* ``components``: the largest 6-connected component holds at least ``min_largest_component`` of
  the mask (a mask broken into pieces lost the brain between them);
* ``edge``: mask area (cm^2) on the edge of the acquired volume or of the output box, per face; at
  most ``max_edge_cm2`` on the left/right/anterior/posterior/superior faces (the brain was cut off
  there) and ``max_inferior_edge_cm2`` on the inferior face (thick clinical scans often stop in the
  cerebellum; a mask cut off there is usual, one cut off high up in the cerebrum is not);
* ``intensity``: the normalised in-mask intensities are finite, not constant, and at most
  ``max_clipped_share`` of them sit at one clipping bound (percentile normalisation);
* ``band`` (checked by the slice stage, :mod:`brainlatent.slices`): every chosen slice has at least
  ``min_band_area_share`` of the scan's largest axial brain area, and at least one slice is chosen.

The slice stage gathers every failing scan: the study stops (exit 2, every scan and reason listed)
unless ``qc.on_fail`` is ``exclude``, which leaves the scan out and lists it in ``excluded.tsv``
beside the slices, on the console (WARNING) and in the report.

QC pictures: three orthogonal views of a volume with the brain mask's outline.

Views go through the mask's centre of mass of an RAS volume and are drawn in neurological
convention (the patient's right on the picture's right, marked R/L): axial (anterior up), coronal
and sagittal (superior up; sagittal anterior right, marked A/P). Rendering uses matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

import os

import numpy as np

from brainlatent import io

#: the six faces of an RAS box: (name, axis, side) with side -1 = low index, +1 = high index
FACES = (("left", 0, -1), ("right", 0, 1), ("posterior", 1, -1), ("anterior", 1, 1), ("inferior", 2, -1), ("superior", 2, 1))


def measure_mask(mask: np.ndarray, in_view: np.ndarray, spacing, image: np.ndarray, method: str) -> dict:
    """The measures the QC checks use, for one preprocessed scan on its output (RAS) box.

    Args:
        mask: bool X x Y x Z brain mask.
        in_view: bool X x Y x Z, where the box lies inside the acquired volume.
        spacing: voxel size in mm (3,).
        image: the normalised image.
        method: the normalisation method (``percentile`` or ``zscore``).

    Returns:
        ``volume_ml``, ``components``, ``largest_component_share``, ``edge_cm2`` (per face),
        ``intensity`` (p1, p99, min, max, finite, shares at 0 and 1).

    Example:
        >>> m = np.zeros((10, 10, 10), bool); m[2:8, 2:8, 0:6] = True
        >>> r = measure_mask(m, np.ones_like(m), (10.0, 10.0, 10.0), m.astype(np.float32), "percentile")
        >>> r["volume_ml"], r["edge_cm2"]["inferior"], r["edge_cm2"]["superior"]
        (216.0, 36.0, 0.0)
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    outside = np.pad(~np.asarray(in_view, dtype=bool), 1, constant_values=True)
    edge = {}
    for name, axis, side in FACES:
        sl = [slice(1, -1)] * 3
        sl[axis] = slice(0, -2) if side < 0 else slice(2, None)
        face_cm2 = float(np.prod(np.delete(spacing, axis))) / 100.0
        edge[name] = round(float(np.count_nonzero(mask & outside[tuple(sl)])) * face_cm2, 2)
    values = np.asarray(image[mask], dtype=np.float64)
    finite = bool(np.all(np.isfinite(values))) if values.size else False
    intensity: dict = {"finite": finite}
    if values.size and finite:
        p1, p99 = np.percentile(values, [1, 99])
        intensity.update(p1=round(float(p1), 4), p99=round(float(p99), 4), min=round(float(values.min()), 4), max=round(float(values.max()), 4))
        if method == "percentile":
            intensity.update(share_at_0=round(float(np.mean(values <= 0.0)), 4), share_at_1=round(float(np.mean(values >= 1.0)), 4))
    return {
        "volume_ml": round(float(mask.sum()) * float(np.prod(spacing)) / 1000.0, 1),
        "components": int(n),
        "largest_component_share": round(float(sizes.max()) / float(sizes.sum()), 4) if n else 0.0,
        "edge_cm2": edge,
        "intensity": intensity,
    }


def evaluate_checks(measures: dict, limits: dict, method: str) -> dict:
    """Compare :func:`measure_mask`'s measures with the ``preprocess.qc`` limits.

    Returns:
        ``{"passed": bool, "failures": [reason, ...], "checks": {name: {"ok": bool, ...}}}``; each
        reason names the check, the value and the limit.

    Example:
        >>> limits = {"brain_volume_ml": [800, 2000], "min_largest_component": 0.99, "max_edge_cm2": 10,
        ...           "max_inferior_edge_cm2": 40, "max_clipped_share": 0.1}
        >>> m = {"volume_ml": 175.0, "components": 72, "largest_component_share": 0.5, "edge_cm2": {"inferior": 0.0},
        ...      "intensity": {"finite": True, "p1": 0.0, "p99": 1.0}}
        >>> evaluate_checks(m, limits, "zscore")["failures"]  # doctest: +NORMALIZE_WHITESPACE
        ['brain_volume: mask volume 175 ml outside the plausible 800-2000 ml',
         'components: the mask is in 72 pieces, the largest holds 50.0 % (< 99.0 %)']
    """
    checks: dict[str, dict] = {}
    lo, hi = limits["brain_volume_ml"]
    vol = measures["volume_ml"]
    checks["brain_volume"] = {"ok": bool(lo <= vol <= hi), "value": vol, "limit": [lo, hi],
                              "reason": f"mask volume {vol:.0f} ml outside the plausible {lo:g}-{hi:g} ml"}
    share = measures["largest_component_share"]
    checks["components"] = {"ok": bool(share >= limits["min_largest_component"]), "value": share, "limit": limits["min_largest_component"],
                            "reason": f"the mask is in {measures['components']} pieces, the largest holds {100 * share:.1f} % "
                                      f"(< {100 * limits['min_largest_component']:.1f} %)"}
    over = []
    for face, cm2 in measures["edge_cm2"].items():
        limit = limits["max_inferior_edge_cm2"] if face == "inferior" else limits["max_edge_cm2"]
        if cm2 > limit:
            over.append(f"{face} {cm2:.0f} cm2 (> {limit:g})")
    checks["edge"] = {"ok": not over, "value": measures["edge_cm2"],
                      "reason": "the mask touches the edge of the field of view: " + ", ".join(over)}
    it = measures["intensity"]
    problems = []
    if not it.get("finite"):
        problems.append("non-finite or no in-mask intensities")
    elif not it["p99"] > it["p1"]:
        problems.append(f"in-mask intensities are constant (p1 {it['p1']:g} = p99 {it['p99']:g})")
    elif method == "percentile":
        for key in ("share_at_0", "share_at_1"):
            if it.get(key, 0.0) > limits["max_clipped_share"]:
                problems.append(f"{100 * it[key]:.0f} % of the in-mask voxels at {key[-1]} (> {100 * limits['max_clipped_share']:.0f} %)")
    checks["intensity"] = {"ok": not problems, "value": it, "reason": "normalised intensities: " + "; ".join(problems)}
    failures = [f"{name}: {c['reason']}" for name, c in checks.items() if not c["ok"]]
    return {"passed": not failures, "failures": failures, "checks": checks}


def _views(volume: np.ndarray, centre: np.ndarray) -> list[tuple[str, np.ndarray, int, int]]:
    """(name, 2D slice indexed [row=vertical, col=horizontal], horizontal axis, vertical axis)."""
    x, y, z = (int(round(c)) for c in centre)
    return [
        ("axial", volume[:, :, z].T, 0, 1),
        ("coronal", volume[:, y, :].T, 0, 2),
        ("sagittal", volume[x, :, :].T, 1, 2),
    ]


def save_qc_png(
    path: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float] | np.ndarray,
    title: str,
    centre: np.ndarray | None = None,
    dpi: int = 80,
) -> None:
    """Write a PNG with axial, coronal and sagittal views and the mask outline (atomically).

    Args:
        path: output ``.png``.
        image: X x Y x Z volume on an RAS grid (e.g. the bias-corrected head before masking).
        mask: bool X x Y x Z brain mask on the same grid.
        spacing: voxel size in mm (3,), sets the aspect ratio of each view.
        title: picture title (the scan's name and a few numbers).
        centre: voxel the three views pass through; default the mask's centre of mass.
        dpi: resolution of the saved picture.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> v = np.random.rand(20, 24, 20).astype(np.float32); m = v > 0.5
        >>> save_qc_png(Path(tempfile.mkdtemp()) / "qc.png", v, m, (1, 1, 1), "example")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spacing = np.asarray(spacing, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if centre is None:
        centre = np.array([np.mean(ix) for ix in np.nonzero(mask)]) if mask.any() else (np.asarray(image.shape) - 1) / 2.0
    finite = image[np.isfinite(image)]
    ref = image[mask] if mask.any() else finite
    vmin, vmax = (float(v) for v in np.percentile(ref, [0.5, 99.5])) if ref.size else (0.0, 1.0)
    vmin = min(vmin, 0.0) if finite.size and finite.min() >= 0 else vmin
    if vmax <= vmin:
        vmax = vmin + 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    for ax, (name, sl, h, v), (_, msl, _, _) in zip(axes, _views(image, centre), _views(mask.astype(np.float32), centre)):
        ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=spacing[v] / spacing[h], interpolation="nearest")
        if msl.any() and not msl.all():
            ax.contour(msl, levels=[0.5], colors=["#ff3b3b"], linewidths=1.0)
        ax.set_title(name, color="white", fontsize=10)
        right, left = ("R", "L") if name != "sagittal" else ("A", "P")
        for x, letter in ((0.99, right), (0.01, left)):
            ax.text(x, 0.5, letter, transform=ax.transAxes, color="#ffd84d", fontsize=9, ha="right" if x > 0.5 else "left", va="center")
        ax.set_axis_off()
    fig.suptitle(title, color="white", fontsize=11)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.04)  # fixed layout: tight_layout costs ~0.1 s more
    try:
        with io.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, facecolor=fig.get_facecolor(), format="png")
    finally:
        plt.close(fig)
