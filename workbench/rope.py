"""Re-rotating cached keys: move post-RoPE keys to new positions without recomputing them.

The cache stores keys *after* RoPE. In the rotate-half layout (Llama, Mistral, Qwen, SmolLM2) a
key at position p is ``k_p = k * cos(p θ) + rotate_half(k) * sin(p θ)`` on its first ``d_rot``
dims, where ``θ = cat(inv_freq, inv_freq)`` and ``rotate_half(x) = cat(-x2, x1)``; every pair of
dims (i, i + d_rot/2) turns by the angle ``p θ_i``. Rotations of one pair compose by adding angles,
so moving a key from position p to p' is the same rotation applied with ``δ = p' - p``:
``k_p' = k_p * cos(δ θ) + rotate_half(k_p) * sin(δ θ)``, exact up to float rounding (the angles are
computed in float64). Dims past ``d_rot`` (partial rotary) are left as they are.

``rerotate(model, cache)`` renumbers the entries a compressed cache kept so they sit on contiguous
positions, as if the evicted tokens had never been there (kvpress's ``KeyRerotationPress``): each
KV head's n kept entries get positions ``P - n .. P - 1`` in their original order, where P is the
largest count of any layer and head, and the next token is fed at position P. With the same count
everywhere (uniform eviction) this is positions 0 .. n - 1 and the next token at n. Right-aligning
keeps the newest entries at distance 1, 2, ... from the next token in every head.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .errors import InputError
from .kv_cache import KVCache, RaggedLayer


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """cat(-x2, x1) over the last dim (the rotate-half RoPE layout)."""
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Turn post-RoPE keys by ``delta`` positions.

    keys (..., N, d_head); delta (..., N) integer shifts (new position - old position);
    inv_freq (d_rot / 2,). Returns keys of the same shape and dtype, rotated on their first d_rot dims.
    """
    d_rot = 2 * inv_freq.numel()
    if d_rot > keys.shape[-1]:
        raise InputError(f"rotate_keys: the rotary dims ({d_rot}) exceed d_head ({keys.shape[-1]}).")
    if delta.shape != keys.shape[:-1]:
        raise InputError(f"rotate_keys: delta {tuple(delta.shape)} must match the keys' leading dims "
                         f"{tuple(keys.shape[:-1])}.")
    ang = delta.to(torch.float64)[..., None] * inv_freq.to(delta.device, torch.float64)  # (..., N, d_rot/2)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    k = keys[..., :d_rot].to(torch.float64)
    out = (k * cos + rotate_half(k) * sin).to(keys.dtype)
    return torch.cat([out, keys[..., d_rot:]], dim=-1) if d_rot < keys.shape[-1] else out


def _rope(model) -> torch.Tensor:
    if model.info.positional != "rotary":
        raise InputError(f"{model.info.name} has no rotary position embedding: there is nothing to re-rotate "
                         f"(its positions are added to the input, not to the cached keys).")
    found = model.rope_inv_freq()
    if found is None:
        raise InputError(f"{model.info.name}: no rotary inv_freq buffer found; cannot re-rotate its keys.")
    inv_freq, where = found
    scaling = 1.0
    for name, mod in model.hf.named_modules():  # RoPE variants that scale cos/sin cannot be composed by angle
        if f"hf:{name}.inv_freq" == where:
            scaling = float(getattr(mod, "attention_scaling", 1.0) or 1.0)
    if abs(scaling - 1.0) > 1e-12:
        raise InputError(f"{model.info.name}: its RoPE scales cos/sin by {scaling}; re-rotation by angle would "
                         f"apply that factor twice. Re-rotation supports unscaled RoPE only.")
    return inv_freq


def contiguous_positions(positions: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """New positions for ``rerotate``: per layer (B, G, N) with -1 padding kept; and P, the next position."""
    counts = [(p >= 0).sum(-1) for p in positions]
    top = max((int(c.max()) for c in counts if c.numel()), default=0)
    out = []
    for p, c in zip(positions, counts):
        valid = p >= 0
        rank = valid.long().cumsum(-1) - 1
        out.append(torch.where(valid, top - c[..., None] + rank, torch.full_like(p, -1)))
    return out, top


def rerotate(model, cache: KVCache) -> KVCache:
    """Renumber ``cache``'s entries to contiguous positions and re-rotate their keys, in place (module
    docstring); returns the cache. Only full-precision layers (dense or ragged) can be re-rotated:
    packed layers (quantized, sparse-coded) would have to be re-encoded."""
    inv_freq = _rope(model)
    for l in range(cache.n_layers):
        lay = cache.layer(l)
        if type(lay) not in (DynamicLayer, RaggedLayer):
            raise InputError(f"rerotate: layer {l} is stored as {type(lay).__name__}; only full-precision layers "
                             f"(dense or ragged) can be re-rotated. Re-rotate before quantizing, or do not re-rotate.")
    new_pos, top = contiguous_positions(cache.positions)
    for l in range(cache.n_layers):
        old = cache.positions[l]
        keys, values = cache.keys(l), cache.values(l)
        delta = torch.where(old >= 0, new_pos[l] - old, torch.zeros_like(old))
        cache.set_entries(l, rotate_keys(keys, delta.to(keys.device), inv_freq), values, new_pos[l])
    cache.next_position = top
    return cache


__all__ = ["rotate_half", "rotate_keys", "rerotate", "contiguous_positions"]
