"""Interactive factual-recall explorer: pick a prompt, see its DLA and the top heads' attention.

``fact_explorer(model, items)`` returns an ``ipywidgets.VBox`` with a prompt dropdown, a metric
toggle ("logit": the answer's logit; "diff": answer minus the mean of the alternatives) and a
dropdown over the prompt's top heads, and three plotly ``FigureWidget``s:

- DLA bars per layer (attention and MLP, embed and biases at the ends) = ``DLAResult.figure``;
- the attention of the last token (END) to every token, for the top ``n_top`` heads by |DLA|,
  subject tokens marked "S", relation tokens "R", the last token "E" (hover: the head's per-source
  DLA from subject, relation, last and other tokens);
- the full attention pattern of the chosen top head.

Each prompt's DLA is computed on first selection (one forward) and cached; the chosen head's
full pattern costs one more forward (that layer only), cached per (prompt, layer). Controls only
swap data inside ``FigureWidget.batch_update``.
"""
from __future__ import annotations

import html

import numpy as np

from workbench.errors import InputError
from workbench.figures import token_label
from workbench.view_layout import VIEW_WIDTH, fit_figure, pattern_figure, wrap_row

from .dla import METRICS, SOURCE_GROUPS, DLAResult, direct_logit_attribution


def _label(i: int, item) -> str:
    text = getattr(item, "id", None) or " ".join(str(item).split())[-48:]
    return f"{i}: {text}"


def _summary_html(r: DLAResult, metric: str, top: list[tuple[int, int]]) -> str:
    gt = r.group_totals(metric)
    g = r.source_groups(metric)
    m = r.metric(r.heads, metric)
    rows = "".join(f"<tr><td>L{l}H{h}</td><td>{m[l, h]:+.3f}</td>"
                   + "".join(f"<td>{g[l, h, i]:+.3f}</td>" for i in range(len(SOURCE_GROUPS))) + "</tr>"
                   for l, h in top)
    rank = int((r.logits[1:] >= r.logits[0]).sum())
    return (f"<div style='font-size:13px'><b>{html.escape(r.fact_id or '')}</b> answer "
            f"<code>{html.escape(r.target_strs[0])}</code>: logit {r.logits[0]:.3f}, rank {rank} among "
            f"{len(r.targets)} targets; |Σ − logit| = {r.error:.1e}<br>"
            f"{metric}: embed {gt['embed']:+.2f}, attention {gt['attention']:+.2f}, MLPs {gt['mlp']:+.2f}, "
            f"biases {gt['biases']:+.2f}<table style='margin-top:4px'><tr><th>head</th><th>DLA</th>"
            + "".join(f"<th>{s}</th>" for s in SOURCE_GROUPS) + f"</tr>{rows}</table></div>")


def fact_explorer(model, items, answers=None, alternatives=None, n_top: int = 8):
    """Explorer over FactPrompts (or prompt strings with ``answers`` token ids); see the module docstring.

    Returns an ``ipywidgets.VBox`` with, for scripted use and tests: ``.show(index, metric=None,
    head=None)`` (head: a (layer, head) among the prompt's top heads; default the first),
    ``.result(index)`` (the cached ``DLAResult``), ``.current()``, ``.computed()``,
    ``.bars_figure``, ``.rows_figure``, ``.pattern_figure``, ``.summary`` and the controls.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go
    from workbench.figure_widget import FigureWidget, resync  # plotly.js loaded once per page

    items = list(items) if not isinstance(items, str) else [items]
    if not items:
        raise InputError("fact_explorer needs at least one FactPrompt or prompt string.")
    if answers is not None and len(answers) != len(items):
        raise InputError(f"Got {len(answers)} answers for {len(items)} prompts.")
    if any(isinstance(it, str) for it in items) and answers is None:
        raise InputError("Prompt strings need answers= (one token id or single-token string per prompt).")
    if not isinstance(n_top, int) or n_top < 1:
        raise InputError(f"n_top must be a positive integer, got {n_top!r}.")
    cache: dict[int, DLAResult] = {}
    patterns: dict[tuple[int, int], np.ndarray] = {}

    def result(i: int) -> DLAResult:
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < len(items):
            raise InputError(f"Prompt index {i!r} is out of range (0..{len(items) - 1}).")
        i = int(i)
        if i not in cache:
            cache[i] = direct_logit_attribution(model, items[i], answer=None if answers is None else answers[i],
                                                alternatives=alternatives)
        return cache[i]

    def pattern(i: int, layer: int) -> np.ndarray:
        if (i, layer) not in patterns:
            r = result(i)
            run = model.run(r.prompt, capture=["pattern"], layers=[layer], logits=None, stop_at_layer=layer + 1)
            patterns[(i, layer)] = run["pattern", layer][0].float().numpy()  # (H, T, T)
        return patterns[(i, layer)]

    first = result(0)
    bars = FigureWidget(fit_figure(first.figure(), width=VIEW_WIDTH))
    rows_fig = FigureWidget(go.Figure(go.Heatmap(colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="attn"))))
    rows_fig.update_layout(template="plotly_white")
    fit_figure(rows_fig, width=VIEW_WIDTH, height=130 + 24 * n_top)
    rows_fig.update_yaxes(autorange="reversed")
    rows_fig.update_xaxes(tickangle=-60)
    pat_fig = FigureWidget(pattern_figure(pattern(0, 0)[0], first.str_tokens, ""))
    summary = widgets.HTML()
    prompt_dd = widgets.Dropdown(options=[(_label(i, it), i) for i, it in enumerate(items)], value=0,
                                 description="prompt", layout=widgets.Layout(width="520px", max_width="100%"))
    metric_tb = widgets.ToggleButtons(options=list(METRICS), value="logit", description="metric",
                                      style={"button_width": "64px"})
    head_dd = widgets.Dropdown(description="head")
    state = {"prompt": None, "metric": None, "head": None, "syncing": False}

    def top_heads(r: DLAResult, metric: str) -> list[tuple[int, int]]:
        return r.top_heads(n_top, metric)

    def render(i: int, metric: str, head: tuple[int, int] | None) -> None:
        r = result(i)
        top = top_heads(r, metric)
        head = top[0] if head is None or head not in top else head
        ref = r.figure(metric)
        marks = {p: "S" for p in r.subject_positions} | {p: "R" for p in r.relation_positions} | \
            {r.last_position: "E"}
        labels = [f"{p}{marks.get(p, '')} {token_label(t)}" for p, t in enumerate(r.str_tokens)]
        g = r.source_groups(metric)
        custom = np.array([[list(g[l, h])] * len(labels) for l, h in top])
        full = pattern(i, head[0])[head[1]]
        pref = pattern_figure(full, r.str_tokens, "", width=pat_fig.layout.width, height=pat_fig.layout.height)
        with bars.batch_update(), rows_fig.batch_update(), pat_fig.batch_update():
            for tr, new in zip(bars.data, ref.data):
                tr.x, tr.y = new.x, new.y
                tr.customdata = new.customdata
            bars.layout.title.text = ref.layout.title.text
            heat = rows_fig.data[0]
            heat.z = np.stack([r.attn_rows[l, h] for l, h in top])
            heat.x, heat.y = labels, [f"L{l}H{h}" for l, h in top]
            heat.customdata = custom
            heat.hovertemplate = ("%{y} → %{x}<br>attention %{z:.3f}<br>head DLA from subject %{customdata[0]:+.3f}, "
                                  "relation %{customdata[1]:+.3f}, last token %{customdata[2]:+.3f}, other "
                                  "%{customdata[3]:+.3f}<extra></extra>")
            rows_fig.layout.title.text = (f"Attention of the last token, top {len(top)} heads by |DLA| ({metric}); "
                                          "S subject, R relation, E last")
            p = pat_fig.data[0]
            p.z = full
            p.x, p.y = pref.data[0].x, pref.data[0].y
            p.customdata, p.hovertemplate = pref.data[0].customdata, pref.data[0].hovertemplate
            pat_fig.layout.xaxis.update(tickvals=pref.layout.xaxis.tickvals, ticktext=pref.layout.xaxis.ticktext)
            pat_fig.layout.yaxis.update(tickvals=pref.layout.yaxis.tickvals, ticktext=pref.layout.yaxis.ticktext)
            pat_fig.layout.title.text = f"L{head[0]}H{head[1]} attention pattern (KV head {head[1] // model.info.group_size})"
        summary.value = _summary_html(r, metric, top)
        state["syncing"] = True
        try:
            head_dd.options = [(f"L{l}H{h}", (l, h)) for l, h in top]
            head_dd.value = head
            prompt_dd.value, metric_tb.value = i, metric
        finally:
            state["syncing"] = False
        state.update(prompt=i, metric=metric, head=head)

    def show(index: int, metric: str | None = None, head: tuple[int, int] | None = None) -> None:
        """Show prompt ``index`` with ``metric`` (default: the current one) and top head ``head``."""
        metric = metric or state["metric"] or "logit"
        if metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {metric!r}.")
        r = result(index)
        if head is not None and tuple(head) not in top_heads(r, metric):
            raise InputError(f"Head {head!r} is not among the top {n_top} heads of prompt {index}: "
                             f"{top_heads(r, metric)}.")
        render(int(index), metric, None if head is None else tuple(head))

    def on_change(change) -> None:
        if state["syncing"]:
            return
        head = head_dd.value if change["owner"] is head_dd else None
        render(prompt_dd.value, metric_tb.value, head)

    for w in (prompt_dd, metric_tb, head_dd):
        w.observe(on_change, names="value")
    render(0, "logit", None)
    resync(bars, rows_fig, pat_fig)
    box = widgets.VBox([wrap_row([prompt_dd, metric_tb]), wrap_row([bars, summary]), rows_fig,
                        wrap_row([head_dd]), pat_fig])
    box.show, box.result = show, result
    box.bars_figure, box.rows_figure, box.pattern_figure, box.summary = bars, rows_fig, pat_fig, summary
    box.prompt_dropdown, box.metric_buttons, box.head_dropdown = prompt_dd, metric_tb, head_dd
    box.current = lambda: (state["prompt"], state["metric"], state["head"])
    box.computed = lambda: sorted(cache)
    return box


__all__ = ["fact_explorer"]
