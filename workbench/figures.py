"""Figure builders and export: plotly figures for attention and the residual stream, saved atomically.

Static formats (PNG/SVG/PDF) go through kaleido 1.x, which drives a locally installed Chromium
(Debian: ``apt-get install -y chromium``; elsewhere point ``BROWSER_PATH`` at a Chrome/Chromium
binary). HTML needs no browser. ``export_figures`` keeps one browser open for a whole batch,
so each figure after the first takes about 0.2 s instead of about 3 s.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from .errors import ExportError, InputError
from .paths import atomic_write_bytes

STATIC_FORMATS = ("png", "svg", "pdf")
HTML_FORMATS = ("html", "htm")
ALLOWED_SUFFIXES = tuple(f".{s}" for s in STATIC_FORMATS + HTML_FORMATS)
_NO_BROWSER = (
    "Static figure export (PNG/SVG/PDF) needs a Chromium-based browser for kaleido, and none was found. "
    "Install one with `apt-get install -y chromium` (Debian/Ubuntu; `make system` does this), or set "
    "BROWSER_PATH to a Chrome/Chromium executable. HTML export (.html) works without a browser."
)
_HOVER_CELLS = 128 * 128  # per-cell token hover labels only up to this many cells (keeps HTML small)


# ---------------------------------------------------------------------------------------- browser
def find_browser() -> str | None:
    """Path of the Chromium-based browser kaleido will use, or None (honours ``BROWSER_PATH``)."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found:
            return str(found)
    except Exception:  # choreographer missing or changed: fall back to a PATH search
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _require_browser() -> None:
    env = os.environ.get("BROWSER_PATH")
    if env and find_browser() is None:
        raise ExportError(f"BROWSER_PATH={env!r} is not an executable file. {_NO_BROWSER}")
    if find_browser() is None:
        raise ExportError(_NO_BROWSER)


# ---------------------------------------------------------------------------------------- export
def _as_figure(fig) -> go.Figure:
    """A plain go.Figure copy of a go.Figure, go.FigureWidget or figure dict."""
    if isinstance(fig, (go.Figure, go.FigureWidget)) or isinstance(fig, dict):
        return go.Figure(fig)
    raise ExportError(f"Expected a plotly go.Figure or go.FigureWidget, got {type(fig).__name__}.")


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise ExportError(f"Cannot export a figure to {str(path)!r}: unknown suffix {suffix or '(none)'!r}. "
                          f"Allowed suffixes: {', '.join(ALLOWED_SUFFIXES)}.")
    return suffix[1:]


def _write_plotlyjs_beside(path: Path) -> None:
    from plotly.offline import get_plotlyjs

    js = path.parent / "plotly.min.js"
    if not js.exists():
        atomic_write_bytes(js, get_plotlyjs().encode("utf-8"))


def save_figure(fig, path, scale: float = 2, include_plotlyjs: bool | str = True) -> Path:
    """Save a figure; the format comes from the suffix (.html/.htm, .png, .svg, .pdf).

    The file is written to a temporary file in the same folder and renamed into place, so a
    reader never sees a half-written figure. ``include_plotlyjs`` (HTML only): True embeds
    plotly.js (self-contained, about 4.8 MB), "directory" writes one shared ``plotly.min.js``
    beside the file (about 10 KB per figure). ``scale`` multiplies the pixel size of PNGs.
    A ``go.FigureWidget`` is exported as a plain ``go.Figure`` copy. Returns the path written.
    """
    path = Path(path)
    fmt = _format_of(path)
    figure = _as_figure(fig)
    if fmt in HTML_FORMATS:
        if include_plotlyjs not in (True, False, "directory", "cdn"):
            raise ExportError(f"include_plotlyjs must be True, False, 'directory' or 'cdn', got {include_plotlyjs!r}.")
        html = pio.to_html(figure, include_plotlyjs=include_plotlyjs, full_html=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if include_plotlyjs == "directory":
            _write_plotlyjs_beside(path)
        atomic_write_bytes(path, html.encode("utf-8"))
        return path
    _require_browser()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        try:
            data = pio.to_image(figure, format=fmt, scale=scale)
        except RuntimeError as e:
            msg = str(e)
            if "Chrome" in msg or "chrome" in msg or "browser" in msg.lower():
                raise ExportError(f"{_NO_BROWSER} (kaleido said: {msg.splitlines()[0] if msg else e!r})") from e
            raise ExportError(f"Exporting {path.name} failed: {msg}") from e
    atomic_write_bytes(path, data)
    return path


def _server():
    try:
        from kaleido._sync_server import GlobalKaleidoServer

        return GlobalKaleidoServer()
    except Exception:  # private API moved: treat as "not running"
        return None


def export_figures(figs: Mapping[str, object], out_dir, formats: Sequence[str] = ("png", "html"),
                   scale: float = 2, include_plotlyjs: bool | str = True) -> list[Path]:
    """Save every figure in ``figs`` (name -> figure) as ``out_dir/<name>.<fmt>`` for each format.

    ``formats="auto"``: PNG and HTML when a Chromium-based browser is found, else HTML only.

    Static formats reuse one Chromium for the whole batch (kaleido's sync server, started here and
    stopped in ``finally`` unless it was already running). Returns the paths written, in order.
    """
    if formats == "auto":  # PNG + HTML when a browser can render, else HTML with a note
        formats = ("png", "html") if find_browser() else ("html",)
        if "png" not in formats:
            print("No Chromium/Chrome found: writing HTML only (run `make system` or set BROWSER_PATH for PNGs).")
    if isinstance(formats, str):
        formats = (formats,)
    fmts = [f.lower().lstrip(".") for f in formats]
    for f in fmts:
        _format_of(Path(f"x.{f}"))
    for name in figs:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ExportError(f"Figure name {name!r} is not a plain file stem (no slashes, not hidden).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    static = any(f in STATIC_FORMATS for f in fmts)
    started = False
    if static:
        _require_browser()
        srv = _server()
        if srv is not None and not srv.is_running():
            import kaleido

            kaleido.start_sync_server(silence_warnings=True)
            started = True
    written: list[Path] = []
    try:
        for name, fig in figs.items():
            for f in fmts:
                written.append(save_figure(fig, out / f"{name}.{f}", scale=scale, include_plotlyjs=include_plotlyjs))
    finally:
        if started:
            import kaleido

            kaleido.stop_sync_server(silence_warnings=True)
    return written


# ---------------------------------------------------------------------------------------- builders
def _to_numpy(x, ndim: int, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise InputError(f"{what} must have {ndim} dimensions, got shape {tuple(a.shape)}.")
    return a


def token_label(tok: str) -> str:
    """A token made visible on an axis: spaces as '·', newlines as '↵', tabs as '→'."""
    t = tok.replace(" ", "·").replace("\n", "↵").replace("\t", "→")
    return t if t else "∅"


def _tick_labels(str_tokens: Sequence[str] | None, n: int, what: str) -> list[str]:
    if str_tokens is None:
        return [str(i) for i in range(n)]
    toks = list(str_tokens)
    if len(toks) != n:
        raise InputError(f"{what}: got {len(toks)} token strings for {n} positions.")
    return [f"{token_label(t)} ({i})" for i, t in enumerate(toks)]


def attention_pattern_figure(pattern, str_tokens: Sequence[str] | None = None, title: str = "Attention pattern",
                             key_tokens: Sequence[str] | None = None, zmax: float | None = 1.0,
                             max_ticks: int = 64) -> go.Figure:
    """Heatmap of one head's attention pattern (Tq, Tk): rows are queries, columns keys.

    ``str_tokens`` label the query axis (and the key axis unless ``key_tokens`` is given).
    Axes are positional (duplicate tokens stay separate), queries run top to bottom.
    ``max_ticks``: token labels per axis at most (every n-th token beyond that).
    """
    p = _to_numpy(pattern, 2, "pattern")
    tq, tk = p.shape
    if key_tokens is None and str_tokens is not None and tq != tk:
        if len(str_tokens) == tk:  # e.g. selected query positions against the full prompt
            key_tokens, str_tokens = str_tokens, None
    ylab = _tick_labels(str_tokens, tq, "query tokens")
    xlab = _tick_labels(key_tokens if key_tokens is not None else str_tokens, tk, "key tokens")
    heat = go.Heatmap(z=p, x=list(range(tk)), y=list(range(tq)), colorscale="Blues", zmin=0.0, zmax=zmax,
                      colorbar=dict(title="attention"))
    if tq * tk <= _HOVER_CELLS:
        heat.customdata = np.dstack(np.broadcast_arrays(np.array(ylab, dtype=object)[:, None],
                                                        np.array(xlab, dtype=object)[None, :]))
        heat.hovertemplate = "query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{z:.3f}<extra></extra>"
    else:
        heat.hovertemplate = "query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>"
    fig = go.Figure(heat)
    side = max(360, min(900, 160 + 22 * max(tq, tk)))
    fig.update_layout(title=dict(text=title), width=side + 120, height=side, template="plotly_white",
                      margin=dict(l=10, r=10, t=50, b=10))
    _ticks(fig.layout.xaxis, xlab, "key", max_ticks)
    _ticks(fig.layout.yaxis, ylab, "query", max_ticks)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-60)
    return fig


def _ticks(axis, labels: list[str], title: str, max_ticks: int = 64) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / max_ticks))
    idx = list(range(0, n, step))
    axis.update(tickmode="array", tickvals=idx, ticktext=[labels[i] for i in idx], title=dict(text=title),
                showgrid=False, zeroline=False)


def residual_norms_figure(norms, str_tokens: Sequence[str] | None = None, title: str = "Residual stream norm",
                          log_color: bool = True, layer_labels: Sequence[str] | None = None) -> go.Figure:
    """Heatmap of residual-stream L2 norms, layer (rows) by token (columns), from a (L, T) tensor.

    ``log_color=True`` (default) colours by log10(norm) with the colour bar labelled in real norms:
    the attention-sink position's norm (about 2e4 on SmolLM2) would otherwise wash out every other
    token. Hover always shows the real value.
    """
    n = _to_numpy(norms, 2, "norms")
    layers, t = n.shape
    xlab = _tick_labels(str_tokens, t, "residual_norms_figure")
    ylab = list(layer_labels) if layer_labels is not None else [f"L{i}" for i in range(layers)]
    if len(ylab) != layers:
        raise InputError(f"residual_norms_figure: got {len(ylab)} layer labels for {layers} layers.")
    custom = np.dstack(np.broadcast_arrays(np.array(ylab, dtype=object)[:, None], np.array(xlab, dtype=object)[None, :],
                                           n.astype(object)))
    hover = "%{customdata[0]}, %{customdata[1]}<br>norm %{customdata[2]:.4g}<extra></extra>"
    if log_color:
        pos = n[n > 0]
        lo = math.floor(math.log10(pos.min())) if pos.size else 0
        hi = math.ceil(math.log10(pos.max())) if pos.size else 1
        hi = max(hi, lo + 1)
        z = np.log10(np.clip(n, 10.0 ** lo, None))
        mant = (1, 2, 5) if hi - lo <= 3 else (1,)
        vals = [m * 10.0 ** e for e in range(lo, hi + 1) for m in mant if m * 10.0 ** e <= 10.0 ** hi]
        colorbar = dict(title="norm (log)", tickvals=[math.log10(v) for v in vals], ticktext=[f"{v:g}" for v in vals])
        heat = go.Heatmap(z=z, zmin=lo, zmax=hi, colorbar=colorbar, colorscale="Viridis")
    else:
        heat = go.Heatmap(z=n, colorbar=dict(title="norm"), colorscale="Viridis")
    heat.update(x=list(range(t)), y=list(range(layers)), customdata=custom, hovertemplate=hover)
    fig = go.Figure(heat)
    fig.update_layout(title=dict(text=title), template="plotly_white", width=max(520, min(1400, 200 + 40 * t)),
                      height=max(360, min(900, 120 + 18 * layers)), margin=dict(l=10, r=10, t=50, b=10))
    _ticks(fig.layout.xaxis, xlab, "token")
    _ticks(fig.layout.yaxis, ylab, "layer (resid_post)")
    fig.update_xaxes(tickangle=-60)
    return fig


def residual_norms(run, name: str = "resid_post", prompt: int = 0):
    """(L, T) L2 norms of a captured residual name for one prompt of a Run (real tokens only)."""
    stack = run.stack(name)  # (L, B, T, d)
    n = run.lengths[prompt] if run.positions is None else stack.shape[2]
    return stack[:, prompt, :n].float().norm(dim=-1)


__all__ = ["save_figure", "export_figures", "attention_pattern_figure", "residual_norms_figure",
           "residual_norms", "find_browser", "token_label", "ALLOWED_SUFFIXES"]
