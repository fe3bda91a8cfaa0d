"""Layout shared by the interactive explorers, so that titles and controls stay readable in a
notebook at an ordinary JupyterLab window.

In a 1280 px browser window with Lab's file browser open (its default layout), a notebook's
output area is about 850 px wide. Explorers therefore draw figures at most ``VIEW_WIDTH`` wide
and put side-by-side figures and controls in rows that wrap (``wrap_row``) instead of running
off the right edge, where Lab clips them.

Plotly draws its toolbar (the "modebar": zoom, pan, reset, download) over the top-right corner
of every figure. A centred title longer than about half the figure runs under it, and so does a
legend placed above the plot. ``fit_figure`` keeps that band free: the title goes flush left,
just above the plot area and below a top margin tall enough for the toolbar; legends go inside
the plot area or are left to the caller.
"""
from __future__ import annotations

VIEW_WIDTH = 840  # px: widest figure an explorer draws (fits the output area at a 1280 px window)
TOOLBAR_BAND = 34  # px at the top of a figure that plotly's toolbar may cover
TITLE_LINE = 20  # px per line of a 14 px title
TITLE_FONT = 14


def fit_figure(fig, width: int | None = None, height: int | None = None, title_lines: int = 1,
               margin: dict | None = None, square: bool = False):
    """Lay ``fig`` (a ``go.Figure`` or ``go.FigureWidget``) out for an explorer; returns it.

    width: capped at ``VIEW_WIDTH`` (default: the figure's own width, else ``VIEW_WIDTH``);
    height: default the figure's own. title_lines: lines the title may take (``<br>`` breaks);
    the top margin is sized for them plus the toolbar band. margin: other margins (l, r, b).
    square: a heatmap whose cells should stay square: the height loses what the cap takes off
    the width, and gains what the taller title band adds.
    """
    own_w, own_h = fig.layout.width, fig.layout.height
    want = int(width or own_w or VIEW_WIDTH)
    w = min(want, VIEW_WIDTH)
    top = TOOLBAR_BAND + 8 + TITLE_LINE * max(1, title_lines)
    if square and height is None and own_h:
        old_top = fig.layout.margin.t if fig.layout.margin and fig.layout.margin.t is not None else 100
        height = int(own_h) - (want - w) + max(0, top - old_top)
    m = dict(l=10, r=10, b=10)
    m.update({k: v for k, v in (fig.layout.margin.to_plotly_json() if fig.layout.margin else {}).items()
              if k in ("l", "r", "b")})
    m.update(margin or {})
    h = int(height or own_h or 450)  # plotly's default height
    # The title hangs from a fixed height below the toolbar band (container coordinates): extra
    # lines grow down into the top margin sized for them, never up under the toolbar.
    fig.update_layout(width=w, height=h, margin=dict(m, t=top),
                      title=dict(x=0, xref="paper", xanchor="left", y=1 - (TOOLBAR_BAND + 2) / h,
                                 yref="container", yanchor="top", font=dict(size=TITLE_FONT)))
    return fig


def tick_budget(plot_px: float, px_per_tick: int = 15) -> int:
    """How many token tick labels fit along an axis of ``plot_px`` pixels without overlapping."""
    return max(4, int(plot_px // px_per_tick))


def pattern_figure(pattern, str_tokens, title: str = "", width: int | None = None, height: int | None = None):
    """``attention_pattern_figure`` laid out for an explorer: at most ``VIEW_WIDTH`` wide (square
    cells) or ``width`` x ``height``, with only as many token labels as fit without overlapping."""
    from .figures import attention_pattern_figure

    probe = fit_figure(attention_pattern_figure(pattern, str_tokens, title), width=width, height=height,
                       square=height is None)
    w, h = probe.layout.width, probe.layout.height
    ticks = tick_budget(h - probe.layout.margin.t - 90)  # less the title band and the rotated key labels
    return fit_figure(attention_pattern_figure(pattern, str_tokens, title, max_ticks=ticks), width=w, height=h)


def wrap_row(children, **layout):
    """An ``ipywidgets.Box`` laying ``children`` out left to right, wrapping onto the next line
    when the notebook is too narrow (``HBox`` would run off the right edge instead)."""
    import ipywidgets as widgets

    children = list(children)
    for c in children:  # keep each child's own width: wrap to the next line rather than squeeze
        if isinstance(getattr(c, "layout", None), widgets.Layout) and not c.layout.flex:  # not plotly's layout
            c.layout.flex = "0 0 auto"
    return widgets.Box(children, layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                                       align_items="flex-start", **layout))


__all__ = ["fit_figure", "pattern_figure", "wrap_row", "tick_budget", "VIEW_WIDTH", "TOOLBAR_BAND"]
