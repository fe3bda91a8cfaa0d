"""The KV cache as a first-class object: inspect it, measure it, and let policies edit it.

``KVCache`` wraps the HF ``DynamicCache`` the model fills (keys are stored *after* RoPE, as in
HF) and tracks, for every retained entry, the original token position it came from. Cache
policies (``CachePolicy``) run after prefill and after every decoding step and may physically
drop, merge or quantize entries: ``keep`` gathers the kept entries, and a policy may install its
own layer object (e.g. packed quantized storage) with ``set_layer``.

Two kinds of cache: a growing one (``KVCache.empty``: HF ``DynamicLayer``s, one ``torch.cat`` per
step, evicted entries freed at once) and a preallocated one (``KVCache.preallocated(model,
capacity)``: ``PreallocatedLayer`` buffers sized once for prompt + new tokens, written in place;
eviction compacts the kept entries inside the buffers and shrinks them to kept + the room the
remaining tokens need, so the bytes held are the compressed size plus that room).

Positions: evicting entries never renumbers anything. Retained keys keep the rotation of their
original position, and the next token is always fed at its true position (``next_position``),
so a compressed cache behaves like attention over a subset of the real context.

Ragged layers (per-head budgets): when KV heads of a layer keep different numbers of entries,
the layer is stored as a ``RaggedLayer`` (packed per-head storage, batch 1), so the evicted
bytes really go. Readers see it through a transient right-aligned padded view (B, G, N_max, d)
whose padding slots have position ``-1`` in ``positions``; on the hooked path
``generation.cached_forward`` masks those slots per head in the attention scores, so they get
exactly zero attention; on the hook-free path the layer attends from its packed storage itself.

Layers that compute their own attention (``PreallocatedLayer``, ``RaggedLayer``, the KIVI layer)
implement ``append(k, v)`` and ``attend(query, scaling)`` besides HF's ``update``; see
``workbench.fast_attention``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Callable, Protocol, runtime_checkable

import pandas as pd
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .errors import InputError
from .fast_attention import attends_itself, causal_block, grouped_attention


class WorkbenchDynamicCache(DynamicCache):
    """DynamicCache whose mask covers the longest layer, so per-layer budgets may differ.

    ``get_seq_length`` also reports the longest layer (not layer 0's length): the model derives the
    new tokens' mask rows from it, and with layer 0 shorter than another layer the mask would
    otherwise hide that layer's newest entries.

    ``fast`` holds, while the plain (hook-free) path runs a forward against this cache
    (``workbench.fast_attention.plain_cache``), the layer indices whose attention is plain causal
    softmax attention: there a cache layer that computes its own attention only stores the new
    entries in ``update`` (``append``) and answers the attention later (``attend``)."""

    fast: frozenset = frozenset()

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max((lay.get_seq_length() for lay in self.layers), default=0)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if layer_idx in self.fast:
            while len(self.layers) <= layer_idx:
                self.layers.append(self.layer_class_to_replicate())
            lay = self.layers[layer_idx]
            if attends_itself(lay):
                if not lay.is_initialized:
                    lay.lazy_initialization(key_states, value_states)
                lay.append(key_states, value_states)
                return key_states, value_states  # unused: the attention reads the layer itself
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


class PreallocatedLayer(DynamicLayer):
    """A cache layer whose entries live in buffers allocated once, (B, G, capacity, d_head) for K and V.

    The first ``n`` slots hold the entries (``keys`` / ``values`` are views of them, no copy); new
    tokens are written into the next free slots, so decoding never reallocates; eviction writes the
    kept entries back into the first slots (``set_entries``: compaction in place) and, when the buffer
    has become much larger than needed, shrinks it once to ``kept + room``. A buffer that runs out of
    slots grows (to at least twice its capacity). ``positions`` (B, G, capacity) tracks the original
    position of every slot (a view is what ``KVCache.positions`` holds).

    Physical bytes (``stored_tensors``) are the whole buffers: entries plus the room reserved for the
    tokens still to come. On the plain path ``attend`` computes grouped-query attention directly over
    the ``n`` filled slots.
    """

    is_compileable = False

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 1)
        self._k = self._v = self._p = None
        self.n = 0
        self.is_initialized = False

    # ------------------------------------------------------------------ storage
    def lazy_initialization(self, key_states, value_states) -> None:
        b, g, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self._alloc(b, g, d, self.capacity)
        self.is_initialized = True

    def _alloc(self, b: int, g: int, d: int, capacity: int) -> None:
        old = (self._k, self._v, self._p, self.n)
        self._k = torch.empty(b, g, capacity, d, dtype=self.dtype, device=self.device)
        self._v = torch.empty(b, g, capacity, d, dtype=self.dtype, device=self.device)
        self._p = torch.full((b, g, capacity), -1, dtype=torch.long, device=self.device)
        self.capacity = capacity
        ok, ov, op, n = old
        if ok is not None and ok.shape[:2] == (b, g) and n:
            n = min(n, capacity)
            self._k[:, :, :n].copy_(ok[:, :, :n])
            self._v[:, :, :n].copy_(ov[:, :, :n])
            self._p[:, :, :n].copy_(op[:, :, :n])
            self.n = n
        else:
            self.n = 0

    def resize(self, capacity: int) -> None:
        """Reallocate the buffers to ``capacity`` slots (>= the entries held), keeping the entries."""
        capacity = max(int(capacity), self.n, 1)
        if self.is_initialized and capacity != self.capacity:
            b, g, _, d = self._k.shape
            self._alloc(b, g, d, capacity)
        else:
            self.capacity = capacity

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write (B, G, T, d) new entries into the next T slots (their positions come with ``record``)."""
        t = key_states.shape[-2]
        if self.n + t > self.capacity:
            self.resize(max(self.n + t, 2 * self.capacity))
        self._k[:, :, self.n:self.n + t].copy_(key_states)
        self._v[:, :, self.n:self.n + t].copy_(value_states)
        self.n += t

    def record(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions (B, G, T) of the T entries just appended; returns the (B, G, n) view of all positions."""
        t = positions.shape[-1]
        self._p[:, :, self.n - t:self.n].copy_(positions)
        return self._p[:, :, :self.n]

    def set_entries(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                    room: int = 0) -> torch.Tensor:
        """Hold exactly these (B, G, N, d) entries, in place when they fit (compaction); the buffer is
        shrunk to N + ``room`` when it holds over an eighth more than that. Returns the positions view."""
        b, g, n, d = keys.shape
        if self._k is not None and self._k.untyped_storage().data_ptr() in (
                keys.untyped_storage().data_ptr(), values.untyped_storage().data_ptr()):
            keys, values = keys.clone(), values.clone()  # a view of our own buffer: copy before overwriting
        positions = positions.clone() if self._p is not None and \
            positions.untyped_storage().data_ptr() == self._p.untyped_storage().data_ptr() else positions
        need = n + max(int(room), 0)
        self.dtype, self.device = keys.dtype, keys.device
        if self._k is None or self._k.shape[:2] != (b, g) or self._k.shape[-1] != d or self._k.dtype != keys.dtype:
            self._k = None
            self._alloc(b, g, d, max(need, 1))
        elif self.capacity < n or self.capacity > need + max(need // 8, 16):
            self.n = 0
            self._alloc(b, g, d, max(need, 1))
        self._k[:, :, :n].copy_(keys)
        self._v[:, :, :n].copy_(values)
        self._p[:, :, :n].copy_(positions)
        self.n = n
        self.is_initialized = True
        return self._p[:, :, :n]

    # ------------------------------------------------------------------ views
    @property
    def keys(self):
        return None if self._k is None else self._k[:, :, :self.n]

    @keys.setter
    def keys(self, t) -> None:
        if t is None:  # transformers' reset()
            self.n = 0
            return
        pos = self._p[:, :, :self.n] if self._p is not None and self.n == t.shape[-2] else \
            torch.full(t.shape[:3], -1, dtype=torch.long, device=t.device)
        v = self._v[:, :, :self.n] if self._v is not None and self.n == t.shape[-2] else torch.zeros_like(t)
        self.set_entries(t, v, pos, room=self.capacity - t.shape[-2])

    @property
    def values(self):
        return None if self._v is None else self._v[:, :, :self.n]

    @values.setter
    def values(self, t) -> None:
        if t is None:
            self.n = 0
            return
        if self._v is None or self.n != t.shape[-2] or self._v.shape[:2] != t.shape[:2]:
            raise InputError("PreallocatedLayer: set keys before values (same entry count), or use set_entries.")
        if self._v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            t = t.clone()
        self._v[:, :, :self.n].copy_(t)

    @property
    def positions(self) -> torch.Tensor | None:
        return None if self._p is None else self._p[:, :, :self.n]

    # ------------------------------------------------------------------ transformers' layer API
    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.append(key_states, value_states)
        return self.keys, self.values

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of the (B, H, T, d) queries of the T entries just appended over the n held; (B, T, H, d)."""
        t = query.shape[-2]
        return grouped_attention(query, self._k[:, :, :self.n], self._v[:, :, :self.n], scaling,
                                 causal_block(self.n, t, query.device))

    def get_seq_length(self) -> int:
        return self.n if self.is_initialized else 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.n = 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop() takes a negative number of tokens to remove.")
        self.n = max(0, self.n - abs(tokens_to_remove))

    def stored_tensors(self) -> list[torch.Tensor]:
        """The K and V buffers (entries plus reserved room)."""
        return [] if self._k is None else [self._k, self._v]

    def __repr__(self) -> str:
        return f"PreallocatedLayer(entries={self.n}, capacity={self.capacity})"


class RaggedLayer(DynamicLayer):
    """A cache layer whose KV heads hold different numbers of entries (batch 1), packed per head.

    Storage: ``_k`` and ``_v`` (sum_g C_g, d_head), head g's segment of C_g = N_g + room slots
    starting at offset sum_{g' < g} C_{g'}, its first N_g slots filled; ``lengths`` = (N_0, ...,
    N_{G-1}) (Python ints). With ``room=0`` (a growing cache) nothing else is stored, so the
    physical bytes are exactly 2 * d_head * dtype_bytes * sum_g N_g; in a preallocated cache every
    head keeps ``room`` free slots for the tokens still to come, so appending never reallocates.
    ``packed_keys`` / ``packed_values`` give the (sum_g N_g, d) entries, head 0's first.

    ``keys`` / ``values`` (and what ``update`` returns to the hooked attention) are a transient
    right-aligned padded view (1, G, N_max, d): head g's entries fill its last N_g slots, the
    first N_max - N_g slots are zeros (masked per head by ``cached_forward``). On the plain path
    ``attend`` computes the attention per KV head straight from the packed segments, without padding.
    ``update`` / ``append`` add the new tokens to every head, so they occupy the last slots of every head.
    """

    is_compileable = False

    def __init__(self, packed_keys: torch.Tensor, packed_values: torch.Tensor, lengths, room: int = 0):
        self.lengths = tuple(int(n) for n in lengths)
        self.dtype, self.device = packed_keys.dtype, packed_keys.device
        self.is_initialized = True
        self._pos, self._pos_w = None, 0  # positions buffer (see padded_positions) and its filled width
        if packed_keys.shape != packed_values.shape or packed_keys.shape[0] != sum(self.lengths):
            raise InputError("RaggedLayer: packed keys/values must be (sum of lengths, d_head).")
        self._store(packed_keys, packed_values, max(int(room), 0))

    def _store(self, packed_k: torch.Tensor, packed_v: torch.Tensor, room: int) -> None:
        """Lay the packed (sum N_g, d) entries out with ``room`` free slots after every head's segment."""
        self.room = room
        self._caps = tuple(n + room for n in self.lengths)
        offs = [0]
        for c in self._caps:
            offs.append(offs[-1] + c)
        self._offs = tuple(offs)
        self._set_next_rows()
        self._bias = None  # built at the first decoding step, when the number of query heads is known
        if room == 0:
            self._k, self._v = packed_k.contiguous(), packed_v.contiguous()
            return
        d = packed_k.shape[-1]
        self._k = packed_k.new_zeros(offs[-1], d)  # zeros in the room: finite values under the mask
        self._v = packed_v.new_zeros(offs[-1], d)
        idx = self._filled_index()
        self._k.index_copy_(0, idx, packed_k)
        self._v.index_copy_(0, idx, packed_v)

    def _build_bias(self, h: int) -> None:
        """(H, sum C) additive score bias for ``h`` query heads: 0 where query head i's KV head holds an
        entry, -inf elsewhere (other heads' segments, free slots). Bookkeeping, not counted in the bytes."""
        r = h // len(self.lengths)
        self._bias = torch.full((h, self._offs[-1]), float("-inf"), dtype=self._k.dtype, device=self.device)
        for g, (o, n) in enumerate(zip(self._offs, self.lengths)):
            self._bias[g * r:(g + 1) * r, o:o + n] = 0.0
        self._g_idx = torch.arange(len(self.lengths), device=self.device)

    def _set_next_rows(self) -> None:
        """(G,) storage row of every head's next free slot (a decode step writes there; bookkeeping)."""
        self._next_rows = torch.tensor([o + n for o, n in zip(self._offs, self.lengths)], dtype=torch.long,
                                       device=self.device)

    def _filled_index(self) -> torch.Tensor:
        """(sum N_g,) storage rows holding entries, head by head."""
        return torch.cat([torch.arange(o, o + n) for o, n in zip(self._offs, self.lengths)]).to(self.device)

    @property
    def packed_keys(self) -> torch.Tensor:
        return self._k if self.room == 0 and self._caps == self.lengths else self._k.index_select(0, self._filled_index())

    @property
    def packed_values(self) -> torch.Tensor:
        return self._v if self.room == 0 and self._caps == self.lengths else self._v.index_select(0, self._filled_index())

    @classmethod
    def from_padded(cls, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                    room: int = 0) -> "RaggedLayer":
        """keys/values (1, G, N, d) and positions (1, G, N); slots with position < 0 are dropped."""
        if keys.shape[0] != 1:
            raise InputError("Ragged (per-head) KV storage supports batch size 1 only.")
        valid = positions[0] >= 0  # (G, N); boolean indexing keeps head-major, slot-ascending order
        return cls(keys[0][valid].contiguous(), values[0][valid].contiguous(), valid.sum(-1).tolist(), room)

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
        """Per-head positions (the valid ones of ``positions`` (1, G, N), in order) in the padded layout.

        Returned as a view of a buffer with ``room`` free columns, so ``record`` adds the positions of
        decoded tokens in place (bookkeeping, like the positions of a dense layer; not in the bytes)."""
        w = self.n_max
        buf = torch.full((1, len(self.lengths), w + self.room), -1, dtype=torch.long, device=positions.device)
        buf[0, :, :w][self.slot_mask().to(positions.device)] = positions[0][positions[0] >= 0]
        self._pos, self._pos_w = buf, w
        return buf[:, :, :w]

    def owns(self, positions: torch.Tensor) -> bool:
        """Whether ``positions`` is the current view of this layer's positions buffer."""
        return (self._pos is not None and positions.data_ptr() == self._pos.data_ptr()
                and positions.shape[-1] == self._pos_w)

    @property
    def positions(self) -> torch.Tensor | None:
        """The (1, G, N_max) view of the positions buffer (None before ``padded_positions``)."""
        return None if self._pos is None else self._pos[:, :, :self._pos_w]

    def record(self, new_positions: torch.Tensor) -> torch.Tensor | None:
        """Write the (1, G, T) positions of the T tokens just appended into the buffer's free columns and
        return the new view; None when the buffer has no room left (the caller then concatenates)."""
        t = new_positions.shape[-1]
        buf = self._pos
        if buf is None or self._pos_w + t > buf.shape[-1]:
            self._pos = None
            return None
        buf[:, :, self._pos_w:self._pos_w + t].copy_(new_positions)
        self._pos_w += t
        return buf[:, :, :self._pos_w]

    # ------------------------------------------------------------------ transformers' layer API
    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Add (1, G, T, d) new entries to every head: written into each head's free slots, or (no room
        left) by re-laying the storage out (exactly sized when ``room`` is 0, else with fresh room)."""
        t = key_states.shape[-2]
        if any(n + t > c for n, c in zip(self.lengths, self._caps)):
            ks, vs = [], []
            for g, (o, n) in enumerate(zip(self._offs, self.lengths)):
                ks += [self._k[o:o + n], key_states[0, g]]
                vs += [self._v[o:o + n], value_states[0, g]]
            self.lengths = tuple(n + t for n in self.lengths)
            self._store(torch.cat(ks), torch.cat(vs), 0 if self.room == 0 else max(self.room, 2 * t, 32))
            return
        if t == 1:  # decoding: one row per head, rows kept as a tensor (no per-step index building)
            self._k.index_copy_(0, self._next_rows, key_states[0, :, 0])
            self._v.index_copy_(0, self._next_rows, value_states[0, :, 0])
            if self._bias is not None:  # the new slot of head g opens to its R query heads
                self._bias.view(len(self.lengths), -1, self._bias.shape[-1])[self._g_idx, :, self._next_rows] = 0.0
            self._next_rows.add_(1)
            self.lengths = tuple(n + 1 for n in self.lengths)
            return
        g = len(self.lengths)
        rows = torch.tensor([o + n + i for o, n in zip(self._offs, self.lengths) for i in range(t)], device=self.device)
        self._k.index_copy_(0, rows, key_states[0].reshape(g * t, -1))
        self._v.index_copy_(0, rows, value_states[0].reshape(g * t, -1))
        self.lengths = tuple(n + t for n in self.lengths)
        self._set_next_rows()
        self._bias = None

    def update(self, key_states, value_states, *args, **kwargs):
        """Append (1, G, T, d) new entries to every head; returns the padded (1, G, N_max + T, d) views."""
        self.append(key_states, value_states)
        return self.keys, self.values

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of the (1, H, T, d) queries of the T entries just appended, each query head over its
        KV head's own entries (no padded view); returns (1, T, H, d).

        One token (decoding): one pass over the whole storage, three operations: every query head
        against every segment with an additive bias that is 0 on the head's own filled slots and -inf
        elsewhere (kept up to date by ``append``), the softmax, and the product with the values. The
        keys and values are read once; the scores are G times those of a uniform layer, which costs
        less than running G small products per head (each operation has a fixed cost that dominates at
        these sizes, more so with several threads). Several tokens: per KV head, with the causal mask
        among the new tokens."""
        _, h, t, d = query.shape
        g = len(self.lengths)
        r = h // g
        if t == 1:
            if self._bias is None or self._bias.shape[0] != h:
                self._build_bias(h)
            s = torch.addmm(self._bias, query[0, :, 0], self._k.t(), alpha=scaling)  # (H, sum C)
            p = torch.softmax(s, dim=-1) if s.dtype == torch.float32 else \
                torch.softmax(s, -1, dtype=torch.float32).to(self._v.dtype)
            return torch.mm(p, self._v).view(1, 1, h, d)
        outs = []
        for kv, (o, n) in enumerate(zip(self._offs, self.lengths)):
            q = query[0, kv * r:(kv + 1) * r].reshape(r * t, d)
            s = torch.matmul(q, self._k[o:o + n].t()).mul_(scaling)  # (R*T, N_g)
            blocked = causal_block(n, t, query.device)
            if blocked is not None:
                s = s.view(r, t, n).masked_fill_(blocked, torch.finfo(s.dtype).min).view(r * t, n)
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(self._v.dtype)
            outs.append(torch.matmul(p, self._v[o:o + n]).view(r, t, d))
        return torch.cat(outs).transpose(0, 1)[None]

    def get_seq_length(self) -> int:
        return self.n_max

    def reset(self) -> None:
        self.lengths = tuple(0 for _ in self.lengths)
        self._set_next_rows()
        self._bias = None

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("RaggedLayer cannot be cropped; evict entries with a cache policy instead.")

    def stored_tensors(self) -> list[torch.Tensor]:
        """Exactly the tensors this layer holds: the per-head segments of keys and values."""
        return [self._k, self._v]

    def __repr__(self) -> str:
        return f"RaggedLayer(lengths={list(self.lengths)}{f', room={self.room}' if self.room else ''})"


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
    tokens: (B, n_new) ids of those tokens, when the caller has them (None otherwise); a policy
        that re-reads the context (KVzip's reconstruction) needs them.
    """

    step: int
    n_new: int
    tokens: torch.Tensor | None = None


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

    Optional members (not required by the protocol): ``observe_queries``, None or a callable
    (layer, q (B, n_heads, n_new, d_head)) fed with every layer's queries after RoPE (policies that
    compare queries with cached keys without attention, e.g. HashEvict); ``bind(model)``, called by
    ``prefill``/``generate`` (and the harnesses) before the first forward, for policies that need the
    model itself (one that runs extra forward passes to score, or loads a per-model dictionary).

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
    observe_queries = None

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
    physical_bytes: bytes of the storage the cache really holds (measured from its tensors): every
        layer's tensors plus the per-entry position index (``KVCache.positions``, int64, 8 bytes per
        entry and KV head; for a ragged layer its padded (B, G, N_max) view).
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

    Two kinds (see ``empty`` and ``preallocated``): a growing cache (HF ``DynamicLayer``s, one
    ``torch.cat`` per step, bytes = entries) and a preallocated one (``PreallocatedLayer``s sized once
    for ``capacity`` tokens, written in place, compacted in place by eviction; bytes = entries plus
    the room reserved for the tokens still to come).
    """

    def __init__(self, hf_cache: DynamicCache, n_layers: int, n_kv_heads: int, d_head: int):
        self.hf_cache = hf_cache
        self.n_layers = n_layers
        self.n_kv_heads = n_kv_heads
        self.d_head = d_head
        self.positions: list[torch.Tensor] = []
        self.next_position = 0
        #: tokens a preallocated cache is sized for (prompt + steps); None for a growing cache
        self.capacity: int | None = None
        #: sliding-window layers (Gemma 2/3) and their window W: a query at position q sees keys at
        #: positions > q - W only; ``blocked_slots`` enforces it by position, so eviction keeps it exact
        self.sliding_layers: frozenset = frozenset()
        self.sliding_window: int | None = None

    def _set_sliding(self, model) -> "KVCache":
        i = model.info
        if i.sliding_window and i.layer_types:
            self.sliding_layers = frozenset(l for l in range(i.n_layers) if i.is_sliding(l))
            self.sliding_window = int(i.sliding_window)
        return self

    @classmethod
    def empty(cls, model) -> "KVCache":
        """A growing cache (each forward concatenates its entries; bytes held = entries)."""
        i = model.info
        return cls(WorkbenchDynamicCache(), i.n_layers, i.n_kv_heads, i.d_head)._set_sliding(model)

    @classmethod
    def preallocated(cls, model, capacity: int) -> "KVCache":
        """A cache sized once for ``capacity`` tokens (prompt + tokens to generate): every layer's K/V
        buffers (B, G, capacity, d_head) are allocated at the first forward and written in place;
        eviction compacts the kept entries inside them and shrinks them to kept + remaining room
        (``remaining``); feeding more than ``capacity`` tokens grows them (amortized doubling)."""
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise InputError(f"capacity must be a positive integer (prompt + new tokens), got {capacity!r}.")
        i = model.info
        hf = WorkbenchDynamicCache()
        hf.layer_class_to_replicate = partial(PreallocatedLayer, capacity)
        cache = cls(hf, i.n_layers, i.n_kv_heads, i.d_head)._set_sliding(model)
        cache.capacity = capacity
        return cache

    @property
    def is_preallocated(self) -> bool:
        return self.capacity is not None

    @property
    def remaining(self) -> int:
        """Tokens a preallocated cache still expects (capacity - tokens seen); 0 for a growing cache."""
        return 0 if self.capacity is None else max(0, self.capacity - self.next_position)

    def _dense_layer(self):
        """An empty layer of this cache's kind (to hold dense entries again)."""
        return PreallocatedLayer(1) if self.capacity is not None else DynamicLayer()

    def copy(self, kind: str | None = None) -> "KVCache":
        """An independent copy: every cache layer (any layer type) and the positions are cloned, so
        editing or extending the copy leaves this cache untouched (for trying several policies on one
        prefill). ``kind``: None keeps this cache's kind; "dynamic" copies dense layers into growing
        (``torch.cat``) layers; "preallocated" into preallocated ones sized for this cache's ``capacity``
        (or its current length). Ragged and custom layers are copied as they are."""
        if kind not in (None, "dynamic", "preallocated"):
            raise InputError(f"copy(): kind must be None, 'dynamic' or 'preallocated', got {kind!r}.")
        new = KVCache(copy.deepcopy(self.hf_cache), self.n_layers, self.n_kv_heads, self.d_head)
        new.next_position = self.next_position
        new.capacity = self.capacity
        new.sliding_layers, new.sliding_window = self.sliding_layers, self.sliding_window
        # positions of preallocated layers are views of their (copied) buffers
        # (and so are those of ragged layers whose positions are their buffer's view)
        new.positions = [lay.positions if (isinstance(lay, PreallocatedLayer) and l < len(self.positions)) or
                         (isinstance(lay, RaggedLayer) and self.hf_cache.layers[l].owns(p))
                         else p.clone() for l, (p, lay) in enumerate(zip(self.positions, new.hf_cache.layers))]
        new.positions += [p.clone() for p in self.positions[len(new.positions):]]
        if kind == "dynamic" and new.capacity is not None:
            new.capacity = None
            new.hf_cache.layer_class_to_replicate = DynamicLayer
        elif kind == "preallocated" and new.capacity is None:
            new.capacity = max(self.next_position, 1)
            new.hf_cache.layer_class_to_replicate = partial(PreallocatedLayer, new.capacity)
        if kind is not None:
            for l, lay in enumerate(new.hf_cache.layers):
                if type(lay) in (DynamicLayer, PreallocatedLayer) and lay.is_initialized and l < len(new.positions):
                    k, v, pos = lay.keys, lay.values, new.positions[l]
                    new.hf_cache.layers[l] = dense = new._dense_layer()
                    dense.lazy_initialization(k, v)
                    new.set_entries(l, k.clone(), v.clone(), pos.clone())
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
            if isinstance(lay, PreallocatedLayer):  # buffers are written in place: materialize the batch
                kk, vv, pp = (x.expand(k, *x.shape[1:]) for x in (lay.keys, lay.values, self.positions[l]))
                self.positions[l] = lay.set_entries(kk, vv, pp, room=lay.capacity - lay.n)
                continue
            lay.keys = lay.keys.expand(k, *lay.keys.shape[1:])
            lay.values = lay.values.expand(k, *lay.values.shape[1:])
            self.positions[l] = self.positions[l].expand(k, *self.positions[l].shape[1:])

    def select(self, i: int) -> None:
        """Keep batch row ``i`` only, in place (a contiguous copy, so the other rows' storage is freed)."""
        for l, lay in enumerate(self.hf_cache.layers):
            b = lay.keys.shape[0]
            if not 0 <= i < b:
                raise InputError(f"select(): row {i} is out of range for batch size {b}.")
            if isinstance(lay, PreallocatedLayer):
                self.positions[l] = lay.set_entries(lay.keys[i: i + 1], lay.values[i: i + 1],
                                                    self.positions[l][i: i + 1], room=lay.capacity - lay.n)
                continue
            lay.keys = lay.keys[i: i + 1].contiguous()
            lay.values = lay.values[i: i + 1].contiguous()
            self.positions[l] = self.positions[l][i: i + 1].contiguous()

    # ---------------------------------------------------------------- bookkeeping
    def _record_new(self, n_new: int) -> None:
        """Called by the generator after a forward appended ``n_new`` tokens to every layer."""
        self._mark_skipped()
        new = torch.arange(self.next_position, self.next_position + n_new)
        adds: dict = {}  # (device, b, g) -> the new positions (B, G, n_new), built once per step

        def add_for(device, b, g):
            key = (device, b, g)
            if key not in adds:
                adds[key] = new.to(device).expand(b, g, n_new)
            return adds[key]

        for l in range(self.n_layers):
            lay = self.hf_cache.layers[l]
            if isinstance(lay, PreallocatedLayer):  # written in place, no per-step copy
                b, g = lay._k.shape[:2]
                pos = lay.record(add_for(lay.device, b, g))
                if l < len(self.positions):
                    self.positions[l] = pos
                else:
                    self.positions.append(pos)
                continue
            if isinstance(lay, RaggedLayer) and l < len(self.positions) and lay.owns(self.positions[l]):
                pos = lay.record(add_for(self._device(l), 1, len(lay.lengths)))
                if pos is not None:  # written in place; else (no room left) concatenated below
                    self.positions[l] = pos
                    continue
            b, g = self._batch_heads(l)
            # a skipped layer received nothing: its positions stay empty (B, G, 0)
            add = (new[:0].to(self._device(l)).expand(b, g, 0) if isinstance(lay, SkippedLayer)
                   else add_for(self._device(l), b, g))
            if l < len(self.positions):
                self.positions[l] = torch.cat([self.positions[l], add], dim=-1)
            else:
                self.positions.append(add.clone())
        self.next_position += n_new

    def _batch_heads(self, layer: int) -> tuple[int, int]:
        """(B, G) of a layer's entries; a layer object may say it without materializing its keys
        (``batch_heads()``, e.g. a latent layer that would have to decompress them)."""
        lay = self.hf_cache.layers[layer]
        if isinstance(lay, RaggedLayer):
            return 1, len(lay.lengths)
        fn = getattr(lay, "batch_heads", None)
        if callable(fn):
            return tuple(fn())
        k = lay.keys
        return int(k.shape[0]), int(k.shape[1])

    def _device(self, layer: int):
        lay = self.hf_cache.layers[layer]
        return getattr(lay, "device", None) or self.keys(layer).device

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
        lay = RaggedLayer(ks[valid].contiguous(), vs[valid].contiguous(), lens, room=self.remaining)
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
            new = RaggedLayer.from_padded(keys, values, positions, room=self.remaining)
            self.hf_cache.layers[layer] = new
            self.positions[layer] = new.padded_positions(positions)
            return
        if isinstance(lay, RaggedLayer):
            lay = self._dense_layer()
            lay.lazy_initialization(keys, values)
            self.hf_cache.layers[layer] = lay
        if isinstance(lay, PreallocatedLayer):  # compaction in place (and a shrink when much too large)
            self.positions[layer] = lay.set_entries(keys, values, positions, room=self.remaining)
            return
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
        lay = self.hf_cache.layers[layer]
        if isinstance(lay, RaggedLayer):
            return torch.tensor([lay.lengths], dtype=torch.long)
        pos = self.positions[layer]
        if type(lay) in (DynamicLayer, PreallocatedLayer):  # dense: no padding slot
            return torch.full(pos.shape[:2], pos.shape[-1], dtype=torch.long)
        return (pos >= 0).sum(-1)

    def _has_padding(self, layer: int) -> bool:
        lay = self.hf_cache.layers[layer] if layer < len(self.hf_cache.layers) else None
        if isinstance(lay, RaggedLayer):
            return True
        if type(lay) in (DynamicLayer, PreallocatedLayer) or layer >= len(self.positions):
            return False
        pos = self.positions[layer]
        return bool(pos.numel()) and bool((pos < 0).any())

    def blocked_slots(self, layer: int, n_new: int, longest: int) -> torch.Tensor | None:
        """(G, n_new, N_l + n_new) bool: slots the next forward's n_new queries must not see in ``layer``,
        or None when the model's own causal mask is already right.

        Two cases: padding slots of a ragged layer (per KV head), and, when several tokens are fed
        at once into a layer shorter than the longest one, the new tokens after each query (the
        model's mask is built for the longest layer, so in a shorter layer it would let query i see
        new tokens up to i + longest - N_l), plus, on a sliding-window layer, every entry whose position is at
        or before q - W for query position q (the model's own sliding mask counts slots, not positions, so
        after eviction it would let the layer see entries older than its window)."""
        if layer < len(self.hf_cache.layers) and isinstance(self.hf_cache.layers[layer], SkippedLayer):
            return None  # no attention runs in this layer: nothing to mask
        pos = self.positions[layer] if layer < len(self.positions) else None
        n = 0 if pos is None else pos.shape[-1]
        pad = pos is not None and self._has_padding(layer)
        out_of_window = self._out_of_window(layer, pos, n_new)
        if not pad and (n_new == 1 or n >= longest) and out_of_window is None:
            return None
        g = self.n_kv_heads
        dev = pos.device if pos is not None else None
        out = torch.zeros(g, n_new, n + n_new, dtype=torch.bool, device=dev)
        if pad:
            out[:, :, :n] = (pos[0] < 0)[:, None, :]
        if n_new > 1:
            out[:, :, n:] = torch.ones(n_new, n_new, dtype=torch.bool, device=dev).triu(1)
        if out_of_window is not None:
            out |= out_of_window.to(out.device)
        return out

    def _out_of_window(self, layer: int, pos: torch.Tensor | None, n_new: int) -> torch.Tensor | None:
        """(G, n_new, N_l + n_new) bool: entries outside the sliding window of the new queries, or None when the
        layer is global or nothing in it is out of window."""
        if layer not in self.sliding_layers or not self.sliding_window:
            return None
        w = self.sliding_window
        g = self.n_kv_heads
        dev = pos.device if pos is not None else None
        q = self.next_position + torch.arange(n_new, device=dev)  # (n_new,) query positions
        old = pos[0] if pos is not None and pos.numel() else torch.zeros(g, 0, dtype=torch.long, device=dev)
        keys = torch.cat([old, q.expand(g, n_new)], -1)  # (G, N_l + n_new) key positions (new tokens last)
        out = (keys[:, None, :] <= q[None, :, None] - w) & (keys[:, None, :] >= 0)  # padding is masked elsewhere
        return out if bool(out.any()) else None

    def set_layer(self, layer: int, layer_obj) -> None:
        """Install a custom cache-layer object (a transformers ``CacheLayerMixin``), e.g. quantized."""
        self._check_layer(layer)
        self.hf_cache.layers[layer] = layer_obj

    # ---------------------------------------------------------------- measuring
    def stats(self) -> CacheStats:
        rows = []
        for l in range(self.n_layers):
            lay = self.hf_cache.layers[l] if l < len(self.hf_cache.layers) else None
            if l < len(self.positions) and type(lay) in (DynamicLayer, PreallocatedLayer):
                rows.append([self.positions[l].shape[-1]] * self.n_kv_heads)  # dense: no padding slot
            else:
                rows.append(self.head_counts(l)[0].tolist())
        tokens = torch.tensor(rows, dtype=torch.long).reshape(self.n_layers, -1)
        # dtype and batch from the first layer holding entries (layer 0 may be skipped or a latent layer)
        held = next((l for l in range(self.n_layers) if self.seq_len(l)), None)
        dtype = None if held is None else getattr(self.hf_cache.layers[held], "dtype", None)
        dtype_bytes = 4 if held is None else (dtype.itemsize if isinstance(dtype, torch.dtype)
                                              else self.keys(held).element_size())
        b = self._batch_heads(held)[0] if held is not None else 1
        logical = int(tokens.sum()) * b * self.d_head * 2 * dtype_bytes
        seen, physical = set(), 0
        for t in [t for lay in self.hf_cache.layers for t in tensors_of(lay)] + list(self.positions):
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
