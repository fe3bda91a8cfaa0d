"""Attribution patching: a first-order estimate of every head's patching effect from one backward pass.

Activation patching needs one forward per patched component (270 heads on SmolLM2). Attribution
patching (Nanda 2023; Syed, Rager & Conmy 2023) linearises the metric around the target run:

    effect(a) ~= (a_source - a_target) . d metric / d a |_target

for every activation a at once. With the metric of ``patching.py`` (logit difference, normalised
so clean = 1 and corrupted = 0) and ``direction="denoise"`` the target is the corrupted run and
the source the clean run (Nanda's ``(clean - corrupted) * corrupted_grad``); with "noise" it is
the other way round. Passes: one forward of the source (no grad), one forward of the target with
grad, one backward: 3 in all, whatever the number of heads.

The gradient with respect to each head's z (B, T, H, d_head) is read through an intervention
that adds a zero tensor with ``requires_grad`` at ``blocks.{l}.attn.hook_z`` (and, with
``resid=True``, at ``resid_pre``); adding zero changes nothing in the forward, and its gradient
is d metric / d z. The per-head estimate sums over the patched positions ("all" by default, as
``patch_heads``) and d_head; the residual estimate is per (layer, position).

Where the metric is far from linear in an activation (large activations, saturated softmax,
the norm), the estimate can be off; ``compare`` reports its Pearson and Spearman correlation
with real per-head patching. On SmolLM2 capital prompts (``benchmarks/bench_patching.py``)
denoising gives Pearson 0.94-0.99; noising is usually as good, but in one of three pairs
(Spain -> Greece) it misses the one large head: patching the corrupted L23H4 into the clean run
moves the metric by -0.70, the gradient at the clean run predicts +0.05 (Pearson 0.17 over the
270 heads, Spearman still 0.97). Check the large effects with real patching.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.hook_names import hook_name
from workbench.capture import resolve_layers
from interventions.activation_patch import patch_positions
from workbench.errors import InputError
from workbench.intervention import Intervention

from .patching import (HeadPatchingResult, PatchingPair, _head_heatmap, _ld, _normaliser, _pos_desc,
                       _source_target, patch_heads)


class _GradProbe(Intervention):
    """Adds a zero leaf with requires_grad at each named hook; ``deltas[name]`` gets d out / d act."""

    def __init__(self, names: list[str]):
        self.names = names
        self.deltas: dict[str, torch.Tensor] = {}

    def hooks(self, model):
        def fn(x: torch.Tensor, name: str) -> torch.Tensor:
            d = torch.zeros_like(x, requires_grad=True)
            self.deltas[name] = d
            return x + d

        return [(n, fn) for n in self.names]


def activation_grads(model, ids: torch.Tensor, pair: PatchingPair, sites: dict[str, list[int]]):
    """One forward with grad of ``ids`` (T,) and one backward of its raw logit difference.

    sites: short name -> layers, e.g. {"z": [0, 1], "resid_pre": [0, 1]}.
    Returns (LD, acts, grads) with acts/grads: (site, layer) -> (T, ...) tensors (no grad).
    """
    names = {(s, l): hook_name(s, l)
             for s, ls in sites.items() for l in ls}
    probe = _GradProbe(list(names.values()))
    with torch.enable_grad():
        run = model.run(ids.to(model.device)[None], capture=list(names.values()), logits="last",
                        interventions=[probe], grad=True)
        ld = _ld(run.last_logits, pair)[0]
        missing = [n for n in names.values() if n not in probe.deltas]
        if missing:
            raise InputError(f"Hook(s) {missing[:3]} did not fire; cannot take gradients there.")
        grads = torch.autograd.grad(ld, [probe.deltas[n] for n in names.values()], allow_unused=True)
    acts = {k: run.captures[n][0] for k, n in names.items()}
    out = {}
    for k, g in zip(names, grads):
        out[k] = torch.zeros_like(acts[k]) if g is None else g[0].detach()  # None: no path to the logits
    return float(ld.detach()), acts, out


@dataclass
class AttributionPatchingResult:
    """Estimated change of the normalised metric when patching each head (and residual cell).

    head_effect: (L, H) estimated metric change for patching z of that head at ``positions``.
    resid_effect: (L, T) estimated change for patching ``resid_pre`` at one (layer, position), or
    None. ``baseline + head_effect`` estimates ``HeadPatchingResult.values``.
    """

    model_name: str
    pair: PatchingPair
    direction: str
    layers: list[int]
    heads: list[int]
    positions: list[int]
    head_effect: torch.Tensor
    resid_effect: torch.Tensor | None
    ld_clean: float
    ld_corrupted: float
    n_forward: int
    n_backward: int
    seconds: float

    @property
    def baseline(self) -> float:
        return 0.0 if self.direction == "denoise" else 1.0

    @property
    def head_values(self) -> torch.Tensor:
        """(L, H) estimated normalised metric after patching each head."""
        return self.baseline + self.head_effect

    def to_frame(self) -> pd.DataFrame:
        rows = [{"layer": l, "head": h, "estimated_effect": float(self.head_effect[i, j]),
                 "estimated_metric": float(self.head_values[i, j])}
                for i, l in enumerate(self.layers) for j, h in enumerate(self.heads)]
        return pd.DataFrame(rows, columns=["layer", "head", "estimated_effect", "estimated_metric"])

    def resid_frame(self) -> pd.DataFrame:
        if self.resid_effect is None:
            raise InputError("This result has no residual estimate: run attribution_patching(..., resid=True).")
        labels = self.pair.position_labels()
        rows = [{"layer": l, "position": p, "token": labels[p], "estimated_effect": float(self.resid_effect[i, p])}
                for i, l in enumerate(self.layers) for p in range(self.pair.n_tokens)]
        return pd.DataFrame(rows, columns=["layer", "position", "token", "estimated_effect"])

    def figure(self, title: str | None = None):
        """Heatmap layer x head of the estimated metric (same scale as ``HeadPatchingResult.figure``)."""
        return _head_heatmap(self.head_values.numpy(), self.layers, self.heads, self.baseline,
                             title or (f"Attribution patching of z: estimated metric<br><sup>{self.direction}, "
                                       f"{_pos_desc(self.positions, self.pair.n_tokens)}; 2 forward + 1 backward"
                                       "</sup>"),
                             "estimate")

    def resid_figure(self, title: str | None = None):
        """Heatmap layer x position of the estimated metric for patching one resid_pre cell."""
        import plotly.graph_objects as go

        if self.resid_effect is None:
            raise InputError("This result has no residual estimate: run attribution_patching(..., resid=True).")
        z = (self.baseline + self.resid_effect).numpy()
        lim = float(np.abs(self.resid_effect.numpy()).max()) or 1.0
        fig = go.Figure(go.Heatmap(z=z, x=self.pair.position_labels(), y=[str(l) for l in self.layers],
                                   colorscale="RdBu", zmid=self.baseline, zmin=self.baseline - lim,
                                   zmax=self.baseline + lim, colorbar=dict(title="estimate"),
                                   hovertemplate="layer %{y}<br>%{x}<br>estimate %{z:.3f}<extra></extra>"))
        fig.update_layout(title=title or ("Attribution patching of resid_pre: estimated metric<br>"
                                                f"<sup>{self.direction}, one (layer, position) at a time</sup>"),
                          xaxis_title="position", yaxis=dict(title="layer", autorange="reversed"),
                          template="plotly_white", width=max(500, 160 + 48 * self.pair.n_tokens),
                          height=max(360, 120 + 16 * len(self.layers)), margin=dict(l=10, r=10, t=60, b=10))
        return fig

    def compare(self, actual: HeadPatchingResult) -> "AttributionComparison":
        """Correlate these estimates with real per-head patching of the same pair, direction and positions."""
        if (actual.layers, actual.heads, actual.positions, actual.direction) != (
                self.layers, self.heads, self.positions, self.direction):
            raise InputError("The patching result covers other layers, heads, positions or direction than the "
                             "attribution estimate; run both with the same arguments.")
        return AttributionComparison(self, actual)

    def __repr__(self) -> str:
        e = self.head_effect
        i, j = divmod(int(e.abs().argmax()), e.shape[1])
        return (f"AttributionPatchingResult({self.model_name}, {self.direction}, {len(self.layers)} layers x "
                f"{len(self.heads)} heads, {_pos_desc(self.positions, self.pair.n_tokens)})\n  "
                f"{self.pair.describe()}\n  largest estimated effect: L{self.layers[i]}H{self.heads[j]} "
                f"{float(e[i, j]):+.3f}\n  {self.n_forward} forward + {self.n_backward} backward pass(es), "
                f"{self.seconds:.2f} s")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"


@dataclass
class AttributionComparison:
    """Attribution estimates versus real per-head patching: the effect of every (layer, head)."""

    attribution: AttributionPatchingResult
    actual: HeadPatchingResult

    @property
    def estimate(self) -> np.ndarray:
        return self.attribution.head_effect.numpy().ravel()

    @property
    def real(self) -> np.ndarray:
        return self.actual.effect.numpy().ravel()

    @property
    def pearson(self) -> float:
        return _pearson(self.estimate, self.real)

    @property
    def spearman(self) -> float:
        from scipy.stats import rankdata

        return _pearson(rankdata(self.estimate), rankdata(self.real))

    def to_frame(self) -> pd.DataFrame:
        a, r = self.attribution.head_effect, self.actual.effect
        rows = [{"layer": l, "head": h, "estimated_effect": float(a[i, j]), "actual_effect": float(r[i, j])}
                for i, l in enumerate(self.attribution.layers) for j, h in enumerate(self.attribution.heads)]
        return pd.DataFrame(rows, columns=["layer", "head", "estimated_effect", "actual_effect"])

    def figure(self, title: str | None = None):
        """Scatter: attribution estimate (x) versus actual patching effect (y), one point per head."""
        import plotly.graph_objects as go

        df = self.to_frame()
        lo = float(min(df.estimated_effect.min(), df.actual_effect.min()))
        hi = float(max(df.estimated_effect.max(), df.actual_effect.max()))
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="gray"),
                                 name="y = x", hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=df.estimated_effect, y=df.actual_effect, mode="markers", name="heads",
            marker=dict(color=df.layer, colorscale="Viridis", size=7, colorbar=dict(title="layer")),
            text=[f"L{l}H{h}" for l, h in zip(df["layer"], df["head"])],
            hovertemplate="%{text}<br>estimate %{x:.4f}<br>actual %{y:.4f}<extra></extra>"))
        fig.update_layout(
            title=title or (f"Attribution vs activation patching, {len(df)} heads "
                            f"(Pearson {self.pearson:.2f}, Spearman {self.spearman:.2f})"),
            xaxis_title="attribution patching estimate (metric change)", yaxis_title="actual patching (metric change)",
            template="plotly_white", width=620, height=520, showlegend=False, margin=dict(l=10, r=10, t=60, b=10))
        return fig

    def __repr__(self) -> str:
        a = self.attribution
        return (f"AttributionComparison({a.model_name}, {len(self.estimate)} heads, {a.direction}): Pearson "
                f"{self.pearson:.3f}, Spearman {self.spearman:.3f}\n  attribution: {a.n_forward} forward + "
                f"{a.n_backward} backward, {a.seconds:.2f} s; patching: {self.actual.n_patched_runs} patched runs "
                f"in {self.actual.n_forward} batched forwards, {self.actual.seconds:.2f} s")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"


def _pearson(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    d = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else float("nan")


def attribution_patching(model, pair: PatchingPair, layers=None, heads=None, positions="all",
                         direction: str = "denoise", resid: bool = True) -> AttributionPatchingResult:
    """Estimate every head's patching effect (and, with ``resid``, every resid_pre cell's) in 3 passes.

    Same arguments and metric as ``patch_heads``; the result's ``baseline + head_effect``
    estimates ``patch_heads(...).values``. Passes: source forward, target forward with grad,
    one backward.
    """
    t0 = time.perf_counter()
    layer_list = resolve_layers(layers, model.info.n_layers)
    head_list = list(range(model.info.n_heads)) if heads is None else model.check_heads(heads)
    pos = patch_positions(positions, pair.n_tokens)
    src_ids, tgt_ids = _source_target(pair, direction)
    sites = {"z": layer_list, **({"resid_pre": layer_list} if resid else {})}
    with torch.no_grad():  # pass 1: the source run's activations and logit difference
        run = model.run(src_ids.to(model.device)[None], capture=list(sites), layers=layer_list, logits="last")
    ld_src = float(_ld(run.last_logits, pair)[0])
    ld_tgt, acts, grads = activation_grads(model, tgt_ids, pair, sites)  # passes 2 and 3
    ld_clean, ld_corr = (ld_src, ld_tgt) if direction == "denoise" else (ld_tgt, ld_src)
    norm = _normaliser(ld_clean, ld_corr)
    hd = torch.tensor(head_list)
    head_eff = []
    for l in layer_list:
        diff = (run["z", l][0] - acts[("z", l)])[pos][:, hd]  # (P, H', e)
        head_eff.append((diff * grads[("z", l)][pos][:, hd]).sum((0, 2)))
    resid_eff = None
    if resid:
        resid_eff = torch.stack([((run["resid_pre", l][0] - acts[("resid_pre", l)]) * grads[("resid_pre", l)]).sum(-1)
                                 for l in layer_list]).cpu() / norm
    return AttributionPatchingResult(model.info.name, pair, direction, layer_list, head_list, pos.tolist(),
                                     torch.stack(head_eff).cpu() / norm, resid_eff, ld_clean, ld_corr, 2, 1,
                                     time.perf_counter() - t0)


def compare_attribution(model, pair: PatchingPair, layers=None, heads=None, positions="all",
                        direction: str = "denoise", batch_size: int = 64) -> AttributionComparison:
    """Run ``attribution_patching`` and ``patch_heads`` with the same arguments and compare them."""
    est = attribution_patching(model, pair, layers, heads, positions, direction, resid=False)
    act = patch_heads(model, pair, layers, heads, positions, direction, batch_size)
    return est.compare(act)


__all__ = ["attribution_patching", "AttributionPatchingResult", "AttributionComparison", "compare_attribution",
           "activation_grads"]
