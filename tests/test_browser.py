"""Every interactive view in a real JupyterLab and a real browser; notebooks open as notebooks.

Python Playwright drives the system Chromium (``make system`` installs Debian's ``chromium``;
Playwright's own browser download is never used). One JupyterLab server serves the whole module:
started on a free loopback port with a random token, rooted in a temporary copy of
``notebooks/``, with kernels from this interpreter (the project venv) and the Lab settings the
project ships in ``jupyter-config/`` (the ones ``make lab`` uses). The server and every kernel are
shut down at the end, also when a test fails (``lab_browser.LabServer.close``).

For each view in ``VIEWS`` a small notebook (tiny models, small sizes) is written into that copy,
opened in Lab and run; ``lab_browser.check_view`` then checks that the view renders (plotly SVG
figures, controls, no "Error displaying widget"), that no figure title sits under plotly's toolbar
or legend and the view fits the notebook at a 1280 px window, that each interaction changes the
figures it names (title or data), and that the browser console logged no error. Screenshots go to
``out/browser/`` (``<view>.png`` as rendered, ``<view>-page.png`` the whole window,
``<view>-<n>.png`` after interaction n), and stay there as artifacts.

Run only these tests:  ``.venv/bin/python -m pytest -m browser tests/test_browser.py``
(or skip them with ``-m "not browser"``). Without Chromium they fail and say how to install it.

Adding a view (e.g. a new ``<thing>_explorer``): append a ``ViewSpec`` to ``VIEWS``:

    ViewSpec(
        name="thing",                                   # test id and screenshot name
        code=(SETUP, "from mypkg.explorer import thing_explorer\\nthing_explorer(model, ...)"),
        n_figures=2,                                    # plotly figures the view shows
        controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("slider", "layer", figures=(0, 1)),      # label = description
                      Interaction("dropdown", "policy", 1, figures=(0,))),  # option index or label
    )

``SETUP`` loads ``tiny-llama`` as ``model``; the last cell's output must be the view. Keep the
sizes small: each view costs one kernel (about 10 s of imports on 2 cores) plus its own compute.
"""
from __future__ import annotations

import shutil
import textwrap

import pytest

from lab_browser import (LAB_CONFIG, ROOT, VIEWPORT, Interaction, LabPage, LabServer, ViewCheckError, ViewSpec,
                         check_view, chromium_path, launch_chromium, NO_CHROMIUM, write_view_notebook)

pytestmark = pytest.mark.browser

SHOTS = ROOT / "out" / "browser"
VIEW_DIR = "browser_views"  # inside the server root (the copy of notebooks/)
PROMPT = "The Eiffel Tower is in Paris. The Colosseum is in Rome. The Brandenburg Gate is in"
SETUP = textwrap.dedent("""\
    import workbench as wb
    model = wb.load("tiny-llama")
    PROMPT = %r
    """) % PROMPT
RANDOM_TRANSCODERS = textwrap.dedent("""\
    import sys
    sys.path.insert(0, %r)
    from transcoder_helpers import random_tc  # seeded random SAELens transcoders
    d = model.info.d_model
    tcs = {0: random_tc(d, seed=1, skip=True), 1: random_tc(d, seed=2)}
    """) % str(ROOT / "tests")


EFFICIENCY_SETUP = textwrap.dedent("""\
    import sys
    sys.path.insert(0, %r)
    from efficiency_helpers import TEXTS, deep_tiny_llama  # a seeded random 6-block Llama, calibration texts
    model = deep_tiny_llama()
    PROMPT = "Bread is made from flour, water, salt and yeast, then baked"
    SMALL = {"window": 32, "n_windows": 2}
    """) % str(ROOT / "tests")


def _wordnet_missing():
    from probes.frames.wordnet import wordnet_available

    return None if wordnet_available() else "WordNet 3.0 (Debian wordnet-base) is not installed: run `make system`"


VIEWS = [
    ViewSpec(
        name="attention_explorer",
        code=(SETUP, "from workbench.explorer import attention_explorer\nattention_explorer(model, PROMPT)"),
        n_figures=1, controls={"widget-slider": 1, "widget-dropdown": 1},
        interactions=(Interaction("slider", "layer", figures=(0,)), Interaction("dropdown", "head", 2, figures=(0,))),
    ),
    ViewSpec(
        name="sink_explorer",
        code=(SETUP, "from probes.sinks import sink_explorer\n"
                     "sink_explorer(model, [PROMPT, 'def add(a, b):\\n    return a + b\\n'])"),
        n_figures=3, controls={"widget-slider": 1, "widget-dropdown": 2},
        interactions=(Interaction("slider", "layer", figures=(0, 1, 2)),
                      Interaction("dropdown", "prompt", 1, figures=(0, 1, 2))),
    ),
    ViewSpec(
        name="fact_explorer",
        code=(SETUP, "from probes.factual import fact_explorer\n"
                     "fact_explorer(model, [PROMPT, 'The capital of France is'], answers=[70, 71], "
                     "alternatives=[72, 73], n_top=3)"),
        n_figures=3, controls={"widget-dropdown": 2, "widget-toggle-buttons": 1},
        interactions=(Interaction("dropdown", "prompt", 1, figures=(0, 1, 2)),
                      Interaction("toggle", "metric", "diff", figures=(0, 1))),
    ),
    ViewSpec(
        name="feature_explorer",
        code=(SETUP, RANDOM_TRANSCODERS,
              "from probes.transcoders import feature_contexts, feature_explorer\n"
              "ctx = feature_contexts(model, tcs[1], 1, [PROMPT, 'the cat sat on the mat. ' * 4], k=3, context=24)\n"
              "feature_explorer(model, tcs[1], 1, ctx, k_tokens=5)"),
        n_figures=3, controls={"widget-dropdown": 1},
        interactions=(Interaction("dropdown", "feature", 1, figures=(0, 1, 2)),),
    ),
    ViewSpec(
        name="circuit_explorer",
        code=(SETUP, RANDOM_TRANSCODERS,
              "from probes.transcoders import circuit_explorer\n"
              "circuit_explorer(model, tcs, 'the cat sat on the mat and the dog sat too')"),
        n_figures=1, controls={"widget-dropdown": 3, "widget-slider": 2},
        interactions=(Interaction("dropdown", "target", 1, figures=(0,)),
                      Interaction("dropdown", "position", 4, figures=(0,))),
    ),
    ViewSpec(
        name="frames_explorer",
        code=(SETUP, "from probes.frames import frames_explorer\n"
                     "frames_explorer(model, concepts=['dog.n.01', 'cat.n.01 - dog.n.01'], text='a dog barks', "
                     "prompt='The dog', frame_k=8, k=2, max_new_tokens=4)"),
        n_figures=1, controls={"widget-text": 2, "widget-textarea": 1, "widget-button": 1},
        interactions=(Interaction("text", "concept", "cat.n.01 - dog.n.01", figures=(0,)),
                      Interaction("text", "text", "a cat sleeps all day", figures=(0,))),
        needs=_wordnet_missing,
    ),
    ViewSpec(
        name="kv_compare_explorer",
        code=(SETUP, "from efficiency.kv.explorer import kv_compare_explorer\n"
                     "kv_compare_explorer(model, PROMPT, policies=['streaming_llm', 'snapkv'], ratios=(0.25, 0.5))"),
        n_figures=3, controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("dropdown", "policy", "snapkv", figures=(0, 1)),
                      Interaction("slider", "ratio", figures=(0, 1))),
    ),
    ViewSpec(
        name="quantization_explorer",
        code=(SETUP, "from efficiency.quant import quantization_explorer\n"
                     "quantization_explorer(model, PROMPT, calibration_texts=['Calibration text for the tiny model. ' * 20], "
                     "calibration=(2, 24))"),
        n_figures=2, controls={"widget-dropdown": 5},
        interactions=(Interaction("dropdown", "weight bits", 2, figures=(0, 1)),
                      Interaction("dropdown", "rotation", "rh", figures=(0, 1))),
    ),
    ViewSpec(
        name="sparsity_explorer",
        code=(EFFICIENCY_SETUP, "from efficiency.sparsity import calibrate_teal, sparsity_explorer\n"
                                "sparsity_explorer(model, PROMPT, TEXTS, sparsities=(0.25, 0.5), allocations=('uniform', 'greedy'), "
                                "calibration=calibrate_teal(model, TEXTS, window=64, n_windows=4), greedy_step=0.25)"),
        n_figures=3, controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("slider", "sparsity", figures=(0, 1, 2)),
                      Interaction("dropdown", "method", "greedy", figures=(0, 2))),
    ),
    ViewSpec(
        name="pruning_explorer",
        code=(EFFICIENCY_SETUP, "from efficiency.pruning import pruning_explorer\n"
                                "pruning_explorer(model, PROMPT, TEXTS, methods=('shortgpt', 'attn_drop'), ratios=(0.17, 0.34), "
                                "knobs={'shortgpt': SMALL, 'attn_drop': SMALL})"),
        n_figures=3, controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("dropdown", "method", "attn_drop", figures=(0, 2)),
                      Interaction("slider", "ratio", figures=(0, 2))),
    ),
    ViewSpec(
        name="lowrank_explorer",
        code=(EFFICIENCY_SETUP, "from efficiency.lowrank import lowrank_explorer\n"
                                "lowrank_explorer(model, PROMPT, TEXTS, ratios=(0.2, 0.6), knobs={'svd_llm': SMALL})"),
        n_figures=3, controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("slider", "ratio", figures=(0, 2)),
                      Interaction("dropdown", "method", 2, figures=(0, 2))),
    ),
    ViewSpec(
        name="mla_explorer",
        code=(EFFICIENCY_SETUP, "from efficiency.mla import mla_explorer\n"
                                "mla_explorer(model, PROMPT, TEXTS, d_kvs=(4, 16), rope_dims=4, svds=('plain', 'whitened'))"),
        n_figures=3, controls={"widget-dropdown": 1, "widget-slider": 1},
        interactions=(Interaction("slider", "d_kv", figures=(0, 2)),
                      Interaction("dropdown", "method", "whitened", figures=(0,))),
    ),
    ViewSpec(
        name="lab_explorer",
        code=(SETUP, textwrap.dedent("""\
            import sys
            sys.path.insert(0, %r)
            import lab
            from test_lab_support import TINY  # a tiny suite with letter facts for the byte-level model
            view = lab.lab_explorer(model, suite=TINY, families=["kv-eviction"])
            view.run("snapkv", ratio=0.5)
            view""") % str(ROOT / "tests")),
        n_figures=1, controls={"widget-dropdown": 3, "widget-button": 2},
        interactions=(Interaction("dropdown", "panel", "sinks", figures=(0,)),
                      Interaction("slider", "ratio", figures=(), steps=3),
                      Interaction("button", None, "run", figures=(0,))),
    ),
]

# Deliberately broken views: the checks above must catch each (the test of the test).
BROKEN = [
    (ViewSpec(  # a figure update that raises (the exception only reaches the kernel's stderr)
        name="broken_figure_update",
        code=(SETUP, textwrap.dedent("""\
            from workbench.explorer import attention_explorer
            view = attention_explorer(model, PROMPT)
            view.layer_slider.unobserve_all()  # the real update, replaced by one that fails
            def broken_update(change):
                raise RuntimeError("deliberately broken figure update")
            view.layer_slider.observe(broken_update, names="value")
            view""")),
        n_figures=1, controls={"widget-slider": 1},
        interactions=(Interaction("slider", "layer", figures=(0,)),)),
     r"kernel raised after slider 'layer'(.|\n)*deliberately broken figure update"),
    (ViewSpec(  # an update that silently misses the figure: it edits a copy, not the widget
        name="silent_figure_update",
        code=(textwrap.dedent("""\
            import ipywidgets as widgets, plotly.graph_objects as go
            fig = go.FigureWidget(go.Bar(y=[1, 2, 3]), layout=dict(title=dict(text="row 0"), width=400))
            slider = widgets.IntSlider(0, 0, 4, description="row")
            def update(change):
                copy = go.Figure(fig)  # the bug: the copy changes, the widget does not
                copy.data[0].y = [change["new"]] * 3
                copy.layout.title.text = f"row {change['new']}"
            slider.observe(update, names="value")
            widgets.VBox([slider, fig])"""),),
        n_figures=1, controls={"widget-slider": 1},
        interactions=(Interaction("slider", "row", figures=(0,)),)),
     r"after slider 'row', figure\(s\) \[0\] did not change"),
    (ViewSpec(  # a widget whose front end fails in the browser
        name="broken_render",
        code=(textwrap.dedent("""\
            import anywidget
            class Broken(anywidget.AnyWidget):
                _esm = "export default { render({ model, el }) { throw new Error('deliberately broken render'); } }"
            Broken()"""),),
        n_figures=1),
     r"browser logged errors while the view rendered(.|\n)*deliberately broken render"),
]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Python Playwright is not installed: run `make venv` (it is pinned in constraints.txt).")
    if chromium_path() is None:
        pytest.fail(NO_CHROMIUM)
    with sync_playwright() as pw:
        b = launch_chromium(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    (root / VIEW_DIR).mkdir()
    for spec in VIEWS + [b[0] for b in BROKEN]:
        write_view_notebook(spec, root / VIEW_DIR)
    srv = LabServer(root, work / "server")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()
        assert srv.alive_pids() == [], "JupyterLab or a kernel survived the shutdown"


@pytest.fixture
def lab(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    try:
        yield LabPage(context.new_page(), server)
    finally:
        context.close()
        server.shutdown_kernels()  # one kernel at a time: each view's kernel goes with its test


def _open_and_run(lab: LabPage, spec: ViewSpec) -> None:
    lab.open_notebook(f"{VIEW_DIR}/{spec.name}.ipynb")
    lab.run_all()


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("spec", VIEWS, ids=[v.name for v in VIEWS])
def test_view_renders_and_responds(lab, spec: ViewSpec):
    reason = spec.needs() if spec.needs else None
    if reason:
        pytest.skip(reason)
    _open_and_run(lab, spec)
    check_view(lab, spec, SHOTS)


@pytest.mark.parametrize("spec,expected", BROKEN, ids=[b[0].name for b in BROKEN])
def test_checks_catch_a_broken_view(lab, spec: ViewSpec, expected: str):
    _open_and_run(lab, spec)
    with pytest.raises(ViewCheckError, match=expected):
        check_view(lab, spec, SHOTS / "broken", update_timeout=15)


def test_double_click_opens_each_notebook_with_a_venv_kernel(lab):
    """What `make lab` promises: a double-click on notebooks/*.py opens a notebook panel (not the
    text editor) with a running kernel from the project venv."""
    import sys

    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.py"))
    assert names
    lab.goto("?reset")
    page = lab.page
    for i, name in enumerate(names):
        page.locator(".jp-DirListing-item", has_text=name).first.dblclick()
        page.wait_for_function(
            f"() => {{ const w = window.jupyterapp.shell.currentWidget; return w && w.context && "
            f"w.context.path === {name!r}; }}", timeout=60_000)
        lab.wait_kernel_idle()
        panel = lab.current_panel()
        assert "jp-NotebookPanel" in panel["classes"], f"{name} opened as {panel['classes']!r}, not a notebook"
        assert panel["kernel"] == "python3", panel  # started; wait_kernel_idle saw it idle
        if i == 0:  # the kernel is the project's interpreter
            assert lab.kernel_execute("import sys; print(sys.prefix)").strip() == sys.prefix
    page.screenshot(path=str(SHOTS / "double_click.png"))
    assert lab.console_errors == []


def test_make_lab_uses_the_tested_settings():
    """`make lab` passes the settings the browser tests use (jupyter-config on JUPYTER_CONFIG_PATH)."""
    import json

    overrides = json.loads((LAB_CONFIG / "labconfig" / "default_setting_overrides.json").read_text())
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"
    make = (ROOT / "Makefile").read_text()
    lab_rule = make[make.index("\nlab:"):].split("\n\n")[0]
    assert "JUPYTER_CONFIG_PATH" in lab_rule and "jupyter-config" in lab_rule, lab_rule
