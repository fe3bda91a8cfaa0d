"""The latent KV-cache layer of a converted (MLA) layer: it physically holds the latent and the kept RoPE part.

Per token and KV head it stores c (d_kv numbers, the joint latent of the non-rotated keys and the
values) and k_rope (r numbers, the rotated kept key dimensions, after RoPE): (d_kv + r) numbers instead
of the 2 x d_head of a full K/V layer. ``stored_tensors()`` returns exactly those two tensors, so
``KVCache.stats().physical_bytes`` counts them, next to the int64 position the cache keeps for every entry
and KV head (``KVCache.positions``, 8 bytes; see ``mha2mla.kv_bytes_mla``).

``keys``/``values`` are transient decompressed views (B, G, N, d_head) for readers that need ordinary
keys and values (cache inspection, comparisons): k = [k_rope at the kept dims, c up_k at the others],
v = c up_v. The converted attention never reads them: it scores queries against the latent directly.
Eviction policies cannot edit this layer (its entries are latents); they are refused with a clear error.
"""
from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicLayer

from workbench.errors import InputError


class LatentLayer(DynamicLayer):
    """latent (B, G, N, d_kv) and k_rope (B, G, N, r); decompression factors up_k (G, d_kv, e - r),
    up_v (G, d_kv, e) and dimension maps rope_idx (G, r), nope_idx (G, e - r) are references (not stored
    cache bytes)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, up_k: torch.Tensor, up_v: torch.Tensor, rope_idx: torch.Tensor, nope_idx: torch.Tensor,
                 d_head: int):
        self.up_k, self.up_v = up_k, up_v
        self.rope_idx, self.nope_idx = rope_idx, nope_idx
        self.d_head = d_head
        self.latent: torch.Tensor | None = None
        self.k_rope: torch.Tensor | None = None
        self.is_initialized = False
        self.dtype, self.device = up_v.dtype, up_v.device

    # ------------------------------------------------------------------ the converted attention's API
    def append(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, G, T, d_kv) latents and (B, G, T, r) rotated keys; returns everything held."""
        if self.latent is None:
            self.latent, self.k_rope = latent.contiguous(), k_rope.contiguous()
        else:
            self.latent = torch.cat([self.latent, latent], dim=-2)
            self.k_rope = torch.cat([self.k_rope, k_rope], dim=-2)
        self.is_initialized = True
        return self.latent, self.k_rope

    # ------------------------------------------------------------------ transformers' layer API
    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise InputError("This KV-cache layer holds MLA latents: only the converted (latent) attention can extend it. "
                         "Was the MHA2MLA conversion undone while this cache was still in use? Prefill again.")

    def get_seq_length(self) -> int:
        return 0 if self.latent is None else self.latent.shape[-2]

    def get_max_length(self) -> int:
        return -1

    def batch_heads(self) -> tuple[int, int]:
        return (1, self.up_v.shape[0]) if self.latent is None else tuple(self.latent.shape[:2])

    def stored_tensors(self) -> list[torch.Tensor]:
        return [] if self.latent is None else [self.latent, self.k_rope]

    def reset(self) -> None:
        self.latent = self.k_rope = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("A latent (MLA) cache layer cannot be cropped.")

    # ------------------------------------------------------------------ decompressed views
    @property
    def keys(self) -> torch.Tensor:
        if self.latent is None:
            return torch.empty(0)
        b, g, n, _ = self.latent.shape
        out = self.latent.new_zeros(b, g, n, self.d_head)
        nope = torch.einsum("bgnc,gcm->bgnm", self.latent, self.up_k)
        out.scatter_(-1, self.rope_idx[None, :, None, :].expand(b, g, n, -1).to(out.device), self.k_rope)
        out.scatter_(-1, self.nope_idx[None, :, None, :].expand(b, g, n, -1).to(out.device), nope)
        return out

    @keys.setter
    def keys(self, t) -> None:
        if t is not None:
            raise InputError("A latent (MLA) cache layer cannot be edited entry by entry: KV eviction and quantization "
                             "policies do not apply to MLA latents.")

    @property
    def values(self) -> torch.Tensor:
        if self.latent is None:
            return torch.empty(0)
        return torch.einsum("bgnc,gcm->bgnm", self.latent, self.up_v)

    @values.setter
    def values(self, t) -> None:
        if t is not None:
            raise InputError("A latent (MLA) cache layer cannot be edited entry by entry.")

    def __deepcopy__(self, memo):
        new = copy.copy(self)
        new.latent = None if self.latent is None else self.latent.clone()
        new.k_rope = None if self.k_rope is None else self.k_rope.clone()
        return new

    def __repr__(self) -> str:
        return (f"LatentLayer(tokens={self.get_seq_length()}, d_kv={self.up_v.shape[1]}, "
                f"rope_dims={self.rope_idx.shape[-1]})")


def latent_layer_of(cache, layer_idx: int, make) -> LatentLayer:
    """The ``LatentLayer`` at ``layer_idx`` of a transformers cache, created with ``make()`` where the slot is
    missing or never written; a slot already holding ordinary keys and values is refused."""
    layers = cache.layers
    while len(layers) <= layer_idx:
        layers.append(DynamicLayer())
    lay = layers[layer_idx]
    if isinstance(lay, LatentLayer):
        return lay
    if getattr(lay, "is_initialized", False) and lay.get_seq_length() > 0:
        raise InputError(f"Layer {layer_idx} of this KV cache already holds ordinary keys and values (it was filled "
                         "before the MHA2MLA conversion); prefill again with the conversion in force.")
    layers[layer_idx] = make()
    return layers[layer_idx]
