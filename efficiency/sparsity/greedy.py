"""TEAL's greedy per-block sparsity allocation.

For each block separately (inputs: the dense model's residual entering the block on calibration
windows; target: the dense block output Y):

1. every projection p in (q, k, v, o, gate, up, down) starts at sparsity 0; its weight w_p is its parameter
   count relative to q (SmolLM2: q = o = 1, k = v = 1/3, gate = up = down = 8/3), its step
   delta_p = step / w_p (so every step adds the same parameter-weighted sparsity);
2. at each step, try delta_p on every projection, keep the one whose block output is closest to Y
   (||Y' - Y||_2 averaged over the last quarter of positions), and log the allocation with its
   effective sparsity sum_p w_p s_p / sum_p w_p;
3. stop at ``max_sparsity``.

For a target s, every block takes the logged allocation whose effective sparsity is closest to s.
The thresholds of an allocation come from the calibration histograms (magnitude quantiles).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.result import Result

from ..calibration import token_windows
from .block import block_forward, check_llama_like, rope_tables
from .calibration import TealCalibration

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(repr=False)
class GreedyAllocation(Result):
    """paths: {layer: list of {kind: sparsity} allocations, with "effective" and "error" keys}, from the
    first step (all 0) to ``max_sparsity``."""

    paths: dict
    weights: dict
    max_sparsity: float

    def allocation(self, layer: int, target: float) -> dict:
        """{kind: sparsity} of the logged step whose effective sparsity is closest to ``target``."""
        path = self.paths[layer]
        best = min(path, key=lambda r: abs(r["effective"] - target))
        return {k: best[k] for k in KINDS}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"layer": l, "step": i, **row} for l, path in self.paths.items()
                             for i, row in enumerate(path)])

    def summary(self) -> str:
        return f"GreedyAllocation({len(self.paths)} blocks, up to effective sparsity {self.max_sparsity:.0%})"

    def figure(self, target: float = 0.5, **_) -> go.Figure:
        layers = sorted(self.paths)
        fig = go.Figure()
        for k in KINDS:
            fig.add_scatter(x=layers, y=[self.allocation(l, target)[k] for l in layers], mode="lines+markers", name=k)
        fig.add_hline(y=target, line_dash="dash", annotation_text=f"uniform {target:.0%}")
        fig.update_layout(title=f"TEAL greedy allocation at effective sparsity {target:.0%}", xaxis_title="layer",
                          yaxis_title="input sparsity of the projection", yaxis_tickformat=".0%")
        return fig


def projection_weights(model) -> dict:
    """Parameter count of every projection relative to q."""
    n_q = model.linear_weight(0, "q").numel()
    return {k: model.linear_weight(0, k).numel() / n_q for k in KINDS}


def greedy_allocation(model, texts, calibration: TealCalibration, max_sparsity: float = 0.7, step: float = 0.05,
                      window: int = 64, n_windows: int = 2, layers=None, progress=None) -> GreedyAllocation:
    """Run the greedy allocation on every block (module docstring)."""
    check_llama_like(model, "TEAL greedy allocation")
    windows = token_windows(model, texts, window, n_windows)
    n = model.info.n_layers
    layers = list(range(n)) if layers is None else [model.check_layer(l) for l in layers]
    with model.without_interventions():
        run = model.run(windows, capture=["resid_pre"], layers=layers, logits=None)
        W = model.weights()
    cos, sin = rope_tables(model, windows.shape[1], model.device)
    w = projection_weights(model)
    wsum = sum(w.values())
    tail = slice(windows.shape[1] - max(1, windows.shape[1] // 4), None)
    paths = {}
    for layer in layers:
        lw, x = W.layers[layer], run["resid_pre", layer]
        with torch.no_grad():
            y = block_forward(lw, x, cos, sin)[:, tail]
            s = {k: 0.0 for k in KINDS}
            path = [{**s, "effective": 0.0, "error": 0.0}]
            while path[-1]["effective"] < max_sparsity:
                best = None
                for k in KINDS:
                    cand = s[k] + step / w[k]
                    if cand >= 0.99:
                        continue
                    th = {j: calibration.threshold(layer, j, cand if j == k else s[j]) for j in KINDS}
                    err = float((block_forward(lw, x, cos, sin, th)[:, tail] - y).norm(dim=-1).mean())
                    if best is None or err < best[1]:
                        best = (k, err, cand)
                if best is None:
                    break
                s[best[0]] = best[2]
                eff = sum(w[k] * s[k] for k in KINDS) / wsum
                path.append({**s, "effective": eff, "error": best[1]})
                if progress is not None:
                    progress(layer, eff)
        paths[layer] = path
    return GreedyAllocation(paths, w, max_sparsity)

