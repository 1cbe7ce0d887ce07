"""``brainlatent counterfactual``: this patient's slice with one attribute changed, and how good that is.

Two uses:

* **One scan** (``--scan <id> --set edss=0``): every slice of the scan in the dataset is inverted,
  edited and re-rendered; for each slice ``<scan>_z<slice>_{original,counterfactual,difference}``
  are written as PNG and as a 2D NIfTI (display orientation: anterior up, the patient's right on the
  left; pixel size from the slice geometry), plus ``counterfactual.json`` with the classifier's
  predictions before and after.
* **The study** (``--out metrics.json --out-dir pictures/``): the counterfactual metrics of one
  model on the real test slices (:mod:`brainlatent.counterfactual.axioms`), and with synthetic twins
  (``--twins``) the true counterfactual error beside its two baselines
  (:mod:`brainlatent.counterfactual.ground_truth`). Every slice choice is seeded from the config.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainlatent import io
from brainlatent.config import derive_seed, load_stage_config
from brainlatent.counterfactual import axioms, ground_truth, measures
from brainlatent.counterfactual.editor import LatentEditor
from brainlatent.counterfactual.interventions import (
    apply,
    from_config,
    new_values,
    parse_set,
)
from brainlatent.errors import BrainlatentError
from brainlatent.interventions import Intervention
from brainlatent.labels import slice_positions
from brainlatent.slices import load_slices

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- set-up
def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_editor(G, cfg: dict, features, seed: int) -> LatentEditor:
    """The study's editor for ``G``: directions fitted for an unconditional family, y edits for a conditional one."""
    cf = cfg["counterfactual"]
    conditional = bool(getattr(G, "c_dim", 0))
    space = "zy" if conditional else (cf["space"] if G.has_mapping else "z")
    directions = None
    if not conditional:
        from brainlatent.counterfactual.directions import fit_directions

        start = time.perf_counter()
        directions = fit_directions(G, features.classifier, cfg["attributes"], "w" if space in ("w", "w+") else "z",
                                    n_samples=cf["directions"]["num_samples"], seed=derive_seed(seed, "directions"))
        log.info("attribute directions fitted on %d samples in %.1f s", cf["directions"]["num_samples"], time.perf_counter() - start)
    return LatentEditor(G, space, cfg["attributes"], features=features, projector=cf["projector"],
                        directions=directions, keep_fixed=cf["directions"]["keep_fixed"], seed=derive_seed(seed, "projector"))


def _parents(manifest: pd.DataFrame, attributes: list[dict]) -> pd.DataFrame:
    cols = [a["name"] for a in attributes if a["name"] in manifest.columns]
    out = manifest[cols].copy()
    out["slice_position"] = manifest["slice_position"].to_numpy()
    return out.reset_index(drop=True)


def _spread_choice(subjects: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row indices, seeded, taking subjects in turn so the rows spread over as many subjects as possible."""
    subjects = np.asarray(subjects)
    if len(subjects) <= k:
        return np.arange(len(subjects))
    order = rng.permutation(len(subjects))
    rank = pd.Series(subjects[order]).groupby(subjects[order]).cumcount().to_numpy()
    picked = order[np.lexsort((np.arange(len(order)), rank))][:k]
    return np.sort(picked)


def _images(array, rows) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array[np.asarray(rows)], dtype=np.float32)))


# ---------------------------------------------------------------------------------------- pictures
def _signed_rgb(diff: np.ndarray, scale: float) -> np.ndarray:
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"]
    return (cmap(np.clip(diff / max(scale, 1e-6), -1, 1) * 0.5 + 0.5)[..., :3] * 255).astype(np.uint8)


def _grey_rgb(img: np.ndarray) -> np.ndarray:
    g = (np.clip((img + 1) / 2, 0, 1) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def example_grid(columns: list[tuple[str, torch.Tensor]], path: Path, diff_scale: float = 0.5) -> None:
    """Rows = slices; columns = images (grey) or differences (``"Δ ..."`` titles, signed colour map)."""
    from brainlatent.images import save_png

    n = len(columns[0][1])
    rows = []
    for i in range(n):
        tiles = []
        for title, imgs in columns:
            a = imgs[i, 0].numpy()
            tiles.append(_signed_rgb(a, diff_scale) if title.startswith("Δ") else _grey_rgb(a))
            tiles.append(np.full((a.shape[0], 2, 3), 255, np.uint8))
        rows.append(np.concatenate(tiles[:-1], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    save_png(np.concatenate(rows[:-1], axis=0), path)


# ---------------------------------------------------------------------------------------- the study
def _interventions_from_twins(tman: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    groups = []
    for (name, mode), rows in tman.groupby(["intervention", "mode"], sort=True):
        groups.append((str(name), str(mode), rows.index.to_numpy()))
    return groups


def _lesion_threshold(cf: dict, twins: dict | None, images, source_rows: np.ndarray) -> dict:
    value = cf["lesion_threshold"]
    if isinstance(value, (int, float)):
        return {"value": float(value), "source": "config", "dice": None}
    if str(value) != "auto":
        raise BrainlatentError(f"counterfactual.lesion_threshold: {value!r}; expected a number or 'auto'")
    if twins is None or twins.get("source_lesions") is None:
        log.warning("counterfactual: lesion_threshold 'auto' needs synthetic twins with true lesion masks; lesion measures are left out")
        return {"value": None, "source": "none", "dice": None}
    _, first = np.unique(source_rows, return_index=True)
    rows = np.sort(first)
    thr, dice = measures.calibrate_lesion_threshold(_images(images, source_rows[rows]), _images(twins["source_lesions"], rows))
    log.info("lesion threshold %.2f (Dice %.3f against the true lesion masks of %d source slices)", thr, dice, len(rows))
    return {"value": thr, "source": "auto: Dice-best against the twins' true lesion masks", "dice": dice, "n_slices": len(rows)}


def inversion_quality(editor, images: torch.Tensor, parents: pd.DataFrame, features, lesion_thr: float | None) -> dict:
    """Reconstruction of real slices: PSNR/SSIM in the brain mask, domain distance, lesion Dice."""
    recon = editor.reconstruct(images, parents)
    mask = measures.brain_mask(images)
    out = {
        "psnr": axioms.mean_se(measures.psnr(images, recon, mask)),
        "ssim": axioms.mean_se(measures.ssim(images, recon, mask)),
        "l1": axioms.mean_se(measures.l1_255(images, recon, mask)),
        "domain": axioms.mean_se(features.distance(images, recon).double().numpy()),
        "n": len(images),
    }
    if lesion_thr is not None:
        out["lesion_dice"] = axioms.mean_se(measures.dice(measures.lesion_map(images, lesion_thr), measures.lesion_map(recon, lesion_thr)))
    return out


def run_study(cfg: dict, network: str, classifier: str, slices_dir: str, out: str, out_dir: str,
              twins_dir: str | None = None, device: str | None = None) -> dict:
    """The counterfactual metrics of one model (see the module docstring); writes ``out`` and ``out_dir``."""
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.models.families import load_network
    from brainlatent.numerics import numerics_info, strict_float32

    start = time.perf_counter()
    cf, attrs = cfg["counterfactual"], cfg["attributes"]
    dev = _device(device)
    strict_float32()
    G = load_network(network, dev).eval()
    features = PerceptualFeatures.from_file(classifier, dev)
    images, manifest = load_slices(slices_dir)
    manifest = manifest.reset_index(drop=True)
    manifest["slice_position"] = slice_positions(manifest)
    test_rows = np.flatnonzero(manifest["split"].to_numpy() == "test")
    if test_rows.size < 2:
        raise BrainlatentError(f"{slices_dir}: the test split has {test_rows.size} slices; the counterfactual metrics need at least 2")
    model = Path(network).parent.name
    seed = derive_seed(cfg["seed"], "counterfactual", model)
    rng = np.random.default_rng(seed)
    editor = build_editor(G, cfg, features, seed)

    test_images = _images(images, test_rows)
    real_error = axioms.real_test_error(features, test_images, manifest.iloc[test_rows], attrs)

    twins = None
    if twins_dir:
        timages, tman = load_slices(twins_dir)
        tman = tman.reset_index(drop=True)
        src_lesions = Path(twins_dir) / "source_lesions.npy"
        twins = {"images": timages, "manifest": tman,
                 "source_lesions": np.load(src_lesions, mmap_mode="r") if src_lesions.exists() else None}
        missing = sorted({"twin", "subject", "source_index", "intervention", "label", "mode"} - set(tman.columns))
        if missing:
            raise BrainlatentError(f"{twins_dir}/manifest.parquet: columns {missing} missing; expected the output of brainlatent twins")
        bad = ~tman["source_index"].between(0, len(manifest) - 1)
        if bad.any():
            raise BrainlatentError(f"{twins_dir}: source_index out of range for twins {tman.loc[bad, 'twin'].head(3).tolist()}")
    lesion = _lesion_threshold(cf, twins, images, twins["manifest"]["source_index"].to_numpy() if twins else np.zeros(0, int))
    thr = lesion["value"]

    # --- reconstruction, composition and commutativity on a seeded set of real test slices
    pick = test_rows[_spread_choice(manifest["subject"].to_numpy()[test_rows], cf["num_slices"], rng)]
    x, pa = _images(images, pick), _parents(manifest.iloc[pick], attrs)
    result: dict = {"model": model, "family": getattr(G, "arch", "?"), "space": editor.space,
                    "real_test_error": real_error, "lesion_threshold": lesion}
    log.info("inversion quality on %d test slices", len(pick))
    result["inversion"] = inversion_quality(editor, x, pa, features, thr)
    log.info("composition (%d cycles)", cf["cycles"])
    comp = axioms.composition(editor, x, pa, cycles=cf["cycles"], oracle=features)
    comp.pop("l1_per_image")
    result["composition"] = comp
    specs = {a["name"]: a for a in attrs}
    by_attr = {i.attribute: i for i in from_config(cf["interventions"], attrs)}
    a_name, b_name = cf["commute"]
    if a_name in by_attr and b_name in by_attr:
        after_a, _ = apply(by_attr[a_name], pa, specs[a_name])
        after_b, _ = apply(by_attr[b_name], pa, specs[b_name])
        log.info("commutativity of %s and %s", by_attr[a_name].label, by_attr[b_name].label)
        result["commutativity"] = axioms.commutativity(editor, x, pa, after_a, after_b, a_name, b_name)
    else:
        result["commutativity"] = None
        log.warning("commutativity skipped: counterfactual.commute %s names an attribute without an intervention", cf["commute"])

    # --- per intervention: effectiveness, reversibility, realism (+ true error and minimality with twins)
    groups = []
    if twins is not None:
        tman = twins["manifest"]
        for name, mode, rows in _interventions_from_twins(tman):
            sel = rows[_spread_choice(tman.loc[rows, "subject"].to_numpy(), cf["max_per_intervention"], rng)]
            src_rows = tman.loc[sel, "source_index"].to_numpy()
            parents = _parents(manifest.iloc[src_rows], attrs)
            new = parents.copy()
            for a in attrs:
                if a["name"] in tman.columns:
                    new[a["name"]] = tman.loc[sel, a["name"]].to_numpy()
            label = str(tman.loc[rows[0], "label"])  # the twins stage names each intervention (edss=0, age+10...)
            groups.append({"label": label, "attribute": name, "mode": mode, "src": src_rows, "parents": parents,
                           "new": new, "twin": _images(twins["images"], sel),
                           "subjects": tman.loc[sel, "subject"].to_numpy()})
    else:
        test = manifest.iloc[test_rows].reset_index(drop=True)
        for iv in from_config(cf["interventions"], attrs):
            parents_all = _parents(test, attrs)
            new_all, changed = apply(iv, parents_all, specs[iv.attribute])
            rows = np.flatnonzero(changed)
            if rows.size == 0:
                log.warning("intervention %s changes no test slice; skipped", iv.label)
                continue
            sel = rows[_spread_choice(test["subject"].to_numpy()[rows], cf["max_per_intervention"], rng)]
            groups.append({"label": iv.label, "attribute": iv.attribute, "mode": "single", "src": test_rows[sel],
                           "parents": parents_all.iloc[sel].reset_index(drop=True),
                           "new": new_all.iloc[sel].reset_index(drop=True), "twin": None,
                           "subjects": test["subject"].to_numpy()[sel]})

    out_dir_p = Path(out_dir)
    entries, pictures = {}, []
    with io.atomic_dir(out_dir_p) as tmp:
        for g in groups:
            t0 = time.perf_counter()
            src = _images(images, g["src"])
            edited = editor(src, g["parents"], g["new"])
            entry = {"label": g["label"], "attribute": g["attribute"], "mode": g["mode"], "n": len(src),
                     "n_subjects": len(set(g["subjects"]))}
            entry["effectiveness"] = axioms.effectiveness(features, src, edited, g["parents"], g["new"], attrs,
                                                          g["attribute"], real_error)
            k = min(cf["reversibility_slices"], len(src))
            entry["reversibility"] = axioms.reversibility(editor, src[:k], g["parents"].iloc[:k], g["new"].iloc[:k],
                                                          features, edited=edited[:k])
            entry["realism"] = axioms.realism(features, edited, test_images, unedited=src, seed=seed)
            columns = [("source", src), ("counterfactual", edited), ("Δ counterfactual − source", edited - src)]
            if g["twin"] is not None:
                twin = g["twin"]
                if thr is not None:
                    truth = ground_truth.true_counterfactual_error(edited, twin, src, g["subjects"],
                                                                   np.full(len(src), g["label"]), thr)
                    truth.pop("per_image")
                    entry["true_error"] = truth
                entry["minimality"] = ground_truth.minimality(edited, src, twin, tau=cf["change_threshold"])
                columns = [("source", src), ("counterfactual", edited), ("true twin", twin),
                           ("Δ counterfactual − source", edited - src), ("Δ twin − source", twin - src)]
            if cf["pictures"]:
                name = f"{g['attribute']}-{g['mode']}.png"
                example_grid([(t, v[: cf["pictures"]]) for t, v in columns], tmp / name)
                pictures.append({"file": name, "label": g["label"], "mode": g["mode"], "columns": [t for t, _ in columns]})
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            log.info("%s (%s): %d slices of %d subjects in %.1f s", g["label"], g["mode"], entry["n"], entry["n_subjects"], entry["seconds"])
            entries[f"{g['attribute']}-{g['mode']}"] = entry
    result["interventions"] = entries
    result["pictures"] = pictures
    result["not_edited"] = dict(editor.not_edited)  # targets without a hyperplane: those rows were left as reconstructions
    result["not_held"] = sorted(getattr(editor.directions, "unheld", set()) or [])
    result["settings"] = {"counterfactual": cf, "numerics": numerics_info(dev, torch.float32), "seed": int(seed),
                          "projections": editor.projected, "seconds": round(time.perf_counter() - start, 1)}
    io.write_json(out, result)
    log.info("counterfactual metrics of %s written to %s (%d projections, %.0f s)", model, out, editor.projected,
             time.perf_counter() - start)
    return result


# ---------------------------------------------------------------------------------------- one scan
def slice_geometry(cfg: dict) -> tuple[float, float]:
    """``(pixel mm, slice thickness mm)`` of the 2D slices: the preprocessed field of view padded to a square."""
    fov = cfg["preprocess"]["field_of_view_mm"]
    return float(max(fov[0], fov[1])) / cfg["slices"]["resolution"], float(cfg["preprocess"]["spacing_mm"][2])


def write_slice_nifti(path: Path, image: np.ndarray, pixel_mm: float, thickness_mm: float) -> None:
    import nibabel as nib

    arr = np.ascontiguousarray(image.astype(np.float32).T[:, ::-1, None])  # x = columns, y = rows upwards
    img = nib.Nifti1Image(arr, np.diag([pixel_mm, pixel_mm, thickness_mm, 1.0]))
    img.header.set_xyzt_units("mm")
    with io.atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def run_scan(cfg: dict, network: str, classifier: str, slices_dir: str, scan: str, changes: str, out_dir: str,
             device: str | None = None) -> dict:
    """Counterfactuals of every dataset slice of ``scan`` (see the module docstring)."""
    from brainlatent.images import save_png, to_uint8
    from brainlatent.metrics.features import PerceptualFeatures
    from brainlatent.models.families import load_network
    from brainlatent.numerics import strict_float32

    attrs = cfg["attributes"]
    specs = {a["name"]: a for a in attrs}
    ivs: list[Intervention] = parse_set(changes, attrs)
    images, manifest = load_slices(slices_dir)
    manifest = manifest.reset_index(drop=True)
    manifest["slice_position"] = slice_positions(manifest)
    rows = np.flatnonzero(manifest["scan"].astype(str).to_numpy() == str(scan))
    if rows.size == 0:
        known = manifest.loc[manifest["split"] == "test", "scan"].drop_duplicates().head(5).tolist()
        raise BrainlatentError(f"--scan {scan!r}: no slice of that scan in {slices_dir}; test scans include {known}")
    split = str(manifest.loc[rows[0], "split"])
    if split != "test":
        log.warning("scan %s is in the %s split: the generator and the classifier saw it in training", scan, split)
    dev = _device(device)
    strict_float32()
    G = load_network(network, dev).eval()
    features = PerceptualFeatures.from_file(classifier, dev)
    seed = derive_seed(cfg["seed"], "counterfactual", Path(network).parent.name)
    editor = build_editor(G, cfg, features, seed)
    parents = _parents(manifest.iloc[rows], attrs)
    new = parents.copy()
    for iv in ivs:
        new[iv.attribute] = new_values(iv, parents, specs[iv.attribute]).to_numpy()
    x = _images(images, rows)
    edited = editor(x, parents, new)
    before = {k: v.numpy() for k, v in features.predict_proba(x).items()}
    after = {k: v.numpy() for k, v in features.predict_proba(edited).items()}
    pixel, thick = slice_geometry(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, per_slice = [], []
    diff_all = (edited - x)
    scale = float(diff_all.abs().max()) or 1.0
    for j, r in enumerate(rows):
        stem = f"{scan}_z{int(manifest.loc[r, 'slice'])}"
        for kind, img in (("original", x[j, 0].numpy()), ("counterfactual", edited[j, 0].numpy()), ("difference", diff_all[j, 0].numpy())):
            png = out / f"{stem}_{kind}.png"
            save_png(_signed_rgb(img, scale) if kind == "difference" else to_uint8(img[None, None])[0, 0], png)
            write_slice_nifti(out / f"{stem}_{kind}.nii.gz", img, pixel, thick)
            files += [png.name, f"{stem}_{kind}.nii.gz"]
        per_slice.append({
            "slice": int(manifest.loc[r, "slice"]),
            "before": {k: v[j].round(4).tolist() for k, v in before.items()},
            "after": {k: v[j].round(4).tolist() for k, v in after.items()},
        })
    summary = {"scan": scan, "split": split, "set": [i.label for i in ivs], "model": Path(network).parent.name,
               "space": editor.space, "parents": parents.drop(columns="slice_position").iloc[0].to_dict(),
               "new_parents": new.drop(columns="slice_position").iloc[0].to_dict(), "difference_scale": scale,
               "pixel_mm": pixel, "slice_thickness_mm": thick, "slices": per_slice, "files": files}
    io.write_json(out / "counterfactual.json", summary)
    print(f"wrote {len(rows)} counterfactual slice(s) of {scan} ({', '.join(i.label for i in ivs)}) to {out}")
    return summary


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``brainlatent counterfactual``."""
    parser.add_argument("--config", required=True, help="study config: a YAML path or an inline JSON string")
    parser.add_argument("--network", required=True, help="a trained generator (network.pt)")
    parser.add_argument("--classifier", required=True, help="the study classifier (classifier/model.pt)")
    parser.add_argument("--slices", required=True, help="the slice dataset folder (slices/<R>)")
    parser.add_argument("--scan", help="one scan id: write its counterfactual slices (with --set and --out-dir)")
    parser.add_argument("--set", dest="changes", help="interventions for --scan, e.g. 'edss=0' or 'age=+10,sex=other'")
    parser.add_argument("--twins", help="synthetic twins' slice folder (twins/slices/<R>): adds the true counterfactual error")
    parser.add_argument("--out", help="metrics JSON (study mode)")
    parser.add_argument("--out-dir", required=True, help="pictures (study mode) or the scan's files (--scan)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def run(args: argparse.Namespace) -> None:
    """Entry point of ``brainlatent counterfactual``."""
    cfg = load_stage_config(args.config, "counterfactual")
    if args.scan is not None:
        if not args.changes:
            raise BrainlatentError("--scan needs --set, e.g. --set edss=0")
        run_scan(cfg, args.network, args.classifier, args.slices, args.scan, args.changes, args.out_dir, args.device)
        return
    if args.changes:
        raise BrainlatentError("--set applies to one scan; give --scan too (the study mode takes counterfactual.interventions)")
    if not args.out:
        raise BrainlatentError("the study mode needs --out (metrics JSON); or give --scan and --set for one scan")
    run_study(cfg, args.network, args.classifier, args.slices, args.out, args.out_dir, args.twins, args.device)
