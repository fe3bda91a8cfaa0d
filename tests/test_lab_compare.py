"""Combinations against their parts, the Pareto frontier (static and clickable) and the lab explorer, on tiny-llama."""
import pandas as pd
import pytest

import lab
from lab.frontier import pareto
from test_lab_support import TINY, ScaleLinear
from workbench import InputError

KV = ("streaming_llm", {"ratio": 0.5})


@pytest.fixture(scope="module")
def comparison(tiny_llama):
    combo = lab.resolve_method(KV) + ScaleLinear(1, "down", 0.5)
    return lab.compare_effects(tiny_llama, [combo, ("snapkv", {"ratio": 0.5})], TINY, progress=False)


def test_combination_against_its_parts(tiny_llama, comparison):
    c = comparison
    labels = list(c.reports)
    assert labels == ["streaming_llm(ratio=0.5)", "scale_linear_test(layer=1, factor=0.5, kind=down)",
                      "streaming_llm(ratio=0.5) + scale_linear_test(layer=1, factor=0.5, kind=down)", "snapkv(ratio=0.5)"]
    # one baseline for the whole comparison
    assert sum(r.forward_passes["baseline"] > 0 for r in c.reports.values()) <= 1
    df = c.to_frame()
    assert len(df) == 4 and df.cost_model_exact.all()
    combo = c[labels[2]]
    kv_alone, w_alone = c[labels[0]], c[labels[1]]
    # the combination holds the KV part's cache and the weight part's weights
    assert combo.measured["kv_bytes"] == kv_alone.measured["kv_bytes"]
    assert combo.measured["weight_bytes"] == w_alone.measured["weight_bytes"]
    t = c.combination_table()
    assert len(t) == 1 and t.loc[0, "parts"] == f"{labels[0]} | {labels[1]}"
    assert t.loc[0, "bytes_saved"] == pytest.approx(t.loc[0, "bytes_saved_parts_sum"])
    # the weight part acts in the last layer only, the KV part on the tail: the combination's drift there is
    # not smaller than the weight part's alone
    assert combo.drift_rel[-1] > 0 and w_alone.drift_rel[0] == 0
    ov = c.head_overlap(3)
    assert len(ov) == 6 and ov["top3_jaccard"].between(0, 1).all()
    same = ov[(ov.method_a == labels[0]) & (ov.method_b == labels[2])]
    assert len(same) == 1
    for panel in ("overview", "overlap", "sinks"):
        assert c.figure(panel).data
    with pytest.raises(InputError, match="No report"):
        c["nothing"]


def test_pareto_by_hand():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 2.0], "y": [5.0, 4.0, 4.0, 6.0]})
    assert pareto(df, "min").tolist() == [True, True, False, False]
    assert pareto(df, "max").tolist() == [True, False, False, True]


def test_frontier_reuses_reports_and_clicks(tiny_llama, comparison):
    n0 = tiny_llama.forward_count
    f = lab.frontier(tiny_llama, comparison, x="bytes", y="perplexity")
    assert tiny_llama.forward_count == n0  # nothing rerun
    pts = f.to_frame()
    assert pts.method.iloc[0] == "baseline" and len(pts) == 5
    # the baseline has the most bytes here, and every method saves bytes
    assert pts.x.iloc[0] >= pts.x.iloc[1:].max()
    assert pts.pareto.any()
    fig = f.figure()
    assert any(tr.name == "Pareto frontier" for tr in fig.data)
    w = f.widget(panel="sinks")
    label = pts.method.iloc[1]
    from plotly.callbacks import InputDeviceState, Points

    for tr in w.figure.data:
        if tr.customdata is not None and label in list(tr.customdata):
            i = list(tr.customdata).index(label)
            tr._dispatch_on_click(Points(point_inds=[i], xs=[tr.x[i]], ys=[tr.y[i]], trace_name=tr.name,
                                         trace_index=0), InputDeviceState())
    assert w.current() == label and w.panel_dropdown.value == "sinks"
    assert "sink" in w.panel_figure.layout.title.text.lower() and label in w.panel_figure.layout.title.text
    w.panel_dropdown.value = "drift"
    assert "drift" in w.panel_figure.layout.title.text.lower()
    with pytest.raises(InputError, match="no internals report"):
        w.show("baseline")
    f2 = lab.frontier(tiny_llama, list(comparison.reports.values()), x="bytes", y="accuracy")
    assert len(f2.to_frame()) == 5
    with pytest.raises(InputError, match="x must be one of"):
        lab.frontier(tiny_llama, comparison, x="flops")
    with pytest.raises(InputError, match="no timing"):
        lab.frontier(tiny_llama, comparison, x="ms")


def test_lab_explorer(tiny_llama, tmp_path):
    box = lab.lab_explorer(tiny_llama, suite=TINY, families=["kv-eviction", "kv-quantization"])
    assert box.family_dropdown.options == ("kv-eviction", "kv-quantization") or \
        set(box.family_dropdown.options) == {"kv-eviction", "kv-quantization"}
    knobs = box.knob_widgets()
    assert set(knobs) == {"ratio"} and knobs["ratio"].max < 1.0
    r = box.run("snapkv", ratio=0.25)
    assert r.method == "snapkv(ratio=0.25)" and "Cost" in box.cost_html.value
    assert box.figure.data and "Overview" in box.figure.layout.title.text
    box.show_panel("sinks")
    assert "sink" in box.figure.layout.title.text.lower()
    n0 = tiny_llama.forward_count
    assert box.run("snapkv", ratio=0.25) is r and tiny_llama.forward_count == n0  # kept per setting
    box.run("kivi", bits=8)
    assert set(box.knob_widgets()) == {"bits", "group_size", "residual"}
    out = box.export(str(tmp_path / "panel.html"))
    assert (tmp_path / "panel.html").exists() and str(out).endswith("panel.html")
    with pytest.raises(InputError, match="unknown knob"):
        box.run("snapkv", bits=2)
    with pytest.raises(InputError, match="not a method of this explorer"):
        box.run("nothing")
    with pytest.raises(InputError, match="No registered"):
        lab.lab_explorer(tiny_llama, suite=TINY, families=["quantum"])


def test_knob_widgets_follow_knob_ranges():
    from efficiency import Knob
    from lab.explorer import knob_value, knob_widget

    w = knob_widget("ratio", Knob("float", 0.0, 1.0, high_open=True), 0.5)
    assert w.max < 1.0 and knob_value(Knob("float", 0.0, 1.0, high_open=True), w) == 0.5
    assert type(knob_widget("bits", Knob("int", 2, 8), 4)).__name__ == "IntSlider"
    assert type(knob_widget("residual", Knob("int", 0, 1 << 20), 32)).__name__ == "BoundedIntText"
    group = Knob("choice", choices=(32, 64), optional=True)
    wg = knob_widget("group", group, None)
    assert None in [v for _, v in wg.options] and knob_value(group, wg) is None
    opt = Knob("int", 1, 64, optional=True)
    wo = knob_widget("rank", opt, None)
    assert knob_value(opt, wo) is None
    wo.value = "16"
    assert knob_value(opt, wo) == 16
    lay = Knob("layers")
    wl = knob_widget("layers", lay, [0, 3])
    assert wl.value == "0,3" and knob_value(lay, wl) == [0, 3]
    wl.value = "0, x"
    with pytest.raises(InputError, match="integers separated by commas"):
        knob_value(lay, wl)
    assert knob_widget("sym", Knob("bool"), True).value is True
