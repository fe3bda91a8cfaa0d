"""Words as frames of token vectors (docs/frames.md, section 2), and rank statistics over WordNet.

A word w is tokenised without special tokens (so no BOS is ever added; that is the reference's
"drop a leading BOS") into t ≤ k tokens, and its frame is

    W = [g(t_1), …, g(t_t), 0, …, 0] ∈ ℝ^{d×k}        (right-padded with zero columns)

with g from the whitened ``TokenSpace``. Words with more than k tokens are refused (InputError)
by ``word_frame`` and dropped by the batch builders. The reference tokenises every WordNet lemma
("_" → space) in four variations, VARIATIONS below, and keeps each that fits in k tokens.

``rank_statistics`` measures, over all multi-token WordNet lemmas, how many frames are full rank
(t linearly independent token vectors); the paper reports over 99%, and SmolLM2 gives about 99%.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError

from .token_space import TokenSpace, token_space

DEFAULT_K = 3  # the paper's max_token_count
VARIATIONS = (" {w}", "{w} ", " {w} ", "{w}")


def _check_k(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"The frame width k must be a positive integer (tokens per word), got {k!r}.")
    return k


def tokenize_words(tokenizer, words: list[str]) -> list[list[int]]:
    """Token ids of each word, no special tokens (batched; duplicates tokenised once).

    Uses the Rust backend of a fast tokenizer directly when there is one: for ~300k short words
    the Python-side conversion of ``tokenizer(...)`` costs more than the tokenisation itself.
    """
    if not words:
        return []
    uniq = list(dict.fromkeys(words))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ids = [e.ids for e in backend.encode_batch(uniq, add_special_tokens=False)]
    else:
        ids = tokenizer(uniq, add_special_tokens=False)["input_ids"]
    table = dict(zip(uniq, ids))
    return [table[w] for w in words]


def frames_from_ids(vectors: torch.Tensor, ids: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, d) token vectors and n id lists of length ≤ k -> (frames (n, d, k), n_tokens (n,)).

    Slots past a word's length are zero columns.
    """
    n, d = len(ids), vectors.shape[1]
    lens = torch.tensor([len(t) for t in ids], dtype=torch.long)
    idx = torch.zeros((n, k), dtype=torch.long)
    for i, t in enumerate(ids):
        idx[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    mask = torch.arange(k)[None, :] < lens[:, None]  # (n, k)
    f = vectors[idx] * mask[..., None].to(vectors.dtype)  # (n, k, d)
    return f.transpose(1, 2).contiguous(), lens if n else torch.zeros((n, d, k))


@dataclass
class WordFrame(Result):
    """One word's frame: tokens (t,), frame (d, k) with k - t zero columns, rank of the t vectors."""

    word: str
    token_ids: list[int]
    str_tokens: list[str]
    frame: torch.Tensor
    rank: int

    @property
    def k(self) -> int:
        return int(self.frame.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def full_rank(self) -> bool:
        return self.rank == self.n_tokens

    def gram(self) -> torch.Tensor:
        """(t, t) cosine similarities between the word's token vectors."""
        f = self.frame[:, : self.n_tokens]
        f = f / f.norm(dim=0, keepdim=True).clamp_min(1e-12)
        return f.T @ f

    def to_frame(self) -> pd.DataFrame:
        f = self.frame[:, : self.n_tokens]
        return pd.DataFrame({"slot": range(self.n_tokens), "token_id": self.token_ids, "token": self.str_tokens,
                             "norm": f.norm(dim=0).tolist()})

    def figure(self):
        """Cosine similarity between the word's token vectors (off-diagonal near ±1 = near rank loss)."""
        import plotly.graph_objects as go

        labels = [f"{i}:{s!r}" for i, s in enumerate(self.str_tokens)]
        fig = go.Figure(go.Heatmap(z=self.gram().numpy(), x=labels, y=labels, zmin=-1, zmax=1, colorscale="RdBu",
                                   zmid=0, colorbar=dict(title="cos")))
        fig.update_layout(title=f"Frame of {self.word!r}: {self.n_tokens} tokens, rank {self.rank}",
                          template="plotly_white", width=500, height=420)
        fig.update_yaxes(autorange="reversed")
        return fig

    def __repr__(self) -> str:
        return (f"WordFrame({self.word!r}: tokens {self.str_tokens}, k={self.k}, rank {self.rank}"
                f"{' (full)' if self.full_rank else ' (deficient)'})")

    def html_table(self):
        return None


def word_frame(model, word: str, k: int = DEFAULT_K, space: TokenSpace | None = None) -> WordFrame:
    """The frame (d, k) of one word (used verbatim: add spaces yourself for a variation)."""
    k = _check_k(k)
    if not isinstance(word, str) or not word.strip():
        raise InputError(f"A non-empty word is needed to build a frame, got {word!r}.")
    space = space or token_space(model)
    ids = tokenize_words(model.tokenizer, [word])[0]
    if len(ids) > k:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise InputError(f"{word!r} tokenizes to {len(ids)} tokens {pieces}, more than the frame width k={k}. "
                         f"Pass k={len(ids)} (or larger), or pick a shorter word.")
    frames, _ = frames_from_ids(space.vectors, [ids], k)
    f = frames[0]
    rank = int(torch.linalg.matrix_rank(f[:, : len(ids)])) if ids else 0
    return WordFrame(word, list(ids), [model.tokenizer.decode([i]) for i in ids], f, rank)


def frame_ranks(vectors: torch.Tensor, ids: list[list[int]], chunk: int = 4096) -> torch.Tensor:
    """Rank of each word's token vectors (n,), via batched singular values (torch's default tolerance)."""
    out = torch.zeros(len(ids), dtype=torch.long)
    if not ids:
        return out
    k = max(len(t) for t in ids)
    for s in range(0, len(ids), chunk):
        f, lens = frames_from_ids(vectors, ids[s: s + chunk], k)
        out[s: s + chunk] = torch.linalg.matrix_rank(f)  # zero columns add no rank
    return out


def wordnet_lemmas(pos: str | None = None) -> list[str]:
    """Every distinct WordNet lemma name ("_" -> space), sorted; ``pos`` in n, v, a, r, s or None."""
    from .wordnet import get_wordnet

    wn = get_wordnet()
    if pos is not None and pos not in ("n", "v", "a", "r", "s"):
        raise InputError(f"pos must be one of 'n', 'v', 'a', 'r', 's' or None, got {pos!r}.")
    names = set(wn.all_lemma_names(pos=pos)) if pos else set(wn.all_lemma_names())
    return sorted(n.replace("_", " ") for n in names)


@dataclass
class RankStatistics(Result):
    """Ranks of word frames: n_tokens (n,) and rank (n,) per word; full rank means rank == n_tokens."""

    model_name: str
    words: list[str]
    n_tokens: np.ndarray
    ranks: np.ndarray
    min_tokens: int
    max_tokens: int
    variation: str

    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def full_rank_share(self) -> float:
        return float((self.ranks == self.n_tokens).mean()) if self.n_words else float("nan")

    def deficient(self) -> pd.DataFrame:
        """The words whose frames are not full rank (mostly repeated tokens, e.g. 'bye-bye')."""
        df = self.to_frame()
        return df[df["rank"] < df["n_tokens"]].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"word": self.words, "n_tokens": self.n_tokens, "rank": self.ranks,
                             "full_rank": self.ranks == self.n_tokens})

    def summary(self) -> pd.DataFrame:
        """Per token count: words, full-rank share."""
        df = self.to_frame()
        return df.groupby("n_tokens").agg(words=("word", "size"), full_rank_share=("full_rank", "mean")).reset_index()

    def figure(self):
        """Rank histogram: words per (token count, rank), full-rank bars highlighted."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for full, name, color in ((True, "full rank", "#2a7"), (False, "rank-deficient", "#d62728")):
            sel = (self.ranks == self.n_tokens) == full
            ts = np.arange(self.min_tokens, self.max_tokens + 1)
            counts = [int(((self.n_tokens == t) & sel).sum()) for t in ts]
            fig.add_bar(x=ts, y=counts, name=name, marker_color=color)
        fig.update_layout(barmode="stack", template="plotly_white", width=700, height=420,
                          title=(f"Word-frame ranks, {self.n_words:,} multi-token WordNet lemmas ({self.model_name}): "
                                 f"{100 * self.full_rank_share:.1f}% full rank"),
                          xaxis_title="tokens per word (frame width)", yaxis_title="words")
        fig.update_yaxes(type="log")
        return fig

    def __repr__(self) -> str:
        return (f"RankStatistics({self.model_name}: {self.n_words:,} words with {self.min_tokens}-{self.max_tokens} "
                f"tokens (variation {self.variation!r}), {100 * self.full_rank_share:.2f}% full rank, "
                f"{int((self.ranks < self.n_tokens).sum())} deficient)")

    def html_table(self):
        return None


def rank_statistics(model, words: list[str] | None = None, min_tokens: int = 2, max_tokens: int = 8,
                    variation: str = "{w}", space: TokenSpace | None = None) -> RankStatistics:
    """Rank of every word's frame, over words with ``min_tokens``..``max_tokens`` tokens.

    words: None for all WordNet lemmas. variation: how a word is written before tokenising
    (one of VARIATIONS or any format string with ``{w}``).
    """
    _check_k(max_tokens)
    if not isinstance(min_tokens, int) or not 1 <= min_tokens <= max_tokens:
        raise InputError(f"min_tokens must be an integer in 1..max_tokens={max_tokens}, got {min_tokens!r}.")
    if "{w}" not in variation:
        raise InputError(f"variation must contain '{{w}}', got {variation!r}.")
    if words is None:
        words = wordnet_lemmas()
    words = [w for w in words if isinstance(w, str) and w.strip()]
    if not words:
        raise InputError("No words given for the rank statistics.")
    space = space or token_space(model)
    ids = tokenize_words(model.tokenizer, [variation.replace("{w}", w) for w in words])
    keep = [i for i, t in enumerate(ids) if min_tokens <= len(t) <= max_tokens]
    kept_ids = [ids[i] for i in keep]
    ranks = frame_ranks(space.vectors, kept_ids).numpy()
    return RankStatistics(model.info.name, [words[i] for i in keep], np.array([len(t) for t in kept_ids]), ranks,
                          min_tokens, max_tokens, variation)


__all__ = ["WordFrame", "word_frame", "RankStatistics", "rank_statistics", "wordnet_lemmas", "frames_from_ids",
           "frame_ranks", "tokenize_words", "VARIATIONS", "DEFAULT_K"]
