"""The one base of every result object: a figure, a table, a one-line summary and notebook reprs.

Subclasses are dataclasses declared with ``@dataclass(repr=False)`` (so the shared repr is kept)
and implement:

    figure(**options) -> plotly Figure     the result's main picture
    to_frame() -> pandas DataFrame         the numbers behind it, one row per item
    summary() -> str                       one line (default: the class name and the table size)

and get, for free: ``repr`` (the summary), ``_repr_html_`` (the summary and the head of the table in
a notebook; call ``.figure()`` for the picture), ``save(path)`` (the figure to .html/.png/.svg/.pdf, atomically) and
``show()``.
"""
from __future__ import annotations

import html

import pandas as pd


class Result:
    """Base class of results (see the module docstring)."""

    #: rows of ``to_frame()`` shown in the notebook repr
    html_rows: int = 12

    def figure(self, **options):
        raise NotImplementedError(f"{type(self).__name__} has no figure().")

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} has no to_frame().")

    def summary(self) -> str:
        try:
            n = len(self.to_frame())
        except NotImplementedError:
            return type(self).__name__
        return f"{type(self).__name__}({n} rows)"

    def __repr__(self) -> str:
        return self.summary()

    def save(self, path, **options):
        """Write ``figure(**options)`` to ``path`` (.html, .png, .svg or .pdf), atomically; returns the path."""
        from .figures import save_figure

        return save_figure(self.figure(**options), path)

    def show(self, **options) -> None:
        self.figure(**options).show()

    def _repr_html_(self) -> str:
        parts = [f"<b>{html.escape(self.summary())}</b>"]
        try:
            frame = self.to_frame()
        except NotImplementedError:
            frame = None
        if frame is not None and len(frame):
            more = f"<i>{len(frame) - self.html_rows} more rows: .to_frame()</i>" if len(frame) > self.html_rows else ""
            parts.append(frame.head(self.html_rows).to_html(index=False) + more)
        return "<br>".join(parts)
