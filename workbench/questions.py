"""Compress once, ask many: prefill a context, compress its cache, then ask questions against it.

This is how a chatbot or a RAG system uses a compressed KV cache: the context is compressed when it
arrives, before anyone knows the question (the *query-agnostic* setting), and several questions are
answered from the same compressed cache. ``Model.generate(prompt, cache_policy=...)`` is the other
setting (*query-aware*): prompt and question are compressed together, so a policy that scores from
the last tokens' attention sees the question while choosing what to keep.

    ctx = compress_context(model, context, cache_policy=policy)   # prefill + compress, once
    a = ctx.ask(" What is the pass key? The pass key is", max_new_tokens=6)
    b = ctx.ask(" Where is the key hidden?")                       # the same compressed context
    ctx.to_frame()                                                  # every question asked so far

What happens, exactly:

1. ``compress_context`` tokenizes the context (with the tokenizer's special tokens), runs it once
   against an empty ``KVCache`` (feeding the policy's attention or query observers, if it has
   them), then calls ``policy.apply(cache, step 0)``. The policy sees the context only: a policy
   that scores from the last queries' attention (SnapKV's observation window) uses the last
   context tokens as its window.
2. ``ask(question)`` feeds the question's tokens (no special tokens) against the compressed cache,
   then decodes greedily, one token at a time, until ``max_new_tokens`` or end of sequence. Every
   answer token, the first included, is predicted from the compressed cache. No policy runs while
   asking (the context was compressed once; the question and answer stay uncompressed).
3. The question and answer are then removed, so the next question sees exactly the same
   compressed context. ``reuse="copy"`` (default) answers on ``KVCache.copy()`` of the compressed
   cache and drops the copy: it works for every layer type (dense, ragged, quantized,
   sparse-coded) and costs one copy of the compressed cache per question (time: one memory copy;
   memory: the compressed cache twice, plus the question and answer entries, while answering).
   ``reuse="truncate"`` appends to the context's own cache and afterwards keeps only the entries
   at positions below the context's end (``KVCache.keep``/``keep_heads``, a gather into fresh
   tensors that frees the question and answer); it needs full-precision layers (dense or ragged),
   because packed layers re-encode their full-precision tail when tokens arrive. Both give the
   same answers (tested); the peak memory is about the same (the gather at the end is a copy too),
   and ``Answer.extra_bytes`` reports what each held beyond the compressed context.

Positions: the question starts at the context's original length (``cache.next_position``), not at
the number of entries kept: kept keys keep the rotation of their real position, and the question
sits where it would have sat in the uncompressed text (kvpress does the same). With
``rerotate=True`` the kept entries are renumbered to contiguous positions and their keys re-rotated
(``workbench.rope.rerotate``), so the question follows the kept entries directly, as if the evicted
tokens had never been in the text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import torch

from .errors import InputError
from .generation import bind_policy
from .kv_cache import CacheStats, KVCache, RaggedLayer, StepContext, check_policy
from .result import Result
from .session import query_observer_hooks

REUSE = ("copy", "truncate")


@dataclass(repr=False)
class Answer(Result):
    """One question asked against a compressed context.

    question_tokens: (n_q,) ids fed after the context; new_tokens: (n,) greedy answer ids;
    logits: (n, vocab) the logits each answer token was chosen from; seconds: wall time of the
    question forward plus the decoding (and, with reuse="copy", the copy); extra_bytes: physical
    bytes held beyond the compressed context at the end of the answer (the copy plus the question
    and answer entries for "copy"; the question and answer entries for "truncate").
    """

    question: str
    text: str
    question_tokens: torch.Tensor
    new_tokens: torch.Tensor
    logits: torch.Tensor
    seconds: float
    extra_bytes: int
    reuse: str
    start_position: int

    def to_frame(self) -> pd.DataFrame:
        lp = torch.log_softmax(self.logits.float(), -1)
        return pd.DataFrame([{"step": i, "token_id": t, "logprob": float(lp[i, t])}
                             for i, t in enumerate(self.new_tokens.tolist())])

    def figure(self) -> go.Figure:
        df = self.to_frame()
        fig = go.Figure(go.Bar(x=df.step, y=df.logprob, hovertext=df.token_id))
        fig.update_layout(title=f"log-prob of each answer token: {self.text!r}", xaxis_title="answer token",
                          yaxis_title="log-prob", template="plotly_white")
        return fig

    def summary(self) -> str:
        return f"Answer({self.question!r} -> {self.text!r}, {self.seconds:.2f}s, reuse={self.reuse})"


@dataclass(repr=False)
class CompressedContext(Result):
    """A context prefilled once and compressed by a policy, ready for questions (module docstring).

    cache: the compressed ``KVCache`` (never changed by ``ask``); context_tokens: (T,) ids;
    full_stats / stats: the cache before and after compression; prefill_seconds: the context's
    forward; compress_seconds: ``policy.apply`` (including any forward passes the policy runs to
    score, e.g. KVzip's reconstruction); answers: every ``Answer`` so far.
    """

    model: object
    context: str
    context_tokens: torch.Tensor
    cache: KVCache
    policy: str
    full_stats: CacheStats
    stats: CacheStats
    prefill_seconds: float
    compress_seconds: float
    rerotated: bool = False
    interventions: tuple = ()
    answers: list = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return int(self.context_tokens.numel())

    def ask(self, question: str | torch.Tensor, max_new_tokens: int = 32, *, reuse: str = "copy",
            stop_at_eos: bool = True, interventions=None) -> Answer:
        """Answer ``question`` (text, or (n_q,) / (1, n_q) token ids) greedily from the compressed cache;
        the cache is left as it was (module docstring). interventions: default those of the context."""
        if reuse not in REUSE:
            raise InputError(f"ask(): reuse must be one of {REUSE}, got {reuse!r}.")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise InputError(f"ask(): max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        m = self.model
        q_ids = self._question_ids(question)
        end = self.cache.next_position
        if end + q_ids.shape[1] + max_new_tokens > m.info.n_ctx:
            raise InputError(f"ask(): the context ({end} positions) + question ({q_ids.shape[1]} tokens) + "
                             f"max_new_tokens ({max_new_tokens}) exceeds the model's context of {m.info.n_ctx}.")
        if reuse == "truncate":
            _check_truncatable(self.cache)
        ivs = self.interventions if interventions is None else interventions
        base_bytes = self.stats.physical_bytes
        t0 = time.perf_counter()
        cache = self.cache.copy() if reuse == "copy" else self.cache
        toks, step_logits = greedy_answer(m, cache, q_ids, max_new_tokens, stop_at_eos=stop_at_eos, interventions=ivs)
        held = cache.stats().physical_bytes
        extra = held if reuse == "copy" else held - base_bytes
        if reuse == "truncate":
            _truncate(cache, end)
        seconds = time.perf_counter() - t0
        text = m.to_string(toks)
        q_text = question if isinstance(question, str) else m.to_string(q_ids[0].tolist())
        ans = Answer(q_text, text, q_ids[0].cpu(), torch.tensor(toks, dtype=torch.long), torch.stack(step_logits),
                     seconds, int(extra), reuse, end)
        self.answers.append(ans)
        return ans

    def ask_many(self, questions, max_new_tokens: int = 32, **kwargs) -> list[Answer]:
        """``ask`` each question in turn; every one sees the same compressed context."""
        if isinstance(questions, str):
            questions = [questions]
        return [self.ask(q, max_new_tokens, **kwargs) for q in questions]

    def _question_ids(self, question) -> torch.Tensor:
        m = self.model
        if isinstance(question, torch.Tensor):
            ids, _ = m.tokenize(question)
            if ids.shape[0] != 1:
                raise InputError("ask(): give one question at a time (token ids (n,) or (1, n)).")
            return ids
        if not isinstance(question, str) or not question:
            raise InputError(f"ask(): the question must be a non-empty string or token ids, got {question!r}.")
        ids = m.tokenizer(question, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"ask(): the question {question!r} has no tokens.")
        return torch.tensor([ids], device=self.context_tokens.device)

    # ------------------------------------------------------------------ Result
    def to_frame(self) -> pd.DataFrame:
        """One row per question asked so far."""
        return pd.DataFrame([{"question": a.question, "answer": a.text, "question_tokens": int(a.question_tokens.numel()),
                              "answer_tokens": int(a.new_tokens.numel()), "seconds": a.seconds,
                              "extra_bytes": a.extra_bytes, "reuse": a.reuse, "start_position": a.start_position}
                             for a in self.answers],
                            columns=["question", "answer", "question_tokens", "answer_tokens", "seconds",
                                     "extra_bytes", "reuse", "start_position"])

    def retention(self) -> torch.Tensor:
        """(L, T) fraction of each layer's KV heads that kept each context position (before any
        re-rotation renumbered them, positions are the context's token indices)."""
        t = self.n_tokens
        out = torch.zeros(self.cache.n_layers, t)
        for l, p in enumerate(self.cache.positions):
            p = p[0].cpu()
            for g in range(p.shape[0]):
                out[l, p[g][(p[g] >= 0) & (p[g] < t)]] += 1 / p.shape[0]
        return out

    def figure(self) -> go.Figure:
        """Retention map: layer × context position, the fraction of KV heads that kept it."""
        fig = go.Figure(go.Heatmap(z=self.retention().numpy(), colorscale="Blues", zmin=0, zmax=1,
                                   colorbar={"title": "kept"}))
        label = "positions renumbered (re-rotated)" if self.rerotated else "context position"
        fig.update_layout(title=f"{self.policy}: what the compressed context kept", xaxis_title=label,
                          yaxis_title="layer", template="plotly_white", height=400)
        return fig

    def summary(self) -> str:
        return (f"CompressedContext({self.policy}: {self.n_tokens} tokens, kept {self.stats.compression:.0%}, "
                f"{self.stats.physical_bytes / 2**20:.2f} MiB of {self.full_stats.physical_bytes / 2**20:.2f} MiB; "
                f"prefill {self.prefill_seconds:.2f}s + compress {self.compress_seconds:.2f}s; "
                f"{len(self.answers)} question(s) asked{'; re-rotated' if self.rerotated else ''})")


def greedy_answer(model, cache: KVCache, question_ids: torch.Tensor, max_new_tokens: int, *, stop_at_eos: bool = True,
                  interventions=()) -> tuple[list[int], list[torch.Tensor]]:
    """Feed ``question_ids`` (1, n_q) against ``cache`` (which grows), then decode greedily; no policy runs.
    Returns the answer ids and, per answer token, the logits (V,) it was chosen from (float32, CPU)."""
    eos = model.tokenizer.eos_token_id
    toks, step_logits = [], []
    with model.session(interventions=interventions) as s:
        logits = s.forward_cached(cache, question_ids)[0, -1]
        for i in range(max_new_tokens):
            tok = int(logits.argmax())
            toks.append(tok)
            step_logits.append(logits.detach().float().cpu())
            if (stop_at_eos and tok == eos) or i == max_new_tokens - 1:
                break
            logits = s.forward_cached(cache, torch.tensor([[tok]], device=question_ids.device))[0, -1]
    return toks, step_logits


def _check_truncatable(cache: KVCache) -> None:
    from transformers.cache_utils import DynamicLayer

    for l, lay in enumerate(cache.layers()):
        if type(lay) not in (DynamicLayer, RaggedLayer):
            raise InputError(f"ask(reuse='truncate'): layer {l} is stored as {type(lay).__name__}, which re-encodes "
                             f"its tail when tokens arrive, so removing the answer would not restore it. Use "
                             f"reuse='copy'.")


def _truncate(cache: KVCache, end: int) -> None:
    """Keep only the entries at positions < ``end`` (the context), in order; reset ``next_position``."""
    for l in range(cache.n_layers):
        pos = cache.positions[l]
        keep = (pos >= 0) & (pos < end)
        counts = keep.sum(-1)
        if bool((counts == counts.flatten()[0]).all()) and not cache.is_ragged(l):
            idx = keep.nonzero()[:, -1].reshape(*pos.shape[:2], -1)
            cache.keep(l, idx)
        else:
            cache.keep_heads(l, [keep[0, g].nonzero()[:, 0] for g in range(pos.shape[1])])
    cache.next_position = end


def compress_context(model, context: str | torch.Tensor, cache_policy=None, *, rerotate: bool = False,
                     interventions=()) -> CompressedContext:
    """Prefill ``context`` once, compress it with ``cache_policy`` (None: keep everything), optionally
    re-rotate the kept keys to contiguous positions; returns a ``CompressedContext`` to ``ask``."""
    ids, _ = model.tokenize(context)
    if ids.shape[0] != 1:
        raise InputError("compress_context() takes one context (a string or (T,) / (1, T) token ids).")
    if cache_policy is not None:
        check_policy(cache_policy)
        bind_policy(cache_policy, model)
    observe = None if cache_policy is None else cache_policy.observe_attention
    queries = None if cache_policy is None else getattr(cache_policy, "observe_queries", None)
    cache = KVCache.empty(model)
    t0 = time.perf_counter()
    with model.session(interventions=interventions, observe_attention=observe,
                       hooks=query_observer_hooks(model, queries)) as s:
        s.forward_cached(cache, ids)
    t1 = time.perf_counter()
    full_stats = cache.stats()
    if cache_policy is not None:
        with torch.no_grad():
            cache_policy.apply(cache, StepContext(0, int(ids.shape[1]), ids))
    if rerotate:
        from .rope import rerotate as _rerotate

        _rerotate(model, cache)
    t2 = time.perf_counter()
    name = "full cache" if cache_policy is None else str(cache_policy.name)
    text = context if isinstance(context, str) else model.to_string(ids[0].tolist())
    return CompressedContext(model, text, ids[0], cache, name, full_stats, cache.stats(), t1 - t0, t2 - t1,
                             rerotate, tuple(interventions) if not hasattr(interventions, "hooks") else (interventions,))


__all__ = ["compress_context", "CompressedContext", "Answer", "greedy_answer"]
