"""The attention-sink explorer widget (probes.sinks.explorer) on tiny-llama: every panel shows the
numbers of the captured pattern, of sink_report and of value_drain; prompts are captured lazily,
once each; bad input gives InputError (the conftest fixture checks that no hook leaks)."""
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from probes.sinks.explorer import sink_explorer
from probes.sinks import sink_report
from probes.sinks.value_drains import value_drain
from workbench.errors import InputError

PROMPTS = ["the cat sat on the mat", "a b, c d; e f. g h", "hello world"]


def column_means(pattern: np.ndarray, skip: int) -> np.ndarray:
    """(T, T) pattern -> (T,) mean of A[q, j] over q >= max(j, skip), by loops."""
    t = pattern.shape[0]
    return np.array([pattern[max(j, skip):, j].mean() for j in range(t)])


@pytest.fixture(scope="module")
def box(tiny_llama):
    return sink_explorer(tiny_llama, PROMPTS)


def test_panels_match_pattern_sink_report_and_value_drain(tiny_llama, box):
    n_layers, n_heads = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    assert isinstance(box.pattern_figure, go.FigureWidget)
    assert isinstance(box.mass_figure, go.FigureWidget) and isinstance(box.value_figure, go.FigureWidget)
    for p in (0, 1):
        text = PROMPTS[p]
        run = tiny_llama.run(text, capture=["pattern"], logits=None)
        rep = sink_report(tiny_llama, text)  # skip_queries=4, as the explorer
        vd = value_drain(tiny_llama, text)
        t = run.lengths[0]
        d = box.data(p)
        assert d.patterns.shape == (n_layers, n_heads, t, t)
        for layer in range(n_layers):
            for head in range(n_heads):
                box.show(p, layer, head)
                assert box.current() == (p, layer, head)
                z = np.asarray(box.pattern_figure.data[0].z)
                assert np.array_equal(z, d.patterns[layer, head])  # exactly the cached capture
                np.testing.assert_allclose(z, run["pattern", layer][0, head].numpy(), atol=1e-6)
                mass = np.asarray(box.mass_figure.data[0].y)
                np.testing.assert_allclose(mass, rep.received[0, layer, head, :t].numpy(), rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(mass, column_means(z.astype(np.float64), 4), rtol=1e-5, atol=1e-6)
                norms = np.asarray(box.value_figure.data[0].y)
                np.testing.assert_allclose(norms, vd.norms[0, layer, head, :t].numpy(), rtol=1e-6, atol=1e-7)
                assert len(box.mass_figure.data[0].x) == t and len(box.value_figure.data[0].x) == t
                assert f"layer {layer}, head {head}" in box.pattern_figure.layout.title.text
                assert f"L{layer}H{head}" in box.stats.value
                assert f"{float(rep.received[0, layer, head, 0]):.3f}" in box.stats.value  # position-0 mass
        # the uniform baseline of the mass chart is the report's
        np.testing.assert_allclose(np.asarray(box.mass_figure.data[1].y), rep.uniform_mass()[0].numpy(), rtol=1e-6)
    assert tiny_llama.leftover_hooks() == []


def test_prompts_are_captured_lazily_and_once(tiny_llama, monkeypatch):
    calls = []
    real_run = tiny_llama.run

    def counting_run(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("prompts"))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "run", counting_run)
    b = sink_explorer(tiny_llama, PROMPTS)
    assert calls == [PROMPTS[0]] and b.captured() == [0]  # prompt 0 only, at construction
    b.show(0, 1, 2)
    b.show(0, 0, 3)
    assert len(calls) == 1
    b.show(2, 1, 0)  # first use of prompt 2: one forward
    assert calls == [PROMPTS[0], PROMPTS[2]] and b.captured() == [0, 2]
    t2 = len(b.data(2).str_tokens)
    assert np.asarray(b.pattern_figure.data[0].z).shape == (t2, t2)
    assert len(b.mass_figure.data[0].y) == t2 and len(b.pattern_figure.data[0].x) == t2
    b.show(0, 1, 1)  # back to prompt 0: cached, axes follow
    t0 = len(b.data(0).str_tokens)
    assert len(calls) == 2
    assert np.asarray(b.pattern_figure.data[0].z).shape == (t0, t0) and len(b.value_figure.data[0].y) == t0
    np.testing.assert_array_equal(np.asarray(b.pattern_figure.data[0].z), b.data(0).patterns[1, 1])


def test_controls_drive_the_same_update(tiny_llama):
    b = sink_explorer(tiny_llama, PROMPTS)
    # show() moves the controls too
    b.show(1, 1, 3)
    assert (b.prompt_dropdown.value, b.layer_slider.value, b.head_dropdown.value) == (1, 1, 3)
    # moving a control re-renders with the other controls' values
    b.prompt_dropdown.value = 2
    assert b.current() == (2, 1, 3)
    np.testing.assert_array_equal(np.asarray(b.pattern_figure.data[0].z), b.data(2).patterns[1, 3])
    b.layer_slider.value = 0
    b.head_dropdown.value = 2
    assert b.current() == (2, 0, 2)
    np.testing.assert_array_equal(np.asarray(b.value_figure.data[0].y), b.data(2).norms[0, 2])
    np.testing.assert_array_equal(np.asarray(b.mass_figure.data[0].y), b.data(2).mass[0, 2])


def test_position_zero_and_top_keys_are_highlighted(tiny_llama, box):
    box.show(0, 1, 0)
    d = box.data(0)
    colours = list(box.mass_figure.data[0].marker.color)
    assert colours[0] != colours[-1] or len(colours) == 1
    pos, _ = d.sinks.top_keys(0)
    for p in pos[1, 0].tolist():
        assert colours[p] in ("#d62728", "#ff7f0e")


def test_bad_input(tiny_llama, box):
    with pytest.raises(InputError, match="max_tokens=8.*sink_report"):
        sink_explorer(tiny_llama, ["short one", "this prompt is rather longer than eight bytes"], max_tokens=8)
    with pytest.raises(InputError, match="non-empty list"):
        sink_explorer(tiny_llama, [])
    with pytest.raises(InputError, match="Prompt 1"):
        sink_explorer(tiny_llama, ["fine prompt", 3])
    with pytest.raises(InputError, match="Prompt 0"):
        sink_explorer(tiny_llama, [""])
    with pytest.raises(InputError, match="skip_queries"):
        sink_explorer(tiny_llama, ["abc"])  # 3 tokens, not more than skip_queries=4
    with pytest.raises(InputError, match="skip_queries"):
        sink_explorer(tiny_llama, PROMPTS, skip_queries=-1)
    with pytest.raises(InputError, match="max_tokens"):
        sink_explorer(tiny_llama, PROMPTS, max_tokens="many")
    before = (box.current(), np.asarray(box.pattern_figure.data[0].z).copy())
    n_layers, n_heads = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    for args, what in [((len(PROMPTS), 0, 0), "Prompt index"), ((-1, 0, 0), "Prompt index"),
                       ((0, n_layers, 0), "Layer"), ((0, 0, n_heads), "Head"), ((0, 0, -1), "Head"),
                       ((0, 1.5, 0), "Layer"), ((0, 0, True), "Head")]:
        with pytest.raises(InputError, match=what):
            box.show(*args)
    with pytest.raises(InputError, match="Prompt index"):
        box.data(7)
    assert box.current() == before[0]  # a refused show() changes nothing
    np.testing.assert_array_equal(np.asarray(box.pattern_figure.data[0].z), before[1])


def test_a_single_string_is_one_prompt(tiny_llama):
    b = sink_explorer(tiny_llama, "the cat sat on the mat")
    assert b.prompts == ["the cat sat on the mat"] and len(b.prompt_dropdown.options) == 1
    assert torch.is_tensor(b.data(0).sinks.received)
