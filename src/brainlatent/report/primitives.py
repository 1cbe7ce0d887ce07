"""HTML primitives of every page the project writes (study report, batch comparison).

Numbers are printed through :func:`num` with their provenance (``data-source``, ``data-key``,
``data-format``: ``format(source value, data-format)`` is exactly the printed text); tables through
:func:`table`; figures are inline base64 PNG. Text is escaped with :func:`esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainlatent.report import figures

# --------------------------------------------------------------------------------------------
# Numbers with their source


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(float(value))


def auto_format(value: Any) -> str:
    """A format spec giving about four significant digits (fixed point; scientific if tiny or huge).

    Values below 1e-9 in magnitude are floating-point zeros (e.g. an entropy of a perfectly
    separated attribute) and print as ``0.000``.

    Example:
        >>> [auto_format(v) for v in (0.01234, 3.5, 1234.5, 2e-6, 4e-17)]
        ['.5f', '.3f', '.0f', '.3e', '.3f']
    """
    if not _finite(value) or abs(float(value)) < 1e-9:
        return ".3f"
    mag = math.floor(math.log10(abs(float(value))))
    if mag >= 6 or mag < -3:
        return ".3e"
    return f".{max(0, 3 - mag)}f"


def format_value(value: Any, fmt: str) -> str:
    """``format(value, fmt)``; ``d`` accepts integral floats (CSV columns read as float)."""
    if fmt == "d":
        return format(int(round(float(value))), "d")
    return format(float(value), fmt)


def num(value: Any, source: str, key: str, fmt: str | None = None) -> str:
    """A number as ``<span class="num" data-source data-key data-format>``; ``n/a`` when missing/NaN."""
    attrs = f'data-source="{_attr(source)}" data-key="{_attr(key)}"'
    if not _finite(value):
        return f'<span class="na" {attrs}>n/a</span>'
    fmt = fmt or auto_format(value)
    return f'<span class="num" {attrs} data-format="{_attr(fmt)}">{format_value(value, fmt)}</span>'


def pm(doc: dict | None, source: str, mean_key: str, std_key: str, fmt: str | None = None) -> str:
    """``mean ± std`` from one JSON document (both formatted like the mean)."""
    mean, std = lookup(doc, mean_key), lookup(doc, std_key)
    fmt = fmt or auto_format(mean)
    return f'{num(mean, source, mean_key, fmt)} <span class="pm">±</span> {num(std, source, std_key, fmt)}'


def lookup(doc: Any, key: str) -> Any:
    """Value at a dot path (``best.val.heads.sex.accuracy``); ``None`` if any part is missing."""
    node = doc
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _attr(text: str) -> str:
    return html.escape(str(text), quote=True)


def esc(text: Any) -> str:
    return html.escape(str(text), quote=False)


# --------------------------------------------------------------------------------------------
# HTML pieces


@dataclass
class Cell:
    """One table cell: ``html`` is already escaped; ``label`` cells hold names, not numbers."""

    html: str
    label: bool = False
    colspan: int = 1
    rowspan: int = 1
    cls: str = ""

    def render(self, tag: str = "td") -> str:
        classes = " ".join(c for c in ("label" if self.label else "", self.cls) if c)
        attrs = f' class="{classes}"' if classes else ""
        if self.colspan > 1:
            attrs += f' colspan="{self.colspan}"'
        if self.rowspan > 1:
            attrs += f' rowspan="{self.rowspan}"'
        return f"<{tag}{attrs}>{self.html}</{tag}>"


def L(text: Any, **kwargs: Any) -> Cell:  # noqa: N802 - short constructor used in every table
    """A label cell with escaped text."""
    return Cell(esc(text), label=True, **kwargs)


def H(html_text: str, **kwargs: Any) -> Cell:  # noqa: N802
    """A label cell with HTML (already escaped) content."""
    return Cell(html_text, label=True, **kwargs)


def missing(text: str = "—") -> Cell:
    return Cell(esc(text), label=True, cls="missing")


Row = Sequence[Cell | str]


def table(
    table_id: str, head: Sequence[Row], rows: Sequence[Row], caption: str = "", row_classes: Sequence[str] | None = None
) -> str:
    """A ``<table class="data" id=...>``; plain strings in rows are number cells."""
    def cell(c: Cell | str) -> Cell:
        return c if isinstance(c, Cell) else Cell(c)

    out = [f'<div class="scroll"><table class="data" id="{_attr(table_id)}">']
    if caption:
        out.append(f"<caption>{caption}</caption>")
    out.append("<thead>" + "".join("<tr>" + "".join(cell(c).render("th") for c in r) + "</tr>" for r in head) + "</thead>")
    body = []
    for i, r in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        body.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cell(c).render() for c in r) + "</tr>")
    out.append("<tbody>" + "".join(body) + "</tbody></table></div>")
    return "".join(out)


def img(data: bytes, alt: str, css: str = "", width: int | None = None) -> str:
    """An inline ``<img>`` (base64 data URI)."""
    style = f' style="width:{width}px"' if width else ""
    cls = f' class="{css}"' if css else ""
    return f'<img{cls}{style} alt="{_attr(alt)}" src="{figures.data_uri(data, figures.mime_of(data))}">'


def figure(data: bytes, caption: str, alt: str, fig_id: str = "", css: str = "", width: int | None = None) -> str:
    ident = f' id="{_attr(fig_id)}"' if fig_id else ""
    return f"<figure{ident}>{img(data, alt, css, width)}<figcaption>{caption}</figcaption></figure>"


def not_run(what: str, why: str = "") -> str:
    return f'<p class="not-run"><strong>Not run:</strong> {esc(what)}{(" — " + esc(why)) if why else ""}</p>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{_attr(sid)}"><h2>{esc(title)}</h2>{body}</section>'


