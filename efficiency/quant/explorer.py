"""Interactive view of quantization on one text: choose method, bits, group and rotation; see where it breaks.

``quantization_explorer(model, text)`` shows, for the chosen setting, the residual error per layer (sink
against the other tokens), the local per-token error of the activation grid on the linears' inputs (when
activations are quantized), the next-token KL per position, and a summary line (KL, top-1 agreement, packed
bytes). Each setting is computed on first view (``analysis.quantization_error``) and cached; moving the
controls swaps data inside ``FigureWidget.batch_update``.

Methods: "rtn" and "gptq" (weights; with activation bits or a rotation they run as ``wa_quant`` with that
weight quantizer), "dfrot" (refined rotation, activation bits required), "int8_dynamic" (the real int8 path;
ignores the other controls). "gptq" and "dfrot" calibrate on ``calibration_texts`` and are offered only when
those are given. On SmolLM2, 4-bit weights with group 32 (asymmetric) reproduce the weights exactly (they
were stored that way), so that setting shows only the activation error.
"""
from __future__ import annotations

import html

import numpy as np

from workbench.errors import InputError
from workbench.view_layout import fit_figure, wrap_row

from .analysis import OTHER_COLOR, SINK_COLOR, QuantErrorResult, quantization_error
from .grids import GROUPS

METHODS = ("rtn", "gptq", "dfrot", "int8_dynamic")
W_BITS = (None, 2, 3, 4, 8)
A_BITS = (None, 4, 8)
ROTATIONS = ("none", "rh", "ro")


def build_method(model, method: str, w_bits, group, a_bits, rotation, sym: bool = True, calibration_texts=None,
                 calibration: tuple[int, int] = (8, 256)):
    """The efficiency method for one explorer setting (module docstring); calibrated when it needs it on
    ``calibration_texts``, with ``calibration`` = (GPTQ windows, tokens per window; DFRot's one sample)."""
    n_samples, seq_len = calibration
    from ..registry import get_method

    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}.")
    if method == "int8_dynamic":
        return get_method("int8_dynamic")
    if method == "dfrot":
        if a_bits is None:
            raise InputError("dfrot refines the rotation for activation quantization: choose activation bits.")
        m = get_method("dfrot", w_bits=w_bits, a_bits=a_bits, group=group, w_sym=sym, calib_tokens=seq_len)
    elif a_bits is None and rotation == "none":
        if w_bits is None:
            raise InputError("Nothing to quantize: choose weight bits and/or activation bits.")
        m = get_method(method, bits=w_bits, group=group, sym=sym,
                       **({"n_samples": n_samples, "seq_len": seq_len} if method == "gptq" else {}))
    else:
        m = get_method("wa_quant", w_bits=w_bits, a_bits=a_bits, group=group if w_bits else None, w_sym=sym,
                       weights=method, rotation=rotation, online_had=rotation != "none", n_samples=n_samples,
                       seq_len=seq_len)
    if m.needs_calibration or getattr(m, "calibrates", False):
        if calibration_texts is None:
            raise InputError(f"{method} calibrates: pass calibration_texts= to the explorer.")
        m.prepare(model, calibration_texts)
    return m


def _summary_html(r: QuantErrorResult, cost) -> str:
    o = [i for i in range(len(r.str_tokens)) if i != r.sink]
    last = r.n_layers - 1
    return (f"<b>{html.escape(r.method)}</b><br>next-token KL {r.kl[o].mean():.4f} nats (sink position "
            f"{r.kl[r.sink]:.4f}); top-1 kept {r.top1_same.mean():.0%}; residual error after the last block: sink "
            f"{r.resid_error[last, r.sink]:.3g}, others (median) {np.median(r.resid_error[last, o]):.3g}<br>"
            f"weights {cost.weight_bytes / 2**20:.1f} MiB vs {cost.baseline_weight_bytes / 2**20:.1f} MiB "
            f"({cost.saving}{'; packed size, the simulation computes in float32' if cost.saving != 'real' else ''})")


def _short_title(key: tuple) -> str:
    """``(method, w_bits, group, a_bits, rotation)`` in a few words (a method's full label can run to 200 characters)."""
    method, w_bits, group, a_bits, rotation = key
    if method == "int8_dynamic":
        return "int8 dynamic (fbgemm)"
    parts = [method, f"W{w_bits}" if w_bits else "W float", "per channel" if group is None else f"group {group}",
             f"A{a_bits}" if a_bits else "A float"]
    return " · ".join(parts + ([f"rotation {rotation}"] if rotation != "none" else []))


def quantization_explorer(model, text: str, calibration_texts=None, max_tokens: int = 256, sym: bool = True,
                          calibration: tuple[int, int] = (8, 256)):
    """Dropdowns for method, weight bits, group, activation bits and rotation over ``quantization_error`` results.

    Returns an ``ipywidgets.VBox`` with ``.show(method, w_bits, group, a_bits, rotation)`` (computes, displays
    and returns the ``QuantErrorResult``), ``.result(...)`` (the same without displaying), ``.computed()``
    (settings computed so far), ``.error_figure`` and ``.kl_figure`` (``go.FigureWidget``), ``.summary``
    (``widgets.HTML``) and the dropdowns ``.controls`` (dict by name). ``sym``: symmetric weight grids;
    ``calibration``: (windows, tokens per window) for GPTQ, and DFRot's one sample of that many tokens."""
    import ipywidgets as widgets
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    _, lengths = model.tokenize(text) if isinstance(text, str) and text else (None, [0])
    if not lengths[0]:
        raise InputError("quantization_explorer takes one non-empty text.")
    if lengths[0] > max_tokens:
        raise InputError(f"The text has {lengths[0]} tokens, more than max_tokens={max_tokens}; shorten it or raise "
                         "max_tokens=.")
    methods = [m for m in METHODS if calibration_texts is not None or m not in ("gptq", "dfrot")]
    dims = {model.linear_weight(0, k).shape[1] for k in model.linear_kinds}
    groups = [g for g in GROUPS if g is None or all(n % g == 0 for n in dims)]
    results: dict[tuple, tuple] = {}
    state = {"syncing": False, "current": None}

    def key_of(method, w_bits, group, a_bits, rotation) -> tuple:
        for name, v, allowed in (("method", method, methods), ("w_bits", w_bits, W_BITS), ("group", group, groups),
                                 ("a_bits", a_bits, A_BITS), ("rotation", rotation, ROTATIONS)):
            if v not in allowed:
                raise InputError(f"{name}={v!r} is not offered here; choose one of {list(allowed)}.")
        if method == "int8_dynamic":
            return ("int8_dynamic", None, None, None, "none")
        return (method, w_bits, group if w_bits else None, a_bits, rotation if method != "dfrot" else "rh")

    def result(method, w_bits, group, a_bits, rotation):
        key = key_of(method, w_bits, group, a_bits, rotation)
        if key not in results:
            m = build_method(model, *key, sym=sym, calibration_texts=calibration_texts, calibration=calibration)
            results[key] = (quantization_error(model, m, text, max_tokens), m.cost(model, lengths[0]))
        return results[key]

    err_fig = go.FigureWidget(make_subplots(rows=1, cols=2, subplot_titles=(
        "residual error after each block", "activation grid error on the linears' inputs")))
    err_fig.add_scatter(x=[], y=[], name="sink: residual", line={"color": SINK_COLOR}, row=1, col=1)
    err_fig.add_scatter(x=[], y=[], name="others (median): residual", line={"color": OTHER_COLOR}, row=1, col=1)
    err_fig.add_scatter(x=[], y=[], name="sink: inputs (mean of sites)", line={"color": SINK_COLOR, "dash": "dash"},
                        row=1, col=2)
    err_fig.add_scatter(x=[], y=[], name="others: inputs (mean of sites)", line={"color": OTHER_COLOR, "dash": "dash"},
                        row=1, col=2)
    err_fig.update_yaxes(type="log")
    fit_figure(err_fig, height=440, margin={"l": 50, "r": 10, "b": 40})
    err_fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.18, "xanchor": "left", "yanchor": "top"},
                          margin={"b": 90})
    kl_fig = go.FigureWidget(go.Bar(x=[], y=[]))
    kl_fig.update_layout(title="next-token KL(float ‖ quantized) per position", xaxis_title="position",
                         yaxis_title="KL (nats)")
    fit_figure(kl_fig, height=300, margin={"l": 50, "r": 10, "b": 40})
    summary = widgets.HTML()
    controls = {
        "method": widgets.Dropdown(options=methods, value="rtn", description="method"),
        "w_bits": widgets.Dropdown(options=list(W_BITS), value=4, description="weight bits"),
        "group": widgets.Dropdown(options=groups, value=None, description="group"),
        "a_bits": widgets.Dropdown(options=list(A_BITS), value=None, description="act. bits"),
        "rotation": widgets.Dropdown(options=list(ROTATIONS), value="none", description="rotation"),
    }

    def render(*setting) -> QuantErrorResult:
        try:
            r, cost = result(*setting)
        except InputError as e:
            summary.value = f"<span style='color:#c33'>{html.escape(str(e))}</span>"
            return None
        key = key_of(*setting)
        df = r.by_layer()
        sites = [s for s in r.input_error]
        with err_fig.batch_update(), kl_fig.batch_update():
            err_fig.data[0].x, err_fig.data[0].y = df.layer, df.resid_sink
            err_fig.data[1].x, err_fig.data[1].y = df.layer, df.resid_others_median
            if sites:
                err_fig.data[2].x, err_fig.data[2].y = df.layer, df[[f"{s}_sink" for s in sites]].mean(1)
                err_fig.data[3].x, err_fig.data[3].y = df.layer, df[[f"{s}_others_mean" for s in sites]].mean(1)
            else:
                for t in err_fig.data[2:]:
                    t.x, t.y = [], []
            err_fig.layout.title.text = _short_title(key)  # the full label is in the summary
            kl_fig.data[0].x, kl_fig.data[0].y = list(range(len(r.kl))), r.kl
            kl_fig.data[0].marker.color = [SINK_COLOR if i == r.sink else OTHER_COLOR for i in range(len(r.kl))]
            kl_fig.data[0].hovertext = r.str_tokens
        summary.value = _summary_html(r, cost)
        state["current"] = key
        return r

    def values():
        return tuple(controls[k].value for k in ("method", "w_bits", "group", "a_bits", "rotation"))

    def show(method="rtn", w_bits=4, group=None, a_bits=None, rotation="none"):
        """Display one setting (computed on first use), move the controls there, and return its result."""
        key_of(method, w_bits, group, a_bits, rotation)
        state["syncing"] = True
        try:
            for k, v in zip(("method", "w_bits", "group", "a_bits", "rotation"), (method, w_bits, group, a_bits, rotation)):
                controls[k].value = v
        finally:
            state["syncing"] = False
        return render(method, w_bits, group, a_bits, rotation)

    def on_change(_change) -> None:
        if not state["syncing"]:
            render(*values())

    for c in controls.values():
        c.observe(on_change, names="value")
    render(*values())
    box = widgets.VBox([wrap_row(list(controls.values())), err_fig, kl_fig, summary])
    box.show, box.result = show, (lambda *a, **k: result(*a, **k)[0])
    box.computed = lambda: sorted(results, key=str)
    box.current = lambda: state["current"]
    box.error_figure, box.kl_figure, box.summary, box.controls = err_fig, kl_fig, summary, controls
    return box


__all__ = ["quantization_explorer", "build_method", "METHODS"]
