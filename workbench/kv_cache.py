"""The KV cache as a first-class object: inspect it, measure it, and let policies edit it.

``KVCache`` wraps the HF ``DynamicCache`` the model fills (keys are stored *after* RoPE, as in
HF) and tracks, for every retained entry, the original token position it came from. Cache
policies (``CachePolicy``) run after prefill and after every decoding step and may physically
drop, merge or quantize entries: ``keep`` gathers into fresh tensors so the old storage is freed,
and a policy may install its own layer object (e.g. packed quantized storage) with ``set_layer``.

Positions: evicting entries never renumbers anything. Retained keys keep the rotation of their
original position, and the next token is always fed at its true position (``next_position``),
so a compressed cache behaves like attention over a subset of the real context.

Ragged layers (per-head budgets): when KV heads of a layer keep different numbers of entries,
the layer is stored as a ``RaggedLayer`` (packed per-head storage, batch 1), so the evicted
bytes really go. Readers see it through a transient right-aligned padded view (B, G, N_max, d)
whose padding slots have position ``-1`` in ``positions``; ``generation.cached_forward`` masks
those slots per head in the attention scores, so they get exactly zero attention.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import pandas as pd
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .errors import InputError


class WorkbenchDynamicCache(DynamicCache):
    """DynamicCache whose mask covers the longest layer, so per-layer budgets may differ.

    ``get_seq_length`` also reports the longest layer (not layer 0's length): the model derives the
    new tokens' mask rows from it, and with layer 0 shorter than another layer the mask would
    otherwise hide that layer's newest entries."""

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max((lay.get_seq_length() for lay in self.layers), default=0)


class RaggedLayer(DynamicLayer):
    """A cache layer whose KV heads hold different numbers of entries (batch 1), packed flat.

    Storage: ``packed_keys`` and ``packed_values`` (sum_g N_g, d_head), head 0's entries first,
    then head 1's, ...; ``lengths`` = (N_0, ..., N_{G-1}) (Python ints). Nothing else is stored,
    so the physical bytes are exactly 2 * d_head * dtype_bytes * sum_g N_g.

    ``keys`` / ``values`` (and what ``update`` returns to the attention) are a transient
    right-aligned padded view (1, G, N_max, d): head g's entries fill its last N_g slots, the
    first N_max - N_g slots are zeros (masked per head by ``cached_forward``). ``update`` appends
    the new tokens to every head, so after it the new tokens occupy the last slots of every head.
    """

    is_compileable = False

    def __init__(self, packed_keys: torch.Tensor, packed_values: torch.Tensor, lengths):
        self.packed_keys, self.packed_values = packed_keys, packed_values
        self.lengths = tuple(int(n) for n in lengths)
        self.dtype, self.device = packed_keys.dtype, packed_keys.device
        self.is_initialized = True
        if packed_keys.shape != packed_values.shape or packed_keys.shape[0] != sum(self.lengths):
            raise InputError("RaggedLayer: packed keys/values must be (sum of lengths, d_head).")

    @classmethod
    def from_padded(cls, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> "RaggedLayer":
        """keys/values (1, G, N, d) and positions (1, G, N); slots with position < 0 are dropped."""
        if keys.shape[0] != 1:
            raise InputError("Ragged (per-head) KV storage supports batch size 1 only.")
        valid = positions[0] >= 0  # (G, N); boolean indexing keeps head-major, slot-ascending order
        return cls(keys[0][valid].contiguous(), values[0][valid].contiguous(), valid.sum(-1).tolist())

    # ------------------------------------------------------------------ the padded view
    @property
    def n_max(self) -> int:
        return max(self.lengths, default=0)

    def slot_mask(self) -> torch.Tensor:
        """(G, N_max) bool: True where a head holds an entry (right-aligned)."""
        n = self.n_max
        ln = torch.tensor(self.lengths, device=self.device)
        return torch.arange(n, device=self.device)[None, :] >= (n - ln)[:, None]

    def _padded(self, packed: torch.Tensor) -> torch.Tensor:
        g, d = len(self.lengths), packed.shape[-1]
        out = packed.new_zeros(g, self.n_max, d)
        out[self.slot_mask()] = packed
        return out[None]

    @property
    def keys(self) -> torch.Tensor:
        return self._padded(self.packed_keys)

    @keys.setter
    def keys(self, t) -> None:
        if t is not None:
            raise InputError("RaggedLayer: replace its entries with KVCache.set_entries or keep/keep_heads.")

    @property
    def values(self) -> torch.Tensor:
        return self._padded(self.packed_values)

    @values.setter
    def values(self, t) -> None:
        if t is not None:
            raise InputError("RaggedLayer: replace its entries with KVCache.set_entries or keep/keep_heads.")

    def padded_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Per-head positions (the valid ones of ``positions`` (1, G, N), in order) in the padded layout."""
        out = torch.full((1, len(self.lengths), self.n_max), -1, dtype=torch.long, device=positions.device)
        out[0][self.slot_mask().to(positions.device)] = positions[0][positions[0] >= 0]
        return out

    # ------------------------------------------------------------------ transformers' layer API
    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Append (1, G, T, d) new entries to every head; returns the padded (1, G, N_max + T, d) views."""
        t = key_states.shape[-2]
        ks, vs, off = [], [], 0
        for g, n in enumerate(self.lengths):
            ks += [self.packed_keys[off:off + n], key_states[0, g]]
            vs += [self.packed_values[off:off + n], value_states[0, g]]
            off += n
        self.packed_keys, self.packed_values = torch.cat(ks), torch.cat(vs)
        self.lengths = tuple(n + t for n in self.lengths)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.n_max

    def reset(self) -> None:
        self.packed_keys = self.packed_keys[:0]
        self.packed_values = self.packed_values[:0]
        self.lengths = tuple(0 for _ in self.lengths)

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("RaggedLayer cannot be cropped; evict entries with a cache policy instead.")

    def stored_tensors(self) -> list[torch.Tensor]:
        """Exactly the tensors this layer holds: the packed keys and values."""
        return [self.packed_keys, self.packed_values]

    def __repr__(self) -> str:
        return f"RaggedLayer(lengths={list(self.lengths)})"


class SkippedLayer(DynamicLayer):
    """The cache layer of a layer whose attention never runs (a skipped block or a dropped attention).

    It holds no entries and no storage: ``keys``/``values`` are empty (B, G, 0, d_head) tensors, so the
    layer adds nothing to ``KVCache.stats().physical_bytes``. ``KVCache`` installs one after a forward
    for every layer the model did not write to. Feeding it entries (the layer's attention is back on,
    but the cache was built without it) is refused: rebuild the cache with the same model edits.
    """

    is_compileable = False

    def __init__(self, batch: int, n_kv_heads: int, d_head: int, dtype: torch.dtype, device):
        self.dtype, self.device = dtype, device
        self.keys = torch.empty(batch, n_kv_heads, 0, d_head, dtype=dtype, device=device)
        self.values = torch.empty(batch, n_kv_heads, 0, d_head, dtype=dtype, device=device)
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise InputError("This KV cache was built while this layer's attention was skipped, so it holds no keys "
                         "or values for it; it cannot be used with that attention switched back on. Build a new "
                         "cache (prefill again) under the same model edits.")

    def get_seq_length(self) -> int:
        return 0

    def stored_tensors(self) -> list[torch.Tensor]:
        return []

    def __repr__(self) -> str:
        return "SkippedLayer()"


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
    """What every cache policy has; callers use these members and never probe for others.

    name: a label naming the policy and the settings that matter.
    observe_attention: None, or a callable (layer, pattern) that the generator feeds during every
        forward pass with each layer's attention rows of the tokens being processed, pattern
        (B, n_heads, n_new, N_l + n_new), so the policy keeps the reductions it needs (column sums
        for H2O, a last-row window for SnapKV) without anyone holding all patterns.
    prepare(cache, ctx): fold what the last forward produced into the policy's running state
        without evicting (``Sequential`` prepares every policy before any applies).
    apply(cache, ctx): edit ``cache`` in place (drop, merge, quantize entries).

    Subclass ``PolicyBase`` to get the defaults (no attention, nothing to prepare).
    """

    name: str
    observe_attention: Callable[[int, torch.Tensor], None] | None

    def prepare(self, cache: "KVCache", ctx: StepContext) -> None: ...

    def apply(self, cache: "KVCache", ctx: StepContext) -> None: ...


def check_policy(policy) -> None:
    """Raise InputError unless ``policy`` follows the ``CachePolicy`` protocol."""
    if not isinstance(policy, CachePolicy):
        raise InputError(f"A cache policy must follow workbench.CachePolicy (name, observe_attention, prepare, apply; "
                         f"subclass workbench.PolicyBase), got {type(policy).__name__}.")


class PolicyBase:
    """Defaults of the ``CachePolicy`` members: named after the class, observes no attention, prepares nothing."""

    observe_attention = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def prepare(self, cache: "KVCache", ctx: StepContext) -> None:
        return None

    def apply(self, cache: "KVCache", ctx: StepContext) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(cache, ctx).")


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
        self.hf_cache = hf_cache
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
        new = KVCache(copy.deepcopy(self.hf_cache), self.n_layers, self.n_kv_heads, self.d_head)
        new.positions = [p.clone() for p in self.positions]
        new.next_position = self.next_position
        return new

    def expand(self, k: int) -> None:
        """Broadcast a batch-1 cache to batch ``k`` in place (views; the next forward's append copies)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"expand(): k must be a positive integer, got {k!r}.")
        for l, lay in enumerate(self.hf_cache.layers):
            if isinstance(lay, RaggedLayer):
                raise InputError("expand(): a cache with per-head (ragged) layers supports batch size 1 only.")
            if lay.keys.shape[0] != 1:
                raise InputError(f"expand(): the cache already has batch size {lay.keys.shape[0]}; expand a batch-1 cache.")
            lay.keys = lay.keys.expand(k, *lay.keys.shape[1:])
            lay.values = lay.values.expand(k, *lay.values.shape[1:])
            self.positions[l] = self.positions[l].expand(k, *self.positions[l].shape[1:])

    def select(self, i: int) -> None:
        """Keep batch row ``i`` only, in place (a contiguous copy, so the other rows' storage is freed)."""
        for l, lay in enumerate(self.hf_cache.layers):
            b = lay.keys.shape[0]
            if not 0 <= i < b:
                raise InputError(f"select(): row {i} is out of range for batch size {b}.")
            lay.keys = lay.keys[i: i + 1].contiguous()
            lay.values = lay.values[i: i + 1].contiguous()
            self.positions[l] = self.positions[l][i: i + 1].contiguous()

    # ---------------------------------------------------------------- bookkeeping
    def _record_new(self, n_new: int) -> None:
        """Called by the generator after a forward appended ``n_new`` tokens to every layer."""
        self._mark_skipped()
        new = torch.arange(self.next_position, self.next_position + n_new)
        for l in range(self.n_layers):
            b, g = self._batch_heads(l)
            lay = self.hf_cache.layers[l]
            dev = getattr(lay, "device", None) or self.keys(l).device
            # a skipped layer received nothing: its positions stay empty (B, G, 0)
            add = new[: 0 if isinstance(lay, SkippedLayer) else n_new].to(dev).expand(b, g, -1)
            if l < len(self.positions):
                self.positions[l] = torch.cat([self.positions[l], add], dim=-1)
            else:
                self.positions.append(add.clone())
        self.next_position += n_new

    def _batch_heads(self, layer: int) -> tuple[int, int]:
        """(B, G) of a layer's entries; a layer object may say it without materializing its keys
        (``batch_heads()``, e.g. a latent layer that would have to decompress them)."""
        lay = self.hf_cache.layers[layer]
        fn = getattr(lay, "batch_heads", None)
        return tuple(fn()) if callable(fn) else tuple(lay.keys.shape[:2])

    def _mark_skipped(self) -> None:
        """Give every layer the last forward did not write to (its attention was skipped) a ``SkippedLayer``."""
        layers = self.hf_cache.layers
        written = [lay for lay in layers if getattr(lay, "is_initialized", True) and not isinstance(lay, SkippedLayer)]
        if not written:
            return
        ref = written[0]
        b = self._batch_heads(layers.index(ref))[0]
        dtype = getattr(ref, "dtype", None) or torch.float32
        device = getattr(ref, "device", None) or "cpu"
        for l in range(self.n_layers):
            if l >= len(layers):
                layers.append(SkippedLayer(b, self.n_kv_heads, self.d_head, dtype, device))
            elif not getattr(layers[l], "is_initialized", True):
                layers[l] = SkippedLayer(b, self.n_kv_heads, self.d_head, dtype, device)

    def is_skipped(self, layer: int) -> bool:
        """Whether ``layer`` holds nothing because its attention never ran (``SkippedLayer``)."""
        self._check_layer(layer)
        return layer < len(self.hf_cache.layers) and isinstance(self.hf_cache.layers[layer], SkippedLayer)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise InputError(f"Layer {layer} is out of range: the cache has {self.n_layers} layers.")

    # ---------------------------------------------------------------- reading
    def layer(self, layer: int):
        """The cache-layer object of ``layer`` (a transformers ``DynamicLayer``, a ``RaggedLayer``, or a
        policy's own layer such as a quantized one); replace it with ``set_layer``."""
        self._check_layer(layer)
        return self.hf_cache.layers[layer]

    def layers(self) -> list:
        """Every layer object, in order (see ``layer``)."""
        return list(self.hf_cache.layers)

    def keys(self, layer: int) -> torch.Tensor:
        self._check_layer(layer)
        return self.hf_cache.layers[layer].keys

    def values(self, layer: int) -> torch.Tensor:
        self._check_layer(layer)
        return self.hf_cache.layers[layer].values

    def seq_len(self, layer: int) -> int:
        return int(self.positions[layer].shape[-1]) if layer < len(self.positions) else 0

    # ---------------------------------------------------------------- editing
    def keep(self, layer: int, index: torch.Tensor) -> None:
        """Keep only the entries at ``index`` in ``layer``; everything else is freed.

        index: (N',) for the same entries in every head, or (B, n_kv_heads, N') per head
        (equal counts across heads). Order is preserved as given; pass sorted indices to keep
        the cache in position order. Indices refer to the layer's slots (for a ragged layer, its
        padded view; kept padding slots stay padding). For different counts per head use
        ``keep_heads``.
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

    def keep_heads(self, layer: int, indices) -> None:
        """Keep different entries in each KV head (batch 1): ``indices`` is a list of G 1-D index
        tensors into the layer's slots, one per KV head (sorted keeps position order). With unequal
        counts the layer becomes a ``RaggedLayer`` (packed; the evicted bytes are freed)."""
        self._check_layer(layer)
        k, v, pos = self.keys(layer), self.values(layer), self.positions[layer]
        b, g, n = pos.shape
        if b != 1:
            raise InputError("keep_heads(): per-head budgets support batch size 1 only.")
        if len(indices) != g:
            raise InputError(f"keep_heads(): give one index tensor per KV head ({g}), got {len(indices)}.")
        idx = [torch.as_tensor(i, device=k.device, dtype=torch.long).reshape(-1) for i in indices]
        if any(i.numel() and (int(i.min()) < 0 or int(i.max()) >= n) for i in idx):
            raise InputError(f"keep_heads(): indices must lie in [0, {n}) for layer {layer}.")
        lengths = [int(i.numel()) for i in idx]
        if len(set(lengths)) == 1:  # equal counts: an ordinary dense per-head gather
            self.keep(layer, torch.stack(idx)[None])
            return
        ks = torch.cat([k[0, h, i] for h, i in enumerate(idx)])
        vs = torch.cat([v[0, h, i] for h, i in enumerate(idx)])
        ps = torch.cat([pos[0, h, i] for h, i in enumerate(idx)])
        # drop kept padding slots, then store packed
        valid = ps >= 0
        lens, off = [], 0
        for ln in lengths:
            lens.append(int(valid[off:off + ln].sum()))
            off += ln
        lay = RaggedLayer(ks[valid].contiguous(), vs[valid].contiguous(), lens)
        self.hf_cache.layers[layer] = lay
        self.positions[layer] = lay.padded_positions(ps[valid].reshape(1, 1, -1))

    def set_entries(self, layer: int, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor) -> None:
        """Replace a layer's entries (for merging): keys/values (B, G, N, d_head), positions (B, G, N).

        Slots with position -1 are padding: if there are any the layer is stored ragged
        (``RaggedLayer``, batch 1); a ragged layer given no padding becomes dense again."""
        self._check_layer(layer)
        if keys.shape != values.shape or keys.shape[:3] != positions.shape:
            raise InputError("set_entries(): keys, values and positions must agree in (B, G, N).")
        lay = self.hf_cache.layers[layer]
        if positions.numel() and bool((positions < 0).any()):
            new = RaggedLayer.from_padded(keys, values, positions)
            self.hf_cache.layers[layer] = new
            self.positions[layer] = new.padded_positions(positions)
            return
        if isinstance(lay, RaggedLayer):
            lay = DynamicLayer()
            lay.lazy_initialization(keys, values)
            self.hf_cache.layers[layer] = lay
        lay.keys, lay.values = keys, values
        self.positions[layer] = positions

    def is_ragged(self, layer: int) -> bool:
        """Whether ``layer`` is stored per head (``RaggedLayer``)."""
        self._check_layer(layer)
        return isinstance(self.hf_cache.layers[layer], RaggedLayer)

    def head_counts(self, layer: int) -> torch.Tensor:
        """(B, G) entries each KV head of ``layer`` really holds (padding slots excluded)."""
        if layer >= len(self.positions):
            return torch.zeros(1, self.n_kv_heads, dtype=torch.long)
        return (self.positions[layer] >= 0).sum(-1)

    def blocked_slots(self, layer: int, n_new: int, longest: int) -> torch.Tensor | None:
        """(G, n_new, N_l + n_new) bool: slots the next forward's n_new queries must not see in ``layer``,
        or None when the model's own causal mask is already right.

        Two cases: padding slots of a ragged layer (per KV head), and, when several tokens are fed
        at once into a layer shorter than the longest one, the new tokens after each query (the
        model's mask is built for the longest layer, so in a shorter layer it would let query i see
        new tokens up to i + longest - N_l)."""
        if layer < len(self.hf_cache.layers) and isinstance(self.hf_cache.layers[layer], SkippedLayer):
            return None  # no attention runs in this layer: nothing to mask
        pos = self.positions[layer] if layer < len(self.positions) else None
        n = 0 if pos is None else pos.shape[-1]
        pad = pos is not None and bool((pos < 0).any())
        if not pad and (n_new == 1 or n >= longest):
            return None
        g = self.n_kv_heads
        dev = pos.device if pos is not None else None
        out = torch.zeros(g, n_new, n + n_new, dtype=torch.bool, device=dev)
        if pad:
            out[:, :, :n] = (pos[0] < 0)[:, None, :]
        if n_new > 1:
            out[:, :, n:] = torch.ones(n_new, n_new, dtype=torch.bool, device=dev).triu(1)
        return out

    def set_layer(self, layer: int, layer_obj) -> None:
        """Install a custom cache-layer object (a transformers ``CacheLayerMixin``), e.g. quantized."""
        self._check_layer(layer)
        self.hf_cache.layers[layer] = layer_obj

    # ---------------------------------------------------------------- measuring
    def stats(self) -> CacheStats:
        tokens = torch.stack([self.head_counts(l)[0].cpu() for l in range(self.n_layers)])
        # dtype and batch from the first layer holding entries (layer 0 may be skipped or a latent layer)
        held = next((l for l in range(self.n_layers) if self.seq_len(l)), None)
        dtype = None if held is None else getattr(self.hf_cache.layers[held], "dtype", None)
        dtype_bytes = 4 if held is None else (dtype.itemsize if isinstance(dtype, torch.dtype)
                                              else self.keys(held).element_size())
        b = self._batch_heads(held)[0] if held is not None else 1
        logical = int(tokens.sum()) * b * self.d_head * 2 * dtype_bytes
        seen, physical = set(), 0
        for lay in self.hf_cache.layers:
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
