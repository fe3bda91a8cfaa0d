"""Concept frames: one orthonormal frame per WordNet synset (docs/frames.md, section 3).

For a synset, every lemma ("_" → space) is written in each of the four VARIATIONS; the rows that
fit in k tokens give word frames (n_rows, d, k). Their **sum** M (d, k) is replaced by the closest
orthonormal frame, the orthogonal Procrustes solution / polar factor

    SVD(M) = U S Vᵀ,   C = U Vᵀ            (d, k), Cᵀ C = I_k when M has rank k.

The sum and the mean give the same C (Procrustes is scale-invariant). A combined concept A − B is
Procrustes(C_A − C_B) (e.g. woman.n.01 − man.n.01 for guidance).

``min_lemmas`` counts the *distinct lemmas* of a synset that fit in k tokens (the reference counts
lemma × variation rows, which is about 4× larger; ``min_rows`` filters on that count instead).

``concept_bank`` builds all frames at once: per-synset sums are chunked ``index_add_`` of the token
vectors per slot, then one batched SVD. All ~20k WordNet synsets
with ≥ 3 lemmas take seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.result import Result
from workbench.errors import InputError
from workbench.progress import progress

from .token_space import TokenSpace, token_space
from .word_frames import DEFAULT_K, VARIATIONS, _check_k, tokenize_words


def procrustes(m: torch.Tensor) -> torch.Tensor:
    """(..., d, k) -> (..., d, k) closest orthonormal frame U Vᵀ (polar factor of the thin SVD)."""
    if m.ndim < 2:
        raise InputError(f"procrustes needs (..., d, k) frames, got shape {tuple(m.shape)}.")
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


@dataclass
class Concept(Result):
    """An orthonormal concept frame (d, k) with where it came from."""

    name: str
    frame: torch.Tensor
    lemmas: list[str] = field(default_factory=list)
    n_rows: int = 0
    lexname: str = ""
    definition: str = ""

    @property
    def k(self) -> int:
        return int(self.frame.shape[1])

    def __neg__(self) -> "Concept":
        return Concept(f"−({self.name})", -self.frame, self.lemmas, self.n_rows, self.lexname, self.definition)

    def __sub__(self, other: "Concept") -> "Concept":
        return combine(self, other)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"lemma": self.lemmas})

    def figure(self):
        """Gram matrix Cᵀ C (identity for an orthonormal frame)."""
        import plotly.graph_objects as go

        g = (self.frame.T @ self.frame).numpy()
        fig = go.Figure(go.Heatmap(z=g, colorscale="RdBu", zmid=0, zmin=-1, zmax=1))
        fig.update_layout(title=f"CᵀC of {self.name}", template="plotly_white", width=420, height=380)
        return fig

    def __repr__(self) -> str:
        lem = ", ".join(self.lemmas[:6]) + (" …" if len(self.lemmas) > 6 else "")
        return f"Concept({self.name}: k={self.k}, {self.n_rows} word rows; lemmas {lem})"

    def html_table(self):
        return pd.DataFrame([{"definition": self.definition}]) if self.definition else None


def combine(a: Concept, b: Concept) -> Concept:
    """The combined concept A − B: Procrustes(C_A − C_B)."""
    if a.frame.shape != b.frame.shape:
        raise InputError(f"Cannot combine {a.name} {tuple(a.frame.shape)} with {b.name} {tuple(b.frame.shape)}: "
                         "build both with the same k on the same model.")
    return Concept(f"{a.name} − {b.name}", procrustes(a.frame - b.frame), a.lemmas + [f"−{x}" for x in b.lemmas],
                   a.n_rows + b.n_rows, a.lexname)


def _synset_rows(synset, tokenizer, k: int) -> tuple[list[str], list[list[int]]]:
    """(lemmas that fit, id lists of every fitting lemma × variation row)."""
    lemmas = [l.replace("_", " ") for l in synset.lemma_names()]
    texts = [v.replace("{w}", w) for w in lemmas for v in VARIATIONS]
    ids = tokenize_words(tokenizer, texts)
    rows, fit = [], []
    for i, t in enumerate(ids):
        if 0 < len(t) <= k:
            rows.append(t)
            w = lemmas[i // len(VARIATIONS)]
            if w not in fit:
                fit.append(w)
    return fit, rows


def concept(model, synset: str, k: int = DEFAULT_K, space: TokenSpace | None = None) -> Concept:
    """The concept frame of one synset, e.g. ``concept(model, "woman.n.01")``; ``"A - B"`` combines two."""
    k = _check_k(k)
    if isinstance(synset, str) and " - " in synset:
        a, b = (s.strip() for s in synset.split(" - ", 1))
        return combine(concept(model, a, k, space), concept(model, b, k, space))
    from .wordnet import lookup_synset

    s = lookup_synset(synset)
    space = space or token_space(model)
    fit, rows = _synset_rows(s, model.tokenizer, k)
    if not rows:
        raise InputError(f"No lemma of {s.name()} ({', '.join(s.lemma_names())}) fits in k={k} tokens; raise k.")
    idx = torch.zeros((len(rows), k), dtype=torch.long)
    mask = torch.zeros((len(rows), k), dtype=torch.bool)
    for i, t in enumerate(rows):
        idx[i, : len(t)] = torch.tensor(t)
        mask[i, : len(t)] = True
    m = (space.vectors[idx] * mask[..., None]).sum(0).T  # (d, k)
    return Concept(s.name(), procrustes(m.double()).float(), fit, len(rows), s.lexname(), s.definition())


@dataclass
class ConceptBank(Result):
    """Concept frames of many synsets.

    names: n synset names; frames: (n, d, k) float32 orthonormal; n_lemmas / n_rows: (n,) counts;
    lemmas: the fitting lemmas of each; lexnames: WordNet lexicographer file of each.
    """

    model_name: str
    names: list[str]
    frames: torch.Tensor
    lemmas: list[list[str]]
    n_rows: np.ndarray
    lexnames: list[str]
    k: int
    min_lemmas: int
    seconds: float = 0.0
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Concept:
        if isinstance(name, str) and " - " in name:
            a, b = (s.strip() for s in name.split(" - ", 1))
            return combine(self[a], self[b])
        if name not in self._index:
            from .wordnet import lookup_synset

            s = lookup_synset(name)  # raises InputError for a synset WordNet does not know
            raise InputError(f"{s.name()} is a WordNet synset but not in this bank (built with min_lemmas="
                             f"{self.min_lemmas}, k={self.k}); use concept(model, {s.name()!r}, k={self.k}) instead.")
        i = self._index[name]
        return Concept(name, self.frames[i], self.lemmas[i], int(self.n_rows[i]), self.lexnames[i])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"synset": self.names, "lexname": self.lexnames, "n_lemmas": [len(x) for x in self.lemmas],
                             "n_rows": self.n_rows, "lemmas": [", ".join(x) for x in self.lemmas]})

    def figure(self):
        """Synsets per lexicographer category."""
        import plotly.express as px

        counts = pd.Series(self.lexnames).value_counts().sort_values()
        fig = px.bar(x=counts.values, y=counts.index, orientation="h",
                     labels={"x": "synsets", "y": "WordNet category"},
                     title=f"{len(self):,} concept frames (≥ {self.min_lemmas} lemmas, k = {self.k}, {self.model_name})")
        fig.update_layout(template="plotly_white", width=700, height=max(400, 16 * len(counts)))
        return fig

    def __repr__(self) -> str:
        return (f"ConceptBank({self.model_name}: {len(self):,} synsets with ≥ {self.min_lemmas} lemmas fitting "
                f"k={self.k} tokens; built in {self.seconds:.1f} s)")

    def html_table(self):
        return None


def concept_bank(model, min_lemmas: int = 3, k: int = DEFAULT_K, pos: str | None = None,
                 synsets: list[str] | None = None, min_rows: int = 1, space: TokenSpace | None = None,
                 max_synsets: int | None = None) -> ConceptBank:
    """Concept frames of every WordNet synset with ≥ ``min_lemmas`` lemmas fitting in k tokens.

    pos: restrict to 'n', 'v', 'a', 'r' (None: all). synsets: explicit names instead of all.
    max_synsets: keep only the first N qualifying synsets (in WordNet order), for quick demos.
    """
    import time

    from .wordnet import lookup_synset, synset_table

    t0 = time.perf_counter()
    k = _check_k(k)
    if not isinstance(min_lemmas, int) or min_lemmas < 1:
        raise InputError(f"min_lemmas must be a positive integer, got {min_lemmas!r}.")
    space = space or token_space(model)
    if synsets is not None:
        cands = [(s.name(), s.lemma_names(), s.lexname()) for s in (lookup_synset(x) for x in synsets)]
    else:
        cands = [(r.name, r.lemmas, r.lexname) for r in synset_table(pos) if len(r.lemmas) >= min_lemmas]
    # Tokenizer calls over many synsets at once (every lemma × variation row); with max_synsets
    # the chunks stop as soon as enough synsets qualify.
    names, lemmas, lexn, rows_of = [], [], [], []
    nv = len(VARIATIONS)
    chunk = 1 << 12 if max_synsets is None else max(64, 2 * max_synsets)
    bar = progress(total=len(cands), desc="concept bank", unit="synset")
    for start in range(0, len(cands), chunk):
        part = cands[start: start + chunk]
        bar.update(len(part))
        lem = [[l.replace("_", " ") for l in c[1]] for c in part]
        ids = tokenize_words(model.tokenizer, [v.replace("{w}", w) for ls in lem for w in ls for v in VARIATIONS])
        pos_i = 0
        for (name, _, lexname), ls in zip(part, lem):
            mine = ids[pos_i: pos_i + len(ls) * nv]
            pos_i += len(ls) * nv
            rows = [t for t in mine if 0 < len(t) <= k]
            fit = [w for j, w in enumerate(ls) if any(0 < len(t) <= k for t in mine[j * nv: (j + 1) * nv])]
            if len(fit) >= min_lemmas and len(rows) >= min_rows:
                names.append(name)
                lemmas.append(fit)
                lexn.append(lexname)
                rows_of.append(rows)
                if max_synsets is not None and len(names) >= max_synsets:
                    break
        if max_synsets is not None and len(names) >= max_synsets:
            break
    bar.close()
    if not names:
        raise InputError(f"No synset has ≥ {min_lemmas} lemmas fitting in k={k} tokens; lower min_lemmas or raise k.")
    n_syn = len(names)
    sums = torch.zeros((n_syn, k, space.d_model), dtype=torch.float32)
    for slot in range(k):
        r, c = [], []
        for i, rows in enumerate(rows_of):
            for t in rows:
                if len(t) > slot:
                    r.append(i)
                    c.append(t[slot])
        if not r:
            continue
        r_t, c_t = torch.tensor(r), torch.tensor(c)
        acc = sums[:, slot]
        for s in range(0, len(r), 65536):  # chunks bound the gathered (rows, d) temporary
            acc.index_add_(0, r_t[s: s + 65536], space.vectors[c_t[s: s + 65536]])
    frames = procrustes(sums.transpose(1, 2).double()).float().contiguous()  # (n, d, k)
    return ConceptBank(model.info.name, names, frames, lemmas, np.array([len(r) for r in rows_of]), lexn, k,
                       min_lemmas, time.perf_counter() - t0)


__all__ = ["procrustes", "Concept", "combine", "concept", "ConceptBank", "concept_bank"]
