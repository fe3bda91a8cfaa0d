"""What TEAL's thresholds really do on held-out text: measured sparsity per layer and projection.

``measured_sparsity(model, method, texts)`` runs ``texts`` (not used for calibration) with the method in
force and counts, in every sparsified linear, the inputs the threshold zeroed, against the target the
threshold was calibrated for. A threshold calibrated on one distribution gives another sparsity on a
different one; the gap is what this shows.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from workbench.result import Result

from ..calibration import check_texts, token_windows
from .greedy import KINDS


@dataclass(repr=False)
class MeasuredSparsity(Result):
    """frame: one row per (layer, kind): target, measured (fraction zeroed), threshold, n_inputs."""

    frame: pd.DataFrame
    label: str

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> str:
        f = self.frame
        gap = (f.measured - f.target)
        return (f"MeasuredSparsity({self.label}: measured {f.measured.mean():.1%} on average vs target "
                f"{f.target.mean():.1%}; per linear {f.measured.min():.1%}..{f.measured.max():.1%}, "
                f"mean |gap| {gap.abs().mean():.1%})")

    def figure(self, **_) -> go.Figure:
        f = self.frame
        kinds = [k for k in KINDS if k in set(f.kind)]
        piv = f.pivot(index="kind", columns="layer", values="measured").reindex(kinds)
        tgt = f.pivot(index="kind", columns="layer", values="target").reindex(kinds)
        fig = go.Figure(go.Heatmap(z=(piv - tgt).to_numpy(), x=list(piv.columns), y=kinds, colorscale="RdBu",
                                   zmid=0, colorbar={"title": "measured - target"},
                                   customdata=piv.to_numpy(), hovertemplate="layer %{x} %{y}: measured %{customdata:.1%}"
                                                                            "<br>gap %{z:+.1%}<extra></extra>"))
        fig.update_layout(title=f"TEAL measured sparsity on held-out text minus target ({self.label})",
                          xaxis_title="layer", yaxis_title="projection")
        return fig


def measured_sparsity(model, method, texts, window: int = 256, n_windows: int = 4) -> MeasuredSparsity:
    """Fraction of every sparsified projection's inputs zeroed on held-out ``texts`` (module docstring)."""
    texts = check_texts(texts, "held-out")
    windows = token_windows(model, texts, window, n_windows)
    edit = method.intervention(model)
    targets = method.sparsities(model)
    with model.intervene(edit):
        for mod in edit.modules.values():
            mod.count = True
            mod.reset_counts()
        with model.session() as s:
            for i in range(windows.shape[0]):
                s.forward(windows[i: i + 1])
        rows = [{"layer": l, "kind": k, "target": targets[l, k], "measured": 1 - mod.kept_fraction,
                 "threshold": mod.threshold, "n_inputs": mod.seen} for (l, k), mod in sorted(edit.modules.items())]
    return MeasuredSparsity(pd.DataFrame(rows), method.label)
