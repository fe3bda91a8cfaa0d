"""Independent references for compressed KV caches: one dense forward over the whole sequence in
which every query row may only attend to the keys the compressed cache held when that row was fed.

A cached run with eviction computes row r (query position r) against the entries kept at that
moment plus the rows fed with it; the keys and values of earlier rows were themselves computed
against what was kept at their time. A single full-sequence forward whose attention scores are set
to -inf outside each row's visible set therefore reproduces every hidden state, logit and key of
the cached run exactly (up to float rounding), with no cache at all. The mask is applied per layer
and per query head (query head h reads KV head h // (H // G)) through a public intervention on the
``scores`` hook.
"""
import math

import torch

from workbench import PolicyBase, hook_name
from workbench.intervention import Intervention


class AllowedKeys(Intervention):
    """Keep only the allowed keys: ``allowed[l]`` (H, N, N) bool, query row × key, per query head."""

    def __init__(self, allowed: dict):
        self.allowed = allowed

    def hooks(self, model):
        def make(a):
            def fn(x, _name):  # x (B, H, Tq, Tk) attention scores before the softmax
                keep = a[:, -x.shape[2]:, :x.shape[3]].to(x.device)
                return x.masked_fill(~keep[None], float("-inf"))
            return fn

        return [(hook_name("scores", l), make(a)) for l, a in self.allowed.items()]


def kept_sets(cache) -> dict:
    """{layer: [set of kept positions per KV head]} of a KVCache (batch row 0; ragged padding dropped)."""
    out = {}
    for l in range(cache.n_layers):
        pos = cache.positions[l][0]
        out[l] = [set(p[p >= 0].tolist()) for p in pos]
    return out


def visibility(model, n_rows: int, rows_by_chunk: list[range], kept_before: list[dict]) -> dict:
    """{layer: (H, N, N) bool}: rows of chunk 0 (the prefill) see all earlier rows; rows of chunk c > 0
    see ``kept_before[c]`` (the cache before that chunk: {layer: [set per KV head]}) plus the earlier
    rows of their own chunk and themselves."""
    i = model.info
    rep = i.n_heads // i.n_kv_heads
    causal = torch.ones(n_rows, n_rows, dtype=torch.bool).tril()
    allowed = {l: causal.expand(i.n_heads, n_rows, n_rows).clone() for l in range(i.n_layers)}
    for c, rows in enumerate(rows_by_chunk):
        if c == 0:
            continue
        for l in range(i.n_layers):
            for h in range(i.n_heads):
                seen = torch.zeros(n_rows, dtype=torch.bool)
                held = sorted(kept_before[c][l][h // rep])
                assert not held or held[-1] < rows.start, "the cache before a chunk holds a later position"
                seen[held] = True
                for r in rows:
                    allowed[l][h, r] = seen
                    allowed[l][h, r, rows.start:r + 1] = True
    return allowed


def masked_generation_logits(model, g, kept_after_step: list[dict]) -> torch.Tensor:
    """(n_new, V) the logits a generation's steps should have, from one masked dense forward.

    g: a ``Generation`` made with a cache policy; kept_after_step[j]: ``kept_sets`` of its cache
    right after step j (from ``on_step``, i.e. after the policy ran). Step 0 is the prefill; step j
    feeds new token j - 1 at position t0 + j - 1 against the cache kept after step j - 1.
    """
    t0, n_new = len(g.prompt_tokens), len(g.new_tokens)
    n_rows = t0 + n_new - 1  # the last new token is never fed
    chunks = [range(0, t0)] + [range(t0 + j - 1, t0 + j) for j in range(1, n_new)]
    allowed = visibility(model, n_rows, chunks, [None] + kept_after_step[:n_new - 1])
    ids = g.tokens[:n_rows][None]
    logits = model.run(ids, interventions=[AllowedKeys(allowed)], logits="all").logits[0].float()
    return logits[t0 - 1:]


def masked_perplexity(model, texts, prefix: float, chunk: int | None, kept_by_text: list[list[dict]]) -> float:
    """Perplexity as ``efficiency.kv.harness.perplexity`` defines it, from masked dense forwards.

    kept_by_text[i][c]: the cache of text i right after chunk c was applied (chunk 0: the prefix).
    """
    nll, n_scored = 0.0, 0
    for text, kept in zip(texts, kept_by_text):
        ids, _ = model.tokenize(text)
        n = ids.shape[1]
        p = min(max(1, math.floor(prefix * n)), n - 1)
        size = chunk or (n - p)
        chunks = [range(0, p)] + [range(a, min(a + size, n - 1)) for a in range(p, n - 1, size)]
        allowed = visibility(model, n - 1, chunks, [None] + kept[:len(chunks) - 1])
        logits = model.run(ids[:, :n - 1], interventions=[AllowedKeys(allowed)], logits="all").logits[0].double()
        lp = torch.log_softmax(logits[p - 1:], -1)
        nll -= float(lp[torch.arange(n - p), ids[0, p:]].sum())
        n_scored += n - p
    return math.exp(nll / n_scored)


class Recorder(PolicyBase):
    """Wrap a cache policy and record ``kept_sets`` of the cache after each of its applications,
    one list per sequence (a new list at every step 0)."""

    def __init__(self, inner):
        self.inner = inner
        self.snapshots: list[list[dict]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def observe_attention(self):
        return self.inner.observe_attention

    def prepare(self, cache, ctx) -> None:
        self.inner.prepare(cache, ctx)

    def apply(self, cache, ctx) -> None:
        self.inner.apply(cache, ctx)
        if ctx.step == 0:
            self.snapshots.append([])
        self.snapshots[-1].append(kept_sets(cache))
