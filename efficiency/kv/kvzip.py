"""KVzip: keep the entries the model needs to reconstruct the context (query-agnostic by design).

Kim et al., "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction"
(arXiv 2505.23416; reference code snu-mllab/KVzip, kvpress ``KVzipPress``). After the context is
prefilled, the model is asked to repeat it, and every cached entry is scored by the largest
attention it receives while the model reproduces the context. An entry the model never needs to
rebuild the text is unlikely to be needed for any question about it, so the score does not depend
on the question.

Scoring, per chunk of ``chunk`` context tokens (2000 by default, the paper's scoring chunk):

1. The repeat input is ``prompt`` ("\\n\\nRepeat the previous context exactly.") for the first
   chunk, or ``continue_prompt`` ("\\n\\nRepeat the part of the previous context exactly, starting
   with") followed by the last ``overlap`` (8) tokens of the previous chunk for the others; then
   ``suffix`` ("\\n", kvpress's choice for models without a chat template) and the chunk's own
   tokens (teacher-forced). A chunk shrinks when the context plus the repeat input would not fit in
   the model's context window.
2. That input runs against a copy of the context's cache (``update_cache=False`` in the paper: the
   context cache is not changed), at positions after the context, and every layer's attention is
   observed.
3. Score of entry j in layer l, KV head g: the **max** over the repeat input's query positions and
   over the query heads of group g of the attention weight on j, (B, G, N). Scores of all chunks
   are combined by max.

Difference from the reference code: the paper's scoring kernel computes each chunk's softmax over
the sink, that chunk's keys and the repeat tokens only (to save memory on 100k-token contexts);
here the model's own forward runs, so the softmax covers the whole context. With one chunk (contexts
up to ``chunk`` tokens, every benchmark here) the two coincide. Cost: the repeat forward processes
about as many tokens as the context (plus ~12), each attending to the whole context, so scoring
costs about one more prefill (≈2× prefill in total).

Pruning (``level``):
- "pair" (default, as the paper and kvpress): one threshold over all layers and KV heads: the
  ``total`` best-scored entries are kept, where ``total`` is what a uniform budget would keep
  (layers × KV heads × the per-layer budget from ``ratio``/``budget``). Layers and heads then keep
  different counts; layers whose heads differ are stored ragged (``RaggedLayer``), so the bytes of
  the evicted entries are freed. Batch size 1.
- "pair-uniform": the top-k of each KV head, the same k everywhere (``ScorePolicy.evict``).
The first ``sinks`` = 4 positions are always kept (kvpress's ``n_sink``). Positions are not
renumbered. ``scores`` holds the last scores, per layer (B, G, N) aligned with the cache as it was
scored. The last scores are also remembered (one entry, keyed by the model, its weights and
interventions, the context's tokens, the cache's positions and content checksums, and the scoring
settings), so a sweep over several ratios runs the reconstruction forward once per context.

KVzip runs the model, so it needs it: ``prefill``/``generate``/``compress_context``/``sweep`` give
it the model (``bind``) and the context's token ids (``StepContext.tokens``). It scores at step 0
only (``at="prefill"``), and refuses to run while other workbench hooks are attached (inside a hook
session of an enclosing ``intervene`` block its scoring forward would see them twice); under
interventions use ``model.prefill`` or ``compress_context``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.kv_cache import KVCache, StepContext

from .base import ScorePolicy, group_reduce
from .registry import register

LEVELS = ("pair", "pair-uniform")
_MEMO: dict = {}  # the last scores, keyed by everything they depend on (see KVzip._memo_key)


@register("kvzip")
@dataclass
class KVzip(ScorePolicy):
    """Score each entry by the max attention it receives while the model repeats the context (module doc)."""

    sinks: int = 4
    level: str = "pair"
    chunk: int = 2000
    overlap: int = 8
    prompt: str = "\n\nRepeat the previous context exactly."
    continue_prompt: str = "\n\nRepeat the part of the previous context exactly, starting with"
    suffix: str = "\n"
    scores: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _model: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InputError(f"KVzip: level must be one of {LEVELS}, got {self.level!r}.")
        for name, lo in (("chunk", 1), ("overlap", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InputError(f"KVzip: {name} must be an integer >= {lo}, got {v!r}.")
        if self.at != "prefill":
            raise InputError("KVzip scores the context once, after prefill: at must be 'prefill'.")
        if self.level == "pair" and self.head_budgets is not None:
            raise InputError("KVzip: level='pair' already gives every head its own budget; drop head_budgets "
                             "or use level='pair-uniform'.")
        super().__post_init__()

    def bind(self, model) -> None:
        """Remember the model whose forward passes score the context (called by the harnesses)."""
        self._model = model

    # ------------------------------------------------------------------ scoring
    def reconstruction_scores(self, cache: KVCache, ctx: StepContext) -> dict[int, torch.Tensor]:
        """{layer: (B, G, N_l)} max attention each entry receives while the model repeats the context."""
        model = self._model
        if model is None:
            raise InputError("KVzip needs the model: use it through model.prefill / generate / compress_context / "
                             "sweep, or call policy.bind(model) first.")
        ids = ctx.tokens
        if ids is None or ids.shape[-1] != cache.next_position:
            raise InputError("KVzip re-reads the context, so it needs the context's token ids (StepContext.tokens "
                             f"covering all {cache.next_position} positions); it scores at prefill (step 0) only.")
        if ids.shape[0] != 1:
            raise InputError("KVzip supports batch size 1.")
        if model.leftover_hooks():
            raise InputError("KVzip runs its scoring forward while other workbench hooks are attached (an open "
                             "session or generate() under interventions); they would fire twice. Compress with "
                             "model.prefill(...) or workbench.questions.compress_context(...) instead.")
        key = self._memo_key(model, cache, ids)
        if key in _MEMO:  # the same context, cache and model scored already (a sweep over ratios)
            return {l: s.clone() for l, s in _MEMO[key].items()}
        scores = self._score(model, cache, ids)
        _MEMO.clear()
        _MEMO[key] = {l: s.clone() for l, s in scores.items()}
        return scores

    def _memo_key(self, model, cache, ids) -> tuple:
        sig = tuple((tuple(p.shape), int(p.sum())) for p in cache.positions)
        content = (float(cache.keys(0).double().sum()), float(cache.values(cache.n_layers - 1).double().sum()))
        return (model.fingerprint, id(model), model.weights_version, model.describe_interventions(),
                tuple(ids[0].tolist()), sig, content, self.chunk, self.overlap, self.prompt, self.continue_prompt,
                self.suffix)

    def _score(self, model, cache: KVCache, ids: torch.Tensor) -> dict[int, torch.Tensor]:
        tok = model.tokenizer
        enc = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        first, cont, suffix = enc(self.prompt), enc(self.continue_prompt), enc(self.suffix)
        ctx_ids = ids[0].tolist()
        n_ctx = len(ctx_ids)
        scores = {l: None for l in range(cache.n_layers)}
        start = 0
        while start < n_ctx:
            head = first if start == 0 else cont + ctx_ids[max(0, start - self.overlap):start]
            room = model.info.n_ctx - cache.next_position - len(head) - len(suffix)  # chunks shrink to fit
            if room < 1:
                raise InputError(f"KVzip: the context ({cache.next_position} tokens) leaves no room in the model's "
                                 f"context of {model.info.n_ctx} for the repeat prompt; the context must be shorter.")
            end = min(start + self.chunk, start + room, n_ctx)
            rep = head + suffix + ctx_ids[start:end]
            start = end
            slots = [cache.positions[l].shape[-1] for l in range(cache.n_layers)]

            def observe(layer: int, pattern: torch.Tensor, slots=slots) -> None:
                s = group_reduce(pattern[..., :slots[layer]].float().amax(-2), cache.n_kv_heads, "max")
                scores[layer] = s if scores[layer] is None else torch.maximum(scores[layer], s)

            work = cache.copy()
            with model.session(observe_attention=observe) as session:
                session.forward_cached(work, torch.tensor([rep], device=ids.device))
            del work
        return scores

    def score(self, cache: KVCache, layer: int, ctx: StepContext) -> torch.Tensor:
        return self.scores[layer]

    # ------------------------------------------------------------------ pruning
    def apply(self, cache: KVCache, ctx: StepContext) -> None:
        if not self._due(ctx) or self.ratio == 0:
            return
        targets = self.targets(cache)
        if all(int(cache.head_counts(l).max()) <= k for l, k in enumerate(targets)):
            return  # nothing to evict
        self.scores = self.reconstruction_scores(cache, ctx)
        if self.level == "pair-uniform":
            for layer, k in enumerate(targets):
                if int(cache.head_counts(layer).max()) > k:
                    self.evict(cache, layer, k, ctx)
            return
        self._evict_pairs(cache, targets)

    def _evict_pairs(self, cache: KVCache, targets: list[int]) -> None:
        """Keep the best ``sum_l G * k_l`` entries over every layer and KV head (one global threshold)."""
        if cache.positions[0].shape[0] != 1:
            raise InputError("KVzip level='pair' (per-head budgets, stored ragged) supports batch size 1 only.")
        flat, shapes = [], []
        for l in range(cache.n_layers):
            pos = cache.positions[l][0]  # (G, N)
            valid = pos >= 0
            protected = valid & (pos < self.sinks)
            s = self.scores[l][0].float().masked_fill(protected, float("inf")).masked_fill(~valid, float("-inf"))
            flat.append(s.reshape(-1))
            shapes.append(s.shape)
        total = sum(min(k, int(cache.head_counts(l).max())) * cache.n_kv_heads for l, k in enumerate(targets))
        allscores = torch.cat(flat)
        keep = torch.zeros_like(allscores, dtype=torch.bool)
        keep[allscores.topk(min(total, allscores.numel())).indices] = True
        off = 0
        for l, (g, n) in enumerate(shapes):
            mask = keep[off:off + g * n].reshape(g, n)
            off += g * n
            idx = [mask[h].nonzero()[:, 0] for h in range(g)]
            if len({len(i) for i in idx}) == 1 and not cache.is_ragged(l):
                if len(idx[0]) < n:
                    cache.keep(l, torch.stack(idx)[None])
            else:
                cache.keep_heads(l, idx)
