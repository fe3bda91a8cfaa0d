"""``FigureWidget``: plotly's ``go.FigureWidget`` whose browser side loads plotly once per page.

Why: since plotly 6 a ``go.FigureWidget`` is an anywidget whose front end is a 5 MB ES module
(plotly.js included) sent as the widget's ``_esm``. anywidget imports that module afresh for every
figure (a new blob URL each time), and gives each figure's module 2 seconds to load and
initialize; after that the figure's model is marked failed for good: the figure draws empty and
ignores every later update, with nothing in the browser console. JavaScript parses those
modules one after the other, so an explorer with three figures on a busy machine misses the
2 s easily (seen in the browser tests: the KV explorer's heatmaps stayed blank about half the
time with the machine loaded).

This subclass sends a small module instead, which imports plotly's bundle (carried in the
``_plotly_bundle`` trait) once per browser page and shares it between figures, and which
initializes at once: the view, not the model, waits for plotly.js. Updates sent before plotly.js
is loaded only reach the browser's copy of the figure through the full state, so a figure
updated before it is shown must call ``resync()`` first (``go.FigureWidget`` does the same
when it is displayed on its own; inside an ipywidgets container nothing does it). Everything
else is ``go.FigureWidget`` (same Python API, same plotly front end).
"""
from __future__ import annotations

import functools
from copy import deepcopy

import plotly
import plotly.graph_objects as go
import traitlets

# The plotly bundle's default export is ``() => ({initialize, render})``, one closure per figure;
# the shared module only saves the parse and evaluation of plotly.js.
_SHIM_ESM = """
const KEY = Symbol.for("workbench.plotly-figure-widget/" + %(version)r);
function plotlyModule(model) {
  if (!globalThis[KEY]) {
    const url = URL.createObjectURL(new Blob([model.get("_plotly_bundle")], { type: "text/javascript" }));
    globalThis[KEY] = import(url).finally(() => URL.revokeObjectURL(url));
    globalThis[KEY].catch(() => { delete globalThis[KEY]; });  // a later figure may try again
  }
  return globalThis[KEY];
}
export default () => {
  let inner = null, ready = null;
  return {
    // Returns at once: anywidget fails a model whose initialize takes over 2 s, and plotly.js can
    // take that long to load on a busy machine. The view waits for it instead (render is async).
    initialize(ctx) {
      ready = plotlyModule(ctx.model).then(async (mod) => {
        inner = typeof mod.default === "function" ? await mod.default() : mod.default;
        if (inner.initialize) await inner.initialize(ctx);
      });
      ready.catch((e) => console.error("[workbench] the plotly widget module failed to load", e));
    },
    async render(ctx) {
      await ready;
      return inner.render(ctx);
    },
  };
};
""" % {"version": plotly.__version__}


@functools.cache
def _bundle() -> str:
    """plotly's widget bundle (anywidget keeps it as file contents; ``str`` gives the text)."""
    return str(go.FigureWidget._esm)


class FigureWidget(go.FigureWidget):
    """``go.FigureWidget`` that shares one plotly module per browser page (see the module docstring)."""

    _esm = _SHIM_ESM
    _plotly_bundle = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_plotly_bundle")
    def _default_bundle(self) -> str:
        return _bundle()

    def resync(self) -> "FigureWidget":
        """Send the figure's whole current state to the browser; call it on figures updated
        before being shown inside a container (see the module docstring). Returns ``self``."""
        self._widget_layout = deepcopy(self._layout_obj._props)
        self._widget_data = deepcopy(self._data)
        return self


def resync(*figures) -> None:
    """``resync()`` every ``FigureWidget`` among ``figures`` (others are left alone)."""
    for f in figures:
        if isinstance(f, FigureWidget):
            f.resync()


__all__ = ["FigureWidget", "resync"]
