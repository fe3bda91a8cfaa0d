"""Measure KV-cache policies: a sweep over policies × ratios that prefills once per sample, and
perplexity with a compressed prefix.

``sweep(model, samples, policies, ratios)``
    For every sample (a ``PasskeySample`` or ``TaskSample`` from ``workbench.texts.tasks``) the prompt
    runs through the model **once**. During that one forward every layer's attention rows are fed
    to ``observe_attention`` of every policy instance that has it (one fresh instance per policy
    and ratio; each keeps only its own summary, so no full pattern is stored). Then, for each
    policy and ratio, a copy of the full cache (``KVCache.copy``) is compressed with
    ``policy.apply(cache, step 0)`` and the answer is decoded greedily from it, the policy applied
    after every decoding step exactly as ``model.generate(..., cache_policy=policy)`` does (the
    decoding steps' attention is observed for that policy only). As in ``generate``, the first
    answer token comes from the prefill's logits (the full context), so compression affects the
    answer from its second token on. The same decoding on an uncompressed copy gives the
    full-cache reference. Scores: ``workbench.texts.tasks.score_text`` (exact match, or fraction of the
    values produced for multi-value tasks).

    That is the *query-aware* setting (``query_aware=True``, the default): the question is part of
    what the policy sees when it compresses. With ``query_aware=False`` (the *query-agnostic*
    setting, how a deployed system compresses a context before any question arrives) each sample is
    split into context and question (``workbench.texts.tasks.split_ids``, the same tokens): the context
    alone is prefilled once (observers fed), every policy compresses a copy of that cache from the
    context alone (an attention-window policy's window is the end of the context), then the
    question is fed against the compressed cache and the answer decoded greedily
    (``workbench.questions.greedy_answer``): every answer token, the first included, comes from the
    compressed cache, and no policy runs while answering. ``query_aware="both"`` runs both; every
    row carries its ``setting``. Policy labels carry the settings that differ from the policy's
    defaults (``snapkv`` and ``snapkv(window=64, kernel=5)`` are two rows).

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

``workbench.texts.long_texts(model, n, n_tokens)`` (used for perplexity)
    ``n`` windows of ``n_tokens`` tokens from ``pydoc_data.topics`` (the Python reference topics that
    ship with CPython, 465k characters, offline), spread evenly over the corpus: long enough
    texts for perplexity with a compressed cache (the bundled ``workbench.texts.domains`` texts are ~100 tokens).
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
from workbench.generation import bind_policy
from workbench.kv_cache import CachePolicy, KVCache, StepContext
from workbench.progress import progress
from workbench.questions import greedy_answer
from workbench.result import Result
from workbench.session import AttentionFanout, query_observer_hooks
from workbench.texts.tasks import PasskeySample, TaskSample, score_text, split_ids

from .registry import get_policy

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.875)
FULL = "full cache"
AWARE, AGNOSTIC = "query-aware", "query-agnostic"
_EXCLUDED = ("ratio", "budget")  # the ratio is its own column; a budget is replaced by each ratio


def _changed_fields(p) -> list[str]:
    """``name=value`` for every init field of dataclass ``p`` that differs from the class default."""
    out = []
    for f in dataclasses.fields(p):
        if not f.init or f.name in _EXCLUDED:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(p, f.name)
        try:
            same = default is not dataclasses.MISSING and bool(value == default)
        except Exception:  # noqa: BLE001 (tensors and other objects without a plain ==)
            same = value is default
        if not same:
            out.append(f"{f.name}={value}")
    return out


def _policy_label(p) -> str:
    """The registered name plus every setting that differs from the defaults, e.g. ``snapkv(window=64, kernel=5)``."""
    name = getattr(p, "registry_name", "") or type(p).__name__
    changed = _changed_fields(p) if dataclasses.is_dataclass(p) else []
    return f"{name}({', '.join(changed)})" if changed else name


def _unique(labels: list[str]) -> list[str]:
    """Labels made unique: a repeated label gets " #2", " #3", ... (two identical settings stay two rows)."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def _instances(policies, ratios) -> list[tuple[str, float | None, object]]:
    """Fresh (label, ratio, policy) for every policy and ratio; a policy without a ratio runs once (ratio None).
    Labels carry the settings that differ from the policy's defaults, so two settings never share a row."""
    out, labels = [], []
    for p in policies:
        if isinstance(p, str):
            out.append([(r, get_policy(p, ratio=r)) for r in ratios])
            labels.append(p)
        elif dataclasses.is_dataclass(p) and any(f.name == "ratio" for f in dataclasses.fields(p)):
            extra = {"budget": None} if any(f.name == "budget" for f in dataclasses.fields(p)) else {}
            out.append([(r, dataclasses.replace(p, ratio=r, **extra)) for r in ratios])
            labels.append(_policy_label(p))
        elif isinstance(p, CachePolicy):
            out.append([(None, p)])
            labels.append(str(p.name))  # settings matter: full name
        else:
            raise InputError(f"sweep(): a policy must be a registered name or a cache policy object, got {p!r}.")
    return [(lab, r, pol) for lab, runs in zip(_unique(labels), out) for r, pol in runs]


def _check_ratios(ratios) -> tuple[float, ...]:
    if isinstance(ratios, (int, float)):
        ratios = (ratios,)
    ratios = tuple(ratios)
    if not ratios or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for r in ratios):
        raise InputError(f"sweep(): ratios must be numbers in [0, 1) (fractions of the cache removed), got {ratios!r}.")
    return ratios


def _check_settings(query_aware) -> tuple[str, ...]:
    if query_aware is True:
        return (AWARE,)
    if query_aware is False:
        return (AGNOSTIC,)
    if query_aware == "both":
        return (AWARE, AGNOSTIC)
    raise InputError(f"query_aware must be True (compress prompt and question together), False (compress the "
                     f"context, then ask) or 'both', got {query_aware!r}.")


def _observers(runs):
    """(attention fan-out or None, query fan-out or None) for every policy instance of ``runs``."""
    att = AttentionFanout([p.observe_attention for _, _, p in runs])
    qry = AttentionFanout([getattr(p, "observe_queries", None) for _, _, p in runs])
    return (att if att else None), (qry if qry else None)


def _prefill(model, ids: torch.Tensor, runs) -> tuple[KVCache, torch.Tensor]:
    """One forward of ``ids`` into an empty cache, feeding every policy's observers; (cache, last logits (V,))."""
    att, qry = _observers(runs)
    cache = KVCache.empty(model)
    with model.session(observe_attention=att, hooks=query_observer_hooks(model, qry)) as session:
        first = session.forward_cached(cache, ids)[0, -1]
    return cache, first


def _decode(model, cache: KVCache, policy, first_logits: torch.Tensor, n_new: int) -> list[int]:
    """Greedy tokens from a prefilled cache, as ``generate`` does after its prefill (step 0 applied)."""
    eos = model.tokenizer.eos_token_id
    toks = [int(first_logits.argmax())]
    if n_new == 1 or toks[-1] == eos:
        return toks
    device = first_logits.device
    observe = None if policy is None else policy.observe_attention
    queries = None if policy is None else getattr(policy, "observe_queries", None)
    with model.session(observe_attention=observe, hooks=query_observer_hooks(model, queries)) as session:
        for step in range(1, n_new):
            inp = torch.tensor([[toks[-1]]], device=device)
            logits = session.forward_cached(cache, inp)[0, -1]
            if policy is not None:
                policy.apply(cache, StepContext(step, 1, inp))
            toks.append(int(logits.argmax()))
            if toks[-1] == eos:
                break
    return toks


@dataclass(repr=False)
class SweepResult(Result):
    """Rows of a policy × ratio sweep (see the module docstring).

    rows: one dict per (sample, setting, policy, ratio), plus one per sample and setting for the full
    cache (policy "full cache", ratio 0.0). ``to_frame()`` columns: sample, kind, n_tokens, setting
    ("query-aware" or "query-agnostic"), policy, ratio, score, correct, kept_fraction, logical_bytes,
    physical_bytes, answer, generated, compress_seconds.
    """

    rows: list[dict] = field(default_factory=list)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    @property
    def settings(self) -> list[str]:
        df = self.to_frame()
        return list(df.setting.unique()) if len(df) else []

    @property
    def full_score(self) -> float:
        """Mean score of the full cache over every setting run (see ``full_scores`` for each)."""
        df = self.to_frame()
        return float(df[df.policy == FULL].score.mean())

    @property
    def full_scores(self) -> dict[str, float]:
        """{setting: mean score of the full cache}."""
        df = self.to_frame()
        df = df[df.policy == FULL]
        return {st: float(df[df.setting == st].score.mean()) for st in self.settings}

    def table(self) -> pd.DataFrame:
        """Mean score and kept fraction per setting, policy and ratio (full cache first)."""
        df = self.to_frame()
        return (df.groupby(["setting", "policy", "ratio"], dropna=False, sort=False)
                .agg(score=("score", "mean"), kept_fraction=("kept_fraction", "mean"),
                     physical_MiB=("physical_bytes", lambda x: x.mean() / 2**20), n=("score", "size"))
                .reset_index())

    def figure(self) -> go.Figure:
        """Mean score vs ratio, one line per policy (dashed: query-agnostic when both settings ran); the
        full-cache score as a reference line."""
        s = self.table()
        both = len(self.settings) > 1
        fig = go.Figure()
        for (setting, name), g in s[s.policy != FULL].groupby(["setting", "policy"], sort=False):
            x = g.ratio.where(g.ratio.notna(), 1 - g.kept_fraction)  # policies without a ratio: removed share
            fig.add_scatter(x=x, y=g.score, name=f"{name} ({setting})" if both else name, mode="lines+markers",
                            line={"dash": "dash" if setting == AGNOSTIC and both else "solid"},
                            customdata=g.kept_fraction, hovertemplate="ratio %{x}<br>score %{y:.2f}"
                                                                      "<br>kept %{customdata:.2f}")
        for setting, score in self.full_scores.items():
            fig.add_hline(y=score, line_dash="dot",
                          annotation_text=f"full cache ({setting})" if both else "full cache")
        n = self.to_frame()["sample"].nunique()
        fig.update_layout(title=f"Score vs compression ratio, {' and '.join(self.settings)} ({n} sample(s))",
                          xaxis_title="ratio (fraction removed)", yaxis_title="mean score", yaxis_range=[-0.05, 1.05],
                          template="plotly_white")
        return fig

    def summary(self) -> str:
        df = self.to_frame()
        if df.empty:
            return "SweepResult(empty)"
        pol = [p for p in df.policy.unique() if p != FULL]
        full = ", ".join(f"{st} {v:.3f}" for st, v in self.full_scores.items())
        return (f"SweepResult({df['sample'].nunique()} sample(s) × {len(pol)} policies × "
                f"{df[df.policy != FULL].ratio.nunique()} ratio(s); {' + '.join(self.settings)}; "
                f"full-cache score {full}; prefill {self.prefill_seconds:.1f}s, decode {self.decode_seconds:.1f}s)")

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(self.summary())}</b>" + self.table().to_html(index=False, float_format="%.3f")


def _check_samples(samples) -> list:
    samples = list(samples) if not isinstance(samples, (PasskeySample, TaskSample)) else [samples]
    if not samples or not all(isinstance(s, (PasskeySample, TaskSample)) for s in samples):
        raise InputError("sweep() needs a non-empty list of PasskeySample/TaskSample (workbench.texts.tasks).")
    return samples


def sweep(model, samples: Sequence, policies: Sequence = ("streaming_llm", "snapkv"),
          ratios: Sequence[float] = DEFAULT_RATIOS, max_new_tokens: int | None = None, *,
          query_aware: bool | str = True) -> SweepResult:
    """Score every policy at every ratio on ``samples``, prefilling each sample once per setting.

    policies: registered names (built with ``get_policy(name, ratio=r)``), policy dataclasses with
    a ``ratio`` field (copied with each ratio; labelled with the settings that differ from the
    defaults), or other cache policies (e.g. KIVI; run once, ratio None). max_new_tokens: tokens
    decoded per answer; default: the sample's answer length.

    query_aware: True (default) compresses prompt and question together, exactly as
    ``model.generate(prompt, cache_policy=...)``; False compresses the context alone and then asks
    the question against the compressed cache (``workbench.questions``: the question and every answer
    token are computed from the compressed cache, no policy runs while answering); "both" runs both
    and labels every row with its ``setting``.
    """
    samples = _check_samples(samples)
    if isinstance(policies, str) or not isinstance(policies, Sequence):
        policies = [policies]
    if not policies:
        raise InputError("sweep(): give at least one policy.")
    ratios = _check_ratios(ratios)
    settings = _check_settings(query_aware)
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool)
                                       or max_new_tokens < 1):
        raise InputError(f"sweep(): max_new_tokens must be a positive integer or None, got {max_new_tokens!r}.")
    _instances(policies, ratios)  # validate names and arguments before any forward pass
    for p in policies:  # bind the given objects first: a policy's name may depend on what binding loads
        if not isinstance(p, str):
            bind_policy(p, model)
    result = SweepResult()
    for i, s in enumerate(progress(samples, desc="KV sweep", unit="sample")):
        n_new = max_new_tokens or len(s.answer_token_ids)
        ids, _ = model.tokenize(s.prompt)
        if ids.shape[1] + n_new > model.info.n_ctx:
            raise InputError(f"sweep(): sample {i} ({ids.shape[1]} tokens) + {n_new} new tokens exceeds the "
                             f"model's context of {model.info.n_ctx}.")
        base = {"sample": i, "kind": getattr(s, "kind", "passkey"), "n_tokens": int(ids.shape[1]),
                "answer": s.answer}
        for setting in settings:
            runs = _instances(policies, ratios)
            for _, _, p in runs:
                bind_policy(p, model)
            if setting == AWARE:
                _sweep_aware(model, s, ids, runs, n_new, base, result)
            else:
                _sweep_agnostic(model, s, runs, n_new, base, result)
    return result


def _row(result, base, setting, label, ratio, sample, text, st, compress_s) -> None:
    score = score_text(sample, text)
    result.rows.append({**base, "setting": setting, "policy": label, "ratio": ratio, "score": score,
                        "correct": score == 1.0, "kept_fraction": st.compression, "logical_bytes": st.logical_bytes,
                        "physical_bytes": st.physical_bytes, "generated": text, "compress_seconds": compress_s})


def _sweep_aware(model, s, ids, runs, n_new, base, result) -> None:
    t0 = time.perf_counter()
    full, first = _prefill(model, ids, runs)
    result.prefill_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    for label, ratio, policy in [(FULL, 0.0, None)] + runs:
        cache = full.copy()
        t1 = time.perf_counter()
        if policy is not None:
            policy.apply(cache, StepContext(0, int(ids.shape[1]), ids))
        compress_s = time.perf_counter() - t1
        st = cache.stats()
        text = model.to_string(_decode(model, cache, policy, first, n_new))
        _row(result, base, AWARE, label, ratio, s, text, st, compress_s)
    result.decode_seconds += time.perf_counter() - t0


def _sweep_agnostic(model, s, runs, n_new, base, result) -> None:
    ctx_ids, q_ids = split_ids(model, s)
    t0 = time.perf_counter()
    full, _ = _prefill(model, ctx_ids, runs)
    result.prefill_seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    for label, ratio, policy in [(FULL, 0.0, None)] + runs:
        cache = full.copy()
        t1 = time.perf_counter()
        if policy is not None:
            with torch.no_grad():
                policy.apply(cache, StepContext(0, int(ctx_ids.shape[1]), ctx_ids))
        compress_s = time.perf_counter() - t1
        st = cache.stats()
        toks, _ = greedy_answer(model, cache, q_ids, n_new)
        _row(result, base, AGNOSTIC, label, ratio, s, model.to_string(toks), st, compress_s)
    result.decode_seconds += time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- perplexity
@dataclass(repr=False)
class PerplexityResult(Result):
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

    def figure(self) -> go.Figure:
        """Perplexity of each text's scored part."""
        df = self.per_text
        fig = go.Figure(go.Bar(x=list(range(len(df))), y=df.perplexity, hovertext=df.text))
        fig.update_layout(title=f"{self.policy}: perplexity per text (overall {self.perplexity:.3f})",
                          xaxis_title="text", yaxis_title="perplexity", template="plotly_white")
        return fig

    def summary(self) -> str:
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
    if policy is not None:
        bind_policy(policy, model)
    observe = None if policy is None else policy.observe_attention
    queries = None if policy is None else getattr(policy, "observe_queries", None)
    rows = []
    for t in progress(texts, desc="perplexity", unit="text"):
        ids, _ = model.tokenize(t)
        n = ids.shape[1]
        if n < 2:
            raise InputError(f"perplexity(): the text {t[:40]!r} has fewer than 2 tokens; nothing to score.")
        p = min(max(1, math.floor(prefix * n)), n - 1)
        cache = KVCache.empty(model)
        logits = []
        with model.session(observe_attention=observe, hooks=query_observer_hooks(model, queries)) as session:
            logits.append(session.forward_cached(cache, ids[:, :p])[0, -1:])
            if policy is not None:
                policy.apply(cache, StepContext(0, p, ids[:, :p]))
            st = cache.stats()
            step, size = 1, chunk or (n - p)
            for a in range(p, n - 1, size):
                inp = ids[:, a: min(a + size, n - 1)]  # the last token's logits predict nothing scored
                logits.append(session.forward_cached(cache, inp)[0])
                if policy is not None:
                    policy.apply(cache, StepContext(step, inp.shape[1], inp))
                step += 1
        lp = torch.log_softmax(torch.cat(logits).double(), -1)  # (n - p, V) predicting ids[p:]
        target = ids[0, p:]
        nll = float(-lp[torch.arange(len(target)), target].sum())
        rows.append({"text": t[:40], "n_tokens": n, "n_prefix": p, "n_scored": n - p, "nll": nll,
                     "perplexity": math.exp(nll / (n - p)), "kept_fraction": st.compression,
                     "physical_bytes": st.physical_bytes})
    return PerplexityResult(policy.name if policy is not None else FULL, pd.DataFrame(rows))
