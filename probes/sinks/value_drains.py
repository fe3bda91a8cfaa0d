"""Value-state drains: how much each token's value writes to the residual, per head.

For layer l, query head h and token j the drain norm is ‖v_j W_O^h‖ (see docs/sinks.md): v_j is the
value of the KV head that h reads (h // group_size, HF ``repeat_kv`` order), W_O^h the head's
(d_head, d_model) slice of the output projection (no output bias). A sink whose value is small
lets a head "attend to nothing". Measured on SmolLM2 (9 prose/code/fact prompts, mean over heads):
the ratio of position 0 to the rest is 0.17-0.26 in layers 3-9 and 0.10-0.39 in layers 12-29, and
0.75-1.35 in layers 0-2 and 10-11, the layers whose heads do not sink.

``value_drain(model, prompts)`` captures ``v`` only (no patterns, no logits) and returns a
``ValueDrainReport``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.capture import resolve_layers
from workbench.errors import InputError

from .report import check_prompt_lengths


def drain_norms(v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """(B, T, G, e) values and (H, e, d) per-head W_O -> (B, H, T) norms ‖v_{kv(h)} W_O^h‖.

    Query head h reads KV head h // (H / G). Holds one (B, T, H, d) temporary.
    """
    b, t, g, e = v.shape
    h = w_o.shape[0]
    if h % g:
        raise InputError(f"{h} query heads cannot share {g} KV heads evenly.")
    v_h = v.float().repeat_interleave(h // g, dim=2)  # (B, T, H, e)
    out = torch.einsum("bthe,hed->bthd", v_h, w_o.float())
    return out.norm(dim=-1).permute(0, 2, 1).contiguous()


@dataclass
class ValueDrainReport(Result):
    """Drain norms of L layers × H heads over B prompts (T = longest prompt).

    norms: (B, L, H, T) ‖v_j W_O^h‖; NaN at padded positions.
    ratio_per_prompt: (B, L, H) norm at position 0 / mean norm over positions 1..n-1.
    """

    model_name: str
    prompts: list[str]
    str_tokens: list[list[str]]
    lengths: list[int]
    layers: list[int]
    norms: torch.Tensor
    ratio_per_prompt: torch.Tensor

    @property
    def n_heads(self) -> int:
        return self.norms.shape[2]

    @property
    def ratio(self) -> torch.Tensor:
        """(L, H) sink-to-rest ratio, mean over prompts."""
        return self.ratio_per_prompt.mean(0)

    @property
    def layer_ratio(self) -> torch.Tensor:
        """(L,) sink-to-rest ratio averaged over heads and prompts."""
        return self.ratio.mean(-1)

    @property
    def sink_norm(self) -> torch.Tensor:
        """(L, H) norm at position 0, mean over prompts."""
        return self.norms[..., 0].mean(0)

    @property
    def rest_norm(self) -> torch.Tensor:
        """(L, H) mean norm over positions 1..n-1 (then over prompts)."""
        return torch.nanmean(self.norms[..., 1:], -1).mean(0)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head): sink norm, mean of the rest, ratio (means over prompts)."""
        s, r, q = self.sink_norm, self.rest_norm, self.ratio
        rows = [{"layer": l, "head": h, "sink_norm": float(s[i, h]), "rest_norm": float(r[i, h]),
                 "ratio": float(q[i, h])} for i, l in enumerate(self.layers) for h in range(self.n_heads)]
        return pd.DataFrame(rows, columns=["layer", "head", "sink_norm", "rest_norm", "ratio"])

    def token_frame(self, layer: int, head: int, prompt: int = 0) -> pd.DataFrame:
        """One row per real token of one prompt: position, token, drain norm in (layer, head)."""
        if layer not in self.layers:
            raise InputError(f"Layer {layer!r} was not analysed in this report; analysed: {self.layers}.")
        if not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise InputError(f"Head {head!r} is out of range: 0..{self.n_heads - 1}.")
        if not isinstance(prompt, int) or not 0 <= prompt < len(self.prompts):
            raise InputError(f"prompt must be an index in 0..{len(self.prompts) - 1}, got {prompt!r}.")
        n = self.lengths[prompt]
        v = self.norms[prompt, self.layers.index(layer), head, :n]
        return pd.DataFrame({"position": range(n), "token": self.str_tokens[prompt], "norm": v.tolist()})

    def figure(self, title: str | None = None):
        """Left: per-layer sink-to-rest ratio (mean over heads, band = min..max head), log scale.
        Right: layer × head heatmap of log10(ratio) (red: the sink's value is smaller than the rest's)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        q = self.ratio.numpy()  # (L, H)
        L, H = q.shape
        ys = [str(l) for l in self.layers]
        fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.12,
                            subplot_titles=("per layer (mean over heads; band: min-max)", "per head, log10 ratio"))
        fig.add_trace(go.Scatter(x=self.layers, y=q.max(1), mode="lines", line=dict(width=0), showlegend=False,
                                 hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=self.layers, y=q.min(1), mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor="rgba(31,119,180,0.2)", showlegend=False, hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=self.layers, y=q.mean(1), mode="lines+markers", name="position 0 / rest",
                                 showlegend=False,
                                 hovertemplate="layer %{x}<br>ratio %{y:.3f}<extra></extra>"), 1, 1)
        fig.add_hline(y=1.0, line=dict(dash="dot", color="gray"), row=1, col=1)
        lim = float(np.nanmax(np.abs(np.log10(np.clip(q, 1e-6, None))))) or 1.0
        custom = np.dstack([q, self.sink_norm.numpy(), self.rest_norm.numpy()])
        fig.add_trace(go.Heatmap(
            z=np.log10(np.clip(q, 1e-6, None)), x=list(range(H)), y=ys, colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            customdata=custom, colorbar=dict(title="log10 ratio", x=1.02),
            hovertemplate=("L%{y}H%{x}<br>ratio %{customdata[0]:.3f}<br>‖v₀W_O‖ %{customdata[1]:.3g}"
                           "<br>mean rest %{customdata[2]:.3g}<extra></extra>")), 1, 2)
        fig.update_yaxes(type="log", title="‖v₀ W_O^h‖ / mean over other tokens", row=1, col=1)
        fig.update_xaxes(title="layer", row=1, col=1)
        fig.update_xaxes(title="head", tickmode="array", tickvals=list(range(H)), row=1, col=2)
        fig.update_yaxes(title="layer", autorange="reversed", row=1, col=2)
        fig.update_layout(title=dict(text=title or f"Value drain: position 0 versus the rest ({self.model_name})"),
                          template="plotly_white", width=1000, height=max(380, 120 + 16 * L),
                          margin=dict(l=10, r=10, t=70, b=10))
        return fig

    def __repr__(self) -> str:
        per_layer = " ".join(f"{l}:{v:.2f}" for l, v in zip(self.layers, self.layer_ratio.tolist()))
        return (f"ValueDrainReport({self.model_name}, {len(self.prompts)} prompt(s), {len(self.layers)} layers × "
                f"{self.n_heads} heads)\n  ‖v₀W_O‖ / mean of the rest, per layer: {per_layer}")

    def html_table(self):
        return None


def value_drain(model, prompts, layers=None, max_bytes: int | None = None) -> ValueDrainReport:
    """Per layer, head and token the norm ‖v_j W_O^h‖, and position 0 versus the rest.

    prompts: a string, a list of strings or token ids; each needs at least 2 tokens. Padding
    (right) is excluded from the rest's mean. layers: None for all, an int or a list.
    """
    layer_list = resolve_layers(layers, model.info.n_layers)
    texts, lengths = check_prompt_lengths(model, prompts, 1, "value_drain (position 0 versus the rest)")
    run = model.run(prompts, capture=["v"], layers=layer_list, logits=None, stop_at_layer=max(layer_list) + 1,
                    max_bytes=max_bytes)
    return value_drain_from_run(model, run, layer_list, texts)


def value_drain_from_run(model, run, layers: list[int], texts: list[str]) -> ValueDrainReport:
    """Build a ValueDrainReport from a Run that captured ``v`` at ``layers`` (all positions)."""
    layer_list, lengths = list(layers), list(run.lengths)
    b, t = run.tokens.shape
    pad = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T)
    norms = []
    with torch.no_grad():
        for l in layer_list:
            n = drain_norms(run["v", l], model.W_O(l).detach()).cpu()  # (B, H, T)
            norms.append(n.masked_fill(pad[:, None, :], float("nan")))
    norms_t = torch.stack(norms, 1)  # (B, L, H, T)
    ratio = norms_t[..., 0] / torch.nanmean(norms_t[..., 1:], -1)
    return ValueDrainReport(model.info.name, texts, run.str_tokens, lengths, layer_list, norms_t, ratio)
