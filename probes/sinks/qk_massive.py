"""Massive values in Q and K after RoPE (Jin et al., ICML 2025), with each dim's RoPE frequency.

Per layer, the concentration map of X in {Q, K, V} is M[h, i] = ‖X[:, :, h, i]‖₂ over every
real token of every prompt (position 0 left out with ``exclude_first=True``): (H, d_head) for
Q, (G, d_head) for K and V (KV heads, GQA not expanded). Q and K are read after RoPE
(``q_rot``/``k_rot``); on a model without rotary embeddings they are the plain ``q``/``k``
(``rotary=False`` in the report).

- concentration per head: max_i M[h, i] / mean_i M[h, i] (1 for a flat map).
- RoPE (HF ``rotate_half``): with r = 2·len(inv_freq) rotated dims, dim i < r belongs to pair
  p = i mod r/2 (dims p and p + r/2 rotate together) at angular frequency θ_p = inv_freq[p]
  (θ_p = base^(-2p/r) for plain RoPE); wavelength 2π/θ_p tokens. Dims >= r are not rotated
  (θ = 0, infinite wavelength). inv_freq is read from the HF model's rotary module.
- low-frequency share: Σ_{i in the last quarter of pairs} M[h, i]² / Σ_i M[h, i]², mean over
  heads (0.25 for a flat map); likewise the high-frequency (first) quarter.

Measured on SmolLM2 (9 prose/code/fact prompts, position 0 excluded; docs/sinks.md): in layers
>= 5 the per-head concentration is 2.6-11.2 for Q and 2.4-10.1 for K (medians 6.9 and 6.8) against
1.2-4.7 for V (median 1.9); the arg-max Q/K dims sit mostly in pairs 22-25 (wavelengths 17k-35k
tokens for pairs 22-24, beyond the 8k context), and the lowest-frequency quarter's energy share
of Q rises from 0.23 at layer 2 to 0.63 at layer 20.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.hook_names import hook_name
from workbench.capture import resolve_layers
from workbench.errors import InputError

from .report import check_prompt_lengths

KINDS = ("q", "k", "v")


def _fmt_tokens(w: float) -> str:
    if not np.isfinite(w):
        return "∞"
    return f"{w:.3g}" if w < 1000 else f"{w / 1000:.3g}k"


def concentration_map(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, N, e) activations and a (B, T) bool token mask -> (N, e) L2 norms over the kept tokens."""
    m = mask.to(x.device)[:, :, None, None].to(torch.float32)
    return ((x.detach().float() ** 2) * m).sum((0, 1)).sqrt()


def concentration_ratio(maps: torch.Tensor) -> torch.Tensor:
    """(..., e) maps -> (...) max over dims / mean over dims."""
    return maps.max(-1).values / maps.mean(-1).clamp_min(1e-30)


def pair_norms(maps: torch.Tensor, n_rot: int | None = None) -> torch.Tensor:
    """(..., e) maps -> (..., r/2) norms of the rotate_half pairs (i, i + r/2), r = n_rot or e.

    RoPE rotates each pair by an angle, so these are the same before and after RoPE.
    """
    r = maps.shape[-1] if n_rot is None else n_rot
    half = r // 2
    return (maps[..., :half] ** 2 + maps[..., half:r] ** 2).sqrt()


def rope_inv_freq(model) -> tuple[torch.Tensor | None, str]:
    """(inv_freq (r/2,), where it came from). Read from the HF model's rotary-embedding module
    (its ``inv_freq`` buffer, which already includes any RoPE scaling); falls back to
    rope_theta^(-2p/d_head) from the config; (None, "no rotary embeddings") for other models."""
    if model.info.positional != "rotary":
        return None, "no rotary embeddings"
    found = model.rope_inv_freq()
    if found is not None:
        f, where = found
        return f.detach().float().cpu().clone(), where
    theta, e = model.info.rope_theta, model.info.d_head
    if theta is None:
        return None, "rotary model without inv_freq or rope_theta"
    return theta ** (-torch.arange(0, e, 2, dtype=torch.float64) / e).float(), f"config rope_theta={theta:g}"


def dim_frequencies(inv_freq: torch.Tensor | None, d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair index per dim (e,), θ per dim (e,)): rotate_half pairing; dims >= r get pair -1, θ 0."""
    pair = torch.full((d_head,), -1, dtype=torch.long)
    theta = torch.zeros(d_head)
    if inv_freq is None:
        return pair, theta
    half = inv_freq.numel()
    if 2 * half > d_head:
        raise InputError(f"inv_freq has {half} frequencies, more than d_head/2 = {d_head // 2}.")
    idx = torch.arange(2 * half)
    pair[: 2 * half] = idx % half
    theta[: 2 * half] = inv_freq[idx % half]
    return pair, theta


@dataclass
class QKConcentrationReport(Result):
    """Concentration maps of Q, K (after RoPE when rotary) and V over L layers.

    q_maps: (L, H, e); k_maps, v_maps: (L, G, e). inv_freq: (r/2,) or None.
    pair: (e,) rotate_half pair index of each dim (-1: not rotated); theta: (e,) angular frequency.
    n_tokens: number of tokens the maps sum over.
    """

    model_name: str
    layers: list[int]
    q_maps: torch.Tensor
    k_maps: torch.Tensor
    v_maps: torch.Tensor
    inv_freq: torch.Tensor | None
    pair: torch.Tensor
    theta: torch.Tensor
    rotary: bool
    freq_source: str
    exclude_first: bool
    n_tokens: int

    def maps(self, kind: str) -> torch.Tensor:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {kind!r}.")
        return {"q": self.q_maps, "k": self.k_maps, "v": self.v_maps}[kind]

    @property
    def wavelength(self) -> torch.Tensor:
        """(e,) RoPE wavelength 2π/θ in tokens (inf for dims that are not rotated)."""
        return torch.where(self.theta > 0, 2 * math.pi / self.theta.clamp_min(1e-30), torch.full_like(self.theta, math.inf))

    @property
    def n_pairs(self) -> int:
        return int(self.pair.max()) + 1 if self.rotary else self.q_maps.shape[-1] // 2

    def quarter_dims(self, which: str = "low") -> torch.Tensor:
        """Dims of the lowest- ("low") or highest-frequency ("high") quarter of rotate_half pairs.

        Without RoPE the same index sets are used (dims p and p + e/2 for the last or first
        quarter of p) so the numbers stay comparable; they carry no frequency meaning then.
        """
        if which not in ("low", "high"):
            raise InputError(f"which must be 'low' or 'high', got {which!r}.")
        half = self.n_pairs
        q = max(1, half // 4)
        ps = torch.arange(half - q, half) if which == "low" else torch.arange(q)
        return torch.cat([ps, ps + half])

    def concentration(self, kind: str) -> torch.Tensor:
        """(L, heads) max dim norm / mean dim norm."""
        return concentration_ratio(self.maps(kind))

    def argmax_dim(self, kind: str) -> torch.Tensor:
        """(L, heads) the dim with the largest norm."""
        return self.maps(kind).argmax(-1)

    def energy_share(self, kind: str, which: str = "low") -> torch.Tensor:
        """(L, heads) share of Σ M² in the ``which`` quarter of pairs (0.25 for a flat map)."""
        m2 = self.maps(kind) ** 2
        return m2[..., self.quarter_dims(which)].sum(-1) / m2.sum(-1).clamp_min(1e-30)

    def layer_summary(self) -> pd.DataFrame:
        """One row per layer: mean concentration, low/high-frequency energy share for Q, K, V."""
        rows = []
        for i, l in enumerate(self.layers):
            row = {"layer": l}
            for kind in KINDS:
                row[f"{kind}_concentration"] = float(self.concentration(kind)[i].mean())
            for kind in KINDS:
                row[f"{kind}_low_share"] = float(self.energy_share(kind, "low")[i].mean())
            for kind in KINDS:
                row[f"{kind}_high_share"] = float(self.energy_share(kind, "high")[i].mean())
            rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, kind, head): concentration, arg-max dim with its pair and
        wavelength, and the low/high-frequency energy shares."""
        wl = self.wavelength
        rows = []
        for kind in KINDS:
            conc, arg = self.concentration(kind), self.argmax_dim(kind)
            low, high = self.energy_share(kind, "low"), self.energy_share(kind, "high")
            for i, l in enumerate(self.layers):
                for h in range(conc.shape[1]):
                    d = int(arg[i, h])
                    rows.append({"layer": l, "kind": kind, "head": h, "concentration": float(conc[i, h]),
                                 "argmax_dim": d, "pair": int(self.pair[d]), "wavelength": float(wl[d]),
                                 "low_share": float(low[i, h]), "high_share": float(high[i, h])})
        return pd.DataFrame(rows)

    def figure(self, layer: int, normalize: bool = True, title: str | None = None):
        """Heads × dims heatmaps of Q, K and V at one layer. normalize=True colours M[h, i] divided
        by the head's mean over dims (its concentration profile); hover gives the raw norm, the
        rotate_half pair, θ and the RoPE wavelength; x ticks show dim and wavelength."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if layer not in self.layers:
            raise InputError(f"Layer {layer!r} was not analysed in this report; analysed: {self.layers}.")
        li = self.layers.index(layer)
        e = self.q_maps.shape[-1]
        wl = self.wavelength.numpy()
        names = {"q": "Q after RoPE" if self.rotary else "Q (no RoPE)", "k": "K after RoPE" if self.rotary else "K (no RoPE)",
                 "v": "V"}
        sizes = [self.maps(k).shape[1] for k in KINDS]
        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=sizes,
                            subplot_titles=[f"{names[k]} (concentration {float(self.concentration(k)[li].mean()):.2f}, "
                                            f"low-freq share {float(self.energy_share(k)[li].mean()):.2f})" for k in KINDS])
        zmax = max(float(concentration_ratio(self.maps(k)[li]).max()) for k in KINDS) if normalize else None
        wl_txt = np.array([_fmt_tokens(w) for w in wl], dtype=object)
        for r, kind in enumerate(KINDS, start=1):
            m = self.maps(kind)[li].numpy()  # (N, e)
            z = m / np.clip(m.mean(-1, keepdims=True), 1e-30, None) if normalize else m
            custom = np.dstack(np.broadcast_arrays(m, self.pair.numpy()[None, :], self.theta.numpy()[None, :],
                                                   wl_txt[None, :])).astype(object)
            fig.add_trace(go.Heatmap(
                z=z, x=list(range(e)), y=list(range(m.shape[0])), coloraxis="coloraxis", customdata=custom,
                hovertemplate=(f"{kind.upper()} head %{{y}}, dim %{{x}}<br>norm %{{customdata[0]:.4g}}"
                               "<br>pair %{customdata[1]}, θ %{customdata[2]:.3g}<br>wavelength %{customdata[3]} tokens"
                               "<extra></extra>")), r, 1)
            fig.update_yaxes(title=("KV head" if kind != "q" else "head"), autorange="reversed", row=r, col=1)
        step = max(1, e // 8)
        ticks = sorted(set(range(0, e, step)) | {e - 1})
        text = [f"{i}<br>λ {wl_txt[i]}" if self.rotary else str(i) for i in ticks]
        fig.update_xaxes(tickmode="array", tickvals=ticks, ticktext=text, tickangle=0, row=3, col=1,
                         title=("dim (λ: RoPE wavelength in tokens)" if self.rotary else "dim"))
        fig.update_layout(
            coloraxis=dict(colorscale="Viridis", cmin=0 if normalize else None, cmax=zmax,
                           colorbar=dict(title="norm / head mean" if normalize else "norm")),
            title=dict(text=title or f"Q/K/V concentration, layer {layer} ({self.model_name}; "
                                     f"{'position 0 excluded' if self.exclude_first else 'all positions'})"),
            template="plotly_white", width=1000, height=260 + 14 * sum(sizes), margin=dict(l=10, r=10, t=70, b=10))
        return fig

    def __repr__(self) -> str:
        s = self.layer_summary()
        lines = [f"QKConcentrationReport({self.model_name}, {len(self.layers)} layers, {self.n_tokens} tokens, "
                 f"{'RoPE, ' + self.freq_source if self.rotary else 'no RoPE: plain q/k'})"]
        for kind in KINDS:
            lines.append(f"  {kind.upper()} concentration per layer: "
                         + " ".join(f"{l}:{v:.1f}" for l, v in zip(s.layer, s[f'{kind}_concentration'])))
        for kind in KINDS:
            lines.append(f"  {kind.upper()} low-frequency share: "
                         + " ".join(f"{l}:{v:.2f}" for l, v in zip(s.layer, s[f'{kind}_low_share'])))
        return "\n".join(lines)

    def html_table(self):
        return self.layer_summary().round(3)


def qk_concentration(model, prompts, exclude_first: bool = True, layers=None,
                     max_bytes: int | None = None) -> QKConcentrationReport:
    """Heads × dims norm maps of Q, K (after RoPE) and V per layer, with RoPE frequencies.

    prompts: a string, a list of strings or token ids; right padding is excluded, and so is
    position 0 when ``exclude_first`` (its massive residual would dominate every map).
    """
    layer_list = resolve_layers(layers, model.info.n_layers)
    texts, lengths = check_prompt_lengths(model, prompts, 1 if exclude_first else 0,
                                          "qk_concentration with exclude_first=True")
    run = model.run(prompts, capture=[*qk_names(model), "v"], layers=layer_list, logits=None,
                    stop_at_layer=max(layer_list) + 1, max_bytes=max_bytes)
    return qk_concentration_from_run(model, run, layer_list, exclude_first)


def qk_names(model) -> tuple[str, str]:
    """("q_rot", "k_rot") on a rotary model whose bridge exposes them, else ("q", "k")."""
    rotary = model.info.positional == "rotary" and hook_name("q_rot", 0) in model.hook_names()
    return ("q_rot", "k_rot") if rotary else ("q", "k")


def qk_concentration_from_run(model, run, layers: list[int], exclude_first: bool = True) -> QKConcentrationReport:
    """Build a QKConcentrationReport from a Run that captured ``qk_names(model)`` and ``v`` at
    ``layers`` (all positions)."""
    layer_list, lengths = list(layers), list(run.lengths)
    qn, kn = qk_names(model)
    rotary = qn == "q_rot"
    b, t = run.tokens.shape
    pos = torch.arange(t)[None, :]
    mask = pos < torch.tensor(lengths)[:, None]
    if exclude_first:
        mask &= pos >= 1
    maps = {k: torch.stack([concentration_map(run[name, l], mask).cpu() for l in layer_list])
            for k, name in (("q", qn), ("k", kn), ("v", "v"))}
    inv, src = rope_inv_freq(model) if rotary else (None, "no rotary embeddings")
    pair, theta = dim_frequencies(inv, model.info.d_head)
    return QKConcentrationReport(model.info.name, layer_list, maps["q"], maps["k"], maps["v"], inv, pair, theta,
                                 rotary and inv is not None, src, exclude_first, int(mask.sum()))
