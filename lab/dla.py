"""Direct logit attribution at one query that ran against a (possibly compressed) KV cache.

``probes.factual.direct_logit_attribution`` decomposes the last position of a full forward pass. The lab
needs the same decomposition for the last prompt token *fed against the method's cache* (a KV method
changes nothing in a full forward pass), so it captures, in that one-token forward, the token's
embedding (+ position embedding), every head's ``z`` (H, e), every ``mlp_out`` and the final norm's
scale, and projects them exactly as ``probes.factual`` does:

    logit_a = embed·w_a + Σ_{l,h} (z_{l,h} W_O^{l,h})·w_a + Σ_l b_O^l·w_a + Σ_l mlp_l·w_a + b_norm·W_U[:, a] + b_U[a]

with w_a = P(g ⊙ W_U[:, a]) / scale (P centres for LayerNorm). Weights come from ``model.weights()``
(the method's, inside its intervention). ``error`` is |Σ − logit|: when a method changes what the
residual stream is made of (e.g. quantized activations inside ``o_proj``), the decomposition misses
and the lab says so (``ComponentDLA.error``; the report warns above ``DLA_TOLERANCE``).
With no cache policy and no preamble this equals ``probes.factual.direct_logit_attribution``'s
components (tested). As there, it is exact on every family: with post norms (Gemma) each head is read
through its post-attention norm with the scale frozen, and with a logit soft-cap (Gemma 2) the
decomposed logit is the pre-cap one (``ComponentDLA.logits``; the unembedding's input times W_U).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.hook_names import hook_name

# |Σ components − logit| above this (in logits) means the decomposition does not describe the method's model
DLA_TOLERANCE = 1e-3


@dataclass
class ComponentDLA:
    """DLA of one query for K targets (answer first). embed (K,), heads (L, H, K), attn_bias (L, K), mlps (L, K),
    rest (K,) (final-norm bias + unembedding bias), logits (K,) the model's logits."""

    targets: list[int]
    logits: np.ndarray
    embed: np.ndarray
    heads: np.ndarray
    attn_bias: np.ndarray
    mlps: np.ndarray
    rest: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.embed + self.heads.sum((0, 1)) + self.attn_bias.sum(0) + self.mlps.sum(0) + self.rest

    @property
    def error(self) -> float:
        return float(np.abs(self.total - self.logits).max())

    def metric(self, x: np.ndarray, metric: str = "diff") -> np.ndarray:
        """Reduce the K axis: "logit" (the answer's) or "diff" (answer − mean of the alternatives)."""
        if metric == "logit" or x.shape[-1] == 1:
            return x[..., 0]
        return x[..., 0] - x[..., 1:].mean(-1)


def capture_hooks(model, store: dict) -> list[tuple[str, callable]]:
    """Hooks that keep, for the last position of a forward, what ``component_dla`` needs, in ``store``."""
    names = [("embed", hook_name("embed"))]
    if hook_name("pos_embed") in model.hook_names():
        names.append(("pos_embed", hook_name("pos_embed")))
    names.append(("scale", hook_name("final_norm_scale")))
    if model.info.post_norms:
        names += [(("post_scale", l), hook_name("attn_post_norm_scale", l)) for l in range(model.info.n_layers)]
    if model.info.logit_softcap:
        names.append(("unembed_in", hook_name("unembed_in")))
    names += [(("z", l), hook_name("z", l)) for l in range(model.info.n_layers)]
    names += [(("mlp_out", l), hook_name("mlp_out", l)) for l in range(model.info.n_layers)]

    def keep(key):
        def fn(x, _name):
            store[key] = x[0, -1].detach()
            return None
        return fn

    return [(name, keep(key)) for key, name in names]


def component_dla(model, store: dict, logits: torch.Tensor, targets) -> ComponentDLA:
    """Decompose the logits (V,) of the last position into components, from the ``capture_hooks`` store."""
    W = model.weights()
    L = model.info.n_layers
    fn = W.final_norm
    tgt = torch.tensor(list(targets), device=W.W_U.device)
    scale = float(store["scale"].double().reshape(-1)[0])
    gain = fn.gain.double() if fn.gain is not None else torch.ones(model.info.d_model, dtype=torch.float64,
                                                                   device=tgt.device)
    w = gain[:, None] * W.W_U[:, tgt].double()  # (d, K)
    if fn.kind == "LN":
        w = w - w.mean(0, keepdim=True)
    w = w / scale
    emb = store["embed"].double()
    if "pos_embed" in store:
        emb = emb + store["pos_embed"].double()
    w_o = W.stacked("W_O").float()  # (L, H, e, d)
    z = torch.stack([store[("z", l)].float() for l in range(L)])  # (L, H, e)
    w_attn = w.expand(L, *w.shape)  # (L, d, K): a head reaches the residual through the post-attention norm (Gemma)
    if model.info.post_norms:
        w_attn = torch.stack([W.layers[l].ln1_post.read_direction(w, store[("post_scale", l)].double().reshape(-1)[0])
                              for l in range(L)])
    heads = torch.einsum("lhd,ldk->lhk", torch.einsum("lhe,lhed->lhd", z, w_o).double(), w_attn)  # (L, H, K)
    mlps = torch.stack([store[("mlp_out", l)].double() for l in range(L)]) @ w  # (L, K)
    b_o = torch.stack([W.layers[l].b_O.double() if W.layers[l].b_O is not None
                       else torch.zeros(model.info.d_model, dtype=torch.float64, device=w.device) for l in range(L)])
    attn_bias = torch.einsum("ld,ldk->lk", b_o, w_attn)
    if model.info.post_norms:
        attn_bias = attn_bias + torch.stack([W.layers[l].ln1_post.b.double() @ w if W.layers[l].ln1_post.b is not None
                                             else torch.zeros(len(tgt), dtype=torch.float64, device=w.device)
                                             for l in range(L)])
    if model.info.logit_softcap:  # decompose the pre-cap logit
        pre = store["unembed_in"].double() @ W.W_U[:, tgt].double()
        logits = logits.clone().double()
        logits[tgt] = pre + (W.b_U[tgt].double() if W.b_U is not None else 0)
    rest = torch.zeros(len(tgt), dtype=torch.float64, device=w.device)
    if fn.b is not None:
        rest = rest + fn.b.double() @ W.W_U[:, tgt].double()
    if W.b_U is not None:
        rest = rest + W.b_U[tgt].double()
    np_ = lambda x: x.detach().cpu().numpy()  # noqa: E731
    return ComponentDLA(list(targets), np_(logits[tgt].double()), np_(emb @ w), np_(heads), np_(attn_bias), np_(mlps),
                        np_(rest))


__all__ = ["ComponentDLA", "capture_hooks", "component_dla", "DLA_TOLERANCE"]
