"""The study report: one self-contained HTML page per study (``brainlatent report``).

:func:`build_report` writes ``results/<study>/report/index.html``; :mod:`brainlatent.report.figures`
draws its pictures. Imported lazily by the CLI, so importing this package is cheap.
"""

from __future__ import annotations

__all__ = ["build_report", "render_report"]


def __getattr__(name: str):
    if name in __all__:
        from brainlatent.report import build

        return getattr(build, name)
    raise AttributeError(name)
