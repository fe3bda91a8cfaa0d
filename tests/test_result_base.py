"""The shared base of result objects: one-line text, notebook HTML, table head, saving the figure."""
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from workbench import Result


@dataclass(repr=False)
class _Toy(Result):
    n: int

    def to_frame(self):
        return pd.DataFrame({"i": range(self.n), "x": [0.123456789] * self.n})

    def figure(self):
        return go.Figure(go.Bar(x=list(range(self.n)), y=[1] * self.n))


@dataclass
class _Custom(Result):
    def to_frame(self):
        return pd.DataFrame({"a": [1]})

    def figure(self):
        return go.Figure()

    def __repr__(self):
        return "custom <line>"

    def html_table(self):
        return None


def test_repr_html_and_table_head():
    r = _Toy(20)
    assert repr(r) == "_Toy(20 rows)"
    h = r._repr_html_()
    assert "<pre>_Toy(20 rows)</pre>" in h and "8 more rows" in h and "0.1235" in h
    assert h.count("<tr>") == r.html_rows and "<td>11</td>" in h and "<td>12</td>" not in h  # the first rows only


def test_custom_repr_is_escaped_and_table_can_be_hidden():
    h = _Custom()._repr_html_()
    assert h == "<pre>custom &lt;line&gt;</pre>"


def test_save_writes_the_figure(tmp_path):
    out = _Toy(3).save(tmp_path / "toy.html")
    assert (tmp_path / "toy.html").exists() and str(out).endswith("toy.html")
    assert "plotly" in (tmp_path / "toy.html").read_text().lower()
