"""Report sections of the conditional and the growing families: a Jinja2 template plus a context each.

Registered in :mod:`brainlatent.report.build` with ``register_section``; each is shown only when the
study trains one of its families.
"""

from __future__ import annotations

from markupsafe import Markup

from brainlatent.models.families import families
from brainlatent.report import figures
from brainlatent.report.primitives import L, figure, lookup, missing, not_run, num, table

CONDITIONAL = tuple(name for name, f in families().items() if f.conditional)
GROWING = tuple(name for name, f in families().items() if f.extra.get("growing"))

#: columns of the attribute-control table: (result key, header, format)
CONTROL_COLUMNS = (
    ("accuracy", "accuracy on generated", ".3f"), ("real_accuracy", "real-test accuracy (ceiling)", ".3f"),
    ("mae", "MAE on generated", ".3g"), ("real_mae", "real-test MAE (ceiling)", ".3g"),
    ("vs_real", "generated / real", ".2f"), ("swap_single_hit", "swap hit, single", ".2f"),
    ("swap_consistent_hit", "swap hit, consistent", ".2f"), ("identity_kept", "identity kept", ".2f"),
    ("monotonic_rho", "monotonicity ρ", ".2f"),
)


def _cell(doc: dict, rel: str, key: str, fmt: str):
    value = lookup(doc, key)
    return missing() if value is None else num(value, rel, key, fmt)


def conditional_context(st) -> dict:
    """Per conditional model: the attribute-control table (with the real-data ceiling) and the editing pictures."""
    models = []
    for arch, z in st.models():
        if arch not in CONDITIONAL:
            continue
        name = f"{arch}-z{z}"
        rel = f"eval/{name}/attribute_control.json"
        doc = st.json(rel)
        entry = {"name": name, "label": families()[arch].label, "missing": "", "notes": [], "figures": []}
        if doc is None:
            entry["missing"] = Markup(not_run(f"attribute control of {name}", f"no {rel}"))
        else:
            rows = [[L(attr), *[_cell(doc, rel, f"results.{attr}.{key}", fmt) for key, _, fmt in CONTROL_COLUMNS]]
                    for attr in (doc.get("results") or {})]
            entry["table"] = Markup(table(f"table-control-{name}", [[L("attribute"), *[L(h) for _, h, _ in CONTROL_COLUMNS]]], rows,
                                          "Attribute control, scored by the study classifier on generated slices"))
            entry["notes"] = [str(n) for n in doc.get("notes") or []]
        folder = st.path(f"eval/{name}/attribute_control")
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            caption = {"corners.png": "Four-corner grid of two attributes, z fixed.", "zpath.png": "z path with y fixed."}.get(
                path.name, f"{path.stem.replace('-', ' ')} (z fixed, one attribute changed per column).")
            entry["figures"].append(Markup(figure(path.read_bytes(), caption, f"{path.stem} {name}", css="pixel")))
        models.append(entry)
    return {"models": models}


def growing_context(st) -> dict:
    """The variability profiles of the growing models side by side, and their MIG/SAP/DCI."""
    rows, series, align_rows, notes, groups = [], {}, [], [], "—"
    for arch, z in st.models():
        if arch not in GROWING:
            continue
        name = f"{arch}-z{z}"
        rel = f"eval/{name}/variability_profile.json"
        doc = st.json(rel)
        if doc is None:
            notes.append(f"{name}: variability profile not run (no {rel})")
        else:
            res = doc.get("results") or {}
            groups = ", ".join(res.get("groups") or []) or groups
            rows.append([L(families()[arch].label), L(name),
                         *[num(v, rel, f"results.per_dimension.{i}", ".4f") for i, v in enumerate(res.get("per_dimension") or [])],
                         _cell(doc, rel, "results.spearman_per_dimension", ".2f"), _cell(doc, rel, "results.spearman_per_group", ".2f")])
            series[name] = res.get("per_dimension") or []
        arel = f"eval/{name}/axis_alignment.json"
        adoc = st.json(arel)
        if adoc is not None:
            align_rows.append([L(name), *[_cell(adoc, arel, f"results.{k}", ".3f") for k in
                                          ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")]])
    n_groups = max((len(v) for v in series.values()), default=0)
    profile_table = table("table-variability-profile", [[L("model"), L("id"), *[L(f"V/|g|, group {i + 1}") for i in range(n_groups)],
                                                         L("ρ per coordinate"), L("ρ per group")]], rows,
                          "Group variability profile per coordinate (inside the brain), and its Spearman ρ over groups") if rows else not_run("variability profiles")
    fig = ""
    if series and n_groups:
        png = figures.line_plot(list(range(1, n_groups + 1)), series, "coordinate group (1 = the first 8 coordinates)",
                                "std per coordinate", "Variability profile per coordinate")
        fig = figure(png, "Per-coordinate variability of each growing model over the coordinate groups.", "variability profiles")
    alignment = table("table-axis-alignment", [[L("model"), L("MIG"), L("SAP"), L("DCI disentanglement"), L("DCI completeness"),
                                                L("DCI informativeness")]], align_rows,
                      "Axis alignment of the latent coordinates with the classifier's labels") if align_rows else not_run("axis alignment")
    walks = []
    for arch, z in st.models():
        folder = st.path(f"eval/{arch}-z{z}/variability_profile")
        if arch in GROWING and folder.is_dir():
            for path in sorted(folder.glob("group_*.png")) + sorted(folder.glob("style_transfer.png")):
                caption = (f"{arch}-z{z}: walk varying only coordinates {path.stem[6:]}" if path.stem.startswith("group_")
                           else f"{arch}-z{z}: style transfer, one group at a time from the source (row 1) to the reference (row 2)")
                walks.append(Markup(figure(path.read_bytes(), caption + ".", f"{path.stem} {arch}-z{z}", css="pixel")))
    return {"groups": groups, "profile_table": Markup(profile_table), "profile_figure": Markup(fig),
            "alignment_table": Markup(alignment), "notes": notes, "walks": walks}
