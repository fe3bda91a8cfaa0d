"""The panels of an ``EffectReport`` (``report.figure(panel=...)``). Bytes always carry the saving kind."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

BASE, METH = "#7f7f7f", "#d62728"


def replace_figure(widget, fig) -> None:
    """Show ``fig``'s traces and layout in the ``go.FigureWidget`` ``widget``, in place: old traces out, the new
    layout, then the new traces."""
    # Traces go in after the layout: plotly.js draws a heatmap on a subplot whose axes do not exist yet
    # with zero width and logs an error (add/delete traces are not part of a batched update).
    widget.data = ()
    with widget.batch_update():
        widget.layout = fig.layout
    widget.add_traces(list(fig.data))


def _title(r, what: str) -> str:
    return f"{what}<br>{r.method} vs baseline ({r.model_name}, suite {r.suite_name})"


def _layout(fig, r, what, **kw):
    fig.update_layout(title=_title(r, what), template="plotly_white", **kw)
    return fig


def _bytes_traces(r, fig, row=None, col=None):
    c, m = r.cost, r.measured
    x = ["weights", f"KV ({m['kv_tokens']} tok)"]
    mib = lambda v: [b / 2**20 for b in v]  # noqa: E731
    kw = {} if row is None else {"row": row, "col": col}
    fig.add_bar(x=x, y=mib([m["baseline_weight_bytes"], m["baseline_kv_bytes"]]), name="baseline",
                marker_color=BASE, **kw)
    fig.add_bar(x=x, y=mib([c.weight_bytes, c.kv_bytes]), name="predicted", marker_color="#ff9896", **kw)
    fig.add_bar(x=x, y=mib([m["weight_bytes"], m["kv_bytes"]]), name=f"measured ({r.saving})", marker_color=METH,
                **kw)


def cost_figure(r, **_):
    """Bytes (baseline, predicted, measured; the saving kind in the legend) and ms per token."""
    cols = 2 if r.timing else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=["MiB (saving: " + r.saving + ")", "ms per token"][:cols])
    _bytes_traces(r, fig, 1, 1)
    if r.timing:
        t = r.timing
        fig.add_bar(x=["prefill", "decode"], y=[t["baseline_prefill_ms"], t["baseline_decode_ms"]], name="baseline ms",
                    marker_color=BASE, row=1, col=2)
        fig.add_bar(x=["prefill", "decode"], y=[t["method_prefill_ms"], t["method_decode_ms"]], name="method ms",
                    marker_color=METH, row=1, col=2)
        load = t.get("loadavg_before")
        fig.add_annotation(text=f"{t['threads']} thread(s), load {load}", xref="paper", yref="paper", x=1, y=-0.15,
                           showarrow=False)
    fig.update_layout(barmode="group")
    return _layout(fig, r, "Cost", height=420)


def quality_figure(r, **_):
    """Accuracies (with 95% intervals), perplexity and next-token KL."""
    q = r.quality
    fig = make_subplots(rows=1, cols=2, subplot_titles=["accuracy", "perplexity / KL"])
    names, b, m, eb, em = [], [], [], [], []
    for key, label in (("fact", "facts"), ("passkey", "passkey")):
        if q[f"n_{'facts' if key == 'fact' else 'passkey'}"]:
            names.append(label)
            b.append(q[f"{key}_accuracy_base"])
            m.append(q[f"{key}_accuracy"])
            eb.append(q[f"{key}_ci_base"])
            em.append(q[f"{key}_ci"])
    err = lambda v, ci: {"type": "data", "symmetric": False, "array": [c[1] - x for x, c in zip(v, ci)],  # noqa: E731
                         "arrayminus": [x - c[0] for x, c in zip(v, ci)]}
    fig.add_bar(x=names, y=b, name="baseline", marker_color=BASE, error_y=err(b, eb), row=1, col=1)
    fig.add_bar(x=names, y=m, name="method", marker_color=METH, error_y=err(m, em), row=1, col=1)
    fig.add_bar(x=["perplexity"], y=[q["perplexity_base"]], marker_color=BASE, showlegend=False, row=1, col=2)
    fig.add_bar(x=["perplexity"], y=[q["perplexity"]], marker_color=METH, showlegend=False, row=1, col=2)
    fig.add_annotation(text=f"next-token KL {q['kl']:.4f} nats, top-1 agreement {q['top1_agreement']:.3f}",
                       xref="paper", yref="paper", x=0.5, y=-0.15, showarrow=False)
    fig.update_layout(barmode="group")
    return _layout(fig, r, "Quality", height=420)


def drift_figure(r, **_):
    """Relative error and 1 − cosine of resid_post per layer."""
    L = len(r.drift_rel)
    fig = go.Figure()
    fig.add_scatter(x=list(range(L)), y=r.drift_rel, name="‖Δx‖/‖x‖", mode="lines+markers", line_color=METH)
    fig.add_scatter(x=list(range(L)), y=1 - r.drift_cos, name="1 − cos", mode="lines+markers", line_dash="dot")
    return _layout(fig, r, "Residual drift (tail tokens)", xaxis_title="layer (resid_post)", yaxis_title="drift",
                   height=380)


def attention_figure(r, metric: str = "tv", **_):
    """Attention divergence per layer and head: "tv" (probe rows) or "js" (received mass)."""
    z = r.attention_tv if metric == "tv" else r.attention_js
    what = "TV of probe-query rows" if metric == "tv" else "JS of received attention (nats)"
    fig = go.Figure(go.Heatmap(z=z, colorscale="Reds", zmin=0, colorbar_title=metric.upper(),
                               hovertemplate="layer %{y} head %{x}<br>%{z:.4f}<extra></extra>"))
    return _layout(fig, r, f"Attention divergence ({what})", xaxis_title="head", yaxis_title="layer", height=460)


def sinks_figure(r, **_):
    """Sink mass (attention on position 0) per layer and head: before, after, change."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["baseline", "method", "change"])
    fig.add_heatmap(z=r.sink_base, zmin=0, zmax=1, colorscale="Blues", showscale=False, row=1, col=1)
    fig.add_heatmap(z=r.sink_method, zmin=0, zmax=1, colorscale="Blues", showscale=False, row=1, col=2)
    d = r.sink_method - r.sink_base
    lim = max(float(np.abs(d).max()), 1e-9)
    fig.add_heatmap(z=d, zmin=-lim, zmax=lim, colorscale="RdBu", row=1, col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text="head", row=1, col=c)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    return _layout(fig, r, "Attention-sink mass (position 0)", height=420)


def massive_figure(r, **_):
    """The baseline's peak token: residual norm per stage before and after (log scale), and the median token."""
    m = r.massive
    fig = go.Figure()
    fig.add_scatter(x=m["stages"], y=m["norm_base"], name=f"peak token {m['peak_token']!r} (baseline)",
                    line_color=BASE, mode="lines+markers")
    fig.add_scatter(x=m["stages"], y=m["norm_method"], name="same token (method)", line_color=METH, mode="lines+markers")
    fig.add_scatter(x=m["stages"], y=m["median_base"], name="median token (baseline)", line_color=BASE, line_dash="dot")
    fig.add_scatter(x=m["stages"], y=m["median_method"], name="median token (method)", line_color=METH,
                    line_dash="dot")
    return _layout(fig, r, "Massive activations", yaxis_type="log", yaxis_title="‖x‖", height=400)


def dla_figure(r, n: int = 15, metric: str = "diff", **_):
    """The components whose mean DLA over the facts changed most (before and after), and Δ per head."""
    df = r.top_changed(n, metric)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5],
                        subplot_titles=[f"top {n} changed components", "Δ per head"])
    fig.add_bar(y=df.component, x=df.baseline, orientation="h", name="baseline", marker_color=BASE, row=1, col=1)
    fig.add_bar(y=df.component, x=df.method, orientation="h", name="method", marker_color=METH, row=1, col=1)
    if r.dla:
        d = r.dla["heads_delta" + ("" if metric == "diff" else "_logit")]
        lim = max(float(np.abs(d).max()), 1e-9)
        fig.add_heatmap(z=d, zmin=-lim, zmax=lim, colorscale="RdBu", row=1, col=2)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(barmode="group")
    what = "answer − mean of other candidates" if metric == "diff" else "answer logit"
    return _layout(fig, r, f"DLA of the facts ({what})", height=max(420, 22 * n))


def features_figure(r, **_):
    """Per transcoder layer: top-k kept and activation correlation; firing rate before vs after per feature."""
    layers = list(r.features)
    fig = make_subplots(rows=1, cols=1 + len(layers),
                        subplot_titles=["kept / correlation"] + [f"layer {l}: firing rate" for l in layers])
    fig.add_bar(x=[f"L{l}" for l in layers], y=[r.features[l]["kept"] for l in layers], name="top-k kept", row=1, col=1)
    fig.add_bar(x=[f"L{l}" for l in layers], y=[r.features[l]["correlation"] for l in layers], name="correlation",
                row=1, col=1)
    for i, l in enumerate(layers):
        per = r.features[l]["per_feature"]
        fig.add_scatter(x=per.freq_base, y=per.freq_method, mode="markers", marker={"size": 4,
                        "color": np.where(per.dead, METH, BASE)}, name=f"L{l} features", customdata=per.feature,
                        hovertemplate="feature %{customdata}<br>before %{x:.3f}<br>after %{y:.3f}<extra></extra>",
                        row=1, col=2 + i)
        fig.update_xaxes(title_text="baseline", row=1, col=2 + i)
        fig.update_yaxes(title_text="method", row=1, col=2 + i)
    return _layout(fig, r, "Transcoder features (tail tokens)", height=420, barmode="group")


def concepts_figure(r, **_):
    """Concept scores along the text, before and after."""
    c = r.concept
    fig = go.Figure()
    if c:
        x = list(range(len(c["base"])))
        fig.add_scatter(x=x, y=c["base"], name="baseline", line_color=BASE, customdata=c["tokens"],
                        hovertemplate="%{customdata!r}<br>%{y:.3f}<extra>baseline</extra>")
        fig.add_scatter(x=x, y=c["method"], name="method", line_color=METH, customdata=c["tokens"],
                        hovertemplate="%{customdata!r}<br>%{y:.3f}<extra>method</extra>")
        what = f"Concept scores for {c['name']} (correlation {c['correlation']:.3f})"
    else:
        what = "Concept scores (not measured: " + "; ".join(n for n in r.notes if "concept" in n) + ")"
    return _layout(fig, r, what, xaxis_title="token position (window start)", height=380)


def overview_figure(r, **_):
    """Six small panels: bytes, accuracy, drift, attention TV per layer, sink mass per layer, massive norm."""
    fig = make_subplots(rows=2, cols=3, subplot_titles=[f"MiB ({r.saving})", "accuracy", "drift per layer",
                                                        "attention TV (mean of heads)",
                                                        "sink mass (mean of heads)", "peak-token norm"])
    _bytes_traces(r, fig, 1, 1)
    q = r.quality
    xs = [n for n, k in (("facts", "n_facts"), ("passkey", "n_passkey")) if q[k]]
    fig.add_bar(x=xs, y=[q["fact_accuracy_base"] if x == "facts" else q["passkey_accuracy_base"] for x in xs],
                marker_color=BASE, showlegend=False, row=1, col=2)
    fig.add_bar(x=xs, y=[q["fact_accuracy"] if x == "facts" else q["passkey_accuracy"] for x in xs], marker_color=METH,
                showlegend=False, row=1, col=2)
    L = len(r.drift_rel)
    fig.add_scatter(x=list(range(L)), y=r.drift_rel, line_color=METH, showlegend=False, row=1, col=3)
    fig.add_scatter(x=list(range(L)), y=r.attention_tv.mean(1), line_color=METH, showlegend=False, row=2, col=1)
    fig.add_scatter(x=list(range(L)), y=r.sink_base.mean(1), line_color=BASE, showlegend=False, row=2, col=2)
    fig.add_scatter(x=list(range(L)), y=r.sink_method.mean(1), line_color=METH, showlegend=False, row=2, col=2)
    m = r.massive
    fig.add_scatter(x=list(range(len(m["stages"]))), y=m["norm_base"], line_color=BASE, showlegend=False, row=2, col=3)
    fig.add_scatter(x=list(range(len(m["stages"]))), y=m["norm_method"], line_color=METH, showlegend=False, row=2, col=3)
    fig.update_layout(barmode="group")
    fig.add_annotation(text=f"perplexity {q['perplexity_base']:.2f} → {q['perplexity']:.2f}, KL {q['kl']:.4f}",
                       xref="paper", yref="paper", x=0.5, y=-0.1, showarrow=False)
    return _layout(fig, r, "Overview", height=620)
