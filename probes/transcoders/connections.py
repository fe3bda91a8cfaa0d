"""Linear pieces of the model that transcoder circuits pull vectors back through, and the
input-invariant connection strengths between transcoder features of two layers (docs/transcoders.md).

Conventions (checked on SmolLM2, tiny-llama and tiny-gpt2 against captured activations):

- Norms. With the scale s (``ln*.hook_scale``) frozen, a norm is linear in the residual x:
  ``hook_normalized`` = P x / s, with P = I for RMSNorm and P = I − 11ᵀ/d (centring) for LayerNorm;
  its output is g ⊙ (P x / s) + β (β = 0 for RMSNorm). A vector u read from ``hook_normalized``
  (a transcoder encoder column reads ``mlp_in`` that way, without the gain) pulls back to the residual
  as P u / s; a vector read after the gain (values, the unembedding) as P (g ⊙ u) / s.
- Attention. v = (g₁ ⊙ n₁(x) + β₁) W_V^{kv} + b_V, head h reads KV head kv = h // group_size, and
  writes A[t, s] · v_s W_O^h (plus b_O once per layer).
- Logits. logit_a = (g_f ⊙ n_f(x) + β_f) · W_U[:, a] + b_U[a].

``connection_strengths`` gives, for every upstream feature i (layer l) and downstream feature j
(layer l′ > l), the pre-activation change per unit of z_i through the residual stream,
W_dec^l[i] · P W_enc^{l′}[:, j] (the frozen 1/s of the downstream token is left out: it is a
positive per-token factor), and optionally, per head of a layer in between, the same through
that head's OV circuit with all attention on the source: (g₁ ⊙ P W_dec^l[i]) W_V W_O^h · P W_enc[:, j]
(also without the source token's 1/s₁).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interventions.transcoder_splice import check_transcoder
from workbench.result import Result
from workbench.errors import InputError


@dataclass
class ModelWeights:
    """Weights in the conventions above, float32 on CPU, detached.

    W_E (V, d) token embedding; W_pos (n_ctx, d) or None; W_U (d, V); b_U (V,);
    g_final / b_final (d,); per layer lists: g1, b1, g2, b2 (d,), W_V (G, d, e), b_V (G, e),
    W_O (H, e, d), b_O (d,). ``layer_norm`` is True for LayerNorm (centring) models.
    """

    W_E: torch.Tensor
    W_pos: torch.Tensor | None
    W_U: torch.Tensor
    b_U: torch.Tensor
    g_final: torch.Tensor
    b_final: torch.Tensor
    g1: list
    b1: list
    g2: list
    b2: list
    W_V: list
    b_V: list
    W_O: list
    b_O: list
    layer_norm: bool
    group_size: int
    _derived: dict = field(default_factory=dict, repr=False)  # per-layer products, computed on first use

    def center(self, u: torch.Tensor) -> torch.Tensor:
        """P u over the last axis (identity for RMSNorm, mean removal for LayerNorm)."""
        return u - u.mean(-1, keepdim=True) if self.layer_norm else u

    def ov(self, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_V^{kv(h)} (d, e), W_O^h (e, d)) of query head ``head`` (GQA: kv = h // group_size)."""
        return self.W_V[layer][head // self.group_size], self.W_O[layer][head]

    def W_V_heads(self, layer: int) -> torch.Tensor:
        """(H, d, e) W_V expanded to query heads (head h uses KV head h // group_size)."""
        key = ("W_V_heads", layer)
        if key not in self._derived:
            H = self.W_O[layer].shape[0]
            self._derived[key] = self.W_V[layer][torch.arange(H) // self.group_size].contiguous()
        return self._derived[key]

    def ov_pullback(self, layer: int, u: torch.Tensor) -> torch.Tensor:
        """(..., d) vectors read from a head's output -> (..., H, d) vectors P(g₁ ⊙ W_V W_O^h u)
        read from that layer's residual at the source token (multiply by A[t,s] / s₁[s])."""
        w_o_u = torch.matmul(self.W_O[layer], u[..., None, :, None])  # (..., H, e, 1)
        vec = torch.matmul(self.W_V_heads(layer), w_o_u)[..., 0]  # (..., H, d)
        return self.center(vec * self.g1[layer])

    def ov_bias(self, layer: int, u: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., H): (β₁ W_V + b_V) W_O^h · u, the input-independent part of a head's value."""
        key = ("ov_bias", layer)
        if key not in self._derived:
            H = self.W_O[layer].shape[0]
            const = torch.matmul(self.b1[layer], self.W_V_heads(layer)) + self.b_V[layer][torch.arange(H) // self.group_size]
            self._derived[key] = torch.matmul(const[:, None, :], self.W_O[layer])[:, 0]  # (H, d)
        return u @ self._derived[key].T


_CACHE: dict[tuple, ModelWeights] = {}


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().float().cpu()


def model_weights(model) -> ModelWeights:
    """The ``ModelWeights`` of a ``wb.Model``, built from ``model.weights()`` and cached per weight version
    (so weights edited inside ``model.intervene(...)`` are seen)."""
    key = (model.fingerprint, id(model), model.weights_version)
    if key in _CACHE:
        return _CACHE[key]
    W, info = model.weights(), model.info
    d = info.d_model
    zeros = torch.zeros(d)
    ones = torch.ones(d)
    g1, b1, g2, b2, W_V, b_V, W_O, b_O = ([] for _ in range(8))
    for lw in W.layers:
        g1.append(ones if lw.ln1.w is None else _f32(lw.ln1.w))
        b1.append(zeros if lw.ln1.b is None else _f32(lw.ln1.b))
        g2.append(ones if lw.ln2.w is None else _f32(lw.ln2.w))
        b2.append(zeros if lw.ln2.b is None else _f32(lw.ln2.b))
        W_V.append(_f32(lw.W_V))
        b_V.append(torch.zeros(lw.W_V.shape[0], lw.W_V.shape[2]) if lw.b_V is None else _f32(lw.b_V))
        W_O.append(_f32(lw.W_O))
        b_O.append(zeros if lw.b_O is None else _f32(lw.b_O))
    fn = W.final_norm
    w = ModelWeights(
        W_E=_f32(W.W_E), W_pos=_f32(W.W_pos), W_U=_f32(W.W_U),
        b_U=torch.zeros(info.d_vocab) if W.b_U is None else _f32(W.b_U),
        g_final=ones if fn.w is None else _f32(fn.w), b_final=zeros if fn.b is None else _f32(fn.b),
        g1=g1, b1=b1, g2=g2, b2=b2, W_V=W_V, b_V=b_V, W_O=W_O, b_O=b_O,
        layer_norm=fn.kind == "LN", group_size=info.group_size)
    _CACHE.clear()  # one model's weights at a time (about 0.6 GB for SmolLM2)
    _CACHE[key] = w
    return w


def enc_dirs(tc, features=None) -> torch.Tensor:
    """(F, d) encoder columns W_enc[:, features]ᵀ (all features for None), float32 CPU."""
    w = tc.W_enc.detach().float().cpu().T
    return w if features is None else w[features]


def dec_rows(tc, features=None) -> torch.Tensor:
    """(F, d) decoder rows W_dec[features], float32 CPU."""
    w = tc.W_dec.detach().float().cpu()
    return w if features is None else w[features]


@dataclass
class ConnectionReport(Result):
    """Input-invariant connections from features of ``up_layer`` to features of ``down_layer``.

    strengths: (F_up, F_down) W_dec^up[i] · P W_enc^down[:, j] through the residual stream.
    heads: {(layer, head): (F_up, F_down)} the same through one head's OV circuit (if asked).
    up_features / down_features: the feature indices of the rows / columns.
    """

    up_layer: int
    down_layer: int
    up_features: list[int]
    down_features: list[int]
    strengths: torch.Tensor
    heads: dict

    def top(self, k: int = 10, via=None) -> pd.DataFrame:
        """The k strongest connections by |strength| (``via``: None for the residual, or (layer, head))."""
        m = self.strengths if via is None else self.heads[tuple(via)]
        flat = m.flatten()
        idx = flat.abs().topk(min(k, flat.numel())).indices
        rows = []
        for i in idx.tolist():
            r, c = divmod(i, m.shape[1])
            rows.append({"up": f"L{self.up_layer}F{self.up_features[r]}",
                         "down": f"L{self.down_layer}F{self.down_features[c]}",
                         "via": "residual" if via is None else f"L{via[0]}H{via[1]} OV",
                         "strength": float(m[r, c])})
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (up, down) pair and path (residual and each head)."""
        frames = [self._long(self.strengths, "residual")]
        frames += [self._long(m, f"L{l}H{h} OV") for (l, h), m in self.heads.items()]
        return pd.concat(frames, ignore_index=True)

    def _long(self, m, via):
        up = np.repeat(self.up_features, len(self.down_features))
        down = np.tile(self.down_features, len(self.up_features))
        return pd.DataFrame({"up_feature": up, "down_feature": down, "via": via, "strength": m.flatten().numpy()})

    def figure(self, via=None, max_features: int = 64):
        """Heatmap of the strengths (rows: upstream features, columns: downstream; at most max_features each)."""
        import plotly.graph_objects as go

        m = (self.strengths if via is None else self.heads[tuple(via)])[:max_features, :max_features]
        lim = float(m.abs().max()) or 1.0
        fig = go.Figure(go.Heatmap(
            z=m.numpy(), x=[f"F{f}" for f in self.down_features[:max_features]],
            y=[f"F{f}" for f in self.up_features[:max_features]], colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
            hovertemplate="up %{y} → down %{x}: %{z:.3g}<extra></extra>"))
        path = "residual stream" if via is None else f"OV of L{via[0]}H{via[1]}"
        fig.update_layout(template="plotly_white", width=720, height=600,
                          title=f"Connection strengths L{self.up_layer} → L{self.down_layer} ({path})",
                          xaxis_title=f"layer {self.down_layer} feature (encoder)",
                          yaxis_title=f"layer {self.up_layer} feature (decoder)")
        return fig

    def __repr__(self):
        return (f"ConnectionReport(L{self.up_layer} ({len(self.up_features)} features) → L{self.down_layer} "
                f"({len(self.down_features)} features), {len(self.heads)} head paths)")

    def html_table(self):
        return self.top(10)


def connection_strengths(model, transcoders: dict, up_layer: int, down_layer: int, up_features=None,
                         down_features=None, heads: bool | list = False) -> ConnectionReport:
    """Input-invariant connections between transcoder features of two layers.

    transcoders: {layer: transcoder} holding both layers. up_features / down_features: index lists
    (None: all). heads: False; True for every head of layers up_layer+1..down_layer; or a list of
    (layer, head) pairs with up_layer < layer <= down_layer.
    """
    if not isinstance(transcoders, dict):
        raise InputError("Pass transcoders as a dict {layer: transcoder}.")
    for l in (up_layer, down_layer):
        if l not in transcoders:
            raise InputError(f"No transcoder for layer {l}; have layers {sorted(transcoders)}.")
    up_layer = check_transcoder(model, up_layer, transcoders[up_layer])
    down_layer = check_transcoder(model, down_layer, transcoders[down_layer])
    if up_layer >= down_layer:
        raise InputError(f"up_layer ({up_layer}) must be below down_layer ({down_layer}): an MLP only writes "
                         "to later layers.")
    W = model_weights(model)
    up_tc, down_tc = transcoders[up_layer], transcoders[down_layer]
    uf = list(range(up_tc.W_dec.shape[0])) if up_features is None else [int(f) for f in up_features]
    df = list(range(down_tc.W_dec.shape[0])) if down_features is None else [int(f) for f in down_features]
    for f, n, which in [(uf, up_tc.W_dec.shape[0], "up"), (df, down_tc.W_dec.shape[0], "down")]:
        bad = [i for i in f if not 0 <= i < n]
        if bad or not f:
            raise InputError(f"{which}_features must be non-empty indices in 0..{n - 1}, got {bad[:3] or f}.")
    dec = dec_rows(up_tc, uf)  # (F_up, d)
    enc = W.center(enc_dirs(down_tc, df))  # (F_down, d): pulled back through ln2 (P, no 1/s)
    strengths = dec @ enc.T
    pairs = []
    if heads is True:
        pairs = [(l, h) for l in range(up_layer + 1, down_layer + 1) for h in range(model.info.n_heads)]
    elif heads:
        pairs = [(int(l), int(h)) for l, h in heads]
        for l, h in pairs:
            if not up_layer < l <= down_layer or not 0 <= h < model.info.n_heads:
                raise InputError(f"Head L{l}H{h} is not between layer {up_layer} (exclusive) and {down_layer} "
                                 f"(inclusive), or out of range.")
    per_head = {}
    for l, h in pairs:
        back = W.ov_pullback(l, enc)[:, h]  # (F_down, d) read from layer l's residual at the source
        per_head[(l, h)] = dec @ back.T
    return ConnectionReport(up_layer, down_layer, uf, df, strengths, per_head)


__all__ = ["ModelWeights", "model_weights", "connection_strengths", "ConnectionReport", "enc_dirs", "dec_rows"]
