"""The one base of every result object: a figure, a table, a one-line text and a notebook repr.

Subclasses are dataclasses that implement:

    figure(**options) -> plotly Figure     the result's main picture
    to_frame() -> pandas DataFrame         the numbers behind it, one row per item
    __repr__() or summary() -> str         one line (declare ``@dataclass(repr=False)`` when you write
                                           ``summary()``, so the dataclass does not generate a repr)
    html_table() -> DataFrame | None       optional: the table the notebook shows (default ``to_frame()``)

and get, for free: ``_repr_html_`` (the one-line text and the head of the table in a notebook; call
``.figure()`` for the picture), ``save(path)`` (the figure to .html/.png/.svg/.pdf, atomically) and
``show()``.
"""
from __future__ import annotations

import html

import pandas as pd


class Result:
    """Base class of results (see the module docstring)."""

    #: rows of the table shown in the notebook repr
    html_rows: int = 12

    def figure(self, **options):
        raise NotImplementedError(f"{type(self).__name__} has no figure().")

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} has no to_frame().")

    def summary(self) -> str:
        """One line describing the result (default: the class name and the size of its table)."""
        return f"{type(self).__name__}({len(self.to_frame())} rows)"

    def __repr__(self) -> str:
        return self.summary()

    def html_table(self) -> pd.DataFrame | None:
        """The table shown under the one-line text in a notebook."""
        return self.to_frame()

    def save(self, path, **options):
        """Write ``figure(**options)`` to ``path`` (.html, .png, .svg or .pdf), atomically; returns the path."""
        from .figures import save_figure

        return save_figure(self.figure(**options), path)

    def show(self, **options) -> None:
        self.figure(**options).show()

    def _repr_html_(self) -> str:
        parts = [f"<pre>{html.escape(repr(self))}</pre>"]
        table = self.html_table()
        if table is not None and len(table):
            more = (f"<i>{len(table) - self.html_rows} more rows: .to_frame()</i>"
                    if len(table) > self.html_rows else "")
            parts.append(table.head(self.html_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}") + more)
        return "".join(parts)
