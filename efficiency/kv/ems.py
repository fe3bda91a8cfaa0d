"""EMS: global-local attention scores, then head-wise evict-then-merge with a zero class.

After "EMS: Adaptive Evict-then-Merge Strategy for Head-wise KV Cache Compression Based on
Global-Local Importance" (Li et al., arXiv 2412.08521). What the paper fixes: a score mixing
attention accumulated over all queries (global) with attention from the recent queries (local), to
undo the bias of the causal mask (early tokens are seen by more queries); per KV head, low-scored
entries are evicted or merged into kept ones, and a *zero class* takes the entries that are
evicted outright, so eviction and merging are one class assignment done for all heads at once.

No reference code was available; everything below that the abstract does not fix is **our design**:

- Score (B, H, N) per query head, mean over the KV group's heads -> (B, G, N):
  ``s_j = weight * global_j + (1 - weight) * local_j`` where ``global_j`` = attention j received
  summed over every query that saw it, divided by the number of those queries (a mean, so early
  tokens are not favoured for being seen more often), and ``local_j`` = mean attention from the
  last ``window`` queries (the observation window, as SnapKV; its keys are protected).
  Defaults: ``weight`` = 0.5, ``window`` = 16, ``sinks`` = 4.
- Evict-then-merge, per KV head: keep the top-k by score (protected sinks and window always kept);
  each other entry e is assigned to the kept entry j (never a sink) whose key has the highest
  cosine similarity with e's key. If that similarity is at least ``threshold`` (0.5), e joins
  j's class: j's key and value become the score-weighted means of the class,
  ``k_j' = (s_j k_j + Σ_e s_e k_e) / (s_j + Σ_e s_e)`` (the same for v; the weights sum to 1;
  equal weights when every score in the class is 0). Otherwise e goes to the zero class and is
  dropped. Kept entries that receive nothing stay bit-for-bit unchanged. Different heads merge
  different amounts (a redundant head merges much, a sparse head mostly evicts).
- A merged entry keeps j's position (its key keeps j's rotation): nothing is renumbered.

Budgets and timing as every ``ScorePolicy`` (``ratio``/``budget``, ``at``); every head keeps the
same count, stored dense, so the evicted bytes are freed and the cost model is that of eviction.
``last_merge[l]`` holds the class of every evicted entry of the last eviction (index into the kept
entries, -1 for the zero class), (B, G, E).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import InputError
from workbench.kv_cache import KVCache, StepContext

from .base import AttentionScorePolicy
from .registry import register


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather idx (B, G, K) along dim 2 of t (B, G, N) or (B, G, N, d)."""
    if t.ndim == 4:
        return torch.gather(t, 2, idx[..., None].expand(*idx.shape, t.shape[-1]))
    return torch.gather(t, 2, idx)


def evict_then_merge(keys: torch.Tensor, values: torch.Tensor, scores: torch.Tensor, keep_idx: torch.Tensor,
                     can_receive: torch.Tensor, threshold: float, merge_keys: bool = True):
    """Keep ``keep_idx`` (B, G, K) (sorted) of keys/values (B, G, N, d) and merge the others into them.

    scores (B, G, N) >= 0: merge weights; can_receive (B, G, N) bool: which kept entries may absorb
    others (keys only when ``merge_keys``; otherwise the kept keys stay as they are). Returns (keys (B, G, K, d),
    values (B, G, K, d), assign (B, G, N - K) index into the kept entries or -1 for the zero class, in the
    order of the evicted entries' slots).
    """
    b, g, n, d = keys.shape
    k_n = keep_idx.shape[-1]
    keep_mask = torch.zeros(b, g, n, dtype=torch.bool, device=keys.device).scatter_(-1, keep_idx, True)
    ev_idx = torch.arange(n, device=keys.device).expand(b, g, n).masked_select(~keep_mask).view(b, g, n - k_n)
    if n == k_n:
        return keys, values, ev_idx.new_empty(b, g, 0)
    unit = keys.float() / keys.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = _take(unit, ev_idx) @ _take(unit, keep_idx).transpose(-1, -2)  # (B, G, E, K) cosine
    sim = sim.masked_fill(~_take(can_receive, keep_idx)[:, :, None, :], float("-inf"))
    best, target = sim.max(-1)  # (B, G, E)
    joins = best >= threshold
    assign = torch.where(joins, target, torch.full_like(target, -1))
    w = scores.float().clamp_min(0)
    w_keep, w_ev = _take(w, keep_idx), _take(w, ev_idx) * joins
    n_ev = joins.float()
    tgt = target.clamp(min=0)
    add_w = torch.zeros_like(w_keep).scatter_add_(2, tgt, w_ev)
    add_n = torch.zeros_like(w_keep).scatter_add_(2, tgt, n_ev)
    total = w_keep + add_w
    uniform = total <= 0  # every score in the class is 0: equal weights
    out = [] if merge_keys else [_take(keys, keep_idx).contiguous()]
    for t in ((keys, values) if merge_keys else (values,)):
        t_keep, t_ev = _take(t, keep_idx).float(), _take(t, ev_idx).float()
        sw = torch.zeros_like(t_keep).scatter_add_(2, tgt[..., None].expand_as(t_ev), t_ev * w_ev[..., None])
        sn = torch.zeros_like(t_keep).scatter_add_(2, tgt[..., None].expand_as(t_ev), t_ev * n_ev[..., None])
        weighted = (t_keep * w_keep[..., None] + sw) / total.clamp_min(1e-30)[..., None]
        equal = (t_keep + sn) / (1 + add_n)[..., None]
        merged = torch.where(uniform[..., None], equal, weighted).to(t.dtype)
        out.append(torch.where((add_n > 0)[..., None], merged, _take(t, keep_idx)).contiguous())
    return out[0], out[1], assign


@register("ems")
@dataclass
class EMS(AttentionScorePolicy):
    """Global-local scores and head-wise evict-then-merge with a zero class (module docstring)."""

    sinks: int = 4
    window: int = 16
    weight: float = 0.5
    threshold: float = 0.5
    merge_keys: bool = True
    last_merge: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.weight, (int, float)) or isinstance(self.weight, bool) or not 0 <= self.weight <= 1:
            raise InputError(f"EMS: weight (of the global score) must lie in [0, 1], got {self.weight!r}.")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool):
            raise InputError(f"EMS: threshold (cosine similarity needed to merge) must be a number, got "
                             f"{self.threshold!r}.")
        if self.window < 1:
            raise InputError("EMS: window (the local observation window) must be at least 1.")
        if self.head_budgets is not None:
            raise InputError("EMS keeps the same count in every head; head_budgets is not supported.")
        super().__post_init__()

    # state rows: 0 = attention summed over all queries, 1 = number of queries, 2.. = last `window` rows
    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        b, h, tq, tk = pattern.shape
        col = torch.arange(tk, device=pattern.device)
        count = (tq - (col - (tk - tq)).clamp(min=0)).clamp(min=0).to(pattern.dtype)  # queries that see column j
        return torch.cat([pattern.sum(-2, keepdim=True), count.expand(b, h, 1, tk), pattern[:, :, -self.window:]], 2)

    def combine(self, old, new, n_new):
        if old is None:
            return new
        window = torch.cat([old[:, :, 2:], new[:, :, 2:]], 2)[:, :, -self.window:]
        return torch.cat([old[:, :, :2] + new[:, :, :2], window], 2)

    def head_scores(self, layer: int) -> torch.Tensor:
        st = self.state[layer]
        glob = st[:, :, 0] / st[:, :, 1].clamp_min(1)
        local = st[:, :, 2:].mean(-2)
        return self.weight * glob + (1 - self.weight) * local

    def evict(self, cache: KVCache, layer: int, k: int, ctx: StepContext) -> None:
        pos = cache.positions[layer]
        if bool((pos < 0).any()):
            raise InputError("EMS merges within dense layers; this cache has per-head (ragged) padding.")
        scores = self.score(cache, layer, ctx).float()
        protected = (pos < self.sinks) | (pos >= cache.next_position - self.window)
        k = min(max(k, int(protected.sum(-1).max())), pos.shape[-1])
        keep_idx = scores.masked_fill(protected, float("inf")).topk(k, dim=-1).indices.sort(dim=-1).values
        k2, v2, assign = evict_then_merge(cache.keys(layer), cache.values(layer), scores, keep_idx,
                                          pos >= self.sinks, self.threshold, self.merge_keys)
        cache.set_entries(layer, k2, v2, _take(pos, keep_idx).contiguous())
        self.last_merge[layer] = assign
