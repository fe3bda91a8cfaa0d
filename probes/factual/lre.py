"""Linear relational embeddings (Hernandez et al., ICLR 2024, "Linearity of Relation Decoding").

For a relation r, the map from the subject's hidden state to the model's output state is approximated
by a first-order Taylor expansion averaged over a few training subjects:

    s_i = resid_post[ℓ] at the subject's last token,   o_i = resid_post[L-1] at the prompt's last token
    J_i = ∂o_i/∂s_i  (d × d, the rest of the forward pass held at the clean run),   b_i = o_i − J_i s_i
    W = mean_i J_i,   b = mean_i b_i,   LRE(s) = β · W s + b

β > 1 corrects the Jacobian's underestimate of the slope (β = 2.5 in the authors' GPT-J replication).
The bias is the per-sample mean of o_i − J_i s_i, as in the authors' code (not o − W s with the mean W).

**Faithfulness** on held-out subjects: the fraction whose LRE output, decoded through the final norm
and unembedding, has the same top-1 token as the model's own next-token prediction on the prompt.

Jacobians are computed with batched vector-Jacobian products: a batch of C copies of the prompt, each
with its own leaf copy of s, and one backward pass gives C rows of J (d / C passes per subject; about
9 forward+backward passes of a 64-prompt batch on SmolLM2). Prompts are used as given (the paper
builds few-shot prompts from the other samples; here the instruct prompt format is zero-shot).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from workbench.errors import InputError
from workbench.hook_names import hook_name
from workbench.intervention import Intervention
from workbench.kv_cache import KVCache

from .lenses import logits_from_resid, token_id

DEFAULT_BETAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0)


# ---------------------------------------------------------------------------------------------- core math
def batched_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Jacobian (d_out, d_in) of a batch-capable ``fn`` ((C, d_in) -> (C, d_out)) at the point s (d_in,).

    Row r of J is the gradient of output r; ``chunk`` rows come from one batched backward pass.
    """
    s = s.detach()
    with torch.no_grad():
        d_out = fn(s[None]).shape[-1]
    rows = []
    for start in range(0, d_out, chunk):
        idx = torch.arange(start, min(d_out, start + chunk))
        x = s[None].repeat(len(idx), 1).requires_grad_(True)
        with torch.enable_grad():
            y = fn(x)
            (g,) = torch.autograd.grad(y[torch.arange(len(idx)), idx].sum(), x)
        rows.append(g.detach())
    return torch.cat(rows)


def estimate_lre(fns: Sequence[Callable], subjects: torch.Tensor, chunk: int = 64):
    """W = mean J_i, b = mean (o_i − J_i s_i) over samples: fns[i] maps s_i (batched) to o_i.

    subjects: (n, d_in). Returns (W (d_out, d_in), b (d_out,), outputs (n, d_out)).
    """
    if len(fns) != len(subjects) or not len(fns):
        raise InputError(f"estimate_lre needs one function per subject vector and at least one sample, got "
                         f"{len(fns)} functions and {len(subjects)} vectors.")
    js, bs, os_ = [], [], []
    for fn, s in zip(fns, subjects):
        j = batched_jacobian(fn, s, chunk).double()
        with torch.no_grad():
            o = fn(s[None].detach())[0].double()
        js.append(j)
        bs.append(o - j @ s.double())
        os_.append(o)
    return torch.stack(js).mean(0).float(), torch.stack(bs).mean(0).float(), torch.stack(os_).float()


def lre_predict(w: torch.Tensor, b: torch.Tensor, s: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """(n, d_in) subject states -> (n, d_out) β W s + b."""
    return beta * (s.to(w.dtype) @ w.T) + b


# ---------------------------------------------------------------------------------------------- subjects
def subject_token_positions(model, prompt: str, subject: str, span: tuple[int, int] | None = None) -> list[int]:
    """Token positions of the subject inside ``prompt`` (tokens overlapping its character span).

    span: (start, end) characters; default the subject's last occurrence in the prompt.
    """
    if span is None:
        start = prompt.rfind(subject) if subject else -1
        if start < 0:
            raise InputError(f"Subject {subject!r} is not in the prompt {prompt!r}.")
        span = (start, start + len(subject))
    enc = model.tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    lo, hi = span
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < hi and b > lo]
    if not pos:
        raise InputError(f"No token of prompt {prompt!r} covers the subject span {span}.")
    return pos


@dataclass(frozen=True)
class RelationSample:
    """One subject of a relation: the prompt fed to the model, the subject string, the expected answer."""

    prompt: str
    subject: str
    answer: str | None = None
    relation: str = ""


def _as_samples(items, what: str) -> list[RelationSample]:
    out = []
    for i, it in enumerate(items or []):
        if isinstance(it, RelationSample):
            out.append(it)
        elif isinstance(it, (tuple, list)) and len(it) in (2, 3):
            out.append(RelationSample(it[0], it[1], it[2] if len(it) == 3 else None))
        elif hasattr(it, "prompt") and hasattr(it, "subject"):
            out.append(RelationSample(it.prompt, it.subject, getattr(it, "answer", None), getattr(it, "relation", "")))
        else:
            raise InputError(f"{what} item {i} must be (prompt, subject[, answer]) or have .prompt and .subject, "
                             f"got {it!r}.")
        if not isinstance(out[-1].prompt, str) or not out[-1].prompt:
            raise InputError(f"{what} item {i} has an empty prompt.")
    return out


# Built-in relations from the countryinfo package, in the SmolLM2-Instruct "User: … Assistant: …" format.
RELATION_TEMPLATES = {
    "capital": ("User: What is the capital city of {s}?\nAssistant: The capital city of {s} is", "capital"),
    "demonym": ("User: What do you call a person from {s}?\nAssistant: A person from {s} is called", "demonym"),
}


def country_pairs(attr: str, min_population: int = 5_000_000) -> list[tuple[str, str]]:
    """(country, attribute) pairs from the offline ``countryinfo`` package: countries above
    ``min_population`` by decreasing population (names with brackets or commas skipped, first letter
    upper-cased, each country once); ``attr`` is a countryinfo method ("capital", "demonym")."""
    from countryinfo import all_countries
    rows = []
    for c in all_countries():
        try:
            name, obj, pop = c.name(), getattr(c, attr)(), c.population() or 0
        except Exception:  # some entries lack a field
            continue
        if isinstance(obj, str) and obj.strip() and pop >= min_population and not any(ch in name for ch in "(),"):
            rows.append((pop, name[0].upper() + name[1:], obj.strip()))
    rows.sort(key=lambda r: (-r[0], r[1]))
    seen, out = set(), []
    for _, name, obj in rows:
        if name not in seen:
            seen.add(name)
            out.append((name, obj))
    return out


def country_relation(relation: str = "capital", n: int = 40, min_population: int = 5_000_000) -> list[RelationSample]:
    """Subject -> object samples for a country relation built offline from ``countryinfo``.

    relation: "capital" or "demonym". Countries above ``min_population`` by decreasing population
    (well-known subjects first; names with brackets or commas skipped); the answer gets a leading space
    (" Paris", " French"); the first n.
    """
    if relation not in RELATION_TEMPLATES:
        raise InputError(f"Unknown built-in relation {relation!r}; available: {', '.join(RELATION_TEMPLATES)}.")
    template, attr = RELATION_TEMPLATES[relation]
    return [RelationSample(template.format(s=name), name, " " + obj, relation)
            for name, obj in country_pairs(attr, min_population)[:n]]


# ---------------------------------------------------------------------------------------------- the model map
class _SubjectToOutput(Intervention):
    """Replace resid_post[ℓ] at one position with a batch of vectors; keep resid_post[L-1] at the last position."""

    def __init__(self, layer: int, position: int, last_layer: int, last_pos: int, s: torch.Tensor, store: dict):
        self.layer, self.position, self.last_layer, self.last_pos = layer, position, last_layer, last_pos
        self.s, self.store = s, store

    def hooks(self, model):
        def replace(x, _name):
            x = x.clone()
            x[:, self.position] = self.s.to(x.dtype)
            if self.layer == self.last_layer:
                self.store["o"] = x[:, self.last_pos]
            return x

        def grab(x, _name):
            self.store["o"] = x[:, self.last_pos]

        hooks = [(hook_name("resid_post", self.layer), replace)]
        if self.layer != self.last_layer:
            hooks.append((hook_name("resid_post", self.last_layer), grab))
        return hooks


def subject_map(model, prompt: str, subject_pos: int, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function s -> o of one prompt: (C, d) subject states at layer ℓ -> (C, d) final residual at the end.

    Tokens before the subject do not depend on s, so they run once (a KV-cache prefill); each call
    runs only the suffix from the subject's last token on, for C copies at once.
    """
    ids, lengths = model.tokenize(prompt)
    n = lengths[0]
    if not 0 <= subject_pos < n:
        raise InputError(f"Subject position {subject_pos} is outside the prompt's {n} tokens.")
    L = model.info.n_layers
    prefix, suffix = ids[:, :subject_pos], ids[:, subject_pos:n]
    cache = KVCache.empty(model)
    if subject_pos > 0:
        with model.session() as sess:
            sess.forward_cached(cache, prefix)

    def fn(s: torch.Tensor) -> torch.Tensor:
        c = len(s)
        kv = cache.copy()
        if subject_pos > 0:
            kv.expand(c)
        store: dict = {}
        iv = _SubjectToOutput(layer, 0, L - 1, n - 1 - subject_pos, s, store)
        with model.session([iv], grad=torch.is_grad_enabled()) as sess:
            sess.forward_cached(kv, suffix.expand(c, -1))
        return store["o"]

    return fn


# ---------------------------------------------------------------------------------------------- result
@dataclass
class LREResult:
    """A fitted LRE for one relation and its faithfulness on held-out subjects.

    W: (d, d); b: (d,); test_frame rows: subject, answer, model prediction, LRE prediction (at ``beta``).
    faithfulness_by_beta: β -> fraction of held-out subjects where LRE top-1 == model top-1.
    """

    model_name: str
    relation: str
    layer: int
    beta: float
    W: torch.Tensor = field(repr=False)
    b: torch.Tensor = field(repr=False)
    train_subjects: list[str]
    test_frame: pd.DataFrame = field(repr=False)
    faithfulness_by_beta: dict[float, float]
    seconds: float = 0.0

    @property
    def faithfulness(self) -> float:
        return float(self.test_frame["faithful"].mean()) if len(self.test_frame) else float("nan")

    @property
    def model_accuracy(self) -> float:
        """Fraction of held-out prompts where the model's top-1 is the answer's first token (NaN without answers)."""
        col = self.test_frame["model_correct"].dropna()
        return float(col.mean()) if len(col) else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return self.test_frame.copy()

    def figure(self, title: str | None = None):
        """Faithfulness on held-out subjects against β (the chosen β marked)."""
        import plotly.graph_objects as go
        betas = sorted(self.faithfulness_by_beta)
        fig = go.Figure(go.Scatter(x=betas, y=[self.faithfulness_by_beta[b] for b in betas], mode="lines+markers",
                                   name="faithfulness", hovertemplate="β %{x}<br>faithfulness %{y:.2f}<extra></extra>"))
        fig.add_vline(x=self.beta, line=dict(dash="dot", color="gray"))
        fig.update_layout(title=title or (f"LRE faithfulness, relation {self.relation!r}, layer {self.layer} "
                                          f"({len(self.train_subjects)} training subjects, {len(self.test_frame)} "
                                          f"held out; {self.model_name})"),
                          xaxis_title="β", yaxis_title="faithfulness (LRE top-1 = model top-1)", yaxis_range=[0, 1.02],
                          template="plotly_white", width=760, height=400)
        return fig

    def __repr__(self) -> str:
        best = max(self.faithfulness_by_beta, key=self.faithfulness_by_beta.get) if self.faithfulness_by_beta else None
        return (f"LREResult({self.model_name}, relation {self.relation!r}, layer {self.layer}, β={self.beta:g}: "
                f"faithfulness {self.faithfulness:.2f} on {len(self.test_frame)} held-out subjects "
                f"(best {self.faithfulness_by_beta.get(best, float('nan')):.2f} at β={best}); "
                f"model accuracy {self.model_accuracy:.2f}; {len(self.train_subjects)} training subjects, "
                f"{self.seconds:.0f} s)")

    def _repr_html_(self) -> str:
        fb = pd.Series(self.faithfulness_by_beta, name="faithfulness").rename_axis("β").to_frame().T.round(2)
        return (f"<pre>{html.escape(repr(self))}</pre>" + fb.to_html() +
                self.test_frame.to_html(index=False))


def _subject_states(model, samples: list[RelationSample], layer: int):
    """(n, d) subject last-token states at ``layer`` and (n,) model top-1 ids at each prompt's end."""
    from .lre_causality import subject_states  # imports this module
    states = subject_states(model, samples, layer)
    return torch.stack([st.h for st in states]), [st.top1 for st in states]


def fit_lre(model, train, test, layer: int, beta: float = 2.5, betas: Sequence[float] = DEFAULT_BETAS,
            relation: str | None = None, chunk: int = 64) -> LREResult:
    """Fit an LRE on ``train`` subjects at subject layer ``layer`` and measure faithfulness on ``test``.

    train/test: RelationSample, (prompt, subject[, answer]) tuples or FactPrompt-like objects.
    Cost: len(train) × d_model / chunk batched forward+backward passes.
    """
    import time
    t0 = time.perf_counter()
    layer = model.check_layer(layer)
    tr, te = _as_samples(train, "train"), _as_samples(test, "test")
    if len(tr) < 1:
        raise InputError("fit_lre needs at least one training subject (5-8 per relation are typical).")
    if len(te) < 1:
        raise InputError("fit_lre needs at least one held-out test subject to measure faithfulness.")
    overlap = {s.subject for s in tr} & {s.subject for s in te}
    if overlap:
        raise InputError(f"Subjects {sorted(overlap)[:5]} are in both train and test; hold them out.")
    if not isinstance(chunk, int) or chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk!r}.")
    s_train, _ = _subject_states(model, tr, layer)
    fns = [subject_map(model, smp.prompt, subject_token_positions(model, smp.prompt, smp.subject)[-1], layer)
           for smp in tr]
    with model.frozen_parameters():
        w, b, _ = estimate_lre(fns, s_train, chunk)
    s_test, preds = _subject_states(model, te, layer)
    by_beta = {}
    with torch.no_grad():
        for bb in sorted(set(float(x) for x in betas) | {float(beta)}):
            lre_top = logits_from_resid(model, lre_predict(w, b, s_test, bb)).argmax(-1).tolist()
            by_beta[bb] = float(np.mean([p == q for p, q in zip(lre_top, preds)]))
        lre_top = logits_from_resid(model, lre_predict(w, b, s_test, beta)).argmax(-1).tolist()
    rows = []
    for smp, p, q in zip(te, preds, lre_top):
        ans = token_id(model, smp.answer) if smp.answer else None
        rows.append({"subject": smp.subject, "answer": smp.answer, "model_top1": model.to_string([p]),
                     "lre_top1": model.to_string([q]), "faithful": p == q,
                     "model_correct": (p == ans) if ans is not None else None})
    name = relation or (tr[0].relation or "relation")
    return LREResult(model.info.name, name, layer, float(beta), w, b, [s.subject for s in tr], pd.DataFrame(rows),
                     by_beta, time.perf_counter() - t0)
