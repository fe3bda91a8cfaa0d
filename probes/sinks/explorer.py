"""Interactive attention-sink explorer: pick a prompt, a layer and a head; see its pattern, the
attention mass each key receives (with the head's sink statistics) and each token's value norm.

``sink_explorer(model, prompts)`` returns an ``ipywidgets.VBox`` with three plotly
``FigureWidget``s and an HTML panel of statistics. Each prompt costs one forward pass, made the
first time the prompt is selected (prompt 0 at construction) and cached: it captures every
layer's full attention pattern and values, and builds that prompt's ``SinkReport`` and
``ValueDrainReport`` from the same pass with the shared builders (``sink_report_from_run``,
``value_drain_from_run``), so the numbers shown are the ones ``sink_report`` and ``value_drain``
give. Moving the controls only swaps data inside ``FigureWidget.batch_update``.

Panels, for prompt p, layer l, head h (A the (T, T) pattern, s = ``skip_queries``):

- pattern: A itself;
- attention mass received by each key j: m_j = mean of A[q, j] over q >= max(j, s) (the sink
  report's "counted" queries), with the uniform-attention baseline (the mass key j would get if
  every query spread its attention evenly over the keys it sees);
- value norms ‖v_j W_O^h‖ (v of the KV head h reads; see ``probes.value_drains``);
- statistics: mass on position 0, the top sink keys (keys with at least ``min(4, ...)`` counted
  queries, as in ``SinkReport.top_keys``), normalized row entropy, column entropy (max over keys
  and of position 0), the value norm of position 0 against the rest, and the sink flags.

Prompts longer than ``max_tokens`` are refused: the explorer holds L × H full T × T patterns per
prompt. For long prompts use ``probes.sinks.sink_report`` (attention summaries, never full patterns).
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from workbench.capture import summarize_pattern
from workbench.errors import InputError
from workbench.figures import token_label
from workbench.view_layout import VIEW_WIDTH, fit_figure, pattern_figure, wrap_row

from .report import COL_ENTROPY_MIN, ROW_ENTROPY_MAX, SinkReport, check_prompt_lengths, sink_report_from_run
from .value_drains import ValueDrainReport, value_drain_from_run

DEFAULT_MAX_TOKENS = 256
_SINK_COLOUR, _TOP_COLOUR, _BAR_COLOUR = "#d62728", "#ff7f0e", "#4c78a8"


@dataclass
class PromptCapture:
    """Everything the explorer shows for one prompt (from one forward pass).

    patterns: (L, H, T, T) float32 attention patterns; mass: (L, H, T) attention received per key
    (``SinkReport.received``); norms: (L, H, T) value norms ‖v_j W_O^h‖ (``ValueDrainReport.norms``);
    uniform: (T,) the mass under uniform attention; sinks / values: the one-prompt reports.
    """

    text: str
    str_tokens: list[str]
    patterns: np.ndarray
    mass: np.ndarray
    norms: np.ndarray
    uniform: np.ndarray
    sinks: SinkReport
    values: ValueDrainReport

    @property
    def n_tokens(self) -> int:
        return len(self.str_tokens)


def _check_index(value, n: int, what: str, hint: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= int(value) < n:
        raise InputError(f"{what} {value!r} is out of range: {hint} (0..{n - 1}).")
    return int(value)


def _prompt_label(i: int, text: str, n: int) -> str:
    short = " ".join(text.split())
    short = short if len(short) <= 48 else short[:47] + "…"
    return f"{i}: {short} ({n} tokens)"


def capture_prompt(model, text: str, skip_queries: int = 4, threshold: float = 0.3, top_k: int = 5,
                   max_bytes: int | None = None) -> PromptCapture:
    """One forward over ``text`` capturing every layer's pattern and ``v``; the explorer's data."""
    layers = list(range(model.info.n_layers))
    run = model.run(text, capture=["pattern", "v"], logits=None, stop_at_layer=model.info.n_layers,
                    max_bytes=max_bytes)
    for l in layers:  # the same reduction sink_report applies inside its hooks
        run.summaries[l] = summarize_pattern(run["pattern", l], l, skip_queries, 1, run.lengths)
    sinks = sink_report_from_run(model, run, layers, [text], threshold=threshold, top_k=top_k,
                                 row_entropy_max=ROW_ENTROPY_MAX, col_entropy_min=COL_ENTROPY_MIN)
    values = value_drain_from_run(model, run, layers, [text])
    patterns = run.stack("pattern")[:, 0].detach().float().cpu().numpy()  # (L, H, T, T)
    return PromptCapture(
        text=text, str_tokens=list(run.str_tokens[0]), patterns=patterns,
        mass=sinks.received[0].float().numpy(), norms=values.norms[0].float().numpy(),
        uniform=sinks.uniform_mass()[0].float().numpy(), sinks=sinks, values=values)


def _stats_html(d: PromptCapture, prompt: int, layer: int, head: int, group_size: int) -> str:
    """The HTML statistics panel for one prompt, layer and head."""
    r = d.sinks
    m0 = float(r.received[0, layer, head, 0])
    re, ce = float(r.row_entropy[0, layer, head]), float(r.col_entropy[0, layer, head])
    ce0 = float(r.col_entropy0[0, layer, head])
    ce_key = int(r.col_entropy_key[0, layer, head])
    norms = d.norms[layer, head]
    rest = float(norms[1:].mean()) if d.n_tokens > 1 else float("nan")
    ratio = float(norms[0]) / rest if rest else float("nan")
    pos, val = r.top_keys(0)
    top = [(int(p), float(v)) for p, v in zip(pos[layer, head].tolist(), val[layer, head].tolist())]
    flags = []
    if m0 >= r.threshold:
        flags.append(f"sink head by mass (m₀ ≥ {r.threshold:g})")
    if re <= r.row_entropy_max and ce >= r.col_entropy_min:
        flags.append(f"sink head by entropy (row ≤ {r.row_entropy_max:g}, column ≥ {r.col_entropy_min:g})")
    esc = html.escape
    rows = "".join(
        f"<tr><td>{p}</td><td><code>{esc(token_label(d.str_tokens[p]))}</code></td><td>{v:.3f}</td>"
        f"<td>{v / max(float(d.uniform[p]), 1e-12):.1f}×</td></tr>" for p, v in top)
    ce_txt = "n/a" if ce != ce else f"{ce:.3f} (key {ce_key})"
    ce0_txt = "n/a" if ce0 != ce0 else f"{ce0:.3f}"
    return (
        f"<div style='font-size:13px'><b>Prompt {prompt}, L{layer}H{head}</b> (reads KV head {head // group_size}; "
        f"queries ≥ {r.skip_queries} counted)<br>"
        f"mass on position 0 <code>{esc(token_label(d.str_tokens[0]))}</code>: <b>{m0:.3f}</b> "
        f"(uniform attention would give {float(d.uniform[0]):.3f})<br>"
        f"normalized row entropy {re:.3f} · column entropy max {ce_txt}, of position 0 {ce0_txt}<br>"
        f"value norm ‖v₀W_O‖ = {float(norms[0]):.3g}, mean of the rest {rest:.3g} (ratio {ratio:.2f})<br>"
        f"{esc('; '.join(flags)) if flags else 'not a sink head'}"
        f"<table style='margin-top:4px'><tr><th>pos</th><th>top sink token</th><th>mass</th><th>vs uniform</th></tr>"
        f"{rows}</table></div>")


def _key_axis(fig, labels: list[str], title: str = "key") -> None:
    n = len(labels)
    step = max(1, -(-n // 64))
    idx = list(range(0, n, step))
    fig.update_xaxes(tickmode="array", tickvals=idx, ticktext=[labels[i] for i in idx], tickangle=-60,
                     title=dict(text=title))


def _bar_colours(n: int, top: list[int]) -> list[str]:
    colours = [_BAR_COLOUR] * n
    for p in top:
        colours[p] = _TOP_COLOUR
    colours[0] = _SINK_COLOUR
    return colours


def sink_explorer(model, prompts, max_tokens: int = DEFAULT_MAX_TOKENS, skip_queries: int = 4,
                  threshold: float = 0.3, top_k: int = 5, max_bytes: int | None = None):
    """A prompt dropdown, a layer slider and a head dropdown over attention-sink statistics.

    prompts: a list of strings (or one string). Each needs more than ``skip_queries`` tokens and
    at most ``max_tokens``. Returns an ``ipywidgets.VBox`` with, for scripted use and tests:
    ``.show(prompt_index, layer, head)`` (also moves the controls), ``.pattern_figure``,
    ``.mass_figure``, ``.value_figure`` (``go.FigureWidget``s), ``.stats`` (``widgets.HTML``),
    ``.prompt_dropdown``, ``.layer_slider``, ``.head_dropdown``, ``.data(prompt_index)`` (the
    cached ``PromptCapture``, captured on first use), ``.captured()`` (prompt indices captured so far),
    ``.current()`` (the (prompt, layer, head) shown) and ``.prompts``.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go
    from workbench.figure_widget import FigureWidget, resync  # plotly.js loaded once per page

    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError("sink_explorer needs a non-empty list of prompt strings.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"Prompt {i} is of type {type(p).__name__}, not a string: sink_explorer takes text.")
        if not p.strip():
            raise InputError(f"Prompt {i} is empty: it has no tokens to show.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 2:
        raise InputError(f"max_tokens must be an integer >= 2, got {max_tokens!r}.")
    if not isinstance(skip_queries, int) or isinstance(skip_queries, bool) or skip_queries < 0:
        raise InputError(f"skip_queries must be a non-negative integer, got {skip_queries!r}.")
    texts, lengths = check_prompt_lengths(model, list(prompts), skip_queries,
                                          f"sink_explorer(skip_queries={skip_queries})",
                                          "Use longer prompts or a smaller skip_queries.")
    long = [(i, n) for i, n in enumerate(lengths) if n > max_tokens]
    if long:
        desc = ", ".join(f"prompt {i} has {n} tokens" for i, n in long[:5])
        raise InputError(
            f"{desc}: more than max_tokens={max_tokens} for the sink explorer (it holds all "
            f"{model.info.n_layers} layers x {model.info.n_heads} heads of full T x T patterns per prompt). "
            "Shorten the prompt, raise max_tokens=, or use probes.sinks.sink_report(model, prompts) for long prompts "
            "(attention summaries, no full patterns).")
    n_layers, n_heads, group = model.info.n_layers, model.info.n_heads, model.info.group_size
    cache: dict[int, PromptCapture] = {}

    def data(prompt: int) -> PromptCapture:
        p = _check_index(prompt, len(texts), "Prompt index", f"{len(texts)} prompt(s) were given")
        if p not in cache:
            cache[p] = capture_prompt(model, texts[p], skip_queries, threshold, top_k, max_bytes)
        return cache[p]

    first = data(0)
    pattern_size = dict(width=560, height=520)
    pattern_fig = FigureWidget(pattern_figure(first.patterns[0, 0], first.str_tokens, "", **pattern_size))
    # No legend: the title names the colours (a legend above the plot would sit under plotly's toolbar).
    mass_fig = FigureWidget(data=[
        go.Bar(name="mass received", hovertemplate="%{text}<br>mass %{y:.4f}<extra></extra>", textposition="none"),
        go.Scatter(name="uniform attention", mode="lines", line=dict(color="gray", dash="dot"),
                   hovertemplate="uniform %{y:.4f}<extra></extra>"),
    ])
    mass_fig.update_layout(template="plotly_white", yaxis=dict(title=dict(text="mean attention received")),
                           bargap=0.1, showlegend=False)
    fit_figure(mass_fig, width=VIEW_WIDTH, height=340, title_lines=2)
    value_fig = FigureWidget(data=[go.Bar(name="‖v W_O‖", textposition="none",  # text: hover only
                                             hovertemplate="%{text}<br>‖v W_O^h‖ %{y:.4g}<extra></extra>")])
    value_fig.update_layout(template="plotly_white", yaxis=dict(title=dict(text="‖v_j W_O^h‖")), bargap=0.1)
    fit_figure(value_fig, width=VIEW_WIDTH, height=300)
    stats = widgets.HTML()

    prompt_dd = widgets.Dropdown(options=[(_prompt_label(i, t, n), i) for i, (t, n) in enumerate(zip(texts, lengths))],
                                 value=0, description="prompt", layout=widgets.Layout(width="520px", max_width="100%"))
    slider = widgets.IntSlider(value=0, min=0, max=n_layers - 1, step=1, description="layer", continuous_update=True)
    head_dd = widgets.Dropdown(options=[(f"head {h}", h) for h in range(n_heads)], value=0, description="head")
    state = {"prompt": None, "layer": 0, "head": 0, "syncing": False}

    def set_prompt_axes(d: PromptCapture) -> None:
        """Per-prompt parts (token axes, sizes, baseline): only when the prompt changes."""
        ref = pattern_figure(d.patterns[0, 0], d.str_tokens, "", **pattern_size)
        t = d.n_tokens
        labels = [f"{token_label(s)} ({i})" for i, s in enumerate(d.str_tokens)]
        heat = pattern_fig.data[0]
        heat.x, heat.y = list(range(t)), list(range(t))
        heat.customdata = ref.data[0].customdata
        heat.hovertemplate = ref.data[0].hovertemplate
        pattern_fig.layout.xaxis.update(tickvals=ref.layout.xaxis.tickvals, ticktext=ref.layout.xaxis.ticktext)
        pattern_fig.layout.yaxis.update(tickvals=ref.layout.yaxis.tickvals, ticktext=ref.layout.yaxis.ticktext)
        for fig in (mass_fig, value_fig):
            for tr in fig.data:
                tr.x = list(range(t))
            fig.data[0].text = labels
            _key_axis(fig, labels)
        mass_fig.data[1].y = d.uniform

    def render(prompt: int, layer: int, head: int) -> None:
        d = data(prompt)
        mass = d.mass[layer, head]
        pos, _ = d.sinks.top_keys(0)
        top = [int(p) for p in pos[layer, head].tolist()]
        m0 = float(mass[0])
        with pattern_fig.batch_update(), mass_fig.batch_update(), value_fig.batch_update():
            if state["prompt"] != prompt:
                set_prompt_axes(d)
            pattern_fig.data[0].z = d.patterns[layer, head]
            pattern_fig.layout.title.text = (f"Prompt {prompt}, layer {layer}, head {head}: "
                                             f"{m0:.0%} of attention on position 0")
            mass_fig.data[0].y = mass
            mass_fig.data[0].marker.color = _bar_colours(d.n_tokens, top)
            mass_fig.layout.title.text = (f"L{layer}H{head}: attention mass received per key (queries ≥ {skip_queries})"
                                          "<br>red: position 0 · orange: top sink keys · dotted: uniform attention")
            value_fig.data[0].y = d.norms[layer, head]
            value_fig.data[0].marker.color = _bar_colours(d.n_tokens, [])
            value_fig.layout.title.text = (f"L{layer}H{head}: value norm ‖v_j W_O^h‖ per token "
                                           f"(KV head {head // group})")
        stats.value = _stats_html(d, prompt, layer, head, group)
        state.update(prompt=prompt, layer=layer, head=head)

    def show(prompt_index: int, layer: int, head: int) -> None:
        """Show prompt ``prompt_index``, ``layer``, ``head`` (captures the prompt on first use)."""
        p = _check_index(prompt_index, len(texts), "Prompt index", f"{len(texts)} prompt(s) were given")
        l = _check_index(layer, n_layers, "Layer", f"this model has {n_layers} layers")
        h = _check_index(head, n_heads, "Head", f"this model has {n_heads} query heads per layer")
        render(p, l, h)
        state["syncing"] = True  # move the controls without re-rendering from their observers
        try:
            prompt_dd.value, slider.value, head_dd.value = p, l, h
        finally:
            state["syncing"] = False

    def on_change(_change) -> None:
        if not state["syncing"]:
            render(prompt_dd.value, slider.value, head_dd.value)

    for w in (prompt_dd, slider, head_dd):
        w.observe(on_change, names="value")
    render(0, 0, 0)

    resync(pattern_fig, mass_fig, value_fig)
    box = widgets.VBox([wrap_row([prompt_dd]), wrap_row([slider, head_dd]),
                        wrap_row([pattern_fig, stats]), mass_fig, value_fig])
    box.show = show
    box.data = data
    box.pattern_figure, box.mass_figure, box.value_figure, box.stats = pattern_fig, mass_fig, value_fig, stats
    box.prompt_dropdown, box.layer_slider, box.head_dropdown = prompt_dd, slider, head_dd
    box.prompts = texts
    box.captured = lambda: sorted(cache)
    box.current = lambda: (state["prompt"], state["layer"], state["head"])
    return box


__all__ = ["sink_explorer", "capture_prompt", "PromptCapture", "DEFAULT_MAX_TOKENS"]
