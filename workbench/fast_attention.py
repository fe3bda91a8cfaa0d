"""Attention on the hook-free path, and the decode attention of the workbench's own cache layers.

The plain view (``workbench.plain``) runs the HF attention modules with ``_attn_implementation``
set to ``"workbench"``, registered here in transformers' ``AttentionInterface``. That function:

- for an ordinary cache layer (HF ``DynamicLayer``, or no cache) calls the architecture's own eager
  attention, after the two per-layer corrections the hooked path makes too (the model's mask cut to
  the layer's length, and the ``KVCache.blocked_slots`` of the layer set to the dtype's minimum), so
  the result is *identical* to the hooked path's;
- for a cache layer that computes its own attention (``PreallocatedLayer``, ``RaggedLayer``, the KIVI
  layer: it has ``append(k, v)`` and ``attend(query, scaling)``), the cache's ``update`` only stored
  the new entries and this function returns ``layer.attend(query, scaling)``: grouped-query attention
  straight from the layer's storage (no ``repeat_kv`` copy, no padded view, no dequantized copy of
  the whole cache), equal to the reference attention up to float rounding.

Which cache the running forward uses is set with ``plain_cache(cache)`` by
``workbench.generation.cached_forward``; the function is only ever called by the plain view.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import torch

NAME = "workbench"


class _Active(threading.local):
    cache = None  # the WorkbenchDynamicCache of the running plain forward, or None
    blocked: dict | None = None  # layer -> (G, n_new, N_l + n_new) bool slots to hide


_active = _Active()


@contextmanager
def plain_cache(cache, blocked: dict | None = None, layers: frozenset = frozenset()) -> Iterator[None]:
    """Run the enclosed plain forward against ``cache`` (a ``WorkbenchDynamicCache``): in ``layers`` (those
    whose attention is plain causal softmax attention), cache layers that attend themselves get only
    ``append`` calls from ``update`` and answer the attention with ``attend``; elsewhere every layer
    returns full tensors and the architecture's eager attention runs."""
    prev = (_active.cache, _active.blocked, cache.fast)
    _active.cache, _active.blocked = cache, blocked
    cache.fast = frozenset(layers)
    try:
        yield
    finally:
        cache.fast = prev[2]
        _active.cache, _active.blocked = prev[0], prev[1]


def attends_itself(layer) -> bool:
    """Whether a cache layer computes its own attention on the plain path (has ``append`` and ``attend``)."""
    return callable(getattr(layer, "attend", None)) and callable(getattr(layer, "append", None))


def causal_block(n_keys: int, n_new: int, device) -> torch.Tensor | None:
    """(n_new, n_keys) bool, True where query i (the i-th of the last n_new keys) must not look: the new
    keys after it. None when n_new == 1 (one query sees everything)."""
    if n_new <= 1:
        return None
    j = torch.arange(n_keys, device=device)
    i = torch.arange(n_new, device=device)
    return j[None, :] > (n_keys - n_new + i)[:, None]


def grouped_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float,
                      blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention with grouped KV heads, without expanding K/V to the query heads.

    query (B, H, T, d); keys, values (B, G, N, d) (any strides, e.g. a prefix view of a buffer);
    query head h reads KV head h // (H // G). blocked: None or bool broadcastable to (B, G, 1, T, N)
    (True = no attention). Returns (B, T, H, d), the layout HF attention functions return.
    """
    b, h, t, d = query.shape
    g, n = keys.shape[1], keys.shape[-2]
    r = h // g
    q = query.reshape(b, g, r * t, d)
    s = torch.matmul(q, keys.transpose(-1, -2)).mul_(scaling)  # (B, G, R*T, N)
    if blocked is not None:
        s = s.view(b, g, r, t, n).masked_fill_(blocked, torch.finfo(s.dtype).min).view(b, g, r * t, n)
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(values.dtype)
    out = torch.matmul(p, values)  # (B, G, R*T, d)
    return out.view(b, h, t, d).transpose(1, 2)


_EAGER: dict = {}  # attention class -> the eager attention function of its modeling file


def _eager_of(module):
    cls = type(module)
    fn = _EAGER.get(cls)
    if fn is None:
        fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if fn is None:
            from transformers.models.llama.modeling_llama import eager_attention_forward as fn
        _EAGER[cls] = fn
    return fn


def workbench_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``AttentionInterface`` entry of the plain view (see the module docstring)."""
    layer_idx = getattr(module, "layer_idx", None)
    cache = _active.cache
    blocked = None
    if cache is not None and layer_idx is not None:
        if layer_idx in cache.fast and layer_idx < len(cache.layers) and attends_itself(cache.layers[layer_idx]):
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            return cache.layers[layer_idx].attend(query, scaling), None
        if _active.blocked:
            blocked = _active.blocked.get(layer_idx)
    n_k = key.shape[-2]
    if attention_mask is not None and attention_mask.shape[-1] != n_k:
        attention_mask = attention_mask[..., :n_k]  # the mask spans the longest layer (as in the hooked path)
    if blocked is not None:  # (G, Tq, Tk) -> per query head, set to the dtype's minimum (as the hooked path does)
        m = blocked.to(query.device).repeat_interleave(query.shape[1] // blocked.shape[0], dim=0)[None]
        base = attention_mask if attention_mask is not None else query.new_zeros(())
        attention_mask = torch.where(m, torch.finfo(query.dtype).min, base)
    return _eager_of(module)(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def register() -> None:
    """Register ``workbench_attention`` under ``NAME`` in transformers' attention registry (idempotent)."""
    from transformers import AttentionInterface

    if AttentionInterface._global_mapping.get(NAME) is not workbench_attention:
        AttentionInterface.register(NAME, workbench_attention)
