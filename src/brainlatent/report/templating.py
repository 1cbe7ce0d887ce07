"""Jinja2 templates of the pages: the page shell and the sections written as prose.

Templates live in ``report/templates`` (``page.html.j2``, ``sections/<name>.html.j2``) and are
autoescaped: a context value that is already HTML (a table, a figure, a number with its provenance
from :mod:`brainlatent.report.primitives`) is passed as :class:`markupsafe.Markup`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

from markupsafe import Markup

from brainlatent import __version__


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainlatent.report", "templates"),
        autoescape=jinja2.select_autoescape(["j2", "html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a missing context value is an error, never an empty string
        keep_trailing_newline=True,
    )
    return env


def render(template: str, **context: Any) -> Markup:
    """Render ``templates/<template>`` with ``context`` (HTML values as :class:`Markup`)."""
    return Markup(environment().get_template(template).render(**context))


def stylesheet() -> str:
    return resources.files("brainlatent.report").joinpath("templates", "style.css").read_text(encoding="utf-8")


def page(title: str, heading: Markup | str, body: Markup | str, meta: list[str], toc: list[tuple[str, str]] | None = None) -> str:
    """A whole self-contained page (the study report, the batch comparison) in the shared shell."""
    return str(render("page.html.j2", title=title, heading=heading, body=Markup(body) if not isinstance(body, Markup) else body,
                      meta=meta, toc=toc or [], css=Markup(stylesheet()), version=__version__))
