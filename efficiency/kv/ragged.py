"""Per-head (ragged) KV storage: a reference decode attention over it, and its byte formula.

The storage itself is ``workbench.kv_cache.RaggedLayer`` (packed per-KV-head keys and values,
batch 1), installed by ``KVCache.keep_heads`` when the KV heads of a layer keep different counts
(e.g. ``AdaKV``). On the hooked path the attention runs over a transient right-aligned padded view
whose padding slots are masked per head (``generation.cached_forward``); on the hook-free path the
layer attends from its packed storage itself (``RaggedLayer.attend``: one pass, an additive bias
keeping each query head on its own KV head's filled slots). ``ragged_attention`` here computes the same decode attention directly from the
packed storage, head by head (query head h reads KV head h // group_size), as an independent
reference.
"""
from __future__ import annotations

import math

import torch

from workbench.errors import InputError
from workbench.kv_cache import KVCache, RaggedLayer

__all__ = ["RaggedLayer", "ragged_attention", "ragged_bytes_formula"]


def ragged_attention(q: torch.Tensor, layer: RaggedLayer, scale: float | None = None) -> torch.Tensor:
    """Attention of queries over a ragged layer, per KV head, without padding.

    q: (H, Tq, d) rotated queries of the new tokens, which attend to *all* of each head's entries
    (i.e. after ``update`` appended them: the last Tq entries of every head are the new tokens,
    causally masked among themselves). Returns z (H, Tq, d): for query head h, the softmax-weighted
    sum of KV head ``h // (H // G)``'s values.
    """
    h, tq, d = q.shape
    g = len(layer.lengths)
    if h % g:
        raise InputError(f"ragged_attention: {h} query heads cannot be grouped over {g} KV heads.")
    scale = 1 / math.sqrt(d) if scale is None else scale
    out, off = [], [0]
    for n in layer.lengths:
        off.append(off[-1] + n)
    for qh in range(h):
        kv = qh // (h // g)
        k = layer.packed_keys[off[kv]:off[kv + 1]]
        v = layer.packed_values[off[kv]:off[kv + 1]]
        n = k.shape[0]
        s = (q[qh] @ k.T) * scale  # (Tq, n)
        future = torch.ones(tq, tq, dtype=torch.bool, device=q.device).triu(1)
        s[:, n - tq:] = s[:, n - tq:].masked_fill(future, float("-inf"))
        out.append(torch.softmax(s.float(), -1).to(v.dtype) @ v)
    return torch.stack(out)


def ragged_bytes_formula(cache: KVCache) -> int:
    """Physical bytes a cache must hold when every layer keeps exactly its retained entries:
    sum over layers and KV heads of 2 (K and V) * N_{l,g} * d_head * dtype bytes (* batch), plus the
    int64 position index, which a ragged layer keeps padded to its longest head: 8 * B * G * max_g N_{l,g}
    per layer (8 * B * G * N_l for a dense layer)."""
    st = cache.stats()
    b = cache.positions[0].shape[0] if cache.positions else 1
    dtype_bytes = cache.keys(0).element_size() if cache.positions else 4
    index = sum(b * cache.n_kv_heads * int(p.shape[-1]) * 8 for p in cache.positions)
    return int(st.tokens.sum()) * b * 2 * cache.d_head * dtype_bytes + index
