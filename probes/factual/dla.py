"""Exact direct logit attribution (DLA) of an answer token, per component and per source token.

At the final position END the residual is a sum of components (see ``docs/factual.md``):

    x = embed (+ pos_embed) + Σ_l [ Σ_h head_{l,h} + b_O^l ] + Σ_l mlp_l

With the final norm's scale frozen at its clean-run value (``ln_final.hook_scale``, the divisor
√(mean(x²)+ε) for RMSNorm, the standard deviation for LayerNorm), the logit of token a is linear:

    logit_a = Σ_c c · w_a + [b_norm · W_U[:, a] + b_U[a]],   w_a = P(g ⊙ W_U[:, a]) / scale

where g is the final norm's gain, P centres a vector (LayerNorm only, since (c − mean c)·v =
c·(v − mean v)) and the bracket is the "norm bias" + "unembed bias" components (zero on Llama).
So the components sum to the logit exactly, up to float32 rounding: products with the big weights
(W_O) run in the model's float32, projections onto the target directions and all sums in float64;
|Σ − logit| is about 1e-5 on SmolLM2, the rounding of the model's own float32 forward.

**Every family.** Three architecture traits change the algebra, and each is handled exactly:

- *Norms after attention and after the MLP* (Gemma 2/3): the block adds post(Σ_h head_h + b_O)
  to the residual, not the heads themselves. With each post norm's scale frozen at its clean-run
  value (``attn_post_norm_scale``, ``mlp_post_norm_scale``) the post norm is linear too, so a head
  is read through w_l = P(g_post ⊙ w) / s_post (``NormWeights.read_direction``) and its DLA is
  head_{l,h} · w_l. ``mlp_out`` is already the post-normed MLP output. (A post-norm bias, which no
  bundled family has, goes to the layer's "attn bias" component.)
- *Parallel attention and MLP* (GPT-NeoX): both read the same residual and both are added to it,
  so the sum above is unchanged; nothing special is needed.
- *QKV biases* (Qwen 2): the value bias is inside v and z, so heads and per-source splits carry it.
- *Logit soft-capping* (Gemma 2: logits = c · tanh(ℓ / c)): tanh is not linear, so the
  decomposition is of the **pre-cap logit** ℓ. ``DLAResult.logits`` holds ℓ (the model's own
  unembedding input times W_U, + b_U), ``capped_logits`` the model's output, ``softcap`` the cap.
  The attention soft-cap (Gemma 2) changes the pattern, which DLA reads as it is.

**The sum-to-logit check runs on every call.** With ``E`` = max over targets of
|Σ components − logit| and ``S`` = Σ |components| of the answer (the magnitude float rounding
scales with), a result with ``E > rtol · max(1, S)`` (``rtol`` default 1e-4) is never returned
silently: ``on_error="raise"`` (default) raises ``workbench.DecompositionError``, ``"warn"``
warns and returns the result with ``result.check_passed = False``.

**By source token.** head_{l,h}[END] = Σ_s A^{l,h}[END, s] · v_s^{kv(h)} W_O^h with kv(h) =
h // group_size (GQA, HF ``repeat_kv`` order), so DLA_{l,h,s} = A[END, s] · (v_s W_O^h) · w.
Sources are grouped into subject / relation (``probes.factual.data.token_positions``), ``last``
(END itself, always its own group: late heads often read the token they sit on, and counting it
as "relation" whenever a relation span happens to reach the end would make "relation head" mean
"self-reading head") and ``other`` (everything else, position 0 included).

**Metrics.** ``"logit"``: the answer's logit. ``"diff"``: answer minus the mean over the
alternatives (for a FactPrompt the other candidates of its relation; for a string prompt given no
alternatives, the model's top non-answer token).
Component DLA (and head DLA per source group) is also kept for every target (answer and each
alternative), for ranking candidates under subsets of components (``probes.factual.mechanisms``).

**Cost.** One forward pass capturing embed, v, pattern and mlp_out (plus z for the GQA-independent
head path); the rest is matrix algebra at END only, against the K target columns of W_U.

**Answer tokens.** A string answer must be exactly one token (else ``InputError``); a FactPrompt
uses the first-token rule of ``probes.factual.data``. ``direct_logit_attribution_many`` takes one
answer for every prompt or a list with one answer per prompt (strings or token ids).
"""
from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.errors import DecompositionError, InputError

from .data import candidate_tokens, token_positions

SOURCE_GROUPS = ("subject", "relation", "last", "other")
METRICS = ("logit", "diff")


@dataclass
class DLAResult:
    """DLA of one prompt at its last position (L layers, H heads, T tokens, K target tokens).

    targets: (K,) token ids, the answer first, then the alternatives. logits: (K,) the run's logits
    (pre-cap logits on a soft-capped model: that is what is decomposed; see ``capped_logits``).
    embed: (K,) token (+ position) embedding. heads: (L, H, K) (from z W_O). groups: (L, H, 4, K)
    head DLA from subject / relation / last / other tokens (``SOURCE_GROUPS``; from the pattern and
    v; "last" is the final token itself, never subject or relation). attn_bias: (L, K) output bias
    b_O (zeros if none). mlps: (L, K). norm_bias: (K,) final-norm bias. unembed_bias: (K,).
    sources: (2, L, H, T) per-source DLA of the two metrics ("logit", "diff").
    attn_rows: (L, H, T) attention of END to every token. scale: the frozen final-norm scale.
    """

    model_name: str
    prompt: str
    str_tokens: list[str]
    targets: list[int]
    target_strs: list[str]
    logits: np.ndarray
    embed: np.ndarray
    heads: np.ndarray
    groups: np.ndarray
    attn_bias: np.ndarray
    mlps: np.ndarray
    norm_bias: np.ndarray
    unembed_bias: np.ndarray
    sources: np.ndarray
    attn_rows: np.ndarray
    subject_positions: list[int]
    relation_positions: list[int]
    scale: float
    fact_id: str | None = None
    relation: str | None = None
    meta: dict = field(default_factory=dict)
    capped_logits: np.ndarray | None = None  # (K,) the model's soft-capped logits (None without a cap)
    softcap: float | None = None             # the final logit soft-cap; ``logits`` are then pre-cap
    attn_post_norm_scales: np.ndarray | None = None  # (L,) frozen post-attention norm scales at END (Gemma)
    rtol: float = 1e-4
    check_passed: bool = True

    # ------------------------------------------------------------------ sums
    @property
    def n_layers(self) -> int:
        return self.heads.shape[0]

    @property
    def n_heads(self) -> int:
        return self.heads.shape[1]

    @property
    def total(self) -> np.ndarray:
        """(K,) the sum of every component: equals ``logits`` up to float rounding."""
        return (self.embed + self.heads.sum((0, 1)) + self.attn_bias.sum(0) + self.mlps.sum(0)
                + self.norm_bias + self.unembed_bias)

    @property
    def error(self) -> float:
        """max |Σ components − logit| over the targets."""
        return float(np.abs(self.total - self.logits).max())

    @property
    def magnitude(self) -> float:
        """Σ |components| of the answer: the size float rounding of the sum scales with."""
        parts = [self.embed[:1], self.heads[..., 0].ravel(), self.attn_bias[:, 0], self.mlps[:, 0],
                 self.norm_bias[:1], self.unembed_bias[:1]]
        return float(sum(np.abs(p).sum() for p in parts))

    @property
    def tolerance(self) -> float:
        """The largest error the sum-to-logit check accepts: ``rtol · max(1, magnitude)``."""
        return self.rtol * max(1.0, self.magnitude)

    def metric(self, x: np.ndarray, metric: str = "logit") -> np.ndarray:
        """Reduce the last (K) axis of a per-target array to one metric."""
        if metric == "logit":
            return x[..., 0]
        if metric == "diff":
            return x[..., 0] - x[..., 1:].mean(-1)
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}.")

    def _mi(self, metric: str) -> int:
        if metric not in METRICS:
            raise InputError(f"metric must be one of {METRICS}, got {metric!r}.")
        return METRICS.index(metric)

    @property
    def last_position(self) -> int:
        return len(self.str_tokens) - 1

    def source_groups(self, metric: str = "logit") -> np.ndarray:
        """(L, H, 4) per-head DLA from subject / relation / last / other tokens (``SOURCE_GROUPS``);
        sums to the head's DLA."""
        s = self.sources[self._mi(metric)]
        subj = s[:, :, self.subject_positions].sum(-1)
        rel = s[:, :, self.relation_positions].sum(-1)
        last = s[:, :, self.last_position]
        return np.stack([subj, rel, last, s.sum(-1) - subj - rel - last], -1)

    def group_totals(self, metric: str = "logit") -> dict[str, float]:
        """DLA summed by kind: embed, attention (heads + output bias), MLPs, biases."""
        m = lambda x: self.metric(x, metric)  # noqa: E731
        return {"embed": float(m(self.embed)), "attention": float(m(self.heads).sum() + m(self.attn_bias).sum()),
                "mlp": float(m(self.mlps).sum()), "biases": float(m(self.norm_bias) + m(self.unembed_bias))}

    def top_heads(self, n: int = 10, metric: str = "logit", by_abs: bool = True) -> list[tuple[int, int]]:
        """The n heads with the largest (absolute) DLA, as (layer, head)."""
        v = self.metric(self.heads, metric)
        order = np.argsort(-(np.abs(v) if by_abs else v), axis=None)[:n]
        return [tuple(int(i) for i in np.unravel_index(o, v.shape)) for o in order]

    # ------------------------------------------------------------------ tables
    def to_frame(self) -> pd.DataFrame:
        """One row per component: kind, layer, head, DLA of the answer logit and of the diff, and
        (heads only) their subject / relation / last / other split."""
        rows = []
        L, H = self.n_layers, self.n_heads
        g = {m: self.source_groups(m) for m in METRICS}

        def row(name, kind, layer, head, x, src=None):
            r = {"component": name, "kind": kind, "layer": layer, "head": head,
                 "logit": float(self.metric(x, "logit")), "diff": float(self.metric(x, "diff"))}
            for m in METRICS:
                for i, gname in enumerate(SOURCE_GROUPS):
                    r[f"{m}_{gname}"] = float(src[m][i]) if src is not None else np.nan
            rows.append(r)

        row("embed", "embed", -1, -1, self.embed)
        for l in range(L):
            for h in range(H):
                row(f"L{l}H{h}", "head", l, h, self.heads[l, h], {m: g[m][l, h] for m in METRICS})
            if np.any(self.attn_bias[l]):
                row(f"L{l} attn bias", "attn_bias", l, -1, self.attn_bias[l])
            row(f"L{l} MLP", "mlp", l, -1, self.mlps[l])
        row("final norm bias", "norm_bias", L, -1, self.norm_bias)
        row("unembed bias", "unembed_bias", L, -1, self.unembed_bias)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ figures
    def figure(self, metric: str = "logit", title: str | None = None):
        """Stacked bars per layer: attention (heads + bias) and MLP DLA; embedding and biases at the ends."""
        import plotly.graph_objects as go

        m = lambda x: self.metric(x, metric)  # noqa: E731
        L = self.n_layers
        x = ["embed"] + [str(l) for l in range(L)] + ["biases"]
        attn = [0.0] + (m(self.heads).sum(1) + m(self.attn_bias)).tolist() + [0.0]
        mlp = [0.0] + m(self.mlps).tolist() + [0.0]
        other = [float(m(self.embed))] + [0.0] * L + [float(m(self.norm_bias) + m(self.unembed_bias))]
        top = {l: [] for l in range(L)}
        for (l, h) in self.top_heads(3 * L, metric):
            if len(top[l]) < 3:
                top[l].append(f"H{h} {m(self.heads[l, h]):+.2f}")
        hover = [""] + ["<br>".join(top[l]) for l in range(L)] + [""]
        fig = go.Figure([
            go.Bar(x=x, y=other, name="embed / biases", marker_color="#7f7f7f"),
            go.Bar(x=x, y=attn, name="attention", marker_color="#4c78a8", customdata=hover,
                   hovertemplate="layer %{x}<br>attention %{y:+.3f}<br>%{customdata}<extra></extra>"),
            go.Bar(x=x, y=mlp, name="MLP", marker_color="#f58518",
                   hovertemplate="layer %{x}<br>MLP %{y:+.3f}<extra></extra>"),
        ])
        what = f"logit of {self.target_strs[0]!r}" if metric == "logit" else \
            f"{self.target_strs[0]!r} − mean of {len(self.targets) - 1} alternative(s)"
        total = float(self.metric(self.total, metric))
        fig.update_layout(barmode="relative", template="plotly_white", width=900, height=420,
                          title=title or f"DLA of the {what} (sum {total:.2f}); {self.model_name}",
                          xaxis_title="layer", yaxis_title="direct logit attribution", legend=dict(x=0.01, y=0.99))
        return fig

    def source_figure(self, metric: str = "logit", title: str | None = None):
        """Four layer × head heatmaps: head DLA from subject, relation, last and other tokens."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        g = self.source_groups(metric)
        lim = float(np.abs(g).max()) or 1.0
        titles = [f"from {s} tokens" if s != "last" else "from the last token" for s in SOURCE_GROUPS]
        n = len(SOURCE_GROUPS)
        fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.04)
        for i, s in enumerate(SOURCE_GROUPS):
            fig.add_trace(go.Heatmap(z=g[:, :, i], colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                     showscale=i == n - 1, hovertemplate=f"L%{{y}}H%{{x}}<br>{s}: %{{z:+.3f}}<extra></extra>"),
                          1, i + 1)
            fig.update_xaxes(title="head", row=1, col=i + 1)
        fig.update_yaxes(title="layer", autorange="reversed", row=1, col=1)
        for c in range(2, n + 1):
            fig.update_yaxes(autorange="reversed", row=1, col=c)
        subj = "".join(self.str_tokens[p] for p in self.subject_positions[:8])
        fig.update_layout(template="plotly_white", width=1200, height=max(380, 120 + 14 * self.n_layers),
                          title=title or f"Head DLA ({metric}) by source token; subject {subj.strip()!r}")
        return fig

    def token_figure(self, n_heads: int = 12, metric: str = "logit", title: str | None = None):
        """Top heads × source tokens heatmap of per-source DLA."""
        import plotly.graph_objects as go

        from workbench.figures import token_label

        top = self.top_heads(n_heads, metric)
        s = self.sources[self._mi(metric)]
        z = np.stack([s[l, h] for l, h in top])
        lim = float(np.abs(z).max()) or 1.0
        mark = {p: "S" for p in self.subject_positions} | {p: "R" for p in self.relation_positions} | \
            {self.last_position: "E"}
        labels = [f"{i}{mark.get(i, '')} {token_label(t)}" for i, t in enumerate(self.str_tokens)]
        fig = go.Figure(go.Heatmap(z=z, x=labels, y=[f"L{l}H{h}" for l, h in top], colorscale="RdBu", zmid=0,
                                   zmin=-lim, zmax=lim, hovertemplate="%{y} ← %{x}<br>%{z:+.3f}<extra></extra>"))
        fig.update_layout(template="plotly_white", width=1000, height=160 + 22 * len(top),
                          title=title or f"Per-source DLA ({metric}) of the top heads (S subject, R relation, E last)")
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(tickangle=-60)
        return fig

    def __repr__(self) -> str:
        gt = self.group_totals()
        what = "pre-cap logit" if self.softcap else "logit"
        flag = "" if self.check_passed else " FAILED the sum-to-logit check"
        return (f"DLAResult({self.fact_id or self.prompt[-40:]!r} → {self.target_strs[0]!r}: {what} "
                f"{self.logits[0]:.3f} = embed {gt['embed']:.2f} + attention {gt['attention']:.2f} + MLP "
                f"{gt['mlp']:.2f} + biases {gt['biases']:.2f}; |error| {self.error:.1e} "
                f"(tolerance {self.tolerance:.1e}){flag})")

    def _repr_html_(self) -> str:
        df = self.to_frame()
        top = df.reindex(df["logit"].abs().sort_values(ascending=False).index).head(10)
        cols = ["component", "logit", "diff"] + [f"logit_{g}" for g in SOURCE_GROUPS]
        return (f"<pre>{html.escape(repr(self))}</pre>"
                + top[cols].to_html(index=False, float_format=lambda v: f"{v:+.3f}", na_rep=""))


ON_ERROR = ("raise", "warn")


def check_sum_to_logit(result: DLAResult, on_error: str = "raise") -> DLAResult:
    """Check that the components of ``result`` sum to its (pre-cap) logits within ``result.tolerance``.

    Raises ``workbench.DecompositionError`` (``on_error="raise"``) or warns and marks
    ``result.check_passed = False`` (``"warn"``); returns the result when it passes or only warns."""
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    err, tol = result.error, result.tolerance
    result.check_passed = bool(np.isfinite(err) and err <= tol)
    if result.check_passed:
        return result
    msg = (f"DLA of {result.fact_id or result.prompt[-40:]!r} on {result.model_name}: the components sum to "
           f"{result.total[0]:.6g} but the {'pre-cap ' if result.softcap else ''}logit is {result.logits[0]:.6g} "
           f"(max error {err:.2e} > tolerance {tol:.2e} = rtol {result.rtol:g} × max(1, Σ|components| "
           f"{result.magnitude:.3g})). Something the decomposition does not model changed the residual (a hook or "
           "intervention that adds to it, or an architecture trait not handled); do not use these numbers.")
    if on_error == "raise":
        raise DecompositionError(msg)
    warnings.warn("workbench: " + msg, stacklevel=3)
    return result


# ---------------------------------------------------------------------- pure algebra
def head_outputs(pattern_row: torch.Tensor, v: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Per-head outputs at one query: (H, T) attention row, (T, G, e) values, (H, e, d) W_O -> (H, d).

    head_h = Σ_s A[h, s] · v_s^{h // (H/G)} W_O^h (query head h reads KV head h // group_size).
    """
    h, g = w_o.shape[0], v.shape[1]
    if h % g:
        raise InputError(f"{h} query heads cannot share {g} KV heads evenly.")
    v_h = v.repeat_interleave(h // g, dim=1)  # (T, H, e): KV head h // group_size for query head h
    return torch.einsum("hs,she,hed->hd", pattern_row, v_h, w_o)


# ---------------------------------------------------------------------- model access
@dataclass
class _Unembed:
    gain: torch.Tensor        # (d,) final norm gain g (float64)
    bias: torch.Tensor | None  # (d,) final norm bias (LayerNorm) or None
    W_U: torch.Tensor         # (d, V)
    b_U: torch.Tensor | None  # (V,)
    centre: bool              # LayerNorm: centre the directions


def _unembed(model) -> _Unembed:
    W = model.weights()
    fn = W.final_norm
    gain = fn.gain if fn.gain is not None else torch.ones(model.info.d_model, device=W.W_U.device)
    return _Unembed(gain.double(), None if fn.b is None else fn.b.double(), W.W_U,
                    None if W.b_U is None else W.b_U.double(), fn.kind == "LN")


def _attn_bias(model, layer: int) -> torch.Tensor | None:
    bo = model.weights().layers[layer].b_O
    return None if bo is None else bo.double()


def _stacked_w_o(model) -> torch.Tensor:
    """(L, H, e, d) float32 W_O of every layer, from ``model.weights()`` (rebuilt whenever a weight changes)."""
    return model.weights().stacked("W_O").float()


def capture_names(model) -> list[str]:
    names = ["embed", "v", "pattern", "z", "mlp_out", "final_norm_scale"]
    if "hook_pos_embed" in model.hook_names():
        names.insert(1, "pos_embed")
    if model.info.post_norms:
        names += ["attn_post_norm_scale"]
    if model.info.logit_softcap:
        names += ["unembed_in"]  # pre-cap logits = unembed_in · W_U + b_U
    return names


def _single_token(model, t, what: str) -> int:
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if not 0 <= int(t) < model.info.d_vocab:
            raise InputError(f"{what} token id {t} is outside the vocabulary (0..{model.info.d_vocab - 1}).")
        return int(t)
    if isinstance(t, str):
        ids = model.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise InputError(f"{what} {t!r} is {len(ids)} tokens ({model.str_tokens(ids)}), not one. Pass a token id, "
                             "a single-token string (mind the leading space), or a FactPrompt (first-token rule).")
        return int(ids[0])
    raise InputError(f"{what} must be a token id or a single-token string, got {type(t).__name__}.")


def _resolve(model, item, answer, alternatives, subject_positions, relation_positions):
    """-> (prompt, answer id, alternative ids or None, subject pos, relation pos, fact id, relation)."""
    if hasattr(item, "prompt") and hasattr(item, "answer"):
        if answer is None:
            ans, alts = candidate_tokens(model, item)
        else:  # an explicit answer token; the candidates still give the alternatives when they can
            ans = _single_token(model, answer, "answer")
            try:
                alts = [a for a in candidate_tokens(model, item)[1] if a != ans] or None
            except InputError:
                alts = None
        if alternatives is not None:
            alts = [_single_token(model, a, "alternative") for a in alternatives]
        subj, rel = token_positions(model, item)
        subj = list(subject_positions) if subject_positions is not None else subj
        rel = list(relation_positions) if relation_positions is not None else rel
        return item.prompt, ans, alts, subj, rel, getattr(item, "id", None), getattr(item, "relation", None)
    if not isinstance(item, str) or not item:
        raise InputError("Pass a non-empty prompt string or a FactPrompt.")
    if answer is None:
        raise InputError("With a prompt string, pass answer= (a token id or a single-token string).")
    ans = _single_token(model, answer, "answer")
    alts = None if alternatives is None else [_single_token(model, a, "alternative") for a in alternatives]
    return item, ans, alts, list(subject_positions or []), list(relation_positions or []), None, None


def _check_positions(pos: list[int], n: int, what: str) -> list[int]:
    for p in pos:
        if not isinstance(p, (int, np.integer)) or not 0 <= int(p) < n:
            raise InputError(f"{what} position {p!r} is out of range for a prompt of {n} tokens.")
    return sorted({int(p) for p in pos})


def direct_logit_attribution(model, prompt, answer=None, alternatives: Sequence | None = None,
                             subject_positions: Sequence[int] | None = None,
                             relation_positions: Sequence[int] | None = None, on_error: str = "raise",
                             rtol: float = 1e-4) -> DLAResult:
    """Exact DLA of one prompt (a string or a FactPrompt) at its last position; see the module docstring.

    answer: token id or single-token string (FactPrompt: default its first-token answer).
    alternatives: token ids/strings for the "diff" metric (FactPrompt: default the other
    candidates; string prompt: default the model's top non-answer token).
    subject_positions / relation_positions: token positions of the source groups (FactPrompt:
    default ``token_positions``); the last position is always its own group "last" (dropped from
    these if listed); the rest is "other".
    on_error / rtol: the sum-to-logit check run on every result (module docstring): "raise" raises
    ``workbench.DecompositionError`` when the error exceeds ``rtol · max(1, Σ|components|)``, "warn"
    warns and returns the result marked ``check_passed=False``.
    """
    return direct_logit_attribution_many(model, [prompt], answer=answer, alternatives=alternatives,
                                         subject_positions=subject_positions,
                                         relation_positions=relation_positions, on_error=on_error, rtol=rtol)[0]


def _per_prompt(answer, n: int) -> list:
    """One answer for all ``n`` prompts, or a sequence with one per prompt -> a list of n answers."""
    if isinstance(answer, torch.Tensor) or isinstance(answer, np.ndarray):
        answer = answer.tolist()
    if answer is None or isinstance(answer, (str, int, np.integer)):
        return [answer] * n
    if isinstance(answer, (list, tuple)):
        if len(answer) != n:
            raise InputError(f"answer= has {len(answer)} entries for {n} prompt(s). Give one answer for every prompt "
                             f"(a token id or a single-token string) or a list with exactly one answer per prompt.")
        return list(answer)
    raise InputError(f"answer must be a token id, a single-token string, or a list of them (one per prompt); got "
                     f"{type(answer).__name__}.")


def direct_logit_attribution_many(model, prompts, batch_size: int = 16, answer=None, alternatives=None,
                                  subject_positions=None, relation_positions=None, on_error: str = "raise",
                                  rtol: float = 1e-4) -> list[DLAResult]:
    """DLA of several prompts / FactPrompts, ``batch_size`` per forward pass (right padding).

    answer: None (FactPrompts: their own answers), one answer for every prompt (token id or
    single-token string), or a list / tensor with one answer per prompt (InputError on a length
    mismatch). The other arguments apply to every prompt (see ``direct_logit_attribution``).
    """
    items = list(prompts)
    if not items:
        raise InputError("No prompts given to direct_logit_attribution.")
    answers = _per_prompt(answer, len(items))
    resolved = [_resolve(model, it, a, alternatives, subject_positions, relation_positions)
                for it, a in zip(items, answers)]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    if not isinstance(rtol, (int, float)) or not rtol > 0:
        raise InputError(f"rtol must be a positive number, got {rtol!r}.")
    out: list[DLAResult] = []
    for i in range(0, len(resolved), batch_size):
        out += _dla_batch(model, resolved[i:i + batch_size])
    for r in out:
        r.rtol = float(rtol)
        check_sum_to_logit(r, on_error)
    return out


def _dla_batch(model, resolved) -> list[DLAResult]:
    """One forward over a batch, then per prompt a handful of einsums over all layers at once.

    Products with the big weights (W_O: L × H × e × d) stay in the model's float32; everything
    projected onto the K target directions (and the sums) is float64.
    """
    texts = [r[0] for r in resolved]
    with torch.no_grad():
        run = model.run(texts, capture=capture_names(model), logits="last")
    un = _unembed(model)
    L, H = model.info.n_layers, model.info.n_heads
    w_o = _stacked_w_o(model)  # (L, H, e, d)
    biases = [_attn_bias(model, l) for l in range(L)]
    dev = w_o.device
    b_o = torch.stack([torch.zeros(model.info.d_model, dtype=torch.float64, device=dev) if x is None else x
                       for x in biases])
    has_pos = "hook_pos_embed" in run.captures
    stacked = {n: torch.stack([run[n, l] for l in range(L)], 1) for n in ("pattern", "v", "z", "mlp_out")}
    group = H // model.info.n_kv_heads
    cap = model.info.logit_softcap or None
    post_norms = None
    if model.info.post_norms:
        post_norms = [lw.ln1_post for lw in model.weights().layers]
        if any(pn is None for pn in post_norms):
            raise InputError(f"{model.info.name} has post norms on some layers only; DLA does not support that yet.")
    results = []
    for b, (text, ans, alts, subj, rel, fid, relation) in enumerate(resolved):
        t = run.lengths[b]
        end = t - 1
        logits_all = run.last_logits[b].double()
        if alts is None:  # the model's top non-answer token
            order = torch.argsort(logits_all, descending=True)
            alts = [int(order[0]) if int(order[0]) != ans else int(order[1])]
        targets = [ans] + [a for a in alts if a != ans]
        if len(targets) < 2:
            raise InputError("The alternatives must contain at least one token other than the answer.")
        subj = [p for p in _check_positions(subj, t, "subject") if p != end]
        rel = [p for p in _check_positions(rel, t, "relation") if p not in set(subj) and p != end]
        tgt = torch.tensor(targets, device=un.W_U.device)
        scale = float(run["final_norm_scale"][b, end, 0].double())
        w = un.gain[:, None] * un.W_U[:, tgt].double()  # (d, K)
        if un.centre:
            w = w - w.mean(0, keepdim=True)
        w = w / scale
        # what a head adds reaches the residual through the layer's post-attention norm (Gemma):
        # with its scale frozen, read each head through that norm's direction w_l (L, d, K)
        w_attn, post_scales, post_bias = w.expand(L, *w.shape), None, torch.zeros(L, len(targets), device=dev,
                                                                                    dtype=torch.float64)
        if post_norms is not None:
            s_post = run.stack("attn_post_norm_scale")[:, b, end, 0].double()  # (L,)
            w_attn = torch.stack([pn.read_direction(w, s_post[l]) for l, pn in enumerate(post_norms)])
            post_bias = torch.stack([pn.b.double() @ w if pn.b is not None else post_bias[l]
                                     for l, pn in enumerate(post_norms)])
            post_scales = s_post.cpu().numpy()
        # metric directions for the per-source split: answer, answer − mean(alternatives)
        wm = torch.stack([w_attn[..., 0], w_attn[..., 0] - w_attn[..., 1:].mean(-1)], -1)  # (L, d, 2)
        emb = run["embed"][b, end].double()
        if has_pos:
            emb = emb + run["pos_embed"][b, end].double()
        rows = stacked["pattern"][b, :, :, end, :t].float()  # (L, H, T) attention of END
        v_h = stacked["v"][b, :, :t].float().repeat_interleave(group, dim=2)  # (L, T, H, e): KV head h // group
        z = stacked["z"][b, :, end].float()  # (L, H, e)
        member = torch.zeros(4, t, device=dev)  # (4, T) one-hot source groups: subject, relation, last, other
        member[0, subj] = 1
        member[1, rel] = 1
        member[2, end] = 1
        member[3] = 1 - member[0] - member[1] - member[2]
        heads = torch.einsum("lhd,ldk->lhk", torch.einsum("lhe,lhed->lhd", z, w_o).double(), w_attn)  # (L, H, K)
        zg = torch.einsum("lhs,gs,lshe->lhge", rows, member, v_h)  # (L, H, 4, e) grouped before W_O
        groups = torch.einsum("lhgd,ldk->lhgk", torch.einsum("lhge,lhed->lhgd", zg, w_o).double(), w_attn)
        ov = torch.einsum("lhed,ldm->lhem", w_o, wm.float()).double()  # (L, H, e, 2): W_O projected first
        sources = rows.double()[..., None] * torch.einsum("lshe,lhem->lhsm", v_h.double(), ov)  # (L, H, T, 2)
        mlps = stacked["mlp_out"][b, :, end].double() @ w  # (L, K); already after any post-MLP norm
        attn_bias = torch.einsum("ld,ldk->lk", b_o, w_attn) + post_bias  # (L, K)
        wu = un.W_U[:, tgt].double()
        norm_bias = (un.bias @ wu).cpu().numpy() if un.bias is not None else np.zeros(len(targets))
        unembed_bias = un.b_U[tgt].cpu().numpy() if un.b_U is not None else np.zeros(len(targets))
        logits = logits_all[tgt]
        capped = None
        if cap:  # decompose the pre-cap logit: the model's own final normalized residual times W_U (+ b_U)
            capped = logits.cpu().numpy()
            logits = run["unembed_in"][b, end].double() @ wu
            if un.b_U is not None:
                logits = logits + un.b_U[tgt]
        np_ = lambda x: x.cpu().numpy()  # noqa: E731
        results.append(DLAResult(
            model_name=model.info.name, prompt=text, str_tokens=list(run.str_tokens[b]), targets=targets,
            target_strs=model.str_tokens(targets), logits=np_(logits), embed=np_(emb @ w),
            heads=np_(heads), groups=np_(groups), attn_bias=np_(attn_bias), mlps=np_(mlps), norm_bias=norm_bias,
            unembed_bias=unembed_bias, sources=np_(sources.permute(3, 0, 1, 2)), attn_rows=np_(rows.double()),
            subject_positions=subj, relation_positions=rel, scale=scale, fact_id=fid, relation=relation,
            capped_logits=capped, softcap=cap,
            attn_post_norm_scales=post_scales))
    return results
