"""Plotly figure of an ``AttributionGraph``: nodes by token position (x) and layer (y), edges from
child to parent with width ∝ |contribution| (6 width classes) (red positive, blue negative).

y: embedding −0.5, head of layer l at l (drawn at its source token), feature of layer l at l + 0.5,
logit at n_layers + 0.5; error nodes sit just below and right of their parent. Nodes sharing a
cell are spread horizontally. Hover a node for its value, flow and error terms.
"""
from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

from workbench.errors import InputError
from workbench.figures import token_label

from .attribution_graph import Node

KIND_COLOURS = {"logit": "#2ca02c", "feature": "#ff7f0e", "head": "#1f77b4", "embed": "#9467bd", "error": "#b0b0b0"}
N_WIDTHS = 6  # edge width classes per sign
KIND_SYMBOLS = {"logit": "star", "feature": "circle", "head": "square", "embed": "diamond", "error": "x"}


def _layout_xy(nodes) -> dict:
    cells = defaultdict(list)
    for k, n in nodes.items():
        cells[(n.pos, n.layer)].append(k)
    xy = {}
    for (p, y), keys in cells.items():
        m = len(keys)
        for j, k in enumerate(sorted(keys, key=str)):
            xy[k] = (p + (j - (m - 1) / 2) * min(0.8 / max(m, 1), 0.2), y)
    return xy


def graph_figure(graph, show_errors="total", min_abs: float = 0.0, width: int = 1000, height: int = 700):
    """The graph as a plotly Figure (see the module docstring).

    show_errors: "total" (one grey node per expanded node: the sum of its error terms, each listed
    on hover), "all" (one node per error kind), or False. ``min_abs`` hides smaller edges.
    """
    if show_errors not in ("total", "all", False, True):
        raise InputError(f"show_errors must be 'total', 'all' or False, got {show_errors!r}.")
    show_errors = "all" if show_errors is True else show_errors
    nodes = {k: n for k, n in graph.nodes.items() if n.kind != "error"}
    edges = [(c, p, v) for c, p, v in graph.edges if c in nodes and abs(v) >= min_abs]
    used = {graph.target} | {c for c, _, _ in edges} | {p for _, p, _ in edges}
    nodes = {k: n for k, n in nodes.items() if k in used}
    xy = _layout_xy(nodes)
    if show_errors:  # error nodes beside their parent (down and to the right), not in the layout grid
        for parent, n in list(nodes.items()):
            if not n.expanded:
                continue
            items = ([("errors", sum(n.errors.values()), n.errors)] if show_errors == "total" else
                     [(k, v, {k: v}) for k, v in n.errors.items() if v != 0.0])
            for j, (kind, val, parts) in enumerate(items):
                key = ("error", parent, kind)
                node = Node(key, "error", n.layer - 0.3, n.pos, f"{kind} → {n.label}", val, n.rank, flow=val,
                            errors=dict(parts) if show_errors == "total" else {})
                nodes[key] = node
                x, y = xy[parent]
                xy[key] = (x + 0.25 + 0.12 * j, y - 0.3)
                if abs(val) >= min_abs:
                    edges.append((key, parent, val))
    vmax = max([abs(v) for _, _, v in edges] or [1.0]) or 1.0
    fig = go.Figure()
    # edges binned by width (N_WIDTHS per sign), one trace per bin: few traces, fast to build and draw
    bins: dict = defaultdict(lambda: ([], []))
    for c, p, v in edges:
        w = min(N_WIDTHS - 1, int(abs(v) / vmax * N_WIDTHS))
        xs, ys = bins[(v > 0, w)]
        (x0, y0), (x1, y1) = xy[c], xy[p]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    for (pos_sign, w), (xs, ys) in sorted(bins.items(), key=lambda kv: kv[0][1]):
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line=dict(width=0.7 + 7 * (w + 1) / N_WIDTHS,
                      color="rgba(214,39,40,0.55)" if pos_sign else "rgba(31,119,180,0.55)")))
    for kind in KIND_COLOURS:
        ks = [k for k, n in nodes.items() if n.kind == kind]
        if not ks:
            continue
        text = []
        for k in ks:
            n = nodes[k]
            tok = token_label(graph.str_tokens[n.pos]) if 0 <= n.pos < len(graph.str_tokens) else ""
            errs = "".join(f"<br>{e}: {v:+.3g}" for e, v in n.errors.items() if v)
            text.append(f"<b>{n.label}</b> '{tok}'<br>value {n.value:.4g}<br>flow {n.flow:+.4g}{errs}")
        size = [14 if k == graph.target else 10 for k in ks]
        fig.add_trace(go.Scatter(
            x=[xy[k][0] for k in ks], y=[xy[k][1] for k in ks], mode="markers", name=kind, text=text,
            customdata=[nodes[k].label for k in ks], hovertemplate="%{text}<extra></extra>",
            marker=dict(color=KIND_COLOURS[kind], symbol=KIND_SYMBOLS[kind], size=size,
                        line=dict(width=1, color="black"))))
    T = len(graph.str_tokens)
    step = max(1, -(-T // 64))
    t = graph.target_node
    fig.update_layout(
        template="plotly_white", width=width, height=height,
        title=f"Attribution graph of {t.label} ({t.value:.3g}; decomposed value {t.flow:.3g})",
        xaxis=dict(tickmode="array", tickvals=list(range(0, T, step)), range=[-0.6, T - 0.4],
                   ticktext=[f"{token_label(graph.str_tokens[i])} ({i})" for i in range(0, T, step)], tickangle=-60,
                   title="token"),
        yaxis=dict(title="layer (heads at l, transcoder features at l + 0.5)"),
        legend=dict(orientation="h", y=1.05, x=1, xanchor="right"))
    return fig


__all__ = ["graph_figure", "KIND_COLOURS"]
