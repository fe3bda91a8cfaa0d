"""Feature explorer widget: pick a transcoder feature, see its top contexts with highlighted tokens,
its activation histogram, its logit effects, its direct de-embedding and its OV de-embedding
norms per head.

``feature_explorer(model, transcoder, layer, contexts)`` takes a ``FeatureContexts`` (from
``feature_contexts``, computed once over a corpus); moving the controls only recomputes the
input-invariant pieces (logit effects, de-embedding: a few matmuls) and swaps figure data inside
``FigureWidget.batch_update``.
"""
from __future__ import annotations

import html

from workbench.errors import InputError
from workbench.figures import token_label
from workbench.view_layout import fit_figure, wrap_row

from .features import FeatureContexts, LOG_BINS, de_embeddings, logit_effects


def _feature_options(ctx: FeatureContexts, order: str) -> list[tuple[str, int]]:
    df = ctx.to_frame()
    if order == "max activation":
        df = df.sort_values("max_activation", ascending=False)
    elif order == "frequency":
        df = df.sort_values("frequency", ascending=False)
    return [(f"F{int(r.feature)}  max {r.max_activation:.3g}  freq {r.frequency:.2%}  {token_label(r.top_token)}",
             int(r.feature)) for r in df.itertuples()]


def feature_explorer(model, transcoder, layer: int, contexts: FeatureContexts, k_tokens: int = 10,
                    order: str = "max activation"):
    """A feature dropdown over ``contexts.features``. Returns an ``ipywidgets.VBox`` with
    ``.show(feature)``, ``.feature_dropdown``, ``.contexts_html`` (``widgets.HTML``),
    ``.histogram_figure``, ``.logit_figure``, ``.ov_figure`` (``go.FigureWidget``), ``.deembed_html`` and
    ``.current()`` (the feature shown)."""
    import ipywidgets as widgets
    import plotly.graph_objects as go
    from workbench.figure_widget import FigureWidget, resync  # plotly.js loaded once per page

    if not isinstance(contexts, FeatureContexts):
        raise InputError("feature_explorer needs the FeatureContexts from feature_contexts(model, transcoder, layer, texts).")
    if contexts.layer != model.check_layer(layer):
        raise InputError(f"These contexts were collected at layer {contexts.layer}, not layer {layer}.")
    if order not in ("max activation", "frequency", "index"):
        raise InputError(f"order must be 'max activation', 'frequency' or 'index', got {order!r}.")
    options = _feature_options(contexts, order)
    first = options[0][1]
    dd = widgets.Dropdown(options=options, value=first, description="feature",
                        layout=widgets.Layout(width="520px", max_width="100%"))
    ctx_html, de_html, stats = widgets.HTML(), widgets.HTML(), widgets.HTML()
    centers = (10 ** ((LOG_BINS[:-1] + LOG_BINS[1:]) / 2)).numpy()
    hist_fig = FigureWidget(go.Bar(x=centers, y=contexts.hist[0].numpy(), marker_color="#ff7f0e"))
    hist_fig.update_layout(template="plotly_white", xaxis=dict(type="log", title="activation"), yaxis_title="tokens",
                           bargap=0.05)
    fit_figure(hist_fig, width=420, height=300)
    logit_fig = FigureWidget(go.Bar(orientation="h"))
    logit_fig.update_layout(template="plotly_white", xaxis_title="direct logit effect")
    fit_figure(logit_fig, width=420, height=80 + 36 * k_tokens)
    ov_fig = FigureWidget(go.Heatmap(colorscale="Viridis", hovertemplate="L%{y}H%{x}: %{z:.3g}<extra></extra>"))
    ov_fig.update_layout(template="plotly_white", xaxis_title="head", yaxis_title="layer")
    fit_figure(ov_fig, width=420, height=340, title_lines=2)
    state = {"feature": None}

    def show(feature: int) -> None:
        r = contexts._row(feature)
        le = logit_effects(model, transcoder, layer, feature)
        de = de_embeddings(model, transcoder, layer, feature, heads=False)
        df = le.to_frame(k_tokens).sort_values("effect")
        with hist_fig.batch_update(), logit_fig.batch_update(), ov_fig.batch_update():
            ov_fig.data[0].z = de.ov_norms.numpy()
            ov_fig.layout.title.text = f"F{feature}: ‖OV pull-back‖ per head<br>(which heads can feed it)"
            hist_fig.data[0].y = contexts.hist[r].numpy()
            hist_fig.layout.title.text = (f"F{feature}: active on {float(contexts.frequency[r]):.2%} of "
                                          f"{contexts.n_tokens} tokens")
            logit_fig.data[0].x = df["effect"].tolist()
            logit_fig.data[0].y = [f"{token_label(t)} ({i})" for t, i in zip(df["token"], df["id"])]
            logit_fig.data[0].marker.color = ["#d62728" if e > 0 else "#1f77b4" for e in df["effect"]]
            logit_fig.layout.title.text = f"F{feature}: logit effects (top, bottom {k_tokens})"
        ctx_html.value = f"<b>Top contexts of L{layer} F{feature}</b>" + contexts.contexts_html(feature)
        toks = ", ".join(f"<code>{html.escape(token_label(t))}</code> {v:.2f}"
                         for t, v in zip(de.top(k_tokens)["token"], de.top(k_tokens)["score"]))
        de_html.value = f"<b>Direct de-embedding</b> (tokens that turn it on as the current token): {toks}"
        stats.value = (f"max activation {float(contexts.max_act[r]):.3g}; "
                       f"frequency {float(contexts.frequency[r]):.3%}")
        state["feature"] = int(feature)
        if dd.value != feature:
            dd.value = feature

    dd.observe(lambda ch: show(ch["new"]) if ch["new"] != state["feature"] else None, names="value")
    show(first)
    resync(hist_fig, logit_fig, ov_fig)
    box = widgets.VBox([wrap_row([dd, stats]), ctx_html, wrap_row([hist_fig, logit_fig]),
                        wrap_row([ov_fig, de_html])])
    box.show = show
    box.feature_dropdown = dd
    box.contexts_html, box.deembed_html = ctx_html, de_html
    box.histogram_figure, box.logit_figure, box.ov_figure = hist_fig, logit_fig, ov_fig
    box.current = lambda: state["feature"]
    return box


__all__ = ["feature_explorer"]
