"""Method-specific views of layer dropping: greedy removal curves and the massive activation.

- ``RemovalCurve``: a greedy method's loss after each removal (SLEB, TrimLLM) and the loss of every
  candidate tried at every step (which blocks were nearly free, which were not).
- ``massive_activation_effect(model, text, variants)``: the residual norm of every position per layer,
  for the unmodified model and under each variant (an intervention), with the block that writes the
  massive activation found by measurement (the largest jump of the peak token's residual norm) and
  what each variant does to that peak: dropping or sparsifying the writer block removes it (and every
  later attention sink that relies on it), dropping other blocks does not.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.errors import InputError
from workbench.result import Result


@dataclass(repr=False)
class RemovalCurve(Result):
    """steps: one dict per step (step, removed layer or None at step 0, ppl after it);
    tried: one dict per candidate evaluation (step, layer, ppl with it removed too)."""

    method: str
    steps: list
    tried: list
    n_layers: int
    metric: str = "ppl"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps)

    def candidates(self) -> pd.DataFrame:
        """(step x layer) metric of every candidate tried (NaN where a layer was not a candidate)."""
        if not self.tried:
            return pd.DataFrame()
        return pd.DataFrame(self.tried).pivot(index="step", columns="layer", values=self.metric)

    def summary(self) -> str:
        order = [s["removed"] for s in self.steps[1:]]
        last = self.steps[-1][self.metric]
        return (f"RemovalCurve({self.method}: removed {order} in that order; calibration {self.metric} "
                f"{self.steps[0][self.metric]:.3g} -> {last:.3g})")

    def figure(self, **_) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{self.metric} after each removal",
                                                            f"{self.metric} of every candidate (log10)"))
        f = self.to_frame()
        fig.add_scatter(x=f.step, y=f[self.metric], mode="lines+markers+text", name=self.metric,
                        text=[f"L{int(r)}" if r == r and r is not None else "" for r in f.removed], textposition="top center",
                        row=1, col=1)
        c = self.candidates()
        if len(c):
            z = c.to_numpy(dtype=float)
            if self.metric == "ppl":
                import numpy as np

                z = np.log10(z)
            fig.add_heatmap(z=z, x=[int(x) for x in c.columns], y=[int(y) for y in c.index], colorscale="Viridis",
                            colorbar={"title": f"log10 {self.metric}" if self.metric == "ppl" else self.metric},
                            row=1, col=2)
        fig.update_xaxes(title_text="blocks removed", row=1, col=1)
        fig.update_xaxes(title_text="candidate block", row=1, col=2)
        fig.update_yaxes(title_text="step", row=1, col=2)
        fig.update_layout(title=f"{self.method}: greedy removal", showlegend=False)
        return fig


@dataclass(repr=False)
class MassiveEffect(Result):
    """norms: {variant: (L, T) residual norm after each block, per position}; peak_position and
    writer_layer measured on the unmodified model ("base"); peak_dim: the residual dimension carrying the
    peak; peak_value: {variant: (L,) |resid[peak_position, peak_dim]|}."""

    norms: dict
    peak_value: dict
    peak_position: int
    peak_dim: int
    writer_layer: int
    tokens: list

    def to_frame(self) -> pd.DataFrame:
        rows = []
        base = self.norms["base"]
        for name, n in self.norms.items():
            for l in range(n.shape[0]):
                others = torch.cat([n[l, : self.peak_position], n[l, self.peak_position + 1:]])
                rows.append({"variant": name, "layer": l, "peak_norm": float(n[l, self.peak_position]),
                             "peak_dim_value": float(self.peak_value[name][l]),
                             "median_other_norm": float(others.median()) if len(others) else float("nan"),
                             "peak_norm_base": float(base[l, self.peak_position])})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        f = self.to_frame()
        last = f[f.layer == self.writer_layer + 1] if self.writer_layer + 1 in set(f.layer) else f[f.layer == self.writer_layer]
        parts = ", ".join(f"{r.variant}: {r.peak_norm:.0f}" for r in last.itertuples())
        return (f"MassiveEffect(peak at position {self.peak_position}, dim {self.peak_dim}, written by block "
                f"{self.writer_layer}; peak norm after block {int(last.layer.iloc[0])}: {parts})")

    def figure(self, **_) -> go.Figure:
        fig = go.Figure()
        for name, n in self.norms.items():
            fig.add_scatter(x=list(range(n.shape[0])), y=n[:, self.peak_position].tolist(), mode="lines+markers",
                            name=f"{name}: position {self.peak_position}")
        base = self.norms["base"]
        med = base.clone()
        med[:, self.peak_position] = float("nan")
        fig.add_scatter(x=list(range(base.shape[0])), y=torch.nanmedian(med, dim=1).values.tolist(),
                        name="base: median of other positions", line={"dash": "dot"})
        fig.add_vline(x=self.writer_layer, line_dash="dash", annotation_text=f"writer block {self.writer_layer}")
        fig.update_layout(title="The massive activation under each variant (residual norm after each block)",
                          xaxis_title="layer (resid_post)", yaxis_title="||residual||", yaxis_type="log")
        return fig


def _norms(model, ids, interventions=()) -> tuple[torch.Tensor, torch.Tensor]:
    n = model.info.n_layers
    run = model.run(ids, capture=["resid_post"], layers=list(range(n)), logits=None, interventions=interventions)
    resid = torch.stack([run["resid_post", l][0] for l in range(n)])  # (L, T, d)
    return resid.norm(dim=-1).double().cpu(), resid.double().cpu()


def massive_activation_effect(model, text: str, variants: dict | None = None) -> MassiveEffect:
    """Residual norms per layer and position, for the unmodified model and under each variant
    ({name: intervention}); the massive activation's writer block is found on the unmodified model."""
    if not isinstance(text, str) or not text:
        raise InputError("massive_activation_effect(): give a non-empty text.")
    variants = dict(variants or {})
    if "base" in variants:
        raise InputError("massive_activation_effect(): 'base' is reserved for the unmodified model.")
    ids, _ = model.tokenize(text)
    with model.without_interventions():
        base_norm, base_resid = _norms(model, ids)
    peak_pos = int(base_norm.max(dim=0).values.argmax())
    series = base_norm[:, peak_pos]
    jumps = torch.cat([series[:1], series[1:] - series[:-1]])
    writer = int(jumps.argmax())
    peak_dim = int(base_resid[writer, peak_pos].abs().argmax())
    norms = {"base": base_norm}
    peak_value = {"base": base_resid[:, peak_pos, peak_dim].abs()}
    for name, iv in variants.items():
        with model.without_interventions():
            nv, rv = _norms(model, ids, [iv] if iv is not None else ())
        norms[name] = nv
        peak_value[name] = rv[:, peak_pos, peak_dim].abs()
    return MassiveEffect(norms, peak_value, peak_pos, peak_dim, writer, model.str_tokens(ids[0].tolist()))
