"""The report's section for the mixture-prior families (seed 002): a Jinja2 template plus this context.

Registered in :mod:`brainlatent.report.build` with :func:`~brainlatent.report.build.register_section`;
shown only when the study trains a family of :data:`FAMILIES`.
"""

from __future__ import annotations

from markupsafe import Markup

from brainlatent.models.families import families
from brainlatent.report import figures
from brainlatent.report.primitives import L, figure, lookup, not_run, num, table

#: the families whose section this is
FAMILIES = tuple(name for name in families() if name.startswith("gmmgan"))
METHODS = (("gmm", "C (argmax responsibilities)"), ("kmeans", "K-means, classifier features"), ("kmeans_pixels", "K-means, pixel PCs"))


def _table(doc: dict, rel: str, name: str) -> str:
    factors = list((doc.get("results") or {}).get("nmi") or {})
    head = [[L("factor"), *[L(f"NMI, {label}") for _, label in METHODS], *[L(f"ARI, {label}") for _, label in METHODS]]]
    rows = [[L(f), *[num(lookup(doc, f"results.nmi.{f}.{m}"), rel, f"results.nmi.{f}.{m}", ".3f") for m, _ in METHODS],
             *[num(lookup(doc, f"results.ari.{f}.{m}"), rel, f"results.ari.{f}.{m}", ".3f") for m, _ in METHODS]] for f in factors]
    return table(f"table-mixture-{name}", head, rows, "Components of C versus every factor, beside K-means with the same K (real test slices)")


def _pi_figure(st, name: str) -> str:
    log = st.csv(f"gan/{name}/log.csv")
    if log is None or "kimg" not in log.columns:
        return ""
    series = {c: log[c].tolist() for c in log.columns if c.startswith("pi_") and c[3:].isdigit()}
    if not series:
        return ""
    png = figures.line_plot(log["kimg"].tolist(), series, "kimg", "mixture weight π", f"{name}: mixture weights during training")
    return figure(png, "Mixture weights π during training (running mean of C's responsibilities); one component taking "
                  "over is the collapse the trainer's guard stops.", f"mixture weights {name}")


def context(st) -> dict:
    """Per mixture-prior model: the NMI/ARI table, component shares, π, pictures, notes."""
    models = []
    for arch, z in st.models():
        if arch not in FAMILIES:
            continue
        name = f"{arch}-z{z}"
        rel = f"eval/{name}/mode_discovery.json"
        doc = st.json(rel)
        entry = {"name": name, "label": families()[arch].label, "k": "?", "missing": "", "figures": [], "notes": [],
                 "pi_figure": Markup(_pi_figure(st, name))}
        if doc is None:
            entry["missing"] = Markup(not_run(f"mode discovery of {name}", f"no {rel}"))
        else:
            res = doc.get("results") or {}
            entry.update(
                k=len(res.get("pi") or {}), table=Markup(_table(doc, rel, name)), discovered=doc.get("discovered"),
                shares=Markup(", ".join(num(v, rel, f"results.segment_share.{c}", ".2f") for c, v in (res.get("segment_share") or {}).items())),
                pi=Markup(", ".join(num(v, rel, f"results.pi.{c}", ".2f") for c, v in (res.get("pi") or {}).items())),
                notes=[str(n) for n in doc.get("notes") or []],  # escaped by the template
            )
        for picture, caption in (("components.png", "Samples per component (rows), the same noise in every row."),
                                 ("interp01.png", "Interpolation from component 0 to component 1."),
                                 ("blend3.png", "Blend of three components.")):
            data = st.bytes(f"eval/{name}/mode_discovery/{picture}")
            if data is not None:
                entry["figures"].append(Markup(figure(data, caption, f"{picture} {name}", css="pixel")))
        models.append(entry)
    return {"models": models}
