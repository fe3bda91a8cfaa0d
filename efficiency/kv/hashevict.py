"""HashEvict: evict the cached keys whose SimHash code is farthest from the current query's.

Liu et al., "HashEvict: A Pre-Attention KV Cache Eviction Strategy using Locality-Sensitive
Hashing" (arXiv 2412.16187). Every cached key and every new query (both after RoPE: the angle
between the rotated vectors is what sets the attention logit) is hashed to a b-bit SimHash code
with one shared Gaussian projection (``efficiency.kv.simhash``); the Hamming distance between a
query's code and a key's code estimates their angle (π · H / b), so the key farthest from the
current query is the one expected to get the least attention. When the cache is over budget, the
farthest keys go. No attention is computed or observed: the decision is made before attention,
from b bits per key (a small code store next to the cache).

What is ours (the paper's abstract fixes the idea; no reference code was found):

- Per KV head, the distance of a key to the current token is the **minimum** over the query heads
  of its group (a key is kept while any of the heads that read it points towards it), (B, G, N).
- Ties (equal distance) evict the **oldest** entry first, so with all codes equal HashEvict keeps
  exactly the protected sinks plus the most recent entries (StreamingLLM; tested).
- Protected: the first ``sinks`` = 4 positions and the ``window`` = 16 most recent (the window is
  measured from the current token while streaming through the prompt).
- b = ``bits`` = 16 (a quarter of SmolLM2's head dim of 64; b ≪ head dim as in the paper), one
  projection for all layers and heads, drawn from ``seed``.
- The prompt (``at`` "prefill" or "both") is compressed as if it had been streamed token by token:
  for t = 0 .. T-1, token t's key joins the cache and, when the cache holds more than the budget,
  the entry farthest from query t (among the unprotected ones) is evicted. The result is that of
  evicting one entry per token during a token-by-token prefill, computed after one ordinary
  prefill forward (the queries are observed during it, ``observe_queries``). While decoding
  (``at`` "decode" or "both") each step evicts down to the budget with the new token's query.

Budgets as every ``ScorePolicy`` (``ratio`` or ``budget``; per-layer ``layer_budgets``); every head
keeps the same count, stored dense. State: ``codes[l]`` (B, G, N, ceil(b/8)) uint8, the packed key
codes aligned with the cache (``code_bytes()`` gives their size; they are the policy's, not the
cache's, so ``CacheStats`` does not count them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.kv_cache import KVCache, StepContext

from .base import ScorePolicy, lookup
from .registry import register
from .simhash import gaussian_projection, hamming, hamming_matrix, pack_bits, sign_bits, unpack_bits


@register("hashevict")
@dataclass
class HashEvict(ScorePolicy):
    """Evict the keys whose SimHash code is farthest (Hamming) from the current query's (module doc)."""

    sinks: int = 4
    window: int = 16
    at: str = "both"
    bits: int = 16
    seed: int = 0
    projection: torch.Tensor | None = field(default=None, repr=False, compare=False)
    codes: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _code_pos: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _queries: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 1024:
            raise InputError(f"HashEvict: bits must be an integer in 1..1024, got {self.bits!r}.")
        if self.head_budgets is not None:
            raise InputError("HashEvict keeps the same count in every head; head_budgets is not supported.")
        super().__post_init__()

    # ------------------------------------------------------------------ hashing
    def _projection(self, d: int, device) -> torch.Tensor:
        if self.projection is None:
            self.projection = gaussian_projection(d, self.bits, self.seed)
        if tuple(self.projection.shape) != (d, self.bits):
            raise InputError(f"HashEvict: the projection is {tuple(self.projection.shape)}, expected (d_head, bits) = "
                             f"({d}, {self.bits}).")
        return self.projection.to(device)

    @property
    def observe_queries(self):
        """Callable (layer, q (B, H, n_new, d)) keeping the sign bits of the newest queries (not the queries)."""

        def observe(layer: int, q: torch.Tensor) -> None:
            self._queries[layer] = sign_bits(q, self._projection(q.shape[-1], q.device))  # (B, H, n, b) bool

        return observe

    def code_bytes(self) -> int:
        """Bytes of the packed key-code store (all layers)."""
        return sum(c.numel() * c.element_size() for c in self.codes.values())

    def prepare(self, cache: KVCache, ctx: StepContext) -> None:
        """Align the key codes with the cache (codes of new entries computed, evicted ones dropped)."""
        if ctx.step == 0 and all(cache.seq_len(l) == cache.next_position for l in range(cache.n_layers)):
            self.codes.clear()
            self._code_pos.clear()
        for l in range(cache.n_layers):
            pos = cache.positions[l]
            if l in self.codes and self._code_pos[l].shape == pos.shape and torch.equal(self._code_pos[l], pos):
                continue
            keys = cache.keys(l)
            proj = self._projection(keys.shape[-1], keys.device)
            if l in self.codes:
                seen = int(self._code_pos[l].max()) if self._code_pos[l].numel() else -1
                old = lookup(self.codes[l].permute(0, 1, 3, 2).float(), self._code_pos[l], pos).permute(0, 1, 3, 2)
                new = pos > seen  # entries appended since the last call (positions only grow)
                codes = old.to(torch.uint8)
                if bool(new.any()):
                    codes[new] = pack_bits(sign_bits(keys[new], proj))
            else:
                codes = pack_bits(sign_bits(keys, proj))
            self.codes[l], self._code_pos[l] = codes, pos.clone()

    # ------------------------------------------------------------------ distances
    def distances(self, layer: int, q_bits: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
        """Min over each group's query heads of Hamming(query, key): (B, G, Tq, N) from q_bits (B, H, Tq, b)."""
        b, h, tq, nbit = q_bits.shape
        group = h // n_kv_heads
        if tq == 1:  # decode: XOR + popcount on the packed store
            q = pack_bits(q_bits).reshape(b, n_kv_heads, group, 1, 1, -1)
            d = hamming(q, self.codes[layer][:, :, None, None])  # (B, G, group, 1, N)
        else:
            k = unpack_bits(self.codes[layer], nbit)  # (B, G, N, b)
            d = hamming_matrix(q_bits.reshape(b, n_kv_heads, group, tq, nbit), k[:, :, None])
        return d.amin(2)

    def score(self, cache: KVCache, layer: int, ctx: StepContext) -> torch.Tensor:
        """(B, G, N): minus the distance to the newest query (higher = closer = kept)."""
        q = self._queries.get(layer)
        if q is None:
            raise InputError(f"HashEvict compares queries with keys but saw no query for layer {layer}: use it "
                             f"through model.prefill / generate / compress_context / sweep (which feed "
                             f"observe_queries).")
        return -self.distances(layer, q[:, :, -1:], cache.n_kv_heads)[:, :, 0].float()

    # ------------------------------------------------------------------ eviction
    def evict(self, cache: KVCache, layer: int, k: int, ctx: StepContext) -> None:
        q = self._queries.get(layer)
        if q is None:
            self.score(cache, layer, ctx)  # raises the explanation
        pos = cache.positions[layer]
        if bool((pos < 0).any()):
            raise InputError("HashEvict keeps dense layers; this cache has per-head (ragged) padding.")
        n_q = q.shape[2]
        if ctx.step == 0 and n_q > 1 and n_q == pos.shape[-1]:
            keep = self._stream(layer, q, pos, k, cache)
        else:
            keep = self._evict_now(layer, q[:, :, -1:], pos, k, cache)
        cache.keep(layer, keep)
        self.codes[layer] = torch.gather(self.codes[layer], 2,
                                         keep[..., None].expand(*keep.shape, self.codes[layer].shape[-1]))
        self._code_pos[layer] = cache.positions[layer].clone()

    def _priority(self, dist: torch.Tensor, pos: torch.Tensor, horizon: int) -> torch.Tensor:
        """Eviction order: larger distance first, then older (smaller position) first."""
        return dist.long() * (horizon + 1) + (horizon - pos)

    def _evict_now(self, layer, q_bits, pos, k, cache) -> torch.Tensor:
        """Keep k entries per head: evict the farthest from the newest query (ties: oldest), protected kept."""
        dist = self.distances(layer, q_bits, cache.n_kv_heads)[:, :, 0]  # (B, G, N)
        protected = (pos < self.sinks) | (pos >= cache.next_position - self.window)
        prio = self._priority(dist, pos, cache.next_position).masked_fill(protected, -1)
        k = min(max(k, int(protected.sum(-1).max())), pos.shape[-1])
        return (-prio).topk(k, dim=-1).indices.sort(dim=-1).values

    def _stream(self, layer, q_bits, pos, k, cache) -> torch.Tensor:
        """Token-by-token eviction through the prompt (module docstring): the k entries alive at the end."""
        dist = self.distances(layer, q_bits, cache.n_kv_heads)  # (B, G, T, T): query t vs key j
        b, g, t, _ = dist.shape
        order = torch.arange(t, device=dist.device)
        k = max(k, min(self.sinks, t) + min(self.window, t))
        # eviction priority of key j when query t arrives; -1 where j is protected at that time
        protected = (order[None, :] < self.sinks) | (order[None, :] > order[:, None] - self.window)  # (T, T)
        prio = self._priority(dist, pos[:, :, None, :], t).masked_fill(protected, -1)
        alive = torch.zeros(b, g, t, dtype=torch.bool, device=dist.device)
        alive[..., :min(k, t)] = True
        for step in range(min(k, t), t):
            alive[..., step] = True
            victim = prio[:, :, step].masked_fill(~alive, -1).argmax(-1, keepdim=True)  # (B, G, 1)
            alive.scatter_(-1, victim, False)
        return alive.nonzero()[:, -1].reshape(b, g, -1)
