"""The report's "Counterfactuals" section: inversion quality, the axiomatic tests, the true error, pictures.

Built from ``counterfactual/<model>/metrics.json`` (``brainlatent counterfactual``); shown when the
study has ``counterfactual.enabled`` or any such file exists.
"""

from __future__ import annotations

from brainlatent.report.primitives import L, esc, figure, lookup, not_run, num, table

MEASURES = (("l1", "L1 (0–255)", ".2f"), ("ssim", "SSIM", ".3f"), ("lesion_error", "lesion-load error (px)", ".1f"))


def _models(st) -> list[str]:
    return [f"{a}-z{z}" for a, z in st.models() if st.exists(f"counterfactual/{a}-z{z}/metrics.json")]


def applies(st) -> bool:
    return bool((st.cfg.get("counterfactual") or {}).get("enabled")) or bool(_models(st))


def _ms(doc: dict, rel: str, key: str, fmt: str) -> str:
    """``mean ± SE`` of a mean_se entry at ``key``."""
    mean = num(lookup(doc, f"{key}.mean"), rel, f"{key}.mean", fmt)
    se = lookup(doc, f"{key}.se")
    return mean if se is None else f"{mean} ± {num(se, rel, f'{key}.se', fmt)}"


def _verdict(doc: dict, key: str) -> str:
    v = lookup(doc, key) or {}
    if v.get("better"):
        return ' <span class="good">better</span>'
    if v.get("worse"):
        return ' <span class="bad">worse</span>'
    return ' <span class="na">no difference</span>' if v else ""


def _inversion_table(st, models: list[str]) -> str:
    head = [[L("model"), L("space"), L("PSNR (dB)"), L("SSIM"), L("L1 (0–255)"), L("domain distance"), L("lesion Dice")]]
    rows = []
    for m in models:
        rel = f"counterfactual/{m}/metrics.json"
        d = st.json(rel)
        rows.append([L(m), L(d.get("space", "?")), _ms(d, rel, "inversion.psnr", ".1f"), _ms(d, rel, "inversion.ssim", ".3f"),
                     _ms(d, rel, "inversion.l1", ".2f"), _ms(d, rel, "inversion.domain", ".3f"),
                     _ms(d, rel, "inversion.lesion_dice", ".2f") if lookup(d, "inversion.lesion_dice") else L("—")])
    return table("table-cf-inversion", head, rows, "Reconstruction of held-out real test slices (null edit), inside the brain mask")


def _axiom_table(st, m: str) -> str:
    rel = f"counterfactual/{m}/metrics.json"
    d = st.json(rel)
    head = [[L("intervention"), L("mode"), L("n (subjects)"), L("target reached (unedited)"), L("others kept"),
             L("reversibility L1"), L("KID edited (unedited)"), L("minimality: change outside twin region")]]
    rows = []
    for key, e in (d.get("interventions") or {}).items():
        base = f"interventions.{key}"
        others = (e.get("effectiveness") or {}).get("others") or {}
        moved = [n for n, o in others.items() if o.get("kept") is False]
        causal = [n for n, o in others.items() if o.get("changed_by_intervention")]
        kept = "all" if not moved else "moved: " + ", ".join(moved)
        if causal:
            kept += " (changed with it: " + ", ".join(causal) + ")"
        rows.append([
            L(e.get("label", key)), L(e.get("mode", "")), L(f"{e.get('n')} ({e.get('n_subjects')})"),
            f"{_ms(d, rel, f'{base}.effectiveness.target.accuracy', '.2f')} ({_ms(d, rel, f'{base}.effectiveness.target.unedited_accuracy', '.2f')})",
            L(kept),
            _ms(d, rel, f"{base}.reversibility.l1", ".2f"),
            f"{num(lookup(d, f'{base}.realism.edited.kid'), rel, f'{base}.realism.edited.kid', '.4f')} "
            f"({num(lookup(d, f'{base}.realism.unedited.kid'), rel, f'{base}.realism.unedited.kid', '.4f')})",
            _ms(d, rel, f"{base}.minimality.outside_share", ".2f") if "minimality" in e else L("—"),
        ])
    comp = d.get("composition") or {}
    last = str(comp.get("cycles", 10))
    text = (f"<p>Composition (null edit) L1: {_ms(d, rel, 'composition.l1.1', '.2f')} after 1 cycle, "
            f"{_ms(d, rel, f'composition.l1.{last}', '.2f')} after {esc(last)}; domain distance "
            f"{_ms(d, rel, 'composition.domain.1', '.3f')} → {_ms(d, rel, f'composition.domain.{last}', '.3f')}. ")
    if d.get("commutativity"):
        c = d["commutativity"]
        text += f"Commutativity of {esc(c['a'])} and {esc(c['b'])}: L1 {_ms(d, rel, 'commutativity.l1', '.2f')}."
    return table(f"table-cf-axioms-{m}", head, rows, f"{esc(m)}: axiomatic tests per intervention (the classifier as pseudo-oracle)") + text + "</p>"


def _truth_table(st, m: str) -> str:
    rel = f"counterfactual/{m}/metrics.json"
    d = st.json(rel)
    head = [[L("intervention"), L("mode"), L("measure"), L("editor"), L("unedited slice"), L("population-average change"),
             L("editor vs unedited"), L("editor vs population")]]
    rows = []
    for key, e in (d.get("interventions") or {}).items():
        if "true_error" not in e:
            continue
        base = f"interventions.{key}.true_error"
        for mk, label, fmt in MEASURES:
            rows.append([L(e.get("label", key)), L(e.get("mode", "")), L(label),
                         _ms(d, rel, f"{base}.editor.{mk}", fmt), _ms(d, rel, f"{base}.unedited.{mk}", fmt),
                         _ms(d, rel, f"{base}.population.{mk}", fmt),
                         num(lookup(d, f"{base}.vs_unedited.{mk}.mean"), rel, f"{base}.vs_unedited.{mk}.mean", fmt) + _verdict(d, f"{base}.vs_unedited.{mk}"),
                         num(lookup(d, f"{base}.vs_population.{mk}.mean"), rel, f"{base}.vs_population.{mk}.mean", fmt) + _verdict(d, f"{base}.vs_population.{mk}")])
    if not rows:
        return ""
    return table(f"table-cf-truth-{m}", head, rows,
                 f"{esc(m)}: true counterfactual error against the synthetic twins (inside the brain). Paired per subject; "
                 "'better'/'worse' when the 95 % interval of the difference excludes 0")


def build(st, generated: str = "") -> str:
    models = _models(st)
    intro = ("<p>Each real test slice is projected into the generator's latent space, edited (unconditional families: "
             "along the attribute's SVM normal in the latent space, orthogonalised against the other attributes, up to the "
             "target class's typical margin; conditional families: the label y changed with z kept) and re-rendered. The "
             "axiomatic tests (Monteiro et al., ICLR 2023) use the study classifier as pseudo-oracle. With synthetic twins, "
             "the edited slice is also compared with the true counterfactual: the same subject re-rendered with only that "
             "attribute changed.</p>")
    if not models:
        return intro + not_run("counterfactuals", "no counterfactual/<model>/metrics.json yet")
    parts = [intro, _inversion_table(st, models)]
    for m in models:
        d = st.json(f"counterfactual/{m}/metrics.json")
        lt = d.get("lesion_threshold") or {}
        parts.append(f"<h3>{esc(m)}</h3>")
        parts.append(_axiom_table(st, m))
        if d.get("not_edited"):
            parts.append("<p class=\"warn\">Not edited (no SVM hyperplane for the target class among the generated samples; "
                         "these slices were left as reconstructions): "
                         + esc(", ".join(f"{k} ({v} slices)" for k, v in d["not_edited"].items())) + ".</p>")
        if d.get("not_held"):
            parts.append("<p>Classes that could not be held fixed by orthogonalisation (no hyperplane): "
                         + esc(", ".join(d["not_held"])) + ".</p>")
        parts.append(_truth_table(st, m))
        if lt.get("value") is not None:
            rel = f"counterfactual/{m}/metrics.json"
            parts.append(f"<p>Lesions: brain pixels above {num(lt['value'], rel, 'lesion_threshold.value', '.2f')} "
                         f"({esc(lt.get('source', ''))}; Dice {num(lt.get('dice'), rel, 'lesion_threshold.dice', '.3f')}).</p>")
        for pic in d.get("pictures") or []:
            data = st.bytes(f"counterfactual/{m}/pictures/{pic['file']}")
            if data:
                parts.append(figure(data, f"{esc(m)}, {esc(pic['label'])} ({esc(pic['mode'])}): columns "
                                    + esc(", ".join(pic["columns"])) + "; differences in blue (darker) to red (brighter).",
                                    f"counterfactual examples {m} {pic['label']}"))
    return "".join(parts)
