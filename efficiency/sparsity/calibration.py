"""TEAL calibration: magnitude histograms of every projection's input, per layer, on calibration texts.

One pass over the calibration windows records the input of q (shared by k and v: the normalized
residual), o (the concatenated head outputs), gate (shared by up: the normalized residual before the
MLP) and down (the SwiGLU product), per layer, into ``MagnitudeHistogram``s. Thresholds for any target
sparsity are then read from the histograms without running the model again.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from workbench.errors import InputError
from workbench.result import Result

from ..calibration import SHARED_INPUTS, record_linear_inputs, token_windows
from .histogram import MagnitudeHistogram

SITE_NAMES = {"q": "attention input (q, k, v)", "o": "o_proj input", "gate": "MLP input (gate, up)",
              "down": "down_proj input"}


@dataclass(repr=False)
class TealCalibration(Result):
    """Histograms {(layer, site): MagnitudeHistogram}, site in q / o / gate / down; ``n_tokens`` per linear."""

    histograms: dict
    n_tokens: int
    n_layers: int
    fingerprint: str = ""

    def histogram(self, layer: int, kind: str) -> MagnitudeHistogram:
        site = SHARED_INPUTS.get(kind)
        if site is None or (layer, site) not in self.histograms:
            raise InputError(f"TEAL calibration has no input histogram for layer {layer}, kind {kind!r}.")
        return self.histograms[layer, site]

    def threshold(self, layer: int, kind: str, sparsity: float) -> float:
        """|x| threshold giving ``sparsity`` on this linear's input (magnitude quantile)."""
        key = (layer, SHARED_INPUTS.get(kind), round(float(sparsity), 9))
        cache = self.__dict__.setdefault("_thresholds", {})
        if key not in cache:
            cache[key] = self.histogram(layer, kind).threshold(sparsity)
        return cache[key]

    def to_frame(self, sparsities=(0.25, 0.4, 0.5, 0.65)) -> pd.DataFrame:
        """The symmetry check: per layer and site, the magnitude threshold, TEAL's signed-icdf threshold,
        and the calibration sparsity the signed threshold really gives."""
        rows = []
        for (layer, site), h in sorted(self.histograms.items()):
            neg_share = float(h.neg.sum()) / max(h.n, 1.0)
            for s in sparsities:
                t = h.threshold(s)
                t_signed = h.signed_icdf(0.5 + s / 2)
                rows.append({"layer": layer, "site": site, "target": s, "threshold": t, "teal_signed_threshold": t_signed,
                             "sparsity_with_signed": h.fraction_below(abs(t_signed)), "negative_share": neg_share})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        f = self.to_frame((0.5,))
        worst = f.iloc[(f.sparsity_with_signed - f.target).abs().argmax()]
        return (f"TealCalibration({self.n_layers} layers x 4 input sites, {self.n_tokens} tokens per linear; at 50% the "
                f"signed-icdf threshold of TEAL's code gives {f.sparsity_with_signed.min():.1%}..{f.sparsity_with_signed.max():.1%} "
                f"(worst: layer {int(worst.layer)} {worst.site}))")

    def figure(self, target: float = 0.5, **_) -> go.Figure:
        f = self.to_frame((target,))
        fig = go.Figure()
        for site in ("q", "o", "gate", "down"):
            g = f[f.site == site]
            fig.add_scatter(x=g.layer, y=g.sparsity_with_signed, mode="lines+markers",
                            name=f"{SITE_NAMES[site]}: signed icdf(0.5+s/2)")
        fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target:.0%} (magnitude quantile, exact)")
        fig.update_layout(title="Symmetry check: the sparsity TEAL's signed threshold really gives on calibration inputs",
                          xaxis_title="layer", yaxis_title="fraction of inputs zeroed", yaxis_tickformat=".0%")
        return fig


def calibrate_teal(model, texts, window: int = 256, n_windows: int = 8, layers=None) -> TealCalibration:
    """Histograms of every projection input on ``texts`` (a non-empty list of strings)."""
    windows = token_windows(model, texts, window, n_windows)
    layers = list(range(model.info.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    kinds = model.linear_kinds
    sites = sorted({SHARED_INPUTS[k] for k in kinds if k in SHARED_INPUTS})
    hist = {(l, s): MagnitudeHistogram() for l in layers for s in sites}

    def on_input(layer, kind, x):
        hist[layer, kind].update(x)

    with model.without_interventions():
        n = record_linear_inputs(model, windows, [(l, s) for l in layers for s in sites], on_input)
    return TealCalibration(hist, n, model.info.n_layers, model.fingerprint)
