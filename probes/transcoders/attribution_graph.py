"""Input-dependent transcoder attribution for one prompt: one-step contributions, greedy path
search, and the attribution graph with error nodes (docs/transcoders.md, section 7).

Targets: a transcoder feature's **pre-activation** p = W_enc[:, i] · mlp_in^{l}[t] + b_enc[i], or a
logit. Every norm scale is frozen at its clean-run value (``ln*.hook_scale``), which makes the
residual stream at a read point an exact sum of components (see ``connections`` for the norm
conventions). For a vector u read from the residual at (read point, token t):

    u · x[t] = embed[t]·u + Σ_{attn layers, h, s ≤ t} A^{l,h}[t,s] (v_s W_O^h)·u + Σ_l b_O^l·u
             + Σ_{MLP layers} ( Σ_i z_i^l[t] (W_dec^l[i]·u) + b_dec^l·u + skip^l[t]·u + err^l[t]·u )

with err^l = mlp_out^l − TC_l(mlp_in^l) the **transcoder error** (the whole mlp_out^l·u for a
layer without a transcoder). ``one_step`` returns every term; they sum to the target exactly.

Read points: a feature of layer l reads ``resid_mid`` l (attention layers ≤ l, MLPs < l); a head
of layer l reads ``resid_pre`` l at its source token (layers < l); a logit reads the final residual.

Recursion: an active feature child with edge c = z_i (W_dec[i]·u) is expanded as
(W_dec[i]·u)·p_i, i.e. with vector (W_dec[i]·u) P W_enc[:, i] / s₂[t] and bias (W_dec[i]·u) b_enc[i]
(z = p for ReLU, JumpReLU and TopK when active; any difference is kept as ``act_gap``). A head
child with edge A[t,s](v_s W_O^h)·u is expanded at the source s with vector A[t,s] P(g₁ ⊙ W_V W_O^h u)/s₁[s]
and bias A[t,s] (β₁W_V + b_V) W_O^h u, the attention pattern frozen.

Graph (``attribution_graph``): nodes are expanded in decreasing read-point order, so each node is
expanded once, with the sum of the vectors of all its out-edges (its "flow" = Σ out-edge values).
For each expanded node: flow = Σ kept child edges + tc_error + untranscoded MLPs + bias + skip
+ pruned + act_gap, exactly (the error nodes). Kept children: the top_k contributors (features,
heads, embedding) with |value| ≥ min_frac·|target|; heads reading position 0 (the attention
sink) are not followed when ``ignore_pos0`` (their value goes to ``pruned``).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from interventions.transcoder_splice import check_transcoders, transcoder_out
from workbench.result import Result
from workbench.hook_names import hook_name
from workbench.errors import InputError

from .connections import ModelWeights, model_weights

ERROR_KINDS = ("tc_error", "untranscoded", "bias", "skip", "pruned", "act_gap")


# ---------------------------------------------------------------------------------------- capture
@dataclass
class PromptCache:
    """One clean forward over a prompt, everything attribution needs (batch 1, float32 CPU).

    resid0 (T, d): residual entering block 0 (token + position embedding); resid_mid (L, T, d);
    final (T, d): residual after the last block; s1, s2 (L, T): ln1 / ln2 scales; s_final (T,);
    v (L, T, G, e); pattern (L, H, T, T); mlp_in, mlp_out (L, T, d); logits (T, V);
    for each transcoder layer l: pre[l], z[l] (T, F), tc_out[l], skip[l] (T, d).
    """

    str_tokens: list[str]
    tokens: torch.Tensor
    resid0: torch.Tensor
    resid_pre: torch.Tensor
    resid_mid: torch.Tensor
    final: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    s_final: torch.Tensor
    v: torch.Tensor
    pattern: torch.Tensor
    mlp_in: torch.Tensor
    mlp_out: torch.Tensor
    logits: torch.Tensor
    transcoders: dict
    pre: dict = field(default_factory=dict)
    z: dict = field(default_factory=dict)
    tc_out: dict = field(default_factory=dict)
    skip: dict = field(default_factory=dict)
    weights: ModelWeights | None = None
    _v_heads: dict = field(default_factory=dict, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.str_tokens)

    @property
    def n_layers(self) -> int:
        return self.s1.shape[0]

    def v_heads(self, layer: int) -> torch.Tensor:
        """(T, H, e) values expanded to query heads (head h reads KV head h // group_size)."""
        if layer not in self._v_heads:
            H = self.pattern.shape[1]
            g = H // self.v.shape[2]
            self._v_heads[layer] = self.v[layer][:, torch.arange(H) // g].contiguous()
        return self._v_heads[layer]


def capture_prompt(model, transcoders: dict, prompt, interventions=()) -> PromptCache:
    """One forward over ``prompt`` (a string or (T,) ids) capturing what ``one_step`` needs.

    ``interventions`` are applied during the capture (e.g. ``SpliceTranscoder`` to attribute
    through the replacement model).
    """
    tcs = check_transcoders(model, transcoders)
    if isinstance(prompt, (list, tuple)):
        raise InputError("Attribution takes one prompt (a string), not a list.")
    L = model.info.n_layers
    names = ["resid_pre", "resid_mid", "attn_norm_scale", "mlp_norm_scale", "v", "pattern", "mlp_in", "mlp_out"]
    run = model.run(prompt, capture=names + ["final_norm_scale", hook_name("resid_post", L - 1)],
                    logits="all", interventions=interventions)

    def st(name):
        return run.stack(name)[:, 0].detach().float().cpu()

    mlp_in = st("mlp_in")
    c = PromptCache(
        str_tokens=run.str_tokens[0], tokens=run.tokens[0].cpu(), resid0=run["resid_pre", 0][0].detach().float().cpu(),
        resid_pre=st("resid_pre"), resid_mid=st("resid_mid"),
        final=run[hook_name("resid_post", L - 1)][0].detach().float().cpu(),
        s1=st("attn_norm_scale")[..., 0], s2=st("mlp_norm_scale")[..., 0],
        s_final=run["final_norm_scale"][0, :, 0].detach().float().cpu(),
        v=st("v"), pattern=st("pattern"), mlp_in=mlp_in, mlp_out=st("mlp_out"),
        logits=run.logits[0].detach().float().cpu(), transcoders=tcs, weights=model_weights(model))
    with torch.no_grad():
        for l, tc in tcs.items():
            x = mlp_in[l]
            c.pre[l] = (x @ tc.W_enc.detach().float().cpu() + tc.b_enc.detach().float().cpu())
            c.z[l] = tc.encode(x.to(tc.W_enc.dtype)).detach().float().cpu()
            c.tc_out[l] = transcoder_out(tc, x).detach().float().cpu()
            ws = getattr(tc, "W_skip", None)
            c.skip[l] = x @ ws.detach().float().cpu().T if isinstance(ws, torch.Tensor) else torch.zeros_like(x)
    return c


# ---------------------------------------------------------------------------------------- one step
@dataclass
class Contributions:
    """Every one-step contribution to u · x[t] at a read point (n_attn attention layers and n_mlp
    MLP layers below it), plus the target's own bias. ``total()`` equals the target value.

    heads (n_attn, H, T): A[t,s](v_s W_O^h)·u per layer, head and source s (0 for s > t).
    features {l: (F,)}: z_i (W_dec[i]·u); tc_bias / skip / tc_error {l: float}; untranscoded
    {l: float} for MLP layers without a transcoder; attn_bias (n_attn,); embed float; bias float.
    """

    pos: int
    n_attn: int
    n_mlp: int
    embed: float
    heads: torch.Tensor
    attn_bias: torch.Tensor
    features: dict
    tc_bias: dict
    skip: dict
    tc_error: dict
    untranscoded: dict
    bias: float
    target_value: float

    def total(self) -> float:
        return float(self.embed + self.heads.sum() + self.attn_bias.sum()
                     + sum(float(f.sum()) for f in self.features.values()) + sum(self.tc_bias.values())
                     + sum(self.skip.values()) + sum(self.tc_error.values()) + sum(self.untranscoded.values())
                     + self.bias)

    def to_frame(self, min_abs: float = 0.0) -> pd.DataFrame:
        """One row per non-negligible term: kind, layer, head, source, feature, value."""
        rows = [{"kind": "embed", "layer": -1, "value": self.embed}, {"kind": "bias", "layer": None, "value": self.bias}]
        H = self.heads.shape[1]
        for l in range(self.n_attn):
            for h in range(H):
                for s in torch.nonzero(self.heads[l, h]).flatten().tolist():
                    rows.append({"kind": "head", "layer": l, "head": h, "source": s, "value": float(self.heads[l, h, s])})
            rows.append({"kind": "attn_bias", "layer": l, "value": float(self.attn_bias[l])})
        for l, f in self.features.items():
            for i in torch.nonzero(f).flatten().tolist():
                rows.append({"kind": "feature", "layer": l, "feature": i, "value": float(f[i])})
        for kind in ("tc_bias", "skip", "tc_error", "untranscoded"):
            for l, v in getattr(self, kind).items():
                rows.append({"kind": kind, "layer": l, "value": float(v)})
        df = pd.DataFrame(rows, columns=["kind", "layer", "head", "source", "feature", "value"])
        df = df[df["value"].abs() >= min_abs]
        return df.reindex(df["value"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def one_step(cache: PromptCache, u: torch.Tensor, pos: int, n_attn: int, n_mlp: int, bias: float = 0.0,
             target_value: float = float("nan")) -> Contributions:
    """Decompose u · x[pos] (x the residual with n_attn attention and n_mlp MLP layers) into its terms.

    u (d,) already includes the frozen norm scale of the reader. ``bias`` is the target's own
    constant (added to ``total``).
    """
    W = cache.weights
    T = cache.n_tokens
    H = cache.pattern.shape[1]
    heads = torch.zeros(n_attn, H, T)
    attn_bias = torch.zeros(n_attn)
    for l in range(n_attn):
        w_o_u = torch.matmul(W.W_O[l], u[:, None])[..., 0]  # (H, e)
        v = cache.v_heads(l)[: pos + 1]  # (s, H, e)
        per_src = (v * w_o_u).sum(-1).T  # (H, s)
        heads[l, :, : pos + 1] = cache.pattern[l, :, pos, : pos + 1] * per_src
        attn_bias[l] = W.b_O[l] @ u
    feats, tc_bias, skip, err, untr = {}, {}, {}, {}, {}
    for l in range(n_mlp):
        if l in cache.transcoders:
            tc = cache.transcoders[l]
            dec_u = tc.W_dec.detach().float().cpu() @ u  # (F,)
            feats[l] = cache.z[l][pos] * dec_u
            tc_bias[l] = float(tc.b_dec.detach().float().cpu() @ u)
            skip[l] = float(cache.skip[l][pos] @ u)
            err[l] = float((cache.mlp_out[l, pos] - cache.tc_out[l][pos]) @ u)
        else:
            untr[l] = float(cache.mlp_out[l, pos] @ u)
    return Contributions(pos, n_attn, n_mlp, float(cache.resid0[pos] @ u), heads, attn_bias, feats, tc_bias, skip,
                         err, untr, float(bias), float(target_value))


def feature_vector(cache: PromptCache, layer: int, pos: int, feature: int) -> tuple[torch.Tensor, float]:
    """(u, bias) of a feature's pre-activation: u = P W_enc[:, i] / s₂[pos], bias = b_enc[i]."""
    tc = cache.transcoders[layer]
    enc = tc.W_enc.detach().float().cpu()[:, feature]
    return cache.weights.center(enc) / cache.s2[layer, pos], float(tc.b_enc.detach().float().cpu()[feature])


def logit_vector(cache: PromptCache, pos: int, token: int) -> tuple[torch.Tensor, float]:
    """(u, bias) of a logit: u = P(g_f ⊙ W_U[:, a]) / s_f[pos], bias = β_f · W_U[:, a] + b_U[a]."""
    W = cache.weights
    w_u = W.W_U[:, token]
    return W.center(W.g_final * w_u) / cache.s_final[pos], float(W.b_final @ w_u + W.b_U[token])


def feature_contributions(cache: PromptCache, layer: int, pos: int, feature: int) -> Contributions:
    """One-step decomposition of feature ``feature`` of ``layer`` at ``pos``; total() = pre-activation."""
    _check_feature(cache, layer, pos, feature)
    u, b = feature_vector(cache, layer, pos, feature)
    return one_step(cache, u, pos, layer + 1, layer, b, float(cache.pre[layer][pos, feature]))


def logit_contributions(cache: PromptCache, pos: int, token: int) -> Contributions:
    """One-step decomposition of the logit of ``token`` at ``pos``; total() = the logit."""
    pos = _check_pos(cache, pos)
    u, b = logit_vector(cache, pos, token)
    L = cache.n_layers
    return one_step(cache, u, pos, L, L, b, float(cache.logits[pos, token]))


def _check_pos(cache: PromptCache, pos: int) -> int:
    T = cache.n_tokens
    if not isinstance(pos, int) or isinstance(pos, bool) or not -T <= pos < T:
        raise InputError(f"Position {pos!r} is out of range for this {T}-token prompt.")
    return pos % T


def _check_feature(cache: PromptCache, layer: int, pos: int, feature: int) -> None:
    if layer not in cache.transcoders:
        raise InputError(f"No transcoder for layer {layer}; have layers {sorted(cache.transcoders)}.")
    _check_pos(cache, pos)
    n = cache.pre[layer].shape[1]
    if not isinstance(feature, int) or not 0 <= feature < n:
        raise InputError(f"Feature {feature!r} is out of range: the layer-{layer} transcoder has {n} features.")


# ---------------------------------------------------------------------------------------- graph
@dataclass
class Node:
    """A graph node. key: ("feature", l, t, i) | ("head", l, h, t, s) | ("embed", t) | ("logit", t, a[, b])
    | ("error", parent_key, kind). rank: read-point order (higher = later). value: a feature's
    activation, a logit, or (heads, embedding, errors) the total contribution to its parents. flow: Σ out-edge values (for the
    target, its value). errors: for expanded nodes, the error terms (kind -> value)."""

    key: tuple
    kind: str
    layer: float
    pos: int
    label: str
    value: float
    rank: int
    flow: float = 0.0
    depth: int = 0
    expanded: bool = False
    errors: dict = field(default_factory=dict)
    vector: torch.Tensor | None = field(default=None, repr=False)
    vbias: float = 0.0
    gap: float = 0.0
    closure: float = 0.0  # (Σ one-step terms of its vector + act_gap) − flow: 0 up to rounding


@dataclass
class AttributionGraph(Result):
    """Nodes and weighted edges (child -> parent, value = the child's contribution to the parent).

    target: the target node's key. Conservation per expanded node n:
    n.flow = Σ_{edges child -> n} value + Σ n.errors.values().
    """

    prompt: str
    str_tokens: list[str]
    target: tuple
    nodes: dict
    edges: list
    n_layers: int
    params: dict

    @property
    def target_node(self) -> Node:
        return self.nodes[self.target]

    def children(self, key) -> list[tuple]:
        """[(child key, value)] of the edges into ``key``, largest |value| first."""
        out = [(c, v) for c, p, v in self.edges if p == key]
        return sorted(out, key=lambda cv: -abs(cv[1]))

    def conservation_gap(self) -> float:
        """max over expanded nodes of |flow − Σ child edges − Σ errors| and of |closure|: the flow a
        node receives from its parents' decompositions against the exact decomposition of its own
        pulled-back vector (rounding only; checks the norm, OV and GQA pull-backs)."""
        worst = 0.0
        for k, n in self.nodes.items():
            if n.expanded:
                s = sum(v for c, v in self.children(k) if c[0] != "error") + sum(n.errors.values())
                worst = max(worst, abs(n.flow - s), abs(n.closure))
        return worst

    def to_frame(self) -> pd.DataFrame:
        """One row per edge: child, parent, value (error edges included)."""
        rows = [{"child": self.nodes[c].label, "parent": self.nodes[p].label, "value": v,
                 "child_kind": self.nodes[c].kind} for c, p, v in self.edges]
        return pd.DataFrame(rows, columns=["child", "parent", "value", "child_kind"])

    def nodes_frame(self) -> pd.DataFrame:
        rows = [{"label": n.label, "kind": n.kind, "layer": n.layer, "pos": n.pos,
                 "token": self.str_tokens[n.pos] if 0 <= n.pos < len(self.str_tokens) else "",
                 "value": n.value, "flow": n.flow, "depth": n.depth, "expanded": n.expanded,
                 **{f"err_{k}": n.errors.get(k, np.nan) for k in ERROR_KINDS}} for n in self.nodes.values()]
        return pd.DataFrame(rows)

    def figure(self, show_errors="total", min_abs: float = 0.0):
        """Plotly graph (``circuit_figure.graph_figure``): show_errors "total", "all" or False."""
        from .circuit_figure import graph_figure

        return graph_figure(self, show_errors=show_errors, min_abs=min_abs)

    def __repr__(self):
        t = self.target_node
        n_exp = sum(n.expanded for n in self.nodes.values())
        return (f"AttributionGraph(target {t.label} = {t.value:.3g}, {len(self.nodes)} nodes "
                f"({n_exp} expanded), {len(self.edges)} edges)")

    def _repr_html_(self):
        t = self.target_node
        errs = ", ".join(f"{k} {v:+.3g}" for k, v in t.errors.items())
        top = pd.DataFrame([{"child": self.nodes[c].label, "contribution": v} for c, v in self.children(self.target)[:12]])
        return (f"<b>{html.escape(repr(self))}</b><br>target errors: {html.escape(errs)}"
                + top.to_html(index=False))


def _tok(s: str) -> str:
    return repr(s)[1:-1]


def _target_node(cache, feature, logit, pos) -> Node:
    L = cache.n_layers
    if (feature is None) == (logit is None):
        raise InputError("Give exactly one target: feature=(layer, pos, index) or logit=token (with pos=).")
    if feature is not None:
        if not isinstance(feature, (tuple, list)) or len(feature) != 3:
            raise InputError(f"feature must be (layer, position, feature index), got {feature!r}.")
        layer, p, i = (int(x) for x in feature)
        _check_feature(cache, layer, p, i)
        p = p % cache.n_tokens
        u, b = feature_vector(cache, layer, p, i)
        pre = float(cache.pre[layer][p, i])
        n = Node(("feature", layer, p, i), "feature", layer + 0.5, p, f"L{layer}F{i}@{p}",
                 float(cache.z[layer][p, i]), 2 * layer + 1, flow=pre, vector=u, vbias=b)
        return n
    p = _check_pos(cache, pos) % cache.n_tokens
    toks = list(logit) if isinstance(logit, (tuple, list)) else [logit]
    if len(toks) not in (1, 2):
        raise InputError(f"logit must be a token id or a pair (a, b) for logit[a] − logit[b], got {logit!r}.")
    for tok in toks:
        if isinstance(tok, str):
            raise InputError("Pass the logit target as a token id (int); use model.tokenizer to convert text.")
        if not isinstance(tok, int) or isinstance(tok, bool) or not 0 <= tok < cache.logits.shape[1]:
            raise InputError(f"Token id {tok!r} is out of the vocabulary range 0..{cache.logits.shape[1] - 1}.")
    u, b = logit_vector(cache, p, toks[0])
    val = float(cache.logits[p, toks[0]])
    label = f"logit[{toks[0]}]@{p}"
    if len(toks) == 2:  # a logit difference: linear, so it decomposes the same way
        u2, b2 = logit_vector(cache, p, toks[1])
        u, b, val = u - u2, b - b2, val - float(cache.logits[p, toks[1]])
        label = f"logit[{toks[0]}]−logit[{toks[1]}]@{p}"
    return Node(("logit", p, *toks), "logit", L + 0.5, p, label, val, 2 * L + 1, flow=val, vector=u, vbias=b)


def build_graph(cache: PromptCache, feature=None, logit=None, pos: int = -1, max_depth: int = 3, top_k: int = 5,
                max_expand: int = 30, min_frac: float = 0.02, ignore_pos0: bool = True,
                prompt: str = "") -> AttributionGraph:
    """Greedy attribution graph from a target back through the layers (see the module docstring).

    max_depth: hops from the target beyond which nodes are not expanded; top_k: children kept per
    expanded node; max_expand: expansions in all; min_frac: a child is kept only if
    |contribution| ≥ min_frac · |target value|.
    """
    for name, v, lo in [("max_depth", max_depth, 1), ("top_k", top_k, 1), ("max_expand", max_expand, 1)]:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}.")
    if not 0 <= float(min_frac) < 1:
        raise InputError(f"min_frac must lie in [0, 1), got {min_frac!r}.")
    W = cache.weights
    target = _target_node(cache, feature, logit, pos)
    nodes: dict = {target.key: target}
    edges: list = []
    thresh = float(min_frac) * abs(target.flow)
    L = cache.n_layers
    H = cache.pattern.shape[1]
    n_expanded = 0

    def add_child(key, kind, layer, p, label, value, rank, vec, vbias, gap, depth, parent, edge):
        n = nodes.get(key)
        if n is None:
            n = nodes[key] = Node(key, kind, layer, p, label, value, rank, depth=depth)
        n.flow += edge
        n.depth = min(n.depth, depth)
        if vec is not None:
            n.vector = vec if n.vector is None else n.vector + vec
            n.vbias += vbias
            n.gap += gap
        edges.append((key, parent, edge))

    while True:
        pending = [n for n in nodes.values() if not n.expanded and n.vector is not None and n.depth < max_depth]
        if not pending or n_expanded >= max_expand:
            break
        top_rank = max(n.rank for n in pending)
        # all nodes of the highest read point first (their parents are all expanded), largest flow first
        node = max((n for n in pending if n.rank == top_rank), key=lambda n: abs(n.flow))
        if node.kind == "feature":
            n_attn, n_mlp = int(node.layer - 0.5) + 1, int(node.layer - 0.5)
        elif node.kind == "head":
            n_attn = n_mlp = node.key[1]
        else:  # logit
            n_attn = n_mlp = L
        c = one_step(cache, node.vector, node.pos, n_attn, n_mlp, node.vbias)
        cands = [(abs(c.embed), "embed", None, c.embed)]
        heads = c.heads.clone()
        if ignore_pos0 and node.pos > 0:
            heads[:, :, 0] = 0
        flat = heads.flatten()
        k = min(top_k, flat.numel())
        if k:
            for idx in flat.abs().topk(k).indices.tolist():
                l, rem = divmod(idx, H * cache.n_tokens)
                h, s = divmod(rem, cache.n_tokens)
                cands.append((abs(float(flat[idx])), "head", (l, h, s), float(flat[idx])))
        for l, f in c.features.items():
            kk = min(top_k, f.numel())
            for i in f.abs().topk(kk).indices.tolist():
                cands.append((abs(float(f[i])), "feature", (l, i), float(f[i])))
        cands.sort(key=lambda x: -x[0])
        kept = [x for x in cands if x[0] >= thresh and x[0] > 0][:top_k]
        kept_sum = 0.0
        for _, kind, where, val in kept:
            kept_sum += val
            if kind == "embed":
                add_child(("embed", node.pos), "embed", -0.5, node.pos, f"embed@{node.pos}", val, -1,
                          None, 0.0, 0.0, node.depth + 1, node.key, val)
            elif kind == "feature":
                l, i = where
                tc = cache.transcoders[l]
                scale = float(tc.W_dec.detach().float().cpu()[i] @ node.vector)
                enc = W.center(tc.W_enc.detach().float().cpu()[:, i]) / cache.s2[l, node.pos]
                gap = val - scale * float(cache.pre[l][node.pos, i])
                add_child(("feature", l, node.pos, i), "feature", l + 0.5, node.pos, f"L{l}F{i}@{node.pos}",
                          float(cache.z[l][node.pos, i]), 2 * l + 1, scale * enc,
                          scale * float(tc.b_enc.detach().float().cpu()[i]), gap, node.depth + 1, node.key, val)
            else:
                l, h, s = where
                a = float(cache.pattern[l, h, node.pos, s])
                vec = a * W.ov_pullback(l, node.vector)[h] / cache.s1[l, s]
                vb = a * float(W.ov_bias(l, node.vector)[h])
                add_child(("head", l, h, node.pos, s), "head", l + 0.0, s, f"L{l}H{h} {s}→{node.pos}", val, 2 * l,
                          vec, vb, 0.0, node.depth + 1, node.key, val)
        all_terms = c.embed + float(c.heads.sum()) + sum(float(f.sum()) for f in c.features.values())
        errors = {
            "tc_error": sum(c.tc_error.values()),
            "untranscoded": sum(c.untranscoded.values()),
            "bias": c.bias + sum(c.tc_bias.values()) + float(c.attn_bias.sum()),
            "skip": sum(c.skip.values()),
            "pruned": all_terms - kept_sum,
            "act_gap": node.gap,
        }
        node.errors = errors
        node.closure = c.total() + node.gap - node.flow
        node.expanded = True
        n_expanded += 1
        for kind, val in errors.items():
            if val != 0.0:
                ek = ("error", node.key, kind)
                nodes[ek] = Node(ek, "error", node.layer - 0.25, node.pos, f"{kind} → {node.label}", val,
                                 node.rank, flow=val, depth=node.depth + 1)
                edges.append((ek, node.key, val))
    for n in nodes.values():
        if n.kind in ("head", "embed"):  # their value is their total contribution (several parents summed)
            n.value = n.flow
    params = dict(max_depth=max_depth, top_k=top_k, max_expand=max_expand, min_frac=min_frac, ignore_pos0=ignore_pos0)
    return AttributionGraph(prompt, list(cache.str_tokens), target.key, nodes, edges, L, params)


def attribution_graph(model, transcoders: dict, prompt: str, *, feature=None, logit=None, pos: int = -1,
                      max_depth: int = 3, top_k: int = 5, max_expand: int = 30, min_frac: float = 0.02,
                      ignore_pos0: bool = True, cache: PromptCache | None = None) -> AttributionGraph:
    """Capture ``prompt`` (or reuse ``cache``) and build the attribution graph of one target.

    feature=(layer, position, index) for a transcoder feature's pre-activation, or logit=token id
    (or a pair (a, b) for the logit difference a − b) at position ``pos`` (default: the last token).
    """
    if cache is None:
        cache = capture_prompt(model, transcoders, prompt)
    return build_graph(cache, feature=feature, logit=logit, pos=pos, max_depth=max_depth, top_k=top_k,
                       max_expand=max_expand, min_frac=min_frac, ignore_pos0=ignore_pos0,
                       prompt=prompt if isinstance(prompt, str) else "")


def top_features(cache: PromptCache, pos: int = -1, k: int = 10) -> pd.DataFrame:
    """The k most active transcoder features at ``pos`` over all transcoder layers."""
    pos = _check_pos(cache, pos) % cache.n_tokens
    rows = []
    for l, z in cache.z.items():
        vals, idx = z[pos].topk(min(k, z.shape[1]))
        rows += [{"layer": l, "feature": int(i), "activation": float(v), "pre_activation": float(cache.pre[l][pos, i])}
                 for v, i in zip(vals, idx) if float(v) > 0]
    df = pd.DataFrame(rows, columns=["layer", "feature", "activation", "pre_activation"])
    return df.sort_values("activation", ascending=False).head(k).reset_index(drop=True)


__all__ = ["PromptCache", "capture_prompt", "Contributions", "one_step", "feature_contributions",
           "logit_contributions", "feature_vector", "logit_vector", "Node", "AttributionGraph", "build_graph",
           "attribution_graph", "top_features", "ERROR_KINDS"]
