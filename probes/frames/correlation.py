"""Frame correlation (docs/frames.md, section 4) and concept-versus-word correlations.

    ⟨F1, F2⟩ = tr(F1ᵀ F2) / √(r1 · r2)

F1, F2 (..., d, k) broadcast against each other; r is the number of non-zero columns of each frame
(a cheap rank proxy: padded slots are exact zero columns, so padding changes neither the trace
nor r). An orthonormal frame correlates exactly 1 with itself. Token vectors are not normalised,
so correlations between concept and word frames are not bounded by 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError


def nonzero_columns(f: torch.Tensor) -> torch.Tensor:
    """(..., d, k) -> (...,) number of columns that are not all zero."""
    return (f != 0).any(dim=-2).sum(-1)


def frame_correlation(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """(..., d, k) × (..., d, k) -> (...) tr(F1ᵀF2)/√(r1 r2); 0 where either frame is all zero."""
    if f1.ndim < 2 or f2.ndim < 2 or f1.shape[-2:] != f2.shape[-2:]:
        raise InputError(f"Frames must share (d, k): got {tuple(f1.shape)} and {tuple(f2.shape)}.")
    dt = torch.promote_types(f1.dtype, f2.dtype)
    f1, f2 = f1.to(dt), f2.to(dt)
    tr = (f1 * f2).sum((-2, -1))
    r = (nonzero_columns(f1) * nonzero_columns(f2)).to(tr.dtype)
    return torch.where(r > 0, tr / r.clamp_min(1).sqrt(), torch.zeros_like(tr))


def correlation_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, d, k) × (m, d, k) -> (n, m) correlations, as one matrix product."""
    if a.shape[-2:] != b.shape[-2:]:
        raise InputError(f"Frames must share (d, k): got {tuple(a.shape)} and {tuple(b.shape)}.")
    tr = a.flatten(1).float() @ b.flatten(1).float().T
    r = nonzero_columns(a).float()[:, None] * nonzero_columns(b).float()[None, :]
    return torch.where(r > 0, tr / r.clamp_min(1).sqrt(), torch.zeros_like(tr))


@dataclass
class ConceptWordCorrelation(Result):
    """Each concept's correlation with its own lemmas' word frames versus other concepts' words.

    concepts: n synset names; own: (n,) mean correlation with its own word frames; other: (n,) mean
    correlation with the word frames of the other sampled concepts.
    """

    model_name: str
    concepts: list[str]
    own: np.ndarray
    other: np.ndarray
    k: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"synset": self.concepts, "own_words": self.own, "other_words": self.other,
                             "margin": self.own - self.other})

    @property
    def share_own_higher(self) -> float:
        return float((self.own > self.other).mean())

    def figure(self):
        """Distribution of correlations: concept vs its own words, and vs other concepts' words."""
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_histogram(x=self.own, name=f"own words (mean {self.own.mean():.2f})", opacity=0.7, nbinsx=40)
        fig.add_histogram(x=self.other, name=f"other concepts' words (mean {self.other.mean():.2f})", opacity=0.7,
                          nbinsx=40)
        fig.update_layout(barmode="overlay", template="plotly_white", width=750, height=420,
                          title=(f"Concept vs word frame correlation, {len(self.concepts)} synsets, k = {self.k} "
                                 f"({self.model_name}): own > other for {100 * self.share_own_higher:.0f}%"),
                          xaxis_title="⟨concept frame, word frame⟩ (unnormalised token vectors)",
                          yaxis_title="synsets")
        return fig

    def __repr__(self) -> str:
        return (f"ConceptWordCorrelation({self.model_name}: {len(self.concepts)} synsets, k={self.k}; mean corr. "
                f"with own words {self.own.mean():.2f} vs other concepts' words {self.other.mean():.2f}; "
                f"own > other for {100 * self.share_own_higher:.1f}%)")

    def html_table(self):
        return None


def concept_word_correlation(model, bank, n_concepts: int = 200, seed: int = 0, space=None) -> ConceptWordCorrelation:
    """Sample ``n_concepts`` synsets of a ``ConceptBank``; correlate each concept frame with the word
    frames of its own lemmas (all fitting variations) and with those of the other sampled synsets."""
    from .token_space import token_space
    from .word_frames import VARIATIONS, frames_from_ids, tokenize_words

    if not isinstance(n_concepts, int) or n_concepts < 2:
        raise InputError(f"n_concepts must be an integer >= 2, got {n_concepts!r}.")
    space = space or token_space(model)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(bank), size=min(n_concepts, len(bank)), replace=False))
    names = [bank.names[i] for i in pick]
    texts, owner = [], []
    for j, i in enumerate(pick):
        for w in bank.lemmas[i]:
            for v in VARIATIONS:
                texts.append(v.replace("{w}", w))
                owner.append(j)
    ids = tokenize_words(model.tokenizer, texts)
    keep = [i for i, t in enumerate(ids) if 0 < len(t) <= bank.k]
    words, _ = frames_from_ids(space.vectors, [ids[i] for i in keep], bank.k)  # (W, d, k)
    own_of = torch.tensor([owner[i] for i in keep])
    corr = correlation_matrix(bank.frames[torch.as_tensor(pick)], words)  # (n, W)
    mask = own_of[None, :] == torch.arange(len(pick))[:, None]
    own = (corr * mask).sum(1) / mask.sum(1).clamp_min(1)
    other = (corr * ~mask).sum(1) / (~mask).sum(1).clamp_min(1)
    return ConceptWordCorrelation(model.info.name, names, own.numpy(), other.numpy(), bank.k)


__all__ = ["frame_correlation", "correlation_matrix", "nonzero_columns", "ConceptWordCorrelation",
           "concept_word_correlation"]
