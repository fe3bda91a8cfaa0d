"""Transcoder features: top activating contexts and activation histograms from a text stream,
de-embeddings (direct and through each attention head's OV circuit) and logit effects.

- ``feature_contexts(model, transcoder, layer, texts)`` streams texts through a truncated forward
  (up to block ``layer``), encodes ``mlp_in`` and keeps, per feature, the top-k activations with a
  snippet of tokens around each (a running top-k merge: memory O(F·k·snippet), whatever the corpus
  size), the activation frequency, and a histogram of the non-zero activations on fixed log10 bins.
- ``de_embeddings(model, transcoder, layer, feature)`` (input-invariant, needs no data): which
  tokens turn the feature on. Direct: n(W_E[tok]) · P W_enc[:, i] (+ b_enc), the feature's
  pre-activation in a model with no layers before it, n the norm with its own frozen scale (exact
  for a 0-layer model; ``normalize=False`` gives the raw W_E W_enc[:, i] of the paper's code).
  Through head h of layer l ≤ ``layer``: ((g₁ ⊙ n(W_E[tok]) + β₁) W_V^{kv(h)} + b_V) W_O^h · P W_enc[:, i],
  the pre-activation change when h attends fully to a source token whose residual is its bare
  embedding (the first-layer approximation: later layers' residuals are not embeddings), up to the
  destination's ln2 scale 1/s₂ (a positive per-token factor, left out). Also the OV norms
  ‖P(g₁ ⊙ W_V W_O^h P W_enc[:, i])‖ over layers × heads.
- ``logit_effects(model, transcoder, feature)``: W_dec[i] through the final norm's gain (and
  centring) and the unembedding, (g_f ⊙ P W_dec[i]) W_U: the direct effect on each logit per unit
  of activation, up to the final norm's per-token scale (which does not change the ranking);
  later layers are ignored.

On GPT-2-style models the de-embeddings use token embeddings only (no position embedding).
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
import torch

from interventions.transcoder_splice import check_transcoder
from workbench.result import Result
from workbench.hook_names import hook_name
from workbench.errors import InputError
from workbench.figures import token_label

from .connections import model_weights

LOG_BINS = torch.linspace(-4, 3, 71)  # log10 activation bin edges: 1e-4 .. 1e3, 70 bins


def _check_feature(tc, feature) -> int:
    n = tc.W_dec.shape[0]
    if not isinstance(feature, (int, np.integer)) or isinstance(feature, bool) or not 0 <= int(feature) < n:
        raise InputError(f"Feature {feature!r} is out of range: this transcoder has {n} features (0..{n - 1}).")
    return int(feature)


# ---------------------------------------------------------------------------------------- contexts
@dataclass
class FeatureContexts(Result):
    """Top activating contexts and activation statistics of transcoder features over a corpus.

    features: the feature indices tracked (F); top_values (F, k) descending (0 where fewer than k
    activations were seen); top_tokens (F, k, S) token ids of each snippet (−1 padding), the
    activating token at index ``left``; top_acts (F, k, S) the feature's activation on each
    snippet token; top_where (F, k, 2) (text index, token position); n_tokens tokens seen;
    n_active (F,) tokens with activation > 0; hist (F, 70) counts of non-zero activations per
    log10 bin (edges ``LOG_BINS``); max_act (F,).
    """

    layer: int
    features: list[int]
    top_values: torch.Tensor
    top_tokens: torch.Tensor
    top_acts: torch.Tensor
    top_where: torch.Tensor
    n_tokens: int
    n_active: torch.Tensor
    hist: torch.Tensor
    max_act: torch.Tensor
    left: int
    str_vocab: dict

    def _row(self, feature: int) -> int:
        try:
            return self.features.index(int(feature))
        except ValueError:
            raise InputError(f"Feature {feature} was not tracked; tracked: {self.features[:10]}"
                             f"{' ...' if len(self.features) > 10 else ''}.") from None

    @property
    def frequency(self) -> torch.Tensor:
        """(F,) fraction of tokens on which each feature is active."""
        return self.n_active.double() / max(self.n_tokens, 1)

    def examples(self, feature: int) -> pd.DataFrame:
        """The feature's top contexts: activation, text index, position, token, snippet text."""
        r = self._row(feature)
        rows = []
        for j in range(self.top_values.shape[1]):
            v = float(self.top_values[r, j])
            if v <= 0:
                break
            toks = [int(t) for t in self.top_tokens[r, j] if t >= 0]
            rows.append({"activation": v, "text": int(self.top_where[r, j, 0]), "position": int(self.top_where[r, j, 1]),
                         "token": self.str_vocab.get(int(self.top_tokens[r, j, self.left]), "?"),
                         "context": "".join(self.str_vocab.get(t, "?") for t in toks)})
        return pd.DataFrame(rows, columns=["activation", "text", "position", "token", "context"])

    def to_frame(self) -> pd.DataFrame:
        """One row per tracked feature: frequency, max activation, top example token."""
        return pd.DataFrame({
            "feature": self.features, "frequency": self.frequency.numpy(), "max_activation": self.max_act.numpy(),
            "top_token": [self.str_vocab.get(int(self.top_tokens[r, 0, self.left]), "") if self.top_values[r, 0] > 0
                          else "" for r in range(len(self.features))]})

    def contexts_html(self, feature: int, max_rows: int | None = None) -> str:
        """The top contexts as HTML, each token shaded by the feature's activation on it."""
        r = self._row(feature)
        vmax = float(self.top_values[r, 0]) or 1.0
        lines = []
        for j in range(self.top_values.shape[1] if max_rows is None else min(max_rows, self.top_values.shape[1])):
            v = float(self.top_values[r, j])
            if v <= 0:
                break
            spans = []
            for s in range(self.top_tokens.shape[2]):
                t = int(self.top_tokens[r, j, s])
                if t < 0:
                    continue
                a = float(self.top_acts[r, j, s])
                alpha = max(0.0, min(1.0, a / vmax))
                border = "border-bottom:2px solid #d62728;" if s == self.left else ""
                spans.append(f"<span title='{a:.3g}' style='background:rgba(255,127,14,{alpha:.2f});{border}'>"
                             f"{html.escape(token_label(self.str_vocab.get(t, '?')))}</span>")
            lines.append(f"<div style='font-family:monospace;white-space:pre-wrap;margin:2px 0'>"
                         f"<b>{v:.3g}</b> {''.join(spans)}</div>")
        return "".join(lines) or "<i>never active on this corpus</i>"

    def histogram_figure(self, feature: int):
        """Bar chart of the feature's non-zero activations on log10 bins."""
        import plotly.graph_objects as go

        r = self._row(feature)
        centers = (10 ** ((LOG_BINS[:-1] + LOG_BINS[1:]) / 2)).numpy()
        fig = go.Figure(go.Bar(x=centers, y=self.hist[r].numpy(), marker_color="#ff7f0e",
                               hovertemplate="≈%{x:.3g}: %{y} tokens<extra></extra>"))
        fig.update_layout(template="plotly_white", width=640, height=300, bargap=0.05,
                          title=(f"L{self.layer} feature {feature}: {int(self.n_active[r])} of {self.n_tokens} tokens "
                                 f"active ({float(self.frequency[r]):.2%})"),
                          xaxis=dict(type="log", title="activation"), yaxis_title="tokens",
                          margin=dict(l=10, r=10, t=50, b=10))
        return fig

    def figure(self, feature: int | None = None):
        """Histogram of one feature, or (feature=None) of the log10 activation frequencies of all."""
        if feature is not None:
            return self.histogram_figure(feature)
        import plotly.graph_objects as go

        f = self.frequency.numpy()
        fig = go.Figure(go.Histogram(x=np.log10(f[f > 0]), nbinsx=50, marker_color="#4c78a8"))
        fig.update_layout(template="plotly_white", width=640, height=300,
                          title=f"L{self.layer}: activation frequency of {len(f)} features ({int((f == 0).sum())} never active)",
                          xaxis_title="log10 frequency", yaxis_title="features")
        return fig

    def __repr__(self):
        return (f"FeatureContexts(L{self.layer}, {len(self.features)} features, top {self.top_values.shape[1]}, "
                f"{self.n_tokens} tokens)")


def _windows(model, texts: Iterable[str], context: int):
    """Yield (text index, position offset, ids (n,)) windows of at most ``context`` tokens."""
    for ti, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"Text {ti} is a {type(text).__name__}, not a string.")
        if not text.strip():
            continue
        ids = model.tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), context):
            chunk = ids[start: start + context]
            if len(chunk) >= 2:
                yield ti, start, torch.tensor(chunk, dtype=torch.long)


def feature_contexts(model, transcoder, layer: int, texts: Iterable[str], features=None, k: int = 10,
                     context: int = 64, batch_size: int = 8, left: int = 12, right: int = 4,
                     exclude_first: bool = True, max_tokens: int | None = None) -> FeatureContexts:
    """Stream ``texts`` and collect top contexts, frequencies and histograms (see the module docstring).

    features: indices to track (None: all). context: window length (each window restarts the
    model's context, so position 0 of each window is the attention sink; ``exclude_first`` skips
    it, as in training). left / right: snippet tokens kept before / after the activating token.
    max_tokens: stop after this many tokens.
    """
    layer = check_transcoder(model, layer, transcoder)
    F_all = transcoder.W_dec.shape[0]
    feats = list(range(F_all)) if features is None else [_check_feature(transcoder, f) for f in features]
    if not feats:
        raise InputError("features is empty: pass None (all) or a list of feature indices.")
    for name, v, lo in [("k", k, 1), ("context", context, 2), ("batch_size", batch_size, 1), ("left", left, 0),
                        ("right", right, 0)]:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}.")
    if isinstance(texts, str):
        texts = [texts]
    F, S = len(feats), left + 1 + right
    fidx = torch.tensor(feats)
    top_v = torch.zeros(F, k)
    top_tok = torch.full((F, k, S), -1, dtype=torch.long)
    top_act = torch.zeros(F, k, S)
    top_where = torch.full((F, k, 2), -1, dtype=torch.long)
    n_active = torch.zeros(F, dtype=torch.long)
    hist = torch.zeros(F, len(LOG_BINS) - 1, dtype=torch.long)
    max_act = torch.zeros(F)
    n_tokens = 0
    W_enc = transcoder.W_enc.detach()
    hook = hook_name("mlp_in", layer)

    def process(batch):
        nonlocal top_v, top_tok, top_act, top_where, n_tokens
        lengths = [len(ids) for _, _, ids in batch]
        T = max(lengths)
        ids = torch.full((len(batch), T), model.pad_id, dtype=torch.long)
        for b, (_, _, x) in enumerate(batch):
            ids[b, : len(x)] = x
        run = model.run(ids, capture=[hook], logits=None, stop_at_layer=layer + 1)
        with torch.no_grad():
            acts = transcoder.encode(run[hook].to(W_enc.dtype)).float().cpu()[..., fidx]  # (B, T, F)
        valid = torch.zeros(len(batch), T, dtype=torch.bool)
        for b, n in enumerate(lengths):
            valid[b, int(exclude_first):n] = True
        acts = acts * valid[..., None]
        n_tokens += int(valid.sum())
        flat = acts.reshape(-1, F)  # (B*T, F)
        pos_mask = flat > 0
        n_active.add_(pos_mask.sum(0))
        max_act.copy_(torch.maximum(max_act, flat.max(0).values))
        rows, cols = torch.nonzero(pos_mask, as_tuple=True)
        if rows.numel():
            bins = torch.bucketize(flat[rows, cols].log10(), LOG_BINS[1:-1])
            hist.index_put_((cols, bins), torch.ones_like(bins), accumulate=True)
        kk = min(k, flat.shape[0])
        bv, bi = flat.topk(kk, dim=0)  # (kk, F)
        bv, bi = bv.T, bi.T  # (F, kk)
        # snippets of the batch candidates
        real = ids.masked_fill(torch.arange(T) >= torch.tensor(lengths)[:, None], -1)  # padding -> -1
        padded = torch.cat([torch.full((len(batch), left), -1), real, torch.full((len(batch), right), -1)], 1)
        pacts = torch.cat([torch.zeros(len(batch), left, F), acts, torch.zeros(len(batch), right, F)], 1)
        b_idx, t_idx = bi // T, bi % T  # (F, kk)
        offs = torch.arange(S)
        cand_tok = padded[b_idx[..., None], t_idx[..., None] + offs]  # (F, kk, S)
        cand_act = pacts[b_idx[..., None], t_idx[..., None] + offs, torch.arange(F)[:, None, None]]
        text_ids = torch.tensor([w[0] for w in batch])
        starts = torch.tensor([w[1] for w in batch])
        cand_where = torch.stack([text_ids[b_idx], starts[b_idx] + t_idx], -1)
        allv = torch.cat([top_v, bv], 1)
        nv, order = allv.topk(k, dim=1)
        gather = order[..., None].expand(-1, -1, S)
        top_tok = torch.cat([top_tok, cand_tok], 1).gather(1, gather)
        top_act = torch.cat([top_act, cand_act], 1).gather(1, gather)
        top_where = torch.cat([top_where, cand_where], 1).gather(1, order[..., None].expand(-1, -1, 2))
        top_v = nv

    batch = []
    for w in _windows(model, texts, context):
        batch.append(w)
        if len(batch) == batch_size:
            process(batch)
            batch = []
            if max_tokens is not None and n_tokens >= max_tokens:
                break
    if batch and (max_tokens is None or n_tokens < max_tokens):
        process(batch)
    if n_tokens == 0:
        raise InputError("The corpus gave no tokens to read (empty texts, or only one-token windows).")
    keep_tokens = torch.unique(top_tok[top_tok >= 0]).tolist()
    str_vocab = {t: model.tokenizer.decode([t]) for t in keep_tokens}
    return FeatureContexts(layer, feats, top_v, top_tok, top_act, top_where, n_tokens, n_active, hist, max_act,
                           left, str_vocab)


# ---------------------------------------------------------------------------------------- de-embeddings
def _norm_eps(model) -> float:
    return model.weights().layers[0].ln1.eps


_NORMALIZED: dict[tuple, torch.Tensor] = {}


def normalized_embeddings(model) -> torch.Tensor:
    """(V, d) each token embedding through the norm with its own scale: P e / sqrt(mean((P e)²) + eps).

    Cached per model and weight version (one (V, d) float32 tensor, 113 MB for SmolLM2)."""
    key = (model.fingerprint, model.weights_version)
    if key not in _NORMALIZED:
        W = model_weights(model)
        e = W.center(W.W_E)
        _NORMALIZED.clear()  # keep one model's table at most
        _NORMALIZED[key] = e / torch.sqrt(e.pow(2).mean(-1, keepdim=True) + _norm_eps(model))
    return _NORMALIZED[key]


@dataclass
class DeEmbedding(Result):
    """De-embeddings of one feature (see the module docstring).

    direct (V,): per-token score through the residual; heads {(layer, head): (V,)} through each
    head's OV circuit; ov_norms (n_layers_before, H) ‖OV pull-back‖.
    """

    layer: int
    feature: int
    direct: torch.Tensor
    heads: dict
    ov_norms: torch.Tensor
    normalized: bool
    str_vocab: object

    def top(self, k: int = 10, head=None, bottom: bool = False) -> pd.DataFrame:
        s = self.direct if head is None else self.heads[tuple(head)]
        v, i = (-s if bottom else s).topk(k)
        return pd.DataFrame({"token": [self.str_vocab(int(t)) for t in i], "id": i.tolist(),
                             "score": (-v if bottom else v).tolist()})

    def to_frame(self, k: int = 10) -> pd.DataFrame:
        """Top-k tokens directly and through the 5 heads with the largest OV norm."""
        frames = [self.top(k).assign(path="direct")]
        flat = self.ov_norms.flatten()
        for idx in flat.topk(min(5, flat.numel())).indices.tolist():
            l, h = divmod(idx, self.ov_norms.shape[1])
            frames.append(self.top(k, (l, h)).assign(path=f"L{l}H{h} OV"))
        return pd.concat(frames, ignore_index=True)

    def figure(self):
        """Heatmap of the OV de-embedding norms over layers ≤ this layer and heads."""
        import plotly.graph_objects as go

        z = self.ov_norms.numpy()
        fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", hovertemplate="L%{y}H%{x}: %{z:.3g}<extra></extra>"))
        fig.update_layout(template="plotly_white", width=520, height=360,
                          title=f"L{self.layer} feature {self.feature}: ‖OV pull-back‖ per head",
                          xaxis_title="head", yaxis_title="layer")
        return fig

    def __repr__(self):
        toks = ", ".join(repr(t) for t in self.top(5)["token"])
        return f"DeEmbedding(L{self.layer} feature {self.feature}: direct top {toks})"

    def html_table(self):
        return self.to_frame(8)


def _vocab_fn(model):
    cache: dict[int, str] = {}

    def f(t: int) -> str:
        if t not in cache:
            cache[t] = model.tokenizer.decode([t])
        return cache[t]

    return f


def de_embeddings(model, transcoder, layer: int, feature: int, normalize: bool = True,
                  heads: bool = True) -> DeEmbedding:
    """Direct and per-head OV de-embeddings of one feature (module docstring). normalize=False gives
    the raw W_E · W_enc[:, i] (no norm, no bias); heads=False skips the per-head scores."""
    layer = check_transcoder(model, layer, transcoder)
    i = _check_feature(transcoder, feature)
    W = model_weights(model)
    u = W.center(transcoder.W_enc.detach().float().cpu()[:, i])  # read from mlp_in: P, no gain
    if normalize:
        emb = normalized_embeddings(model)
        direct = emb @ u + float(transcoder.b_enc.detach().float().cpu()[i])
    else:
        emb = None
        direct = W.W_E @ transcoder.W_enc.detach().float().cpu()[:, i]
    H = model.info.n_heads
    norms = torch.zeros(layer + 1, H)
    per_head = {}
    emb_n = normalized_embeddings(model) if emb is None else emb
    for l in range(layer + 1):
        back = W.ov_pullback(l, u)  # (H, d)
        norms[l] = back.norm(dim=-1)
        if heads:
            scores = emb_n @ back.T + W.ov_bias(l, u)  # (V, H)
            for h in range(H):
                per_head[(l, h)] = scores[:, h].contiguous()
    return DeEmbedding(layer, i, direct, per_head, norms, normalize, _vocab_fn(model))


# ---------------------------------------------------------------------------------------- logit effects
@dataclass
class LogitEffects(Result):
    """Direct logit effect of one feature per unit of activation: effects (V,) = (g_f ⊙ P W_dec[i]) W_U."""

    layer: int
    feature: int
    effects: torch.Tensor
    str_vocab: object

    def top(self, k: int = 10, bottom: bool = False) -> pd.DataFrame:
        v, i = (-self.effects if bottom else self.effects).topk(k)
        return pd.DataFrame({"token": [self.str_vocab(int(t)) for t in i], "id": i.tolist(),
                             "effect": (-v if bottom else v).tolist()})

    def to_frame(self, k: int = 10) -> pd.DataFrame:
        return pd.concat([self.top(k).assign(side="top"), self.top(k, bottom=True).assign(side="bottom")],
                         ignore_index=True)

    def figure(self, k: int = 10):
        """Horizontal bars: the k most promoted (right) and most suppressed (left) tokens."""
        import plotly.graph_objects as go

        df = self.to_frame(k).sort_values("effect")
        fig = go.Figure(go.Bar(x=df["effect"], y=[f"{token_label(t)} ({i})" for t, i in zip(df["token"], df["id"])],
                               orientation="h", marker_color=["#d62728" if e > 0 else "#1f77b4" for e in df["effect"]]))
        fig.update_layout(template="plotly_white", width=560, height=40 + 18 * len(df),
                          title=f"L{self.layer} feature {self.feature}: direct logit effect",
                          xaxis_title="logit change per unit activation (before the final norm's 1/s)",
                          margin=dict(l=10, r=10, t=50, b=10))
        return fig

    def __repr__(self):
        up = ", ".join(repr(t) for t in self.top(5)["token"])
        return f"LogitEffects(L{self.layer} feature {self.feature}: promotes {up})"

    def html_table(self):
        return self.to_frame(8)


def logit_effects(model, transcoder, layer: int, feature: int) -> LogitEffects:
    """Direct logit effects of one feature (module docstring)."""
    layer = check_transcoder(model, layer, transcoder)
    i = _check_feature(transcoder, feature)
    W = model_weights(model)
    dec = transcoder.W_dec.detach().float().cpu()[i]
    return LogitEffects(layer, i, (W.g_final * W.center(dec)) @ W.W_U, _vocab_fn(model))


__all__ = ["FeatureContexts", "feature_contexts", "DeEmbedding", "de_embeddings", "LogitEffects", "logit_effects",
           "normalized_embeddings", "LOG_BINS"]
