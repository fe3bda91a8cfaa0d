"""FFN sub-updates in vocabulary space (Geva, Caciularu, Wang & Goldberg, EMNLP 2022).

An MLP's output at one position is a sum of value vectors weighted by coefficients:

    mlp_out = Σ_i m_i · v_i + b_out,    v_i = W_out[i, :] (row i of the (d_mlp, d_model) down projection)

with m = ``mlp_hidden`` (SwiGLU: SiLU(gate_i(x)) · up_i(x), may be negative; GPT-2: GELU(k_i · x)).
Each term m_i v_i is a *sub-update*. Dominant sub-updates are ranked by |m_i| · ‖v_i‖ (the paper's
rule, top 10) or by their direct contribution to an answer logit through the final norm with its
scale frozen at the clean run (``rank_by="answer"``).

Each sub-update is projected to the vocabulary as ``sign(m_i) · W_Uᵀ (g ⊙ v_i)`` (g = final-norm gain,
``through_norm=True``; the paper projects E v_i without it), i.e. the tokens the sub-update pushes up
in the direction it is actually added. For LayerNorm models the projection is also centred, as the
norm would do.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.errors import InputError

from .lenses import token_id


def final_norm_direction(model, scale: torch.Tensor, vocab_dir: torch.Tensor) -> torch.Tensor:
    """Residual-space direction(s) u with u · x = the logit(s) read by ``vocab_dir``, final norm frozen.

    scale: the final norm's scale (rms or std, ``final_norm_scale``) at the position, a scalar tensor.
    vocab_dir: (d_model,) or (d_model, k) columns of W_U. RMS: u = g ⊙ w / s; LayerNorm: the same,
    centred over d_model (centring the input equals centring the read direction).
    """
    return model.weights().final_norm.read_direction(vocab_dir, scale)


@dataclass
class FFNSubUpdates:
    """The sub-updates m_i v_i of one MLP layer at one position of one prompt.

    coefficients: (d_mlp,) m_i; value_norms: (d_mlp,) ‖v_i‖; values: (d_mlp, d_model) W_out rows;
    bias: (d_model,) b_out (zeros when the MLP has none); mlp_out: (d_model,) captured MLP output.
    answer_contrib: (d_mlp,) direct contribution of each sub-update to the answer logit with the final
    norm frozen (None without an answer). top: indices of the dominant sub-updates, in rank order.
    top_tokens: per entry of ``top``, the tokens its projection pushes up most.
    """

    model_name: str
    prompt: str
    str_tokens: list[str]
    layer: int
    position: int
    rank_by: str
    coefficients: torch.Tensor
    value_norms: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor
    mlp_out: torch.Tensor
    answer: str | None
    answer_contrib: torch.Tensor | None
    top: list[int]
    top_tokens: list[list[str]]
    top_token_logits: list[list[float]]

    @property
    def scores(self) -> torch.Tensor:
        """(d_mlp,) |m_i| · ‖v_i‖."""
        return self.coefficients.abs() * self.value_norms

    def sub_updates(self) -> torch.Tensor:
        """(d_mlp, d_model) every m_i v_i."""
        return self.coefficients[:, None] * self.values

    def reconstruction_error(self) -> float:
        """max |Σ_i m_i v_i + b_out − mlp_out| (0 up to float error)."""
        return float((self.sub_updates().sum(0) + self.bias - self.mlp_out).abs().max())

    def to_frame(self) -> pd.DataFrame:
        """One row per dominant sub-update: rank, neuron, m_i, ‖v_i‖, |m_i|·‖v_i‖, answer contribution, top tokens."""
        rows = []
        for r, i in enumerate(self.top):
            rows.append({"rank": r, "neuron": i, "coefficient": float(self.coefficients[i]),
                         "value_norm": float(self.value_norms[i]), "score": float(self.scores[i]),
                         "answer_contrib": float(self.answer_contrib[i]) if self.answer_contrib is not None else np.nan,
                         "top_tokens": " ".join(repr(t) for t in self.top_tokens[r])})
        return pd.DataFrame(rows)

    def figure(self, title: str | None = None):
        """Bars of the dominant sub-updates (|m_i|·‖v_i‖, or answer contribution), hover: top tokens."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        df = self.to_frame()
        labels = [f"n{i}" for i in df.neuron]
        hover = [f"neuron {i}<br>m = {m:.3g}<br>top: {html.escape(t)}" for i, m, t in
                 zip(df.neuron, df.coefficient, df.top_tokens)]
        has_ans = self.answer_contrib is not None
        fig = make_subplots(rows=1, cols=2 if has_ans else 1, horizontal_spacing=0.12,
                            subplot_titles=("|m_i|·‖v_i‖",) + ((f"contribution to {self.answer!r} logit",)
                                                              if has_ans else ()))
        fig.add_trace(go.Bar(x=df.score, y=labels, orientation="h", hovertext=hover, hoverinfo="text",
                             marker_color=["#1f77b4" if m >= 0 else "#ff7f0e" for m in df.coefficient],
                             showlegend=False), 1, 1)
        if has_ans:
            fig.add_trace(go.Bar(x=df.answer_contrib, y=labels, orientation="h", hovertext=hover, hoverinfo="text",
                                 marker_color=["#2ca02c" if v >= 0 else "#d62728" for v in df.answer_contrib],
                                 showlegend=False), 1, 2)
        fig.update_yaxes(autorange="reversed")
        tok = self.str_tokens[self.position] if self.position < len(self.str_tokens) else "?"
        fig.update_layout(title=title or (f"Dominant FFN sub-updates, layer {self.layer}, position {self.position} "
                                          f"({tok!r}), ranked by {self.rank_by} ({self.model_name})"),
                          template="plotly_white", width=1000, height=max(360, 60 + 26 * len(self.top)))
        return fig

    def __repr__(self) -> str:
        head = ", ".join(f"n{i}:{' '.join(repr(t) for t in toks[:3])}" for i, toks in zip(self.top[:4], self.top_tokens))
        return (f"FFNSubUpdates({self.model_name}, layer {self.layer}, position {self.position}, "
                f"{len(self.coefficients)} sub-updates, top by {self.rank_by}: {head} …)")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>" + self.to_frame().round(4).to_html(index=False)


def _check_family(model) -> None:
    if model.info.post_norms:
        raise InputError(f"FFN sub-updates are not supported on {model.info.name}: it has post norms (a norm after "
                         "the MLP, as Gemma 2/3), so Σ m_i v_i is not what the MLP adds to the residual. Use "
                         "direct_logit_attribution (exact there, MLP outputs after the norm) instead.")


def ffn_sub_updates(model, prompt, layer: int, answer=None, position: int = -1, top_k: int = 10,
                    top_tokens: int = 10, rank_by: str = "magnitude", through_norm: bool = True) -> FFNSubUpdates:
    """Dominant sub-updates of MLP ``layer`` at ``position`` (default the last token) of one prompt.

    prompt: a string or FactPrompt-like object (``.prompt``; ``.answer`` used when answer is None).
    answer: token id or string (first token); needed for rank_by="answer".
    rank_by: "magnitude" (|m_i|·‖v_i‖, Geva et al.) or "answer" (|direct contribution to the answer logit|).
    """
    if not isinstance(prompt, str):
        if answer is None:
            answer = getattr(prompt, "answer", None)
        prompt = getattr(prompt, "prompt", prompt)
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"prompt must be a non-empty string or a FactPrompt-like object, got {prompt!r}.")
    if rank_by not in ("magnitude", "answer"):
        raise InputError(f"rank_by must be 'magnitude' or 'answer', got {rank_by!r}.")
    _check_family(model)
    if rank_by == "answer" and answer is None:
        raise InputError("rank_by='answer' needs an answer (token id or string such as ' Paris').")
    layer = model.check_layer(layer)
    d_mlp = model.info.d_mlp
    if not isinstance(top_k, int) or not 1 <= top_k <= d_mlp:
        raise InputError(f"top_k must be an integer in 1..{d_mlp}, got {top_k!r}.")
    ids, lengths = model.tokenize(prompt)
    n = lengths[0]
    if not -n <= position < n:
        raise InputError(f"position {position} is out of range for a prompt of {n} tokens.")
    pos = position % n
    a = token_id(model, answer) if answer is not None else None
    with torch.no_grad():
        run = model.run(ids, capture=["mlp_hidden", "mlp_out", "final_norm_scale"], layers=[layer], positions=[pos],
                        logits=None)
    return _build(model, run, prompt, layer, pos, a, top_k, top_tokens, rank_by, through_norm)


def _build(model, run, prompt, layer, pos, a, top_k, top_tokens, rank_by, through_norm) -> FFNSubUpdates:
    """FFNSubUpdates of ``layer`` from a run that captured mlp_hidden/mlp_out/final_norm_scale at [pos]."""
    W = model.weights()
    lw = W.layers[layer]
    with torch.no_grad():
        m = run["mlp_hidden", layer][0, 0].float()
        out = run["mlp_out", layer][0, 0].float()
        w_out = lw.W_out.float()  # (d_mlp, d_model)
        b_out = lw.b_out.float() if lw.b_out is not None else torch.zeros(w_out.shape[1], device=w_out.device)
        norms = w_out.norm(dim=-1)
        w_u = W.W_U.float()
        contrib = None
        if a is not None:
            u = final_norm_direction(model, run["final_norm_scale"][0, 0, 0].float(), w_u[:, a])
            contrib = m * (w_out @ u)
        score = (m.abs() * norms) if rank_by == "magnitude" else contrib.abs()
        top = score.topk(top_k).indices.tolist()
        g = W.final_norm.w
        v = w_out[top] * torch.sign(m[top])[:, None]  # the direction each sub-update is actually added in
        if through_norm and g is not None:
            v = v * g.detach().float()
        if through_norm and W.final_norm.kind == "LN":
            v = v - v.mean(-1, keepdim=True)
        proj = v @ w_u  # (top_k, vocab)
        tv = proj.topk(min(top_tokens, proj.shape[-1]), -1)
    toks = [model.str_tokens(row) for row in tv.indices.tolist()]
    return FFNSubUpdates(model.info.name, prompt, run.str_tokens[0], layer, pos, rank_by, m.cpu(), norms.cpu(),
                         w_out.cpu(), b_out.cpu(), out.cpu(), model.to_string([a]) if a is not None else None,
                         contrib.cpu() if contrib is not None else None, top, toks, tv.values.tolist())


@dataclass
class FFNLayerSummary:
    """Per MLP layer at one position: total direct contribution to the answer logit and the top neuron's share."""

    model_name: str
    prompt: str
    answer: str
    layers: list[int]
    total: np.ndarray       # (L,) Σ_i answer contribution = the MLP's direct logit attribution (bias excluded)
    top_neuron: list[int]   # (L,) neuron with the largest |contribution|
    top_contrib: np.ndarray  # (L,) its contribution
    top_tokens: list[list[str]]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layers, "mlp_answer_dla": self.total, "top_neuron": self.top_neuron,
                             "top_neuron_contrib": self.top_contrib,
                             "top_neuron_tokens": [" ".join(repr(t) for t in ts[:5]) for ts in self.top_tokens]})

    def figure(self, title: str | None = None):
        import plotly.graph_objects as go
        fig = go.Figure()
        fig.add_trace(go.Bar(x=self.layers, y=self.total, name="whole MLP (Σ sub-updates)"))
        fig.add_trace(go.Bar(x=self.layers, y=self.top_contrib, name="largest single sub-update",
                             hovertext=[f"n{n}: {' '.join(repr(t) for t in ts[:5])}" for n, ts in
                                        zip(self.top_neuron, self.top_tokens)], hoverinfo="text+y"))
        fig.update_layout(barmode="group", title=title or f"MLP contributions to {self.answer!r} by layer ({self.model_name})",
                          xaxis_title="layer", yaxis_title="direct logit contribution (final norm frozen)",
                          template="plotly_white", width=900, height=420)
        return fig

    def __repr__(self) -> str:
        best = int(np.argmax(self.total))
        return (f"FFNLayerSummary({self.model_name}, answer {self.answer!r}: largest MLP is layer {self.layers[best]} "
                f"({self.total[best]:+.2f}), top neuron there n{self.top_neuron[best]})")

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>" + self.to_frame().round(3).to_html(index=False)


def ffn_layer_summary(model, prompt, answer=None, layers=None, position: int = -1, top_tokens: int = 8) -> FFNLayerSummary:
    """For each MLP layer, its direct contribution to the answer and the single sub-update that adds most."""
    from workbench.capture import resolve_layers
    layer_list = resolve_layers(layers, model.info.n_layers)
    if not isinstance(prompt, str):
        if answer is None:
            answer = getattr(prompt, "answer", None)
        prompt = getattr(prompt, "prompt", prompt)
    if answer is None:
        raise InputError("ffn_layer_summary needs an answer (token id or string such as ' Paris').")
    first = ffn_sub_updates(model, prompt, layer_list[0], answer=answer, position=position, top_k=1,
                            top_tokens=top_tokens, rank_by="answer")  # checks the inputs
    a, pos = token_id(model, answer), first.position
    with torch.no_grad():  # one forward for all layers
        run = model.run(prompt, capture=["mlp_hidden", "mlp_out", "final_norm_scale"], layers=layer_list,
                        positions=[pos], logits=None)
    res = [first] + [_build(model, run, first.prompt, l, pos, a, 1, top_tokens, "answer", True) for l in layer_list[1:]]
    return FFNLayerSummary(model.info.name, res[0].prompt, res[0].answer, layer_list,
                           np.array([float(r.answer_contrib.sum()) for r in res]), [r.top[0] for r in res],
                           np.array([float(r.answer_contrib[r.top[0]]) for r in res]), [r.top_tokens[0] for r in res])
