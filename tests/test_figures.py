"""Figure builders, atomic export (HTML, and PNG/SVG/PDF through kaleido), the attention explorer."""
from __future__ import annotations

import os

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from workbench.errors import ExportError, InputError
from workbench.figures import attention_pattern_figure, export_figures, find_browser, residual_norms_figure, save_figure

BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="static export (PNG/SVG/PDF) needs Chromium for kaleido and none was found: run `make system` "
           "or set BROWSER_PATH; HTML export is still tested",
)
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<svg", "pdf": b"%PDF"}


def _fig() -> go.Figure:
    return go.Figure(go.Heatmap(z=[[0.1, 0.9], [0.5, 0.5]]))


def _leftovers(folder) -> list[str]:
    """Temporary files an atomic write leaves behind when it goes wrong (they start with '.')."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def kaleido_server():
    """kaleido's process-wide sync server, and a guarantee that it is stopped afterwards."""
    import kaleido
    from kaleido._sync_server import GlobalKaleidoServer

    yield GlobalKaleidoServer()
    if GlobalKaleidoServer().is_running():
        kaleido.stop_sync_server(silence_warnings=True)


# ------------------------------------------------------------------------------------ save_figure
@pytest.mark.parametrize("suffix", [".html", ".htm", ".HTML"])
def test_save_html_needs_no_browser(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))  # must not matter for HTML
    path = save_figure(_fig(), tmp_path / f"fig{suffix}")
    text = path.read_text()
    assert path == tmp_path / f"fig{suffix}"
    assert text.lstrip().lower().startswith(("<html", "<!doctype html")) and text.rstrip().endswith("</html>")
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # include_plotlyjs=True: self-contained
    assert _leftovers(tmp_path) == []


def test_save_html_directory_shares_plotlyjs(tmp_path):
    a = save_figure(_fig(), tmp_path / "a.html", include_plotlyjs="directory")
    b = save_figure(_fig(), tmp_path / "b.html", include_plotlyjs="directory")
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    assert a.stat().st_size < 100_000 and b.stat().st_size < 100_000
    assert 'src="plotly.min.js"' in a.read_text()


def test_save_figurewidget_as_plain_figure(tmp_path):
    path = save_figure(go.FigureWidget(_fig()), tmp_path / "w.html", include_plotlyjs=False)
    assert "Plotly.newPlot" in path.read_text()


@needs_browser
@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_save_static_format_from_suffix(tmp_path, fmt):
    path = save_figure(_fig(), tmp_path / f"fig.{fmt}")
    data = path.read_bytes()
    head = data[:400].lstrip() if fmt == "svg" else data
    assert head.startswith(MAGIC[fmt]), f"{fmt}: unexpected header {data[:16]!r}"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["fig.jpg", "fig.eps", "fig", "fig.json", "fig.png.bak"])
def test_unknown_suffix_is_export_error(tmp_path, name):
    with pytest.raises(ExportError, match="suffix"):
        save_figure(_fig(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_non_figure(tmp_path):
    with pytest.raises(ExportError, match="plotly"):
        save_figure(np.zeros((2, 2)), tmp_path / "x.html")


def test_static_without_browser_is_export_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    with pytest.raises(ExportError, match="BROWSER_PATH"):
        save_figure(_fig(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    """Atomic: when the final rename fails, the old file is intact and the temporary file is gone."""
    target = tmp_path / "fig.html"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_figure(_fig(), target, include_plotlyjs=False)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_written_file_has_normal_permissions(tmp_path):
    path = save_figure(_fig(), tmp_path / "p.html", include_plotlyjs=False)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# ---------------------------------------------------------------------------------- export_figures
def test_export_figures_html_only(tmp_path):
    figs = {"one": _fig(), "two": go.FigureWidget(_fig())}
    paths = export_figures(figs, tmp_path / "out", formats=("html",), include_plotlyjs="directory")
    assert [p.name for p in paths] == ["one.html", "two.html"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.html", "plotly.min.js", "two.html"]


@pytest.mark.parametrize("bad", ["../up", "a/b", ".hidden", ""])
def test_export_figures_rejects_bad_names(tmp_path, bad):
    with pytest.raises(ExportError, match="file stem"):
        export_figures({bad: _fig()}, tmp_path, formats=("html",))


def test_export_figures_rejects_unknown_format_before_writing(tmp_path):
    with pytest.raises(ExportError, match="suffix"):
        export_figures({"a": _fig()}, tmp_path / "out", formats=("html", "jpg"))
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@needs_browser
def test_export_figures_reuses_one_browser(tmp_path, monkeypatch, kaleido_server):
    """One Chromium for the whole batch (kaleido's sync server), stopped again afterwards."""
    import kaleido._sync_server as sync
    from kaleido.kaleido import Kaleido

    launches, oneshots = [], []
    real_init, real_oneshot = Kaleido.__init__, sync.oneshot_async_run

    def counting_init(self, *a, **k):
        launches.append(1)
        real_init(self, *a, **k)

    def counting_oneshot(*a, **k):
        oneshots.append(1)
        return real_oneshot(*a, **k)

    monkeypatch.setattr(Kaleido, "__init__", counting_init)
    monkeypatch.setattr(sync, "oneshot_async_run", counting_oneshot)
    assert not kaleido_server.is_running()

    figs = {f"fig{i}": _fig() for i in range(3)}
    paths = export_figures(figs, tmp_path, formats=("png", "svg", "html"), include_plotlyjs="directory")

    assert len(paths) == 9 and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == MAGIC["png"]
    assert len(launches) == 1, f"{len(launches)} browsers launched for one batch"
    assert oneshots == []
    assert not kaleido_server.is_running(), "export_figures left kaleido's sync server running"
    assert _leftovers(tmp_path) == []


@needs_browser
def test_export_figures_leaves_a_running_server_running(tmp_path, kaleido_server):
    import kaleido

    kaleido.start_sync_server(silence_warnings=True)
    export_figures({"a": _fig()}, tmp_path, formats=("png",))
    assert kaleido_server.is_running()  # the caller started it; the caller stops it
    assert (tmp_path / "a.png").read_bytes()[:8] == MAGIC["png"]


def test_export_figures_without_browser_fails_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    with pytest.raises(ExportError, match="Chromium"):
        export_figures({"a": _fig()}, tmp_path / "out", formats=("png", "html"))
    assert not (tmp_path / "out" / "a.html").exists()


# ---------------------------------------------------------------------------------------- builders
def test_attention_pattern_figure_shape_and_labels():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    fig = attention_pattern_figure(p, ["The", " cat", "\n"], title="L0 H1")
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    np.testing.assert_allclose(np.asarray(heat.z), p.numpy())
    assert fig.layout.title.text == "L0 H1"
    assert list(fig.layout.xaxis.ticktext) == ["The (0)", "·cat (1)", "↵ (2)"]
    assert list(fig.layout.yaxis.ticktext) == ["The (0)", "·cat (1)", "↵ (2)"]
    assert fig.layout.yaxis.autorange == "reversed"  # queries top to bottom
    assert fig.layout.xaxis.title.text == "key" and fig.layout.yaxis.title.text == "query"
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert heat.customdata is not None  # per-cell token hover labels on a small pattern


def test_attention_pattern_figure_selected_queries():
    """(Tq, Tk) with Tq < Tk and labels for the keys: the labels go on the key axis."""
    p = np.full((2, 4), 0.25)
    fig = attention_pattern_figure(p, ["a", "b", "c", "d"])
    assert list(fig.layout.xaxis.ticktext) == ["a (0)", "b (1)", "c (2)", "d (3)"]
    assert list(fig.layout.yaxis.ticktext) == ["0", "1"]


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((1, 2, 2)), np.zeros((2, 2, 2, 2))])
def test_attention_pattern_figure_bad_shape(bad):
    with pytest.raises(InputError, match="2 dimensions"):
        attention_pattern_figure(bad)


def test_attention_pattern_figure_wrong_token_count():
    with pytest.raises(InputError, match="token strings"):
        attention_pattern_figure(np.eye(3), ["a", "b"])


def test_residual_norms_figure_shape_and_labels():
    norms = torch.tensor([[10.0, 20.0, 30.0], [20000.0, 40.0, 50.0]])  # (L=2, T=3), one massive norm
    fig = residual_norms_figure(norms, ["A", " b", "c"], title="norms")
    heat = fig.data[0]
    z = np.asarray(heat.z)
    assert z.shape == (2, 3)
    np.testing.assert_allclose(z, np.log10(norms.numpy()))  # log colour by default
    assert list(fig.layout.xaxis.ticktext) == ["A (0)", "·b (1)", "c (2)"]
    assert list(fig.layout.yaxis.ticktext) == ["L0", "L1"]
    assert fig.layout.title.text == "norms"
    ticks = list(heat.colorbar.ticktext)
    assert "10" in ticks and "10000" in ticks  # colour bar labelled in real norms
    assert np.asarray(heat.customdata)[1, 0, 2] == 20000.0  # hover shows the real value

    lin = residual_norms_figure(norms, log_color=False, layer_labels=["first", "second"])
    np.testing.assert_allclose(np.asarray(lin.data[0].z), norms.numpy())
    assert list(lin.layout.yaxis.ticktext) == ["first", "second"]
    assert list(lin.layout.xaxis.ticktext) == ["0", "1", "2"]


@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 3, 4))])
def test_residual_norms_figure_bad_shape(bad):
    with pytest.raises(InputError, match="2 dimensions"):
        residual_norms_figure(bad)


def test_residual_norms_figure_bad_labels():
    with pytest.raises(InputError, match="layer labels"):
        residual_norms_figure(np.ones((2, 3)), layer_labels=["L0"])
    with pytest.raises(InputError, match="token strings"):
        residual_norms_figure(np.ones((2, 3)), ["a", "b"])


def test_residual_norms_of_a_run(tiny_llama):
    from workbench.figures import residual_norms

    run = tiny_llama.run(["hello there", "hi"], capture=["resid_post"])
    n = residual_norms(run, prompt=1)  # real tokens only
    assert n.shape == (tiny_llama.info.n_layers, 2)
    torch.testing.assert_close(n[0], run["resid_post", 0][1, :2].norm(dim=-1))
    fig = residual_norms_figure(n, run.str_tokens[1])
    assert np.asarray(fig.data[0].z).shape == (tiny_llama.info.n_layers, 2)


# ------------------------------------------------------------------------------ attention_explorer
def test_attention_explorer_shows_the_captured_patterns(tiny_llama):
    from workbench.explorer import attention_explorer

    prompt = "the cat sat on the mat"
    box = attention_explorer(tiny_llama, prompt)
    run = tiny_llama.run(prompt, capture=["pattern"], logits=None)
    n_layers, n_heads = tiny_llama.info.n_layers, tiny_llama.info.n_heads
    fig = box.figure
    assert isinstance(fig, go.FigureWidget)
    assert box.patterns.shape == (n_layers, n_heads, len(prompt), len(prompt))
    np.testing.assert_allclose(np.asarray(fig.data[0].z), run["pattern", 0][0, 0].numpy(), atol=1e-6)

    for layer in range(n_layers):
        for head in range(n_heads):
            box.show(layer, head)
            want = run["pattern", layer][0, head].numpy()
            np.testing.assert_allclose(np.asarray(fig.data[0].z), want, atol=1e-6)
            assert fig.layout.title.text == f"Layer {layer}, head {head}"

    last = n_layers - 1
    box.show(last, -1)
    mean = run["pattern", last][0].mean(0).numpy()
    np.testing.assert_allclose(np.asarray(fig.data[0].z), mean, atol=1e-6)
    assert fig.layout.title.text == f"Layer {last}, mean over heads"

    # The controls drive the same update.
    box.layer_slider.value = 0
    box.head_dropdown.value = n_heads - 1
    np.testing.assert_allclose(np.asarray(fig.data[0].z), run["pattern", 0][0, n_heads - 1].numpy(), atol=1e-6)
    assert tiny_llama.leftover_hooks() == []


def test_attention_explorer_refuses_long_prompt(tiny_llama):
    from workbench.explorer import attention_explorer

    with pytest.raises(InputError, match="max_tokens"):
        attention_explorer(tiny_llama, "x" * 40, max_tokens=16)
    with pytest.raises(InputError, match="one prompt string"):
        attention_explorer(tiny_llama, ["a", "b"])


def test_export_figures_auto_falls_back_to_html_without_browser(tmp_path, monkeypatch, capsys):
    """formats="auto" writes HTML only, and says why, when no browser can render PNGs."""
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))
    paths = export_figures({"a": _fig()}, tmp_path / "out", formats="auto", include_plotlyjs="directory")
    assert [p.name for p in paths] == ["a.html"]
    assert "HTML only" in capsys.readouterr().out
