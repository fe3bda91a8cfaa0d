"""Evict-then-merge: drop low-scored KV entries but fold each one into its most similar survivor.

``MergeEvicted`` is a ``ScorePolicy`` (same ``ratio``/``budget``, ``sinks``/``window``, ``at`` and
``layer_budgets`` semantics as every eviction policy in ``efficiency.kv.base``), per layer and KV head:

1. Score: key norm, as ``KeyNorm``: score = -||k||_2, so the entries with the *largest* key norm
   are evicted first (low-norm keys tend to receive the most attention; Devoto et al. 2024,
   kvpress ``KnormPress``). The protected entries (positions < ``sinks`` and the ``window`` most
   recent) are always kept. Key norm needs no attention capture: it works with any attention
   implementation and at every step.
2. Merge: each evicted entry e is assigned to the kept entry j of the same KV head (and batch row)
   whose key has the highest cosine similarity with k_e. Kept keys are unchanged; the kept value
   becomes the count-weighted mean of its group,
   ``v_j' = (c_j v_j + sum_e c_e v_e) / (c_j + sum_e c_e)``, where c counts the original tokens an
   entry stands for (1 for a fresh entry). Kept entries that receive nothing stay bit-for-bit
   unchanged.
3. Positions: a merged entry keeps the kept entry's original position (its key keeps its RoPE
   rotation), so nothing is renumbered and positions stay strictly increasing.

The cache then holds exactly the budgeted number of entries per head; tensors are rebuilt, so the
evicted storage is freed. ``counts[l]`` (B, G, N_l) holds the per-entry counts, aligned to the
cache by position (so they survive evictions by other policies; an entry the policy has not seen
counts 1); while only this policy edits the cache, they sum to the tokens seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.kv_cache import KVCache, StepContext

from .base import ScorePolicy, lookup
from .registry import register

POLICY_NAME = "merge"


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather entries idx (B, G, K) along dim 2 of t (B, G, N) or (B, G, N, d)."""
    if t.ndim == 4:
        return torch.gather(t, 2, idx[..., None].expand(*idx.shape, t.shape[-1]))
    return torch.gather(t, 2, idx)


def merge_layer(keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, counts: torch.Tensor,
                keep_idx: torch.Tensor):
    """Keep the entries ``keep_idx`` (B, G, K), sorted, and merge all others into them.

    keys, values (B, G, N, d); positions (B, G, N) long; counts (B, G, N) float.
    Returns (keys, values, positions, counts, target) with N replaced by K; ``target`` (B, G, N - K)
    gives, for each evicted entry in cache order, the index (into the kept list) it was merged into.
    """
    b, g, n = positions.shape
    k_n = keep_idx.shape[-1]
    keep_mask = torch.zeros(b, g, n, dtype=torch.bool, device=keys.device).scatter_(-1, keep_idx, True)
    ar = torch.arange(n, device=keys.device).expand(b, g, n)
    ev_idx = ar.masked_select(~keep_mask).view(b, g, n - k_n)
    unit = keys.float() / keys.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = _take(unit, ev_idx) @ _take(unit, keep_idx).transpose(-1, -2)  # (B, G, E, K) cosine similarities
    target = sim.argmax(dim=-1)  # (B, G, E)
    c_keep, c_ev = _take(counts, keep_idx), _take(counts, ev_idx)
    v_keep_raw = _take(values, keep_idx)
    v_keep, v_ev = v_keep_raw.float(), _take(values, ev_idx).float()
    add_c = torch.zeros_like(c_keep).scatter_add_(2, target, c_ev)
    add_v = torch.zeros_like(v_keep).scatter_add_(2, target[..., None].expand_as(v_ev), v_ev * c_ev[..., None])
    new_c = c_keep + add_c
    merged = ((v_keep * c_keep[..., None] + add_v) / new_c[..., None]).to(values.dtype)
    v_new = torch.where((add_c > 0)[..., None], merged, v_keep_raw)
    return (_take(keys, keep_idx).contiguous(), v_new.contiguous(), _take(positions, keep_idx).contiguous(), new_c,
            target)


@register(POLICY_NAME)
@dataclass
class MergeEvicted(ScorePolicy):
    """Evict by key norm (largest norms go), merging each evicted value into its most cosine-similar
    kept key's entry (count-weighted mean). See the module docstring; budgets as ``ScorePolicy``.
    """

    counts: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _count_pos: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def score(self, cache: KVCache, layer: int, ctx: StepContext) -> torch.Tensor:
        return -cache.keys(layer).float().norm(dim=-1)

    def prepare(self, cache: KVCache, ctx: StepContext) -> None:
        """Align the counts with the cache by position (new entries count 1); idempotent."""
        if ctx.step == 0 and all(cache.seq_len(l) == cache.next_position for l in range(cache.n_layers)):
            self.counts.clear()
            self._count_pos.clear()
        for l in range(cache.n_layers):
            pos = cache.positions[l]
            if l in self.counts and self._count_pos[l].shape == pos.shape and torch.equal(self._count_pos[l], pos):
                continue
            if l in self.counts:
                c = lookup(self.counts[l][:, :, None], self._count_pos[l], pos)[:, :, 0]
                c = torch.where(c > 0, c, torch.ones_like(c))
            else:
                c = torch.ones(pos.shape, device=pos.device)
            self.counts[l], self._count_pos[l] = c, pos.clone()

    def evict(self, cache: KVCache, layer: int, k: int, ctx: StepContext) -> None:
        pos = cache.positions[layer]
        scores = self.score(cache, layer, ctx)
        protected = (pos < self.sinks) | (pos >= cache.next_position - self.window)
        s = scores.masked_fill(protected, float("inf"))
        k = min(max(k, int(protected.sum(-1).max())), pos.shape[-1])
        keep_idx = s.topk(k, dim=-1).indices.sort(dim=-1).values
        k2, v2, p2, c2, _ = merge_layer(cache.keys(layer), cache.values(layer), pos, self.counts[layer], keep_idx)
        cache.set_entries(layer, k2, v2, p2)
        self.counts[layer], self._count_pos[layer] = c2, p2.clone()
