"""Shared logic of score-based KV-cache eviction: budgets, protected tokens, timing, top-k keep.

A ``ScorePolicy`` subclass only says how much each cached entry is worth: ``score(cache, layer,
ctx) -> (B, G, N)`` (higher = keep), one value per batch row, KV head and retained entry. The base
class decides *how many* entries each layer keeps and *when*, never evicts the protected ones
(the first ``sinks`` positions and the ``window`` most recent), keeps the top-k of the rest with
the same count in every head, sorted by position, and frees the rest physically with
``KVCache.keep``.

Budget (exactly one of):
    ratio: fraction of the entries to *remove*, in [0, 1) (kvpress's ``compression_ratio``);
        a layer keeps ``n - floor(ratio * n)`` of ``n`` tokens seen so far. ratio=0 never evicts.
    budget: tokens kept per layer and KV head; must be >= sinks + window.
Protected entries are never evicted, so with a ratio a layer keeps at least sinks + window.

When (``at``): "prefill" compresses once after the prompt (step 0); "decode" compresses after
every decoding step whenever a layer holds more than its budget (with a ratio, the budget follows
the tokens seen so far); "both" does both.

Per-layer budgets: ``layer_budgets(free, n_layers) -> n_layers ints`` receives the average
*free* budget of a layer (its budget minus sinks + window) and returns each layer's free budget;
to keep the total, the returned values should sum to ``free * n_layers`` (see ``PyramidBudgets``).
A layer can never keep more than it holds: what a schedule asks beyond that is handed to the
layers that still have entries to keep (water-filling), so the total stays that of a uniform budget.

Per-head budgets: ``head_budgets(scores (G, N), k) -> G index tensors`` (see ``AdaptiveHeadBudgets``
in ``adakv.py``) receives one layer's scores (+inf on protected entries, -inf on padding slots)
and the layer's per-head budget k, and returns which slots each KV head keeps, with any counts
(the layer total should stay G * k); the layer is then stored ragged (``KVCache.keep_heads``,
batch 1), so the bytes of the evicted entries are freed. Ragged layers (from this or any
policy) are handled by every policy: padding slots (position -1) are never counted or kept.

Observing attention: ``observe_attention`` is a property giving the callable the generator feeds
with each layer's attention rows, or None when the policy needs none; a ``layer_budgets`` object
with its own ``observe_attention`` (e.g. ``UncertaintyBudgets``) is fed too.

Attention-based policies (``AttentionScorePolicy``) receive every layer's attention rows through
``observe_attention`` during each forward pass, reduce them at once to a small per-query-head
summary ``(B, H, R, Tk)``, and fold it into a state aligned with the cache's original positions,
so the state survives evictions done by this or any other policy. Query head h belongs to KV head
``h // (H // G)``; ``group_reduce`` maps (B, H, N) to (B, G, N) by mean, max or sum over the group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch

from workbench.errors import InputError
from workbench.kv_cache import KVCache, StepContext

AT_CHOICES = ("prefill", "decode", "both")
REDUCE_CHOICES = ("mean", "max", "sum")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def group_reduce(x: torch.Tensor, n_kv_heads: int, how: str = "mean") -> torch.Tensor:
    """Map per-query-head values (B, H, ...) to KV heads (B, G, ...): head h -> group h // (H // G)."""
    b, h = x.shape[:2]
    if h == n_kv_heads:
        return x
    if h % n_kv_heads:
        raise InputError(f"{h} query heads cannot be grouped over {n_kv_heads} KV heads.")
    grouped = x.reshape(b, n_kv_heads, h // n_kv_heads, *x.shape[2:])
    if how == "mean":
        return grouped.mean(2)
    if how == "max":
        return grouped.amax(2)
    if how == "sum":
        return grouped.sum(2)
    raise InputError(f"head_reduce must be one of {REDUCE_CHOICES}, got {how!r}.")


def lookup(values: torch.Tensor, at: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Re-index ``values`` (B, G, R, M), whose entries sit at positions ``at`` (B, G, M), onto the
    positions ``want`` (B, G, N); positions missing from ``at`` get 0. Returns (B, G, R, N)."""
    b, g, r, m = values.shape
    if m == 0:
        return values.new_zeros(b, g, r, want.shape[-1])
    order = at.argsort(-1)
    at_s = at.gather(-1, order)
    val_s = values.gather(-1, order[:, :, None].expand(b, g, r, m))
    idx = torch.searchsorted(at_s.contiguous(), want.contiguous()).clamp(max=m - 1)
    found = at_s.gather(-1, idx) == want
    out = val_s.gather(-1, idx[:, :, None].expand(b, g, r, idx.shape[-1]))
    return out * found[:, :, None].to(out.dtype)


def _water_fill(targets: list[int], caps: list[int]) -> list[int]:
    """Cap each layer's budget at ``caps`` and give the surplus to the layers below their cap."""
    out = [min(t, c) for t, c in zip(targets, caps)]
    surplus = sum(targets) - sum(out)
    while surplus > 0:
        room = [l for l in range(len(out)) if out[l] < caps[l]]
        if not room:
            break
        share = max(1, surplus // len(room))
        for l in room:
            add = min(share, caps[l] - out[l], surplus)
            out[l] += add
            surplus -= add
            if not surplus:
                break
    return out


@dataclass
class ScorePolicy:
    """Base of every score-based eviction policy (see the module docstring for the shared fields).

    Subclasses implement ``score(cache, layer, ctx) -> (B, G, N)``; higher scores are kept.
    """

    ratio: float | None = None
    budget: int | None = None
    sinks: int = 0
    window: int = 0
    at: str = "prefill"
    layer_budgets: Callable[[int, int], Sequence[int]] | None = None
    head_reduce: str = "mean"
    head_budgets: Callable | None = None

    registry_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        cls = type(self).__name__
        if (self.ratio is None) == (self.budget is None):
            raise InputError(f"{cls}: give exactly one of ratio= (fraction of entries to remove, in [0, 1)) or "
                             f"budget= (tokens kept per layer and head); got ratio={self.ratio!r}, "
                             f"budget={self.budget!r}.")
        for name in ("sinks", "window"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise InputError(f"{cls}: {name} must be a non-negative integer, got {v!r}.")
        if self.ratio is not None:
            r = self.ratio
            if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r < 1:
                raise InputError(f"{cls}: ratio is the fraction of entries to remove and must lie in [0, 1), "
                                 f"got {r!r}.")
        if self.budget is not None:
            if not _is_int(self.budget) or self.budget < 1:
                raise InputError(f"{cls}: budget must be a positive integer (tokens kept per layer and head), "
                                 f"got {self.budget!r}.")
            if self.budget < self.sinks + self.window:
                raise InputError(f"{cls}: budget={self.budget} is smaller than sinks + window = "
                                 f"{self.sinks} + {self.window}, which are always kept. Raise the budget or "
                                 f"shrink sinks/window.")
        if self.at not in AT_CHOICES:
            raise InputError(f"{cls}: at must be one of {AT_CHOICES}, got {self.at!r}.")
        if self.head_reduce not in REDUCE_CHOICES:
            raise InputError(f"{cls}: head_reduce must be one of {REDUCE_CHOICES}, got {self.head_reduce!r}.")
        if self.layer_budgets is not None and not callable(self.layer_budgets):
            raise InputError(f"{cls}: layer_budgets must be a callable (free_budget, n_layers) -> list of ints.")
        if self.head_budgets is not None and not callable(self.head_budgets):
            raise InputError(f"{cls}: head_budgets must be a callable (scores (G, N), k) -> G index tensors.")

    # ------------------------------------------------------------------ naming
    @property
    def name(self) -> str:
        amount = f"ratio={self.ratio}" if self.ratio is not None else f"budget={self.budget}"
        return f"{self.registry_name or type(self).__name__}({amount}, at={self.at})"

    # ------------------------------------------------------------------ to implement
    def score(self, cache: KVCache, layer: int, ctx: StepContext) -> torch.Tensor:
        """(B, G, N) importance of every retained entry of ``layer``; higher is kept."""
        raise NotImplementedError

    def prepare(self, cache: KVCache, ctx: StepContext) -> None:
        """Called at the start of every ``apply`` (before any eviction): update running state."""

    @property
    def observe_attention(self):
        """Callable (layer, pattern) fed by the generator, or None (only the layer budgets may need it)."""
        return getattr(self.layer_budgets, "observe_attention", None)

    # ------------------------------------------------------------------ budgets
    @property
    def protected(self) -> int:
        return self.sinks + self.window

    def target(self, seen: int) -> int:
        """Average tokens a layer keeps when ``seen`` tokens have been processed."""
        if self.budget is not None:
            return self.budget
        return max(seen - math.floor(self.ratio * seen + 1e-9), self.protected, 1)

    def targets(self, cache: KVCache) -> list[int]:
        """Budget of every layer (before capping at what the layer holds)."""
        t = self.target(cache.next_position)
        n_layers = cache.n_layers
        if self.layer_budgets is None:
            return [t] * n_layers
        free = t - self.protected
        out = list(self.layer_budgets(free, n_layers))
        if len(out) != n_layers or not all(_is_int(int(v)) and int(v) >= 0 and int(v) == v for v in out):
            raise InputError(f"{type(self).__name__}: layer_budgets must return {n_layers} non-negative integers, "
                             f"got {out!r}.")
        return _water_fill([int(v) + self.protected for v in out],
                           [int(cache.head_counts(l).max()) for l in range(n_layers)])

    def _due(self, ctx: StepContext) -> bool:
        return self.at == "both" or (self.at == "prefill") == (ctx.step == 0)

    # ------------------------------------------------------------------ the policy
    def apply(self, cache: KVCache, ctx: StepContext) -> None:
        self.prepare(cache, ctx)
        if not self._due(ctx) or self.ratio == 0:
            return
        for layer, k in enumerate(self.targets(cache)):
            if cache.is_skipped(layer):  # its attention never ran (a dropped layer): nothing to evict
                continue
            counts = cache.head_counts(layer)
            over = int(counts.sum(-1).max()) > k * cache.n_kv_heads if self.head_budgets is not None \
                else int(counts.max()) > k
            if over:
                self.evict(cache, layer, k, ctx)

    def evict(self, cache: KVCache, layer: int, k: int, ctx: StepContext) -> None:
        """Keep the protected entries plus the best-scored others, ``k`` per head, in position order
        (with ``head_budgets``: ``k`` per head on average, split among the heads by it)."""
        pos = cache.positions[layer]
        scores = self.score(cache, layer, ctx)
        if tuple(scores.shape) != tuple(pos.shape):
            raise InputError(f"{type(self).__name__}.score returned shape {tuple(scores.shape)} for layer {layer}; "
                             f"expected (B, G, N) = {tuple(pos.shape)}.")
        valid = pos >= 0  # padding slots of a ragged layer have position -1
        protected = valid & ((pos < self.sinks) | (pos >= cache.next_position - self.window))
        s = scores.float().masked_fill(protected, float("inf")).masked_fill(~valid, float("-inf"))
        if self.head_budgets is not None:
            if pos.shape[0] != 1:
                raise InputError(f"{type(self).__name__}: per-head budgets (head_budgets) support batch size 1 only.")
            cache.keep_heads(layer, self.head_budgets(s[0], k))
            return
        k = min(max(k, int(protected.sum(-1).max())), pos.shape[-1])
        counts = valid.sum(-1)
        index = s.topk(k, dim=-1).indices.sort(dim=-1).values
        if bool((counts < k).any()):  # a ragged layer: heads holding fewer than k keep all theirs
            cache.keep_heads(layer, [index[0, g][valid[0, g, index[0, g]]] for g in range(pos.shape[1])])
            return
        cache.keep(layer, index)


@dataclass
class AttentionScorePolicy(ScorePolicy):
    """A ``ScorePolicy`` scored from observed attention (see the module docstring).

    Subclasses implement ``summarize(pattern (B, H, Tq, Tk)) -> (B, H, R, Tk)`` and
    ``combine(old (B, H, R', Tk) aligned to the new columns (zeros where absent), new, n_new)``;
    ``self.state[layer]`` then holds the combined (B, H, R, N) aligned with the cache.
    """

    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _pending: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _state_pos: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _seen: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def combine(self, old: torch.Tensor | None, new: torch.Tensor, n_new: int) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the observed attention (done automatically when a new prompt starts)."""
        self.state.clear()
        self._pending.clear()
        self._state_pos.clear()
        self._seen.clear()

    @property
    def observe_attention(self):
        """Callable (layer, pattern (B, H, Tq, Tk)): rows of the tokens being processed; only a summary
        is kept (and the layer budgets see the pattern too when they observe attention)."""
        budgets = getattr(self.layer_budgets, "observe_attention", None)

        def observe(layer: int, pattern: torch.Tensor) -> None:
            # contiguous copy: a summary that is a view (last rows) would keep the layer's whole
            # (B, H, T, T) pattern alive until apply(), i.e. every layer's at once (18 GB at 4k tokens)
            self._pending[layer] = (self.summarize(pattern.float()).contiguous().clone(), pattern.shape[-2])
            if budgets is not None:
                budgets(layer, pattern)

        return observe

    def prepare(self, cache: KVCache, ctx: StepContext) -> None:
        """Fold the attention observed during the last forward into the state, aligned to the cache.

        Without a new observation (applied twice, or after another policy evicted entries) the
        state is only re-aligned to the retained entries.
        """
        if ctx.step == 0 and self._pending:  # a new prompt: the old state belongs to another sequence
            self.state.clear()
            self._state_pos.clear()
            self._seen.clear()
        for layer in range(cache.n_layers):
            if cache.is_skipped(layer):  # a dropped attention: no pattern, no entries
                continue
            pos = cache.positions[layer]
            if layer in self._pending:
                new, n_new = self._pending.pop(layer)
                if new.shape[-1] != pos.shape[-1]:
                    raise InputError(f"{type(self).__name__}: the observed attention of layer {layer} covers "
                                     f"{new.shape[-1]} keys but the cache holds {pos.shape[-1]} entries; was the "
                                     f"cache edited between the forward pass and this policy?")
                old = self._aligned(layer, pos) if layer in self.state else None
                self.state[layer] = self.combine(old, new, n_new)
            elif layer in self.state and (pos.numel() == 0 or int(pos.max()) <= self._seen[layer]):
                self.state[layer] = self._aligned(layer, pos)
            else:
                raise InputError(
                    f"{type(self).__name__} scores entries from attention, but no attention pattern was observed "
                    f"for layer {layer}. Use it through model.generate/prefill(cache_policy=...) on a model whose "
                    f"attention exposes the 'pattern' hook in every layer; otherwise use a policy that needs no "
                    f"attention (streaming_llm, key_norm, random).")
            self._state_pos[layer] = pos.clone()
            self._seen[layer] = int(pos.max()) if pos.numel() else -1

    def _aligned(self, layer: int, pos: torch.Tensor) -> torch.Tensor:
        """The layer's state re-indexed onto positions ``pos`` (B, G, N); zeros where absent."""
        st, at = self.state[layer], self._state_pos[layer]
        if at.shape == pos.shape and torch.equal(at, pos):
            return st
        b, h, r, m = st.shape
        g = pos.shape[1]
        return lookup(st.reshape(b, g, (h // g) * r, m), at, pos).reshape(b, h, r, pos.shape[-1])

    def head_scores(self, layer: int) -> torch.Tensor:
        """(B, H, N) per-query-head score of every entry; default: sum of the state's rows."""
        return self.state[layer].sum(-2)

    def score(self, cache: KVCache, layer: int, ctx: StepContext) -> torch.Tensor:
        return group_reduce(self.head_scores(layer), cache.n_kv_heads, self.head_reduce)
