"""Circuit explorer widget: one prompt, pick a position and a target (an active transcoder feature
or the top predicted logit), see the greedy attribution graph and the details of any node.

The prompt is captured once (``capture_prompt``); changing a control rebuilds the graph from the
cache (no forward pass) and swaps the figure's traces inside ``FigureWidget.batch_update``.
"""
from __future__ import annotations

import html

from workbench.errors import InputError
from workbench.figures import token_label
from workbench.view_layout import VIEW_WIDTH, fit_figure, wrap_row

from .attribution_graph import build_graph, capture_prompt, top_features
from .circuit_figure import graph_figure


def _targets(cache, pos: int, n: int) -> list[tuple[str, tuple]]:
    opts = []
    tok = int(cache.logits[pos].argmax())
    opts.append((f"logit of top prediction {token_label(_decode(cache, tok))!s} ({tok})", ("logit", tok)))
    for r in top_features(cache, pos, n).itertuples():
        opts.append((f"L{int(r.layer)} F{int(r.feature)} (act {r.activation:.3g})", ("feature", int(r.layer), int(r.feature))))
    return opts


def _decode(cache, tok: int) -> str:
    dec = getattr(cache, "_decode", None)
    return dec(tok) if dec else str(tok)


def _node_html(graph, key) -> str:
    n = graph.nodes[key]
    tok = graph.str_tokens[n.pos] if 0 <= n.pos < len(graph.str_tokens) else ""
    rows = "".join(f"<tr><td>{html.escape(graph.nodes[c].label)}</td><td>{v:+.4g}</td></tr>"
                   for c, v in graph.children(key))
    errs = "".join(f"<li>{k}: {v:+.4g}</li>" for k, v in n.errors.items())
    return (f"<div style='font-size:13px'><b>{html.escape(n.label)}</b> at token {n.pos} "
            f"<code>{html.escape(token_label(tok))}</code>, kind {n.kind}<br>value {n.value:.4g}, "
            f"flow {n.flow:+.4g}{' (expanded)' if n.expanded else ''}"
            f"{f'<ul>{errs}</ul>' if errs else ''}"
            f"<table><tr><th>child</th><th>contribution</th></tr>{rows}</table></div>")


def circuit_explorer(model, transcoders: dict, prompt: str, n_targets: int = 8, max_depth: int = 3, top_k: int = 4,
                     max_expand: int = 20, min_frac: float = 0.02, max_tokens: int = 128):
    """Explorer over one prompt. Returns an ``ipywidgets.VBox`` with ``.show(pos, target)``
    (target: ("logit", token_id) or ("feature", layer, index)), ``.graph()`` (the current
    ``AttributionGraph``), ``.figure`` (``go.FigureWidget``), ``.node_dropdown``, ``.details``
    (``widgets.HTML``), ``.position_dropdown``, ``.target_dropdown``, ``.depth_slider``,
    ``.top_k_slider``, ``.cache``."""
    import ipywidgets as widgets
    from workbench.figure_widget import FigureWidget  # plotly.js loaded once per page

    if not isinstance(prompt, str) or not prompt:
        raise InputError("circuit_explorer takes one non-empty prompt string.")
    _, lengths = model.tokenize(prompt)
    if lengths[0] > max_tokens:
        raise InputError(f"The prompt has {lengths[0]} tokens, more than max_tokens={max_tokens}.")
    cache = capture_prompt(model, transcoders, prompt)
    cache._decode = lambda t: model.tokenizer.decode([t])
    T = cache.n_tokens
    pos_dd = widgets.Dropdown(options=[(f"{i}: {token_label(s)}", i) for i, s in enumerate(cache.str_tokens)],
                              value=T - 1, description="position")
    tgt_dd = widgets.Dropdown(options=_targets(cache, T - 1, n_targets), description="target",
                              layout=widgets.Layout(width="420px"))
    node_dd = widgets.Dropdown(description="node", layout=widgets.Layout(width="420px"))
    depth_sl = widgets.IntSlider(value=max_depth, min=1, max=8, description="max depth")
    topk_sl = widgets.IntSlider(value=top_k, min=1, max=12, description="top k")
    details = widgets.HTML()
    fig = FigureWidget()
    state = {"graph": None, "syncing": False}

    def render(pos: int, target: tuple) -> None:
        kw = dict(max_depth=depth_sl.value, top_k=topk_sl.value, max_expand=max_expand, min_frac=min_frac,
                  prompt=prompt)
        if target[0] == "logit":
            g = build_graph(cache, logit=int(target[1]), pos=pos, **kw)
        else:
            g = build_graph(cache, feature=(int(target[1]), pos, int(target[2])), **kw)
        ref = fit_figure(graph_figure(g), width=VIEW_WIDTH, height=640, title_lines=2)
        ref.layout.title.text = ref.layout.title.text.replace(" (", "<br>(", 1)
        # legend on the right, below the toolbar band (graph_figure puts it above the plot)
        ref.update_layout(legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
        with fig.batch_update():
            fig.data = []
            fig.add_traces(list(ref.data))
            fig.layout = ref.layout
        state["graph"] = g
        state["syncing"] = True
        try:
            node_dd.options = [(n.label, i) for i, n in enumerate(g.nodes.values()) if n.kind != "error"]
            node_dd.value = 0
        finally:
            state["syncing"] = False
        details.value = _node_html(g, g.target)

    def show(pos: int, target: tuple) -> None:
        if not isinstance(pos, int) or not 0 <= pos < T:
            raise InputError(f"Position {pos!r} is out of range for this {T}-token prompt.")
        state["syncing"] = True
        try:
            pos_dd.value = pos
            tgt_dd.options = _targets(cache, pos, n_targets)
            values = [v for _, v in tgt_dd.options]
            if tuple(target) not in values:
                tgt_dd.options = list(tgt_dd.options) + [(str(tuple(target)), tuple(target))]
            tgt_dd.value = tuple(target)
        finally:
            state["syncing"] = False
        render(pos, tuple(target))

    def on_pos(ch):
        if state["syncing"]:
            return
        state["syncing"] = True
        try:
            tgt_dd.options = _targets(cache, ch["new"], n_targets)
            tgt_dd.value = tgt_dd.options[0][1]
        finally:
            state["syncing"] = False
        render(ch["new"], tgt_dd.value)

    def on_target(ch):
        if not state["syncing"]:
            render(pos_dd.value, ch["new"])

    def on_node(ch):
        if not state["syncing"] and state["graph"] is not None and ch["new"] is not None:
            key = list(state["graph"].nodes)[ch["new"]]
            details.value = _node_html(state["graph"], key)

    pos_dd.observe(on_pos, names="value")
    tgt_dd.observe(on_target, names="value")
    node_dd.observe(on_node, names="value")
    for sl in (depth_sl, topk_sl):
        sl.observe(lambda _ch: render(pos_dd.value, tgt_dd.value), names="value")
    render(T - 1, tgt_dd.value)
    fig.resync()
    box = widgets.VBox([wrap_row([pos_dd, tgt_dd]), wrap_row([depth_sl, topk_sl]), fig,
                        wrap_row([node_dd]), details])
    box.show, box.graph = show, lambda: state["graph"]
    box.figure, box.node_dropdown, box.details = fig, node_dd, details
    box.position_dropdown, box.target_dropdown, box.cache = pos_dd, tgt_dd, cache
    box.depth_slider, box.top_k_slider = depth_sl, topk_sl
    return box


__all__ = ["circuit_explorer"]
