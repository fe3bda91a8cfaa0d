"""The KV cache as a first-class object: inspect it, measure it, and let policies edit it.

``KVCache`` wraps the HF ``DynamicCache`` the model fills (keys are stored *after* RoPE, as in
HF) and tracks, for every retained entry, the original token position it came from. Cache
policies (``CachePolicy``) run after prefill and after every decoding step and may physically
drop, merge or quantize entries: ``keep`` gathers into fresh tensors so the old storage is freed,
and a policy may install its own layer object (e.g. packed quantized storage) with ``set_layer``.

Positions: evicting entries never renumbers anything. Retained keys keep the rotation of their
original position, and the next token is always fed at its true position (``next_position``),
so a compressed cache behaves like attention over a subset of the real context.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pandas as pd
import torch
from transformers import DynamicCache

from .errors import InputError


class WorkbenchDynamicCache(DynamicCache):
    """DynamicCache whose mask covers the longest layer, so per-layer budgets may differ."""

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        longest = max((lay.get_seq_length() for lay in self.layers), default=0)
        return longest + query_length, 0


def _storage_key(t: torch.Tensor) -> tuple:
    st = t.untyped_storage()
    return (t.device.type, st.data_ptr(), st.nbytes())


def tensors_of(layer) -> list[torch.Tensor]:
    """Every tensor a cache layer object holds (its physical footprint)."""
    extra = getattr(layer, "stored_tensors", None)
    if callable(extra):
        return list(extra())
    return [v for v in vars(layer).values() if isinstance(v, torch.Tensor)]


@dataclass
class StepContext:
    """What a policy knows when it is called.

    step: 0 right after prefill, then 1, 2, ... after each decoding step.
    n_new: tokens just appended (the prompt length at step 0, 1 while decoding).
    """

    step: int
    n_new: int


@runtime_checkable
class CachePolicy(Protocol):
    """Anything with ``apply(cache, ctx)``; it edits ``cache`` in place.

    Optional: ``name`` (str); ``observe_attention(layer, pattern)``: when present, the generator
    calls it during every forward pass with each layer's attention rows of the tokens being
    processed, pattern (B, n_heads, n_new, N_l + n_new), so the policy can keep the reductions it
    needs (column sums for H2O, a last-row window for SnapKV) without anyone holding all patterns.
    """

    def apply(self, cache: "KVCache", ctx: StepContext) -> None: ...


@dataclass(frozen=True)
class CacheStats:
    """Token counts and bytes of a cache at one moment.

    tokens: (n_layers, n_kv_heads) retained entries per layer and KV head.
    logical_bytes: bytes of the K and V entries as full-precision tensors of the cache dtype.
    physical_bytes: bytes of the storage the cache really holds (measured from its tensors).
    """

    tokens: torch.Tensor
    logical_bytes: int
    physical_bytes: int
    full_tokens: int  # tokens seen so far (what an uncompressed cache would hold per head)

    @property
    def compression(self) -> float:
        """Retained fraction of the uncompressed cache's entries."""
        return float(self.tokens.float().mean()) / max(self.full_tokens, 1)

    def to_frame(self) -> pd.DataFrame:
        l, g = self.tokens.shape
        return pd.DataFrame([{"layer": i, "kv_head": j, "tokens": int(self.tokens[i, j])}
                             for i in range(l) for j in range(g)])


class KVCache:
    """A model's KV cache plus the original position of every retained entry.

    keys(l), values(l): (B, n_kv_heads, N_l, d_head); positions[l]: (B, n_kv_heads, N_l) long.
    """

    def __init__(self, hf_cache: DynamicCache, n_layers: int, n_kv_heads: int, d_head: int):
        self.hf = hf_cache
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.d_head = d_head
        self.positions: list[torch.Tensor] = []
        self.next_position = 0

    @classmethod
    def empty(cls, model) -> "KVCache":
        i = model.info
        return cls(WorkbenchDynamicCache(), i.n_layers, i.n_kv_heads, i.d_head)

    def copy(self) -> "KVCache":
        """An independent copy: every cache layer (any layer type) and the positions are cloned, so
        editing or extending the copy leaves this cache untouched (for trying several policies on one
        prefill)."""
        new = KVCache(copy.deepcopy(self.hf), self.n_layers, self.n_kv_heads, self.d_head)
        new.positions = [p.clone() for p in self.positions]
        new.next_position = self.next_position
        return new

    # ---------------------------------------------------------------- bookkeeping
    def _record_new(self, n_new: int) -> None:
        """Called by the generator after a forward appended ``n_new`` tokens to every layer."""
        new = torch.arange(self.next_position, self.next_position + n_new)
        for l in range(self.n_layers):
            b, g = self.keys(l).shape[:2]
            add = new.to(self.keys(l).device).expand(b, g, n_new)
            if l < len(self.positions):
                self.positions[l] = torch.cat([self.positions[l], add], dim=-1)
            else:
                self.positions.append(add.clone())
        self.next_position += n_new

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise InputError(f"Layer {layer} is out of range: the cache has {self.n_layers} layers.")

    # ---------------------------------------------------------------- reading
    def keys(self, layer: int) -> torch.Tensor:
        self._check_layer(layer)
        return self.hf.layers[layer].keys

    def values(self, layer: int) -> torch.Tensor:
        self._check_layer(layer)
        return self.hf.layers[layer].values

    def seq_len(self, layer: int) -> int:
        return int(self.positions[layer].shape[-1]) if layer < len(self.positions) else 0

    # ---------------------------------------------------------------- editing
    def keep(self, layer: int, index: torch.Tensor) -> None:
        """Keep only the entries at ``index`` in ``layer``; everything else is freed.

        index: (N',) for the same entries in every head, or (B, n_kv_heads, N') per head
        (equal counts across heads). Order is preserved as given; pass sorted indices to keep
        the cache in position order.
        """
        self._check_layer(layer)
        k, v, pos = self.keys(layer), self.values(layer), self.positions[layer]
        n = k.shape[-2]
        index = torch.as_tensor(index, device=k.device, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise InputError(f"keep(): indices must lie in [0, {n}) for layer {layer}.")
        if index.ndim == 1:
            new_k, new_v, new_p = (k.index_select(2, index).contiguous(), v.index_select(2, index).contiguous(),
                                   pos.index_select(2, index).contiguous())
        elif index.ndim == 3 and index.shape[:2] == k.shape[:2]:
            gi = index[..., None].expand(*index.shape, k.shape[-1])
            new_k, new_v = torch.gather(k, 2, gi).contiguous(), torch.gather(v, 2, gi).contiguous()
            new_p = torch.gather(pos, 2, index).contiguous()
        else:
            raise InputError(f"keep(): index must be (N,) or (B, {self.n_kv_heads}, N), got {tuple(index.shape)}.")
        self.set_entries(layer, new_k, new_v, new_p)

    def set_entries(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Replace a layer's entries (for merging): keys/values (B, G, N, d_head), positions (B, G, N)."""
        self._check_layer(layer)
        if keys.shape != values.shape or keys.shape[:3] != positions.shape:
            raise InputError("set_entries(): keys, values and positions must agree in (B, G, N).")
        lay = self.hf.layers[layer]
        lay.keys, lay.values = keys, values
        self.positions[layer] = positions

    def set_layer(self, layer: int, layer_obj) -> None:
        """Install a custom cache-layer object (a transformers ``CacheLayerMixin``), e.g. quantized."""
        self._check_layer(layer)
        self.hf.layers[layer] = layer_obj

    # ---------------------------------------------------------------- measuring
    def stats(self) -> CacheStats:
        tokens = torch.tensor([[self.seq_len(l)] * self.n_kv_heads for l in range(self.n_layers)])
        dtype_bytes = self.keys(0).element_size() if self.n_layers and self.seq_len(0) else 4
        b = self.keys(0).shape[0] if self.positions else 1
        logical = int(tokens.sum()) * b * self.d_head * 2 * dtype_bytes
        seen, physical = set(), 0
        for lay in self.hf.layers:
            for t in tensors_of(lay):
                key = _storage_key(t)
                if key not in seen and t.numel():
                    seen.add(key)
                    physical += t.untyped_storage().nbytes()
        return CacheStats(tokens, logical, physical, self.next_position)

    def __repr__(self) -> str:
        s = self.stats()
        return (f"KVCache(layers={self.n_layers}, kv_heads={self.n_kv_heads}, seen={self.next_position}, "
                f"kept≈{s.compression:.0%}, logical={s.logical_bytes / 2**20:.2f} MiB, "
                f"physical={s.physical_bytes / 2**20:.2f} MiB)")
