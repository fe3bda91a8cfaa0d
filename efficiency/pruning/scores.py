"""Layer-importance scores from one pass over calibration windows, computed on the fly (nothing stored).

For every layer l, with X_l the residual entering the block (``resid_pre``), M_l the residual between
attention and MLP (``resid_mid``) and Y_l the residual leaving it (``resid_post``), per token t:

    Block Influence (ShortGPT):     BI_l = 1 - mean_t cos(X_l,t, Y_l,t)
    angular BI:                     arccos(cos) / pi, averaged
    attention redundancy (LLM-Drop): S^attn_l = mean_t cos(X_l,t, M_l,t)   (importance 1 - S)
    MLP redundancy:                  S^mlp_l  = mean_t cos(M_l,t, Y_l,t)
    update norm:                     mean_t ||Y_l,t - X_l,t||             (TrimLLM's activation-norm tie-breaker)

Each is reported over all tokens and without position 0 of each window (the attention-sink token,
which carries the massive activation: its cosine is about 1 inside the blocks that keep it and very low
in the block that writes it, so short windows can be dominated by it). Layers whose block is skipped by
an edit in force score as pass-throughs (cos 1, BI 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import numpy as np
import torch

from workbench import hook_name
from workbench.edits import silenced_hooks
from workbench.result import Result


@dataclass(repr=False)
class LayerScores(Result):
    """Per-layer similarity scores (see the module docstring); one row per layer.

    Columns: layer, bi, bi_no_first (position 0 left out), bi_angular, attn_sim, attn_sim_no_first,
    mlp_sim, mlp_sim_no_first, update_norm, n_tokens.
    """

    frame: pd.DataFrame
    label: str = ""

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> str:
        f = self.frame
        low = f.nsmallest(3, "bi")["layer"].tolist()
        return (f"LayerScores({self.label or 'model'}: {len(f)} layers over {int(f.n_tokens.iloc[0])} tokens; "
                f"lowest Block Influence at layers {low})")

    def order(self, column: str = "bi") -> list[int]:
        """Layers from least to most important by ``column`` (BI ascending; similarities descending)."""
        asc = not column.startswith(("attn_sim", "mlp_sim"))
        return self.frame.sort_values(column, ascending=asc, kind="stable")["layer"].tolist()

    def figure(self, **_) -> go.Figure:
        f = self.frame
        fig = go.Figure()
        fig.add_bar(x=f.layer, y=f.bi, name="Block Influence (all tokens)")
        fig.add_bar(x=f.layer, y=f.bi_no_first, name="Block Influence (position 0 left out)")
        fig.add_scatter(x=f.layer, y=1 - f.attn_sim, name="attention importance 1 - cos(X, X+attn)", mode="lines+markers")
        fig.add_scatter(x=f.layer, y=1 - f.mlp_sim, name="MLP importance 1 - cos(M, M+mlp)", mode="lines+markers")
        fig.update_layout(title=f"Layer importance {self.label}".strip(), xaxis_title="layer",
                          yaxis_title="1 - cosine (higher = the layer changes the residual more)", barmode="group")
        return fig


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, T) cosine of (B, T, d) rows, in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)


def layer_scores(model, windows: torch.Tensor, batch_size: int = 4, label: str = "") -> LayerScores:
    """Scores of every layer on (N, T) calibration ``windows`` under the edits in force (module docstring)."""
    n = model.info.n_layers
    silenced = silenced_hooks(model)
    keys = ("cos_blk", "ang", "cos_attn", "cos_mlp", "upd")
    acc = {k: torch.zeros(n, 2, dtype=torch.float64) for k in keys}  # [:, 0] all tokens, [:, 1] without pos 0
    count = torch.zeros(2, dtype=torch.float64)
    held: dict[tuple[str, int], torch.Tensor] = {}

    def add(key, l, v):  # v (B, T)
        acc[key][l, 0] += float(v.sum())
        acc[key][l, 1] += float(v[:, 1:].sum())

    def on_pre(l):
        def fn(x, _n):
            held["pre", l] = x.detach()
        return fn

    def on_mid(l):
        def fn(x, _n):
            held["mid", l] = x.detach()
            add("cos_attn", l, _cos(held["pre", l], x))
        return fn

    def on_post(l):
        def fn(x, _n):
            pre = held.pop(("pre", l))
            c = _cos(pre, x)
            add("cos_blk", l, c)
            add("ang", l, torch.arccos(c.clamp(-1, 1)) / math.pi)
            add("upd", l, (x.double() - pre.double()).norm(dim=-1))
            mid = held.pop(("mid", l), None)
            add("cos_mlp", l, _cos(mid, x) if mid is not None else torch.ones_like(c))
        return fn

    hooks = []
    mids = set()
    parallel = model.info.parallel_attn_mlp  # attention and MLP read the same residual: no resid_mid
    for l in range(n):
        hooks.append((hook_name("resid_pre", l), on_pre(l)))
        if not parallel and hook_name("resid_mid", l) not in silenced:
            hooks.append((hook_name("resid_mid", l), on_mid(l)))
            mids.add(l)
        hooks.append((hook_name("resid_post", l), on_post(l)))
    with model.session(hooks=hooks) as s:
        for i in range(0, windows.shape[0], batch_size):
            ids = windows[i: i + batch_size]
            s.forward(ids)
            count += torch.tensor([ids.numel(), ids.numel() - ids.shape[0]], dtype=torch.float64)
    for l in set(range(n)) - mids:  # a skipped block: attention and MLP add nothing
        acc["cos_attn"][l] = count.clone()
    m = {k: (v / count.clamp_min(1)).numpy() for k, v in acc.items()}
    if parallel:  # the sublayer similarities need the residual between attention and MLP, which does not exist
        m["cos_attn"][:] = np.nan
        m["cos_mlp"][:] = np.nan
    frame = pd.DataFrame({
        "layer": list(range(n)),
        "bi": 1 - m["cos_blk"][:, 0], "bi_no_first": 1 - m["cos_blk"][:, 1], "bi_angular": m["ang"][:, 0],
        "attn_sim": m["cos_attn"][:, 0], "attn_sim_no_first": m["cos_attn"][:, 1],
        "mlp_sim": m["cos_mlp"][:, 0], "mlp_sim_no_first": m["cos_mlp"][:, 1],
        "update_norm": m["upd"][:, 0], "n_tokens": int(count[0]),
    })
    return LayerScores(frame, label)
