"""Concept scores along a text (docs/frames.md, section 5).

The last hidden states H (T, d), after the final norm (``final_resid``, HF ``hidden_states[-1]``),
are cut into sliding windows of k positions, zero-padded at the end,

    X_t = [h_t, h_{t+1}, …, h_{t+k-1}] ∈ ℝ^{d×k}        (T windows, (T, d, k))

and each window is correlated with a concept frame C: score_t = ⟨X_t, C⟩ (frame correlation,
whose rank proxy counts the window's non-zero columns). As in the reference code, hidden states
stay in raw model space while C lives in the whitened token space (no Σ^{1/2} on the hidden side);
scores are therefore comparable between concepts on one model, not across models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError

from .concepts import Concept, concept
from .correlation import frame_correlation


def windows(h: torch.Tensor, k: int) -> torch.Tensor:
    """(..., T, d) -> (..., T, d, k) sliding windows of k positions, zero-padded past the end."""
    t = h.shape[-2]
    pad = torch.zeros((*h.shape[:-2], k - 1, h.shape[-1]), dtype=h.dtype, device=h.device)
    hp = torch.cat([h, pad], dim=-2)  # (..., T + k - 1, d)
    return hp.unfold(-2, k, 1)[..., :t, :, :]  # unfold puts the window axis last: (..., T, d, k)


def resolve_concepts(model, concepts, k: int | None = None, space=None) -> list[Concept]:
    """A Concept, a synset name ('woman.n.01', or 'A - B'), or a list of them -> list of Concepts."""
    if isinstance(concepts, (Concept, str)):
        concepts = [concepts]
    if not isinstance(concepts, (list, tuple)) or not concepts:
        raise InputError("Give a concept: a Concept, a synset name like 'woman.n.01' (or 'woman.n.01 - man.n.01'), "
                         "or a list of them.")
    out = []
    for c in concepts:
        if isinstance(c, Concept):
            out.append(c)
        elif isinstance(c, str):
            out.append(concept(model, c, k=k or 3, space=space))
        else:
            raise InputError(f"Cannot use {type(c).__name__} as a concept; pass a Concept or a synset name.")
    ks = {c.k for c in out}
    if len(ks) > 1:
        raise InputError(f"Concepts of different widths k {sorted(ks)}; build them with the same k.")
    return out


def hidden_states(model, text) -> tuple[torch.Tensor, list[str]]:
    """(T, d) final-normalised hidden states of one text and its string tokens."""
    if isinstance(text, str) and not text.strip():
        raise InputError("The text is empty: type some words to score against the concept.")
    if isinstance(text, (list, tuple)):
        raise InputError("concept_scores takes one text at a time.")
    run = model.run(text, capture=["final_resid"], logits=None)
    return run["final_resid"][0].float(), run.str_tokens[0]


@dataclass
class ConceptScores(Result):
    """Per-token concept scores of one text: scores (n_concepts, T); score_t uses positions t..t+k-1."""

    model_name: str
    text: str
    str_tokens: list[str]
    concepts: list[str]
    scores: np.ndarray
    k: int

    def to_frame(self) -> pd.DataFrame:
        rows = [{"position": t, "token": tok, "concept": c, "score": float(self.scores[i, t])}
                for i, c in enumerate(self.concepts) for t, tok in enumerate(self.str_tokens)]
        return pd.DataFrame(rows)

    def totals(self) -> pd.Series:
        """Sum of scores over the text, per concept (what guided decoding maximises)."""
        return pd.Series(self.scores.sum(1), index=self.concepts, name="total score")

    def figure(self):
        """Per-token scores, one line per concept, tokens on the x axis."""
        import plotly.graph_objects as go

        x = list(range(len(self.str_tokens)))
        fig = go.Figure()
        for i, c in enumerate(self.concepts):
            fig.add_scatter(x=x, y=self.scores[i], mode="lines+markers", name=c, customdata=self.str_tokens,
                            hovertemplate="%{customdata!r}<br>pos %{x}<br>score %{y:.3f}<extra>" + c + "</extra>")
        fig.update_xaxes(tickmode="array", tickvals=x, ticktext=[repr(s)[1:-1] for s in self.str_tokens],
                         tickangle=-60, title="token (window starts here)")
        fig.update_layout(title=f"Concept scores along the text (k = {self.k}, {self.model_name})",
                          yaxis_title="⟨window of hidden states, concept frame⟩", template="plotly_white",
                          width=max(600, 28 * len(x) + 200), height=420)
        return fig

    def __repr__(self) -> str:
        tot = ", ".join(f"{c}: {v:.2f}" for c, v in self.totals().items())
        return f"ConceptScores({self.model_name}: {len(self.str_tokens)} tokens, k={self.k}; totals {tot})"

    def html_table(self):
        return None


def concept_scores(model, text: str, concepts, k: int | None = None, space=None) -> ConceptScores:
    """Score every window of ``text``'s last hidden states against each concept frame."""
    cs = resolve_concepts(model, concepts, k, space)
    h, toks = hidden_states(model, text)
    if h.shape[-1] != cs[0].frame.shape[0]:
        raise InputError(f"Concept frames have d={cs[0].frame.shape[0]}, the model d_model={h.shape[-1]}: "
                         "build the concepts on this model.")
    kk = cs[0].k
    w = windows(h, kk)  # (T, d, k)
    frames = torch.stack([c.frame for c in cs])  # (C, d, k)
    sc = frame_correlation(w[None], frames[:, None])  # (C, T)
    return ConceptScores(model.info.name, text, toks, [c.name for c in cs], sc.detach().numpy(), kk)


__all__ = ["windows", "resolve_concepts", "hidden_states", "ConceptScores", "concept_scores"]
