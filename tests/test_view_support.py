"""Support for the interactive views, without a browser: progress bars, explorer layout, the
shared-module FigureWidget. (tests/test_browser.py checks the same views in a real browser.)"""
import io

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import pytest

from workbench.figure_widget import FigureWidget, resync
from workbench.progress import progress, progress_disabled
from workbench.view_layout import TOOLBAR_BAND, VIEW_WIDTH, fit_figure, pattern_figure, tick_budget, wrap_row


# ------------------------------------------------------------------------------------------ progress
def test_progress_is_silent_under_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = io.StringIO()
    assert progress_disabled()
    assert list(progress(range(5), desc="x", file=out)) == [0, 1, 2, 3, 4]
    with progress(total=10, file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_progress_draws_when_enabled(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress_disabled()
    out = io.StringIO()
    assert list(progress(range(5), desc="sweep", file=out)) == list(range(5))
    assert "sweep" in out.getvalue() and "/5" in out.getvalue()  # drawn (then cleared: leave=False)
    out = io.StringIO()
    list(progress(range(1), desc="tiny", file=out))  # fewer than min_total steps: no bar
    assert out.getvalue() == ""


# ------------------------------------------------------------------------------------------ layout
def test_fit_figure_keeps_the_title_out_of_the_toolbar_band():
    fig = go.Figure(go.Bar(y=[1, 2]), layout=dict(title="a title", width=1200, height=400))
    fit_figure(fig, title_lines=2)
    assert fig.layout.width == VIEW_WIDTH  # capped
    t = fig.layout.title
    assert t.yref == "container" and t.yanchor == "top"
    top_px = (1 - t.y) * fig.layout.height  # where the title's top edge hangs, from the figure's top
    assert top_px >= TOOLBAR_BAND
    assert fig.layout.margin.t >= top_px + 2 * 20  # room for two title lines above the plot
    sq = go.Figure(go.Heatmap(z=[[1]]), layout=dict(width=1020, height=900, margin=dict(t=50)))
    fit_figure(sq, square=True)
    assert sq.layout.width == VIEW_WIDTH and sq.layout.height == 900 - (1020 - VIEW_WIDTH) + (sq.layout.margin.t - 50)


def test_pattern_figure_labels_only_what_fits():
    toks = [f"t{i}" for i in range(200)]
    fig = pattern_figure(np.eye(200), toks, "p", width=560, height=520)
    assert fig.layout.width == 560 and fig.layout.height == 520
    assert len(fig.layout.yaxis.tickvals) <= tick_budget(520 - fig.layout.margin.t - 90)
    assert len(fig.layout.yaxis.tickvals) >= 10


def test_wrap_row_wraps_instead_of_squeezing():
    a, b = widgets.Dropdown(options=["x"]), widgets.IntSlider()
    fw = FigureWidget(go.Bar(y=[1]))
    row = wrap_row([a, b, fw])
    assert row.layout.flex_flow == "row wrap"
    assert a.layout.flex == "0 0 auto" and b.layout.flex == "0 0 auto"
    assert fw.layout.title.text is None  # plotly's layout was left alone


# ------------------------------------------------------------------------------------------ FigureWidget
def test_figure_widget_ships_plotly_once_per_page():
    fw = FigureWidget(go.Heatmap(z=[[1, 2], [3, 4]]))
    assert isinstance(fw, go.FigureWidget)
    esm = fw._esm
    assert len(esm) < 5_000 and "globalThis[KEY]" in esm and "import(url)" in esm
    assert fw._plotly_bundle == str(go.FigureWidget._esm) and len(fw._plotly_bundle) > 1_000_000
    # initialize must not wait for plotly.js (anywidget gives it 2 s); render does
    init = esm[esm.index("initialize(ctx)"):esm.index("async render")]
    assert "await" not in init.split("{", 1)[1].split("ready =")[0]
    assert "await ready" in esm


def test_resync_sends_the_current_state():
    fw = FigureWidget(go.Bar(y=[1, 2, 3]))
    with fw.batch_update():
        fw.data[0].y = [7, 8, 9]
        fw.layout.title.text = "after"
    assert fw._widget_layout.get("title") is None  # updates travel as deltas, not in the state
    resync(fw, "not a figure")
    assert list(fw._widget_data[0]["y"]) == [7, 8, 9] and fw._widget_layout["title"]["text"] == "after"


def test_explorers_use_the_shared_module_figure(tiny_llama):
    from workbench.explorer import attention_explorer

    box = attention_explorer(tiny_llama, "the cat sat on the mat")
    assert isinstance(box.figure, FigureWidget)
    assert box.figure._widget_layout["title"]["text"] == "Layer 0, head 0"  # resynced before display
    assert box.figure.layout.width <= VIEW_WIDTH


@pytest.mark.parametrize("name", ["harvest", "train", "harness", "concepts", "active_dormant", "patching"])
def test_long_loops_report_progress(name):
    import importlib

    mod = {"harvest": "probes.transcoders.harvest", "train": "probes.transcoders.train",
           "harness": "efficiency.kv.harness", "concepts": "probes.frames.concepts",
           "active_dormant": "probes.active_dormant", "patching": "probes.factual.patching"}[name]
    assert importlib.import_module(mod).progress is progress


# ------------------------------------------------------------------------------------------ browser tests
def test_browser_tests_fail_clearly_without_chromium(monkeypatch, tmp_path):
    """No Chromium: the browser tests fail (not skip) with a message saying how to install it."""
    import lab_browser

    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    assert lab_browser.chromium_path() is None
    with pytest.raises(RuntimeError, match=r"make system.*apt-get install -y chromium(.|\n)*not browser"):
        lab_browser.launch_chromium(playwright=None)
