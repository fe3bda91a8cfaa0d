"""``lab_explorer``: the interactive efficiency lab (ipywidgets + plotly ``FigureWidget``).

Pick a family, a method and its strength (one control per knob, built from the knob's range), press *run*:
the method runs against the cached baseline (a progress bar while it runs), then the cost and quality tables
and the internals panel update in place; the panel dropdown switches panels without recomputing; *export*
writes the panel shown (``workbench.save_figure``: .html, .png, .svg, .pdf). Results are kept per setting, so
going back to a setting is instant.
"""
from __future__ import annotations

import html

from efficiency import get_method, list_methods
from efficiency.method import Knob
from workbench.errors import InputError
from workbench.view_layout import fit_figure

from .effects import effects
from .figures import replace_figure
from .report import EffectReport

BIG_RANGE = 4096  # wider integer ranges get a number box instead of a slider


def knob_widget(name: str, knob: Knob, value):
    """An ipywidgets control for one knob, starting at ``value``."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    if knob.optional and knob.kind in ("int", "float"):
        # None means "the method's default": a text box, empty for None
        return widgets.Text(value="" if value is None else str(value), description=name, style=style,
                            placeholder=f"{knob.range_text()}; empty: default")
    if knob.kind == "bool":
        return widgets.Checkbox(value=bool(value), description=name, style=style)
    if knob.kind == "choice":
        choices = list(knob.choices) + ([None] if knob.optional and None not in knob.choices else [])
        opts = [(repr(c) if c is None else str(c), c) for c in choices]
        return widgets.Dropdown(options=opts, value=value, description=name, style=style)
    if knob.kind == "int":
        lo, hi = int(knob.low if knob.low is not None else 0), int(knob.high if knob.high is not None else 1 << 20)
        if knob.high_open:
            hi -= 1
        if hi - lo > BIG_RANGE:
            return widgets.BoundedIntText(value=int(value), min=lo, max=hi, description=name, style=style)
        return widgets.IntSlider(value=int(value), min=lo, max=hi, description=name, style=style,
                                 continuous_update=False)
    if knob.kind == "float":
        lo, hi = float(knob.low if knob.low is not None else 0.0), float(knob.high if knob.high is not None else 1.0)
        step = (hi - lo) / 100
        if knob.high_open:
            hi -= step
        return widgets.FloatSlider(value=float(value), min=lo, max=hi, step=step, description=name, style=style,
                                   continuous_update=False, readout_format=".3f")
    if knob.kind == "layers":
        text = "" if value is None else ",".join(str(v) for v in value)
        return widgets.Text(value=text, description=name, placeholder="e.g. 0,3 (empty: default)", style=style)
    raise InputError(f"Knob {name!r} has an unknown kind {knob.kind!r}.")


def knob_value(knob: Knob, widget):
    """The knob's value from its control (None for an empty optional field)."""
    if knob.optional and knob.kind in ("int", "float"):
        t = widget.value.strip()
        if not t:
            return None
        try:
            return int(t) if knob.kind == "int" else float(t)
        except ValueError:
            raise InputError(f"{t!r} is not a number ({knob.range_text()}).") from None
    if knob.kind == "layers":
        t = widget.value.strip()
        if not t:
            return None
        try:
            return [int(v) for v in t.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"Layers must be integers separated by commas, got {t!r}.") from None
    return widget.value


def _table_html(df) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="")


def lab_explorer(model, suite="quick", families=None, transcoders="auto", panel: str = "overview", reuse=None):
    """The interactive lab over every registered method (or those of ``families``); ``reuse``: reports already
    computed on this suite (shown at once when their setting is chosen).

    Returns an ``ipywidgets.VBox`` with ``.run(name=None, **knobs)`` (run the selected or given setting and show
    it; returns the ``EffectReport``), ``.show_panel(panel)``, ``.export(path)``, ``.reports`` (label -> report),
    and the controls ``.family_dropdown``, ``.method_dropdown``, ``.knob_widgets``, ``.panel_dropdown``,
    ``.run_button``, ``.figure`` (``go.FigureWidget``), ``.cost_html``, ``.quality_html``, ``.status``.
    """
    import ipywidgets as widgets
    import plotly.graph_objects as go

    table = list_methods()
    if families is not None:
        families = [families] if isinstance(families, str) else list(families)
        table = table[table.family.isin(families)]
    if table.empty:
        raise InputError(f"No registered efficiency method in families {families}.")
    fams = list(dict.fromkeys(table.family))
    by_family = {f: list(table[table.family == f].name) for f in fams}
    fam_dd = widgets.Dropdown(options=fams, value=fams[0], description="family")
    meth_dd = widgets.Dropdown(options=by_family[fams[0]], value=by_family[fams[0]][0], description="method")
    knob_box = widgets.VBox()
    run_btn = widgets.Button(description="run", button_style="primary", icon="play")
    status = widgets.HTML()
    cost_html, quality_html = widgets.HTML(), widgets.HTML()
    from .report import PANELS

    panel_dd = widgets.Dropdown(options=list(PANELS), value=panel, description="panel")
    fig = go.FigureWidget()
    fig.update_layout(height=460, template="plotly_white", title="run a method to see its internals")
    path_txt = widgets.Text(value="out/lab_panel.html", description="export to")
    export_btn = widgets.Button(description="export", icon="download")
    state: dict = {"knobs": {}, "current": None}
    from .suite import get_suite

    text = get_suite(suite).describe()
    reports: dict[str, EffectReport] = {r.method: r for r in (reuse or [])
                                        if isinstance(r, EffectReport) and r.suite_text == text
                                        and r.model_name == model.info.name}

    def build_knobs(name: str) -> None:
        m = get_method(name)
        state["knobs"] = {k: (kn, knob_widget(k, kn, getattr(m, k))) for k, kn in type(m).knobs.items()}
        knob_box.children = [w for _, w in state["knobs"].values()]

    def on_family(ch) -> None:
        meth_dd.options = by_family[ch["new"]]
        meth_dd.value = by_family[ch["new"]][0]

    def on_method(ch) -> None:
        if ch["new"] is not None:
            build_knobs(ch["new"])

    def show_panel(p: str) -> None:
        if p not in PANELS:
            raise InputError(f"Unknown panel {p!r}; panels: {', '.join(PANELS)}.")
        if panel_dd.value != p:
            panel_dd.value = p  # the observer redraws
            return
        r = state["current"]
        if r is not None:
            replace_figure(fig, r.figure(p))
            fit_figure(fig, title_lines=2)  # at most the notebook's width; the two-line title clears the toolbar

    def render(r: EffectReport) -> None:
        state["current"] = r
        cost_html.value = f"<b>Cost</b> (saving: {html.escape(r.saving)})" + _table_html(r.cost_table())
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
        quality_html.value = "<b>Quality</b>" + _table_html(r.quality_table()) + (f"<ul>{notes}</ul>" if notes else "")
        show_panel(panel_dd.value)

    def run(name: str | None = None, **knobs) -> EffectReport:
        if name is not None:
            fam = table[table.name == name].family
            if fam.empty:
                raise InputError(f"{name!r} is not a method of this explorer: {', '.join(table.name)}.")
            fam_dd.value = fam.iloc[0]
            meth_dd.value = name
            for k, v in knobs.items():
                if k not in state["knobs"]:
                    raise InputError(f"{name}: unknown knob {k!r}; knobs: {', '.join(state['knobs']) or 'none'}.")
                kn, w = state["knobs"][k]
                if kn.kind == "layers":
                    w.value = "" if v is None else ",".join(map(str, v))
                elif kn.optional and kn.kind in ("int", "float"):
                    w.value = "" if v is None else str(v)
                else:
                    w.value = v
        values = {k: knob_value(kn, w) for k, (kn, w) in state["knobs"].items()}
        method = get_method(meth_dd.value, **values)
        if method.label not in reports:
            status.value = f"running <code>{html.escape(method.label)}</code> …"
            try:
                reports[method.label] = effects(model, method, suite, transcoders=transcoders)
            except Exception as e:
                status.value = f"<span style='color:#c33'>{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>"
                raise
        r = reports[method.label]
        status.value = (f"<code>{html.escape(method.label)}</code>: method pass {r.seconds:.1f} s, "
                        f"{r.forward_passes['method']} forwards (baseline reused: {r.forward_passes['baseline'] == 0})")
        render(r)
        return r

    def export(path: str):
        from workbench import save_figure

        r = state["current"]
        if r is None:
            raise InputError("Nothing to export yet: run a method first.")
        out = save_figure(r.figure(panel_dd.value), path)
        status.value = f"exported {html.escape(panel_dd.value)} of <code>{html.escape(r.method)}</code> to {html.escape(str(out))}"
        return out

    def on_run(_b) -> None:
        try:
            run()
        except Exception:  # shown in the status line; the widget stays usable
            pass

    def on_export(_b) -> None:
        try:
            export(path_txt.value)
        except Exception as e:
            status.value = f"<span style='color:#c33'>{html.escape(str(e))}</span>"

    fam_dd.observe(on_family, names="value")
    meth_dd.observe(on_method, names="value")
    panel_dd.observe(lambda ch: show_panel(ch["new"]), names="value")
    run_btn.on_click(on_run)
    export_btn.on_click(on_export)
    build_knobs(meth_dd.value)
    controls = widgets.VBox([widgets.HBox([fam_dd, meth_dd]), knob_box, widgets.HBox([run_btn, status])])
    box = widgets.VBox([controls, widgets.HBox([cost_html, quality_html]), panel_dd, fig,
                        widgets.HBox([path_txt, export_btn])])
    box.run, box.show_panel, box.export, box.reports = run, show_panel, export, reports
    box.family_dropdown, box.method_dropdown, box.panel_dropdown, box.run_button = fam_dd, meth_dd, panel_dd, run_btn
    box.figure, box.cost_html, box.quality_html, box.status = fig, cost_html, quality_html, status
    box.knob_widgets = lambda: {k: w for k, (_, w) in state["knobs"].items()}
    return box


__all__ = ["lab_explorer", "knob_widget", "knob_value"]
