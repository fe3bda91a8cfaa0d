"""``lab.frontier``: the quality/cost Pareto figure over methods; each point opens its internals panel.

x: "bytes" (measured physical bytes of weights + KV cache at the suite's prefix length: what the method
holds, simulated or real, the saving kind in the hover and the marker) or "ms" (decode ms per token measured
next to the baseline). y: "perplexity", "kl" (lower is better), "accuracy" (facts) or "passkey" (higher is
better). A point is on the frontier when no other point (baseline included) is at least as good on both axes
and better on one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.errors import InputError
from workbench.result import Result

from .compare import EffectComparison, compare_effects
from .report import EffectReport

XS = ("bytes", "ms")
YS = {"perplexity": "min", "kl": "min", "accuracy": "max", "passkey": "max"}
SYMBOLS = {"real": "circle", "simulated": "diamond-open", "mixed": "square", "baseline": "star"}


def _point(r: EffectReport, x: str, y: str, baseline: bool = False) -> dict:
    q, m = r.quality, r.measured
    if x == "bytes":
        xv = (m["baseline_weight_bytes"] + m["baseline_kv_bytes"]) if baseline else (m["weight_bytes"] + m["kv_bytes"])
        xv /= 2**20
    else:
        if not r.timing:
            raise InputError(f"{r.method}: no timing in this report (suite timing_repeats=0); use x='bytes'.")
        xv = r.timing["baseline_decode_ms" if baseline else "method_decode_ms"]
    key = {"perplexity": "perplexity", "kl": "kl", "accuracy": "fact_accuracy", "passkey": "passkey_accuracy"}[y]
    yv = (0.0 if y == "kl" else q[key + "_base"]) if baseline else q[key]
    return {"method": "baseline" if baseline else r.method, "family": "baseline" if baseline else r.family,
            "saving": "baseline" if baseline else r.saving, "x": float(xv), "y": float(yv)}


def pareto(df: pd.DataFrame, y_goal: str) -> np.ndarray:
    """(n,) bool: rows not dominated (x lower is better; y by ``y_goal`` "min" or "max")."""
    xs = df.x.to_numpy()
    ys = df.y.to_numpy() if y_goal == "min" else -df.y.to_numpy()
    keep = np.ones(len(df), dtype=bool)
    for i in range(len(df)):
        dom = (xs <= xs[i]) & (ys <= ys[i]) & ((xs < xs[i]) | (ys < ys[i]))
        keep[i] = not dom.any()
    return keep


@dataclass(repr=False)
class Frontier(Result):
    """Points (one per method plus the baseline), which are Pareto-optimal, and the reports behind them."""

    points: pd.DataFrame
    reports: dict
    x: str
    y: str

    def to_frame(self) -> pd.DataFrame:
        return self.points

    def summary(self) -> str:
        front = self.points[self.points.pareto].method.tolist()
        return f"Frontier({self.y} vs {self.x}, {len(self.points)} points; on the frontier: {', '.join(front)})"

    def figure(self, **_):
        """The static figure: every method, the baseline (star), the frontier line; marker = saving kind."""
        import plotly.graph_objects as go

        df = self.points
        fig = go.Figure()
        for saving, g in df.groupby("saving", sort=False):
            fig.add_scatter(x=g.x, y=g.y, mode="markers+text", text=g.method, textposition="top center",
                            name=saving if saving == "baseline" else f"saving: {saving}", customdata=g.method,
                            marker={"symbol": SYMBOLS.get(saving, "circle"), "size": 11},
                            hovertemplate="%{customdata}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>")
        f = df[df.pareto].sort_values("x")
        fig.add_scatter(x=f.x, y=f.y, mode="lines", line={"dash": "dash", "color": "#444"}, name="Pareto frontier",
                        hoverinfo="skip")
        xt = "MiB held (weights + KV, measured)" if self.x == "bytes" else "decode ms / token (measured)"
        yt = {"perplexity": "perplexity", "kl": "next-token KL (nats)", "accuracy": "fact accuracy",
              "passkey": "passkey accuracy"}[self.y]
        fig.update_layout(title=f"Quality vs cost: {yt} against {xt}", xaxis_title=xt, yaxis_title=yt,
                          template="plotly_white", height=520)
        return fig

    def widget(self, panel: str = "overview"):
        """The figure as a clickable ``FigureWidget``: clicking a method draws its internals ``panel`` in a second
        ``FigureWidget`` below, in place (a dropdown picks the panel). Returns an ipywidgets VBox with ``.figure``,
        ``.panel_figure``, ``.panel_dropdown``, ``.show(method, panel=None)`` and ``.current()`` (the method
        shown)."""
        import ipywidgets as widgets
        import plotly.graph_objects as go

        from .figures import replace_figure

        fig = go.FigureWidget(self.figure())
        panel_fig = go.FigureWidget()
        panel_fig.update_layout(height=420, template="plotly_white", title="click a method to see its internals")
        first = next(iter(self.reports.values()), None)
        panels = first.panels() if first is not None else []
        dd = widgets.Dropdown(options=panels, value=panel if panel in panels else (panels[0] if panels else None),
                              description="panel")
        state = {"method": None}

        def show(method: str, panel: str | None = None):
            if method not in self.reports:
                raise InputError(f"{method!r} has no internals report (the baseline is the reference).")
            state["method"] = method
            if panel is not None and panel != dd.value:
                dd.value = panel  # the observer redraws
                return
            replace_figure(panel_fig, self.reports[method].figure(dd.value))

        def on_click(trace, points, _state):
            if points.point_inds:
                m = trace.customdata[points.point_inds[0]]
                if m in self.reports:
                    show(m)

        for tr in fig.data:
            if tr.customdata is not None:
                tr.on_click(on_click)
        dd.observe(lambda ch: show(state["method"]) if state["method"] else None, names="value")
        box = widgets.VBox([fig, dd, panel_fig])
        box.figure, box.panel_figure, box.panel_dropdown, box.show = fig, panel_fig, dd, show
        box.current = lambda: state["method"]
        return box


def frontier(model, methods, x: str = "bytes", y: str = "perplexity", suite="quick", transcoders="auto",
             progress: bool = True) -> Frontier:
    """Run (or reuse) ``effects`` for every method and draw quality against cost.

    methods: methods as ``lab.effects`` takes them, ``EffectReport`` objects, or an ``EffectComparison`` (reused,
    nothing is rerun). x: "bytes" | "ms"; y: "perplexity" | "kl" | "accuracy" | "passkey".
    """
    if x not in XS:
        raise InputError(f"x must be one of {XS}, got {x!r}.")
    if y not in YS:
        raise InputError(f"y must be one of {tuple(YS)}, got {y!r}.")
    if isinstance(methods, EffectComparison):
        reports = dict(methods.reports)
    else:
        if isinstance(methods, (str, dict)) or not hasattr(methods, "__iter__"):
            methods = [methods]
        ready = {m.method: m for m in methods if isinstance(m, EffectReport)}
        todo = [m for m in methods if not isinstance(m, EffectReport)]
        reports = dict(ready)
        if todo:
            reports.update(compare_effects(model, todo, suite, with_parts=False, transcoders=transcoders,
                                           progress=progress).reports)
    if not reports:
        raise InputError("frontier needs at least one method.")
    first = next(iter(reports.values()))
    rows = [_point(first, x, y, baseline=True)] + [_point(r, x, y) for r in reports.values()]
    df = pd.DataFrame(rows)
    df["pareto"] = pareto(df, YS[y])
    return Frontier(df, reports, x, y)


__all__ = ["frontier", "Frontier", "pareto"]
