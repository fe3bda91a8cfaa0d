"""The interactive view shared by the sparsity, pruning, low-rank and latent-attention explorers.

``method_explorer(model, prompt, build, methods, strengths, detail)``: a method dropdown and a strength
slider. For each (method, strength), computed on first view and cached:

- residual drift per layer on the prompt: relative error ||r' - r|| / ||r|| and cosine of ``resid_post``
  against the unmodified model (mean over positions, position 0 left out);
- the next-token distribution at the last position: top-5 of the unmodified model vs the method's, and
  KL(base || method);
- a method-specific per-layer panel: ``detail(model, method_name, strength, built) -> (y values per layer,
  axis title)`` (e.g. which blocks are dropped, KV bytes per layer, measured sparsity).

``build(method_name, strength) -> intervention`` makes the method (calibrating on first use). Moving the
controls swaps data inside ``FigureWidget.batch_update``.
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from workbench.errors import InputError
from workbench.view_layout import fit_figure, wrap_row


@dataclass
class Effect:
    rel_err: torch.Tensor      # (L,)
    cos: torch.Tensor          # (L,)
    top5_base: list            # [(token, prob)]
    top5: list
    kl: float
    detail: list               # per-layer values of the method-specific panel
    detail_title: str


def _two_lines(title: str, width: int = 44) -> str:
    """A title broken at word boundaries onto at most two lines (``<br>``), so it fits a 415 px figure."""
    lines = textwrap.wrap(title, width)
    return "<br>".join(lines[:1] + [" ".join(lines[1:])]) if len(lines) > 1 else title


def _resid_and_last(model, ids, interventions=()):
    n = model.info.n_layers
    run = model.run(ids, capture=["resid_post"], layers=list(range(n)), logits="last", interventions=interventions)
    resid = torch.stack([run["resid_post", l][0] for l in range(n)]).double()  # (L, T, d)
    return resid, torch.log_softmax(run.last_logits[0].double(), -1)


def _top5(model, lp):
    v, i = lp.exp().topk(5)
    return [(model.tokenizer.decode([int(t)]), float(p)) for t, p in zip(i, v)]


def method_explorer(model, prompt: str, build: Callable, methods: Sequence[str], strengths: Sequence,
                    detail: Callable | None = None, strength_name: str = "strength", max_tokens: int = 256):
    """See the module docstring. Returns an ``ipywidgets.VBox`` with ``.show(method, strength)``,
    ``.effect(method, strength)`` (the cached ``Effect``), ``.computed()``, ``.drift_figure``,
    ``.output_figure``, ``.detail_figure``, ``.summary``, ``.method_dropdown``, ``.strength_slider``."""
    import ipywidgets as widgets
    import plotly.graph_objects as go

    if not isinstance(prompt, str) or not prompt:
        raise InputError("The explorer takes one non-empty prompt string.")
    methods, strengths = list(methods), list(strengths)
    if not methods or not strengths:
        raise InputError("The explorer needs at least one method and one strength.")
    ids, lengths = model.tokenize(prompt)
    if lengths[0] > max_tokens:
        raise InputError(f"The prompt has {lengths[0]} tokens, more than max_tokens={max_tokens}; shorten it.")
    with model.without_interventions():
        base_resid, base_lp = _resid_and_last(model, ids)
    n = model.info.n_layers
    cache: dict = {}
    state = {"syncing": False, "current": None}

    def check(name, s):
        if name not in methods:
            raise InputError(f"Method {name!r} is not in this explorer: {methods}.")
        if s not in strengths:
            raise InputError(f"{strength_name} {s!r} is not in this explorer: {strengths}.")
        return name, s

    def effect(name, s) -> Effect:
        key = check(name, s)
        if key not in cache:
            iv = build(name, s)
            with model.without_interventions():
                resid, lp = _resid_and_last(model, ids, [iv] if iv is not None else ())
            diff = (resid - base_resid)[:, 1:]
            rel = (diff.norm(dim=-1) / base_resid[:, 1:].norm(dim=-1).clamp_min(1e-12)).mean(-1)
            cos = torch.nn.functional.cosine_similarity(resid[:, 1:], base_resid[:, 1:], dim=-1).mean(-1)
            kl = float((base_lp.exp() * (base_lp - lp)).sum())
            vals, title = detail(model, name, s, iv) if detail is not None else ([0.0] * n, "")
            cache[key] = Effect(rel.float(), cos.float(), _top5(model, base_lp), _top5(model, lp), kl,
                                [float(v) for v in vals], title)
        return cache[key]

    first = effect(methods[0], strengths[0])
    layers = list(range(n))
    drift = go.FigureWidget()
    drift.add_scatter(x=layers, y=first.rel_err.tolist(), name="relative error", mode="lines+markers")
    drift.add_scatter(x=layers, y=first.cos.tolist(), name="cosine", mode="lines+markers", yaxis="y2")
    drift.update_layout(title="residual drift vs the unmodified model", xaxis_title="layer (resid_post)",
                        yaxis={"title": "||r' - r|| / ||r||"}, yaxis2={"title": "cosine", "overlaying": "y", "side": "right"})
    out = go.FigureWidget()
    out.add_bar(x=[t for t, _ in first.top5_base], y=[p for _, p in first.top5_base], name="unmodified")
    out.add_bar(x=[t for t, _ in first.top5], y=[p for _, p in first.top5], name="method")
    out.update_layout(title="next token", barmode="group")
    det = go.FigureWidget()
    det.add_bar(x=layers, y=first.detail)
    det.update_layout(title=_two_lines(first.detail_title), xaxis_title="layer")
    for f in (drift, out, det):  # two side by side at Lab's default width, the third wraps below
        fit_figure(f, width=415, height=380, title_lines=2, margin={"l": 50, "r": 50, "b": 40})
        f.update_layout(legend={"x": 0.01, "y": 0.01, "xanchor": "left", "yanchor": "bottom",
                                "bgcolor": "rgba(255,255,255,0.7)"})
    summary = widgets.HTML()
    dropdown = widgets.Dropdown(options=methods, value=methods[0], description="method")
    slider = widgets.SelectionSlider(options=strengths, value=strengths[0], description=strength_name,
                                     continuous_update=False)

    def render(name, s):
        e = effect(name, s)
        with drift.batch_update(), out.batch_update(), det.batch_update():
            drift.data[0].y, drift.data[1].y = e.rel_err.tolist(), e.cos.tolist()
            drift.layout.title.text = f"{name} @ {s}: residual drift"
            out.data[0].x, out.data[0].y = [t for t, _ in e.top5_base], [p for _, p in e.top5_base]
            out.data[1].x, out.data[1].y = [t for t, _ in e.top5], [p for _, p in e.top5]
            out.layout.title.text = f"next token: KL {e.kl:.4f}"
            det.data[0].y = e.detail
            det.layout.title.text = _two_lines(e.detail_title)
        summary.value = (f"<b>{html.escape(str(name))} @ {html.escape(str(s))}</b>: final-layer relative error "
                         f"{float(e.rel_err[-1]):.3f}, cosine {float(e.cos[-1]):.3f}; next-token KL {e.kl:.4f}; top-1 "
                         f"{html.escape(repr(e.top5_base[0][0]))} -> {html.escape(repr(e.top5[0][0]))}")
        state["current"] = (name, s)

    def show(name, s) -> Effect:
        key = check(name, s)
        render(*key)
        state["syncing"] = True
        try:
            dropdown.value, slider.value = key
        finally:
            state["syncing"] = False
        return cache[key]

    def on_change(_c):
        if not state["syncing"]:
            render(dropdown.value, slider.value)

    dropdown.observe(on_change, names="value")
    slider.observe(on_change, names="value")
    render(methods[0], strengths[0])
    box = widgets.VBox([wrap_row([dropdown, slider]), wrap_row([drift, out, det]), summary])
    box.show, box.effect, box.computed = show, effect, (lambda: sorted(cache, key=str))
    box.current = lambda: state["current"]
    box.drift_figure, box.output_figure, box.detail_figure = drift, out, det
    box.summary, box.method_dropdown, box.strength_slider = summary, dropdown, slider
    return box
