"""Measure KV-cache policies: a sweep over policies × ratios that prefills once per sample, and
perplexity with a compressed prefix.

``sweep(model, samples, policies, ratios)``
    For every sample (a ``PasskeySample`` or ``TaskSample`` from ``workbench.tasks``) the prompt
    runs through the model **once**. During that one forward every layer's attention rows are fed
    to ``observe_attention`` of every policy instance that has it (one fresh instance per policy
    and ratio; each keeps only its own summary, so no full pattern is stored). Then, for each
    policy and ratio, a copy of the full cache (``KVCache.copy``) is compressed with
    ``policy.apply(cache, step 0)`` and the answer is decoded greedily from it, the policy applied
    after every decoding step exactly as ``model.generate(..., cache_policy=policy)`` does (the
    decoding steps' attention is observed for that policy only). As in ``generate``, the first
    answer token comes from the prefill's logits (the full context), so compression affects the
    answer from its second token on. The same decoding on an uncompressed copy gives the
    full-cache reference. Scores: ``workbench.tasks.score_text`` (exact match, or fraction of the
    values produced for multi-value tasks).

``perplexity(model, texts, policy, prefix=0.5, chunk=None)``
    Teacher-forced next-token perplexity of the *last* part of each text given a compressed
    prefix. The first ``P = max(1, floor(prefix * T))`` tokens run in one forward (prefill) and
    the policy compresses the cache (step 0); the remaining tokens are then fed against that cache
    in chunks of ``chunk`` tokens (default: all in one forward), the policy applied after each chunk
    (steps 1, 2, ...: an ``at="prefill"`` policy compresses only the prefix, ``at="decode"`` or
    ``"both"`` also compresses between chunks). Scored: the ``T - P`` targets ``x[P:]``, each
    predicted from all earlier tokens of its own chunk and the (compressed) cache; ``x[P]`` is
    predicted by the prefill's last logits, i.e. from the full prefix. Perplexity =
    exp(total NLL / total scored tokens) over all texts. With ``policy=None`` this equals the
    perplexity of one full forward over each text restricted to the same targets.

    Two readings of "a 25% budget" (see BENCHMARKS.md): *compressed prompt* (``at="prefill"``,
    ratio 0.75: the prefix keeps a quarter, the continuation is scored against it and itself), and
    *streaming* (``at="both"`` with a ``chunk``: after every chunk the cache is cut back to a quarter
    of the tokens seen so far, so each scored token sees at most ~25% + chunk entries). The prefix
    must be long for either to mean anything: 25% of a 49-token prefix is 12 entries.

``long_texts(model, n, n_tokens)``
    ``n`` windows of ``n_tokens`` tokens from ``pydoc_data.topics`` (the Python reference topics that
    ship with CPython, 465k characters, offline), spread evenly over the corpus: long enough
    texts for perplexity with a compressed cache (the bundled ``probes.domains`` texts are ~100 tokens).
"""
from __future__ import annotations

import dataclasses
import html
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.errors import InputError
from workbench.generation import _observe_attention, cached_forward
from workbench.kv_cache import CachePolicy, KVCache, StepContext
from workbench.tasks import PasskeySample, TaskSample, score_text

from .registry import get_policy

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.875)
FULL = "full cache"


class _Fanout:
    """Feeds one forward's attention to several policies."""

    def __init__(self, observers):
        self.observers = observers

    def observe_attention(self, layer, pattern):
        for o in self.observers:
            o(layer, pattern)


def _policy_label(p) -> str:
    return getattr(p, "registry_name", "") or getattr(p, "name", "") or type(p).__name__


def _instances(policies, ratios) -> list[tuple[str, float | None, object]]:
    """Fresh (label, ratio, policy) for every policy and ratio; a policy without a ratio runs once (ratio None)."""
    out = []
    for p in policies:
        if isinstance(p, str):
            out += [(p, r, get_policy(p, ratio=r)) for r in ratios]
        elif dataclasses.is_dataclass(p) and any(f.name == "ratio" for f in dataclasses.fields(p)):
            extra = {"budget": None} if any(f.name == "budget" for f in dataclasses.fields(p)) else {}
            out += [(_policy_label(p), r, dataclasses.replace(p, ratio=r, **extra)) for r in ratios]
        elif isinstance(p, CachePolicy):
            out.append((getattr(p, "name", "") or type(p).__name__, None, p))  # settings matter: full name
        else:
            raise InputError(f"sweep(): a policy must be a registered name or a cache policy object, got {p!r}.")
    return out


def _check_ratios(ratios) -> tuple[float, ...]:
    if isinstance(ratios, (int, float)):
        ratios = (ratios,)
    ratios = tuple(ratios)
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for r in ratios):
        raise InputError(f"sweep(): ratios must be numbers in [0, 1) (fractions of the cache removed), got {ratios!r}.")
    return ratios


def _decode(model, cache: KVCache, policy, first_logits: torch.Tensor, n_new: int) -> list[int]:
    """Greedy tokens from a prefilled cache, as ``generate`` does after its prefill (step 0 applied)."""
    eos = model.tokenizer.eos_token_id
    toks = [int(first_logits.argmax())]
    if n_new == 1 or toks[-1] == eos:
        return toks
    device = first_logits.device
    with model._session(()) as session:
        _observe_attention(model, session, policy)
        with session, torch.no_grad():
            for step in range(1, n_new):
                logits = cached_forward(model, cache, torch.tensor([[toks[-1]]], device=device))[0, -1]
                if policy is not None:
                    policy.apply(cache, StepContext(step, 1))
                toks.append(int(logits.argmax()))
                if toks[-1] == eos:
                    break
    return toks


@dataclass
class SweepResult:
    """Rows of a policy × ratio sweep (see the module docstring).

    rows: one dict per (sample, policy, ratio), plus one per sample for the full cache
    (policy "full cache", ratio 0.0). ``to_frame()`` columns: sample, kind, n_tokens, policy,
    ratio, score, correct, kept_fraction, logical_bytes, physical_bytes, answer, generated.
    """

    rows: list[dict] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @property
    def full_score(self) -> float:
        df = self.to_frame()
        return float(df[df.policy == FULL].score.mean())

    def summary(self) -> pd.DataFrame:
        """Mean score and kept fraction per policy and ratio (full cache first)."""
        df = self.to_frame()
        return (df.groupby(["policy", "ratio"], dropna=False, sort=False)
                .agg(score=("score", "mean"), kept_fraction=("kept_fraction", "mean"),
                     physical_MiB=("physical_bytes", lambda x: x.mean() / 2**20), n=("score", "size"))
                .reset_index())

    def figure(self) -> go.Figure:
        """Mean score vs ratio, one line per policy; the full-cache score as a dashed reference line."""
        s = self.summary()
        fig = go.Figure()
        for name, g in s[s.policy != FULL].groupby("policy", sort=False):
            x = g.ratio.where(g.ratio.notna(), 1 - g.kept_fraction)  # policies without a ratio: removed share
            fig.add_scatter(x=x, y=g.score, name=name, mode="lines+markers",
                            customdata=g.kept_fraction, hovertemplate="ratio %{x}<br>score %{y:.2f}"
                                                                      "<br>kept %{customdata:.2f}")
        fig.add_hline(y=self.full_score, line_dash="dash", annotation_text="full cache")
        n = self.to_frame()["sample"].nunique()
        fig.update_layout(title=f"Score vs compression ratio ({n} sample(s))", xaxis_title="ratio (fraction removed)",
                          yaxis_title="mean score", yaxis_range=[-0.05, 1.05], template="plotly_white")
        return fig

    def __repr__(self) -> str:
        df = self.to_frame()
        if df.empty:
            return "SweepResult(empty)"
        pol = [p for p in df.policy.unique() if p != FULL]
        return (f"SweepResult({df['sample'].nunique()} sample(s) × {len(pol)} policies × "
                f"{df[df.policy != FULL].ratio.nunique()} ratio(s); full-cache score {self.full_score:.3f}; "
                f"prefill {self.prefill_seconds:.1f}s, decode {self.decode_seconds:.1f}s)")

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(repr(self))}</b>" + self.summary().to_html(index=False, float_format="%.3f")


def sweep(model, samples: Sequence, policies: Sequence = ("streaming_llm", "snapkv"),
          ratios: Sequence[float] = DEFAULT_RATIOS, max_new_tokens: int | None = None) -> SweepResult:
    """Score every policy at every ratio on ``samples``, prefilling each sample once.

    policies: registered names (built with ``get_policy(name, ratio=r)``), policy dataclasses with
    a ``ratio`` field (copied with each ratio), or other cache policies (e.g. KIVI; run once, ratio
    None). max_new_tokens: tokens decoded per answer; default: the sample's answer length.
    """
    samples = list(samples) if not isinstance(samples, (PasskeySample, TaskSample)) else [samples]
    if not samples or not all(isinstance(s, (PasskeySample, TaskSample)) for s in samples):
        raise InputError("sweep() needs a non-empty list of PasskeySample/TaskSample (workbench.tasks).")
    if isinstance(policies, str) or not isinstance(policies, Sequence):
        policies = [policies]
    if not policies:
        raise InputError("sweep(): give at least one policy.")
    ratios = _check_ratios(ratios)
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool)
                                       or max_new_tokens < 1):
        raise InputError(f"sweep(): max_new_tokens must be a positive integer or None, got {max_new_tokens!r}.")
    _instances(policies, ratios)  # validate names and arguments before any forward pass
    result = SweepResult()
    for i, s in enumerate(samples):
        runs = _instances(policies, ratios)
        observers = [p.observe_attention for _, _, p in runs if getattr(p, "observe_attention", None)]
        ids, _ = model.tokenize(s.prompt)
        n_new = max_new_tokens or len(s.answer_token_ids)
        if ids.shape[1] + n_new > model.info.n_ctx:
            raise InputError(f"sweep(): sample {i} ({ids.shape[1]} tokens) + {n_new} new tokens exceeds the "
                             f"model's context of {model.info.n_ctx}.")
        t0 = time.perf_counter()
        full = KVCache.empty(model)
        with model._session(()) as session:
            _observe_attention(model, session, _Fanout(observers) if observers else None)
            with session, torch.no_grad():
                first = cached_forward(model, full, ids)[0, -1]
        result.prefill_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        base = {"sample": i, "kind": getattr(s, "kind", "passkey"), "n_tokens": int(ids.shape[1]),
                "answer": s.answer}
        for label, ratio, policy in [(FULL, 0.0, None)] + runs:
            cache = full.copy()
            if policy is not None:
                policy.apply(cache, StepContext(0, int(ids.shape[1])))
            st = cache.stats()
            text = model.to_string(_decode(model, cache, policy, first, n_new))
            score = score_text(s, text)
            result.rows.append({**base, "policy": label, "ratio": ratio, "score": score, "correct": score == 1.0,
                                "kept_fraction": st.compression, "logical_bytes": st.logical_bytes,
                                "physical_bytes": st.physical_bytes, "generated": text})
        result.decode_seconds += time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------- perplexity
def long_texts(model, n: int = 4, n_tokens: int = 2048, corpus: str | None = None) -> list[str]:
    """``n`` texts of about ``n_tokens`` tokens cut from ``pydoc_data.topics`` (see the module docstring),
    or from ``corpus`` when given (e.g. the bundled corpus joined: ``workbench.texts.load_corpus("heldout")``).

    The topics are joined in key order with blank lines, tokenized once, and cut into ``n`` windows
    starting at evenly spaced token offsets; each window is decoded back to text (re-tokenizing it
    gives ``n_tokens`` tokens up to a few at the edges).
    """
    for name, v in (("n", n), ("n_tokens", n_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"long_texts(): {name} must be a positive integer, got {v!r}.")
    if n_tokens > model.info.n_ctx:
        raise InputError(f"long_texts(): n_tokens={n_tokens} exceeds the model's context of {model.info.n_ctx}.")
    if corpus is None:
        from pydoc_data.topics import topics

        corpus = "\n\n".join(topics[k].strip() for k in sorted(topics))
    ids = model.tokenizer(corpus, add_special_tokens=False)["input_ids"]
    if n * n_tokens > len(ids):
        raise InputError(f"long_texts(): the corpus has {len(ids)} tokens, fewer than n * n_tokens.")
    step = (len(ids) - n_tokens) // max(n - 1, 1)
    return [model.tokenizer.decode(ids[i * step:i * step + n_tokens]) for i in range(n)]


@dataclass
class PerplexityResult:
    """Perplexity of the scored part of each text (see the module docstring for what is scored).

    per_text: one row per text (n_tokens, n_prefix, n_scored, nll, kept_fraction after the prefix
    was compressed, physical_bytes); perplexity = exp(sum nll / sum n_scored).
    """

    policy: str
    per_text: pd.DataFrame

    @property
    def nll(self) -> float:
        return float(self.per_text.nll.sum())

    @property
    def n_scored(self) -> int:
        return int(self.per_text.n_scored.sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.n_scored)

    def __float__(self) -> float:
        return self.perplexity

    def to_frame(self) -> pd.DataFrame:
        return self.per_text

    def __repr__(self) -> str:
        return (f"PerplexityResult({self.policy}: perplexity {self.perplexity:.3f} over {self.n_scored} scored tokens "
                f"of {len(self.per_text)} text(s), kept≈{self.per_text.kept_fraction.mean():.0%} of the prefix)")


def perplexity(model, texts: Sequence[str], policy=None, *, prefix: float = 0.5,
               chunk: int | None = None) -> PerplexityResult:
    """Teacher-forced perplexity of each text's tokens after a compressed prefix (module docstring).

    policy: None (full cache), a registered name (``get_policy(name, ratio=0.5)``) or a policy object.
    prefix: fraction of each text's tokens prefilled (then compressed) before scoring, in (0, 1).
    chunk: scored tokens per cached forward (None: all at once); the policy runs after each.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise InputError("perplexity() needs a non-empty list of non-empty strings.")
    if not isinstance(prefix, (int, float)) or isinstance(prefix, bool) or not 0 < prefix < 1:
        raise InputError(f"perplexity(): prefix must be a fraction in (0, 1), got {prefix!r}.")
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise InputError(f"perplexity(): chunk must be a positive integer or None, got {chunk!r}.")
    if isinstance(policy, str):
        policy = get_policy(policy, ratio=0.5)
    if policy is not None and not isinstance(policy, CachePolicy):
        raise InputError(f"perplexity(): policy must be None, a name or a cache policy, got {policy!r}.")
    rows = []
    for t in texts:
        ids, _ = model.tokenize(t)
        n = ids.shape[1]
        if n < 2:
            raise InputError(f"perplexity(): the text {t[:40]!r} has fewer than 2 tokens; nothing to score.")
        p = min(max(1, math.floor(prefix * n)), n - 1)
        cache = KVCache.empty(model)
        logits = []
        with model._session(()) as session:
            _observe_attention(model, session, policy)
            with session, torch.no_grad():
                logits.append(cached_forward(model, cache, ids[:, :p])[0, -1:])
                if policy is not None:
                    policy.apply(cache, StepContext(0, p))
                st = cache.stats()
                step, size = 1, chunk or (n - p)
                for a in range(p, n - 1, size):
                    inp = ids[:, a: min(a + size, n - 1)]  # the last token's logits predict nothing scored
                    logits.append(cached_forward(model, cache, inp)[0])
                    if policy is not None:
                        policy.apply(cache, StepContext(step, inp.shape[1]))
                    step += 1
        lp = torch.log_softmax(torch.cat(logits).double(), -1)  # (n - p, V) predicting ids[p:]
        target = ids[0, p:]
        nll = float(-lp[torch.arange(len(target)), target].sum())
        rows.append({"text": t[:40], "n_tokens": n, "n_prefix": p, "n_scored": n - p, "nll": nll,
                     "perplexity": math.exp(nll / (n - p)), "kept_fraction": st.compression,
                     "physical_bytes": st.physical_bytes})
    return PerplexityResult(getattr(policy, "name", FULL) if policy is not None else FULL, pd.DataFrame(rows))
