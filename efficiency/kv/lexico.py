"""Lexico: keys and values as sparse combinations of a universal dictionary, stored sparse.

Kim et al., "Lexico: Extreme KV Cache Compression via Sparse Coding over Universal Dictionaries"
(arXiv 2412.08890; reference code krafton-ai/lexico). Every cached key (after RoPE) and value
vector older than a full-precision recent buffer is replaced by its ``sparsity``-term OMP code over
its layer's dictionary (``LexicoDictionary``, learned offline, shared by all heads and inputs):
s atom indices and s coefficients instead of d_head numbers.

Storage (``LexicoLayer``, one per model layer, installed by the policy with ``KVCache.set_layer``),
for K and for V, per layer:

- sparse part, ``n_c`` tokens per KV head: ``indices`` (B, G, n_c, s) int16 and ``coefficients``
  (B, G, n_c, s) in ``value_dtype`` (float16 by default; float8_e4m3fn as the reference code stores
  them). Every row has exactly s entries, so this is CSR with an implicit row pointer (row r starts
  at r · s; the ELL layout): nothing else is stored.
- buffer: the newest ``n_b`` tokens in the cache dtype, (B, G, n_b, d).

Flushing: whenever the buffer holds at least ``buffer + block`` tokens, its oldest ``block`` tokens
are encoded and move to the sparse part, so after any update ``n_c = block · floor(max(0, N - buffer)
/ block)`` and the newest ``buffer`` (128) tokens are always exact (the reference compresses all but
the buffer at prefill, then blocks of 32; ours is block-aligned from the start, as KIVI here).
Physical bytes (``bytes_formula``), per layer, batch row and KV head: ``2 · n_c · s · (2 + value
bytes) + 2 · n_b · d · dtype bytes + 8 · N`` (the last term: the cache's int64 position index).

Reading: ``keys``/``values`` (and what ``update`` returns to the attention) are the dense
reconstruction of the sparse part (Σ_j c_j · D[:, i_j], gathered from the dictionary: s·d
multiply-adds per vector, never a tokens × N matrix) concatenated with the buffer. As with KIVI,
the saving is memory at rest, not time: every step rebuilds the dense K/V, and encoding costs
OMP (about N·(d + s²/2) multiply-adds per vector with the cached Gram matrix).

Defaults from the reference cache: ``sparsity`` 14, ``buffer`` 128, ``block`` 32 (its
``approximation_length``). The dictionary: N = 1024 atoms here (the paper's 4096 needs 4 GB of
Gram matrices; see ``LexicoDictionary``).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from workbench.errors import InputError
from workbench.kv_cache import KVCache, PolicyBase, RaggedLayer, StepContext

from .lexico_dictionary import LexicoDictionary
from .omp import Gram, omp, reconstruct
from .registry import register

POLICY_NAME = "lexico"
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float32)


class _SparseStore:
    """Sparse codes plus full-precision buffer for one of K or V of one layer."""

    def __init__(self, gram: Gram, sparsity: int, buffer: int, block: int, value_dtype):
        self.gram, self.s, self.buffer, self.block, self.value_dtype = gram, sparsity, buffer, block, value_dtype
        self.indices = self.coef = None  # (B, G, n_c, s) int16 / value_dtype
        self.fp: torch.Tensor | None = None  # (B, G, n_b, d)
        self.n_c = 0

    def __deepcopy__(self, memo):
        """Copies share the dictionary and its Gram matrix (read-only, large); the codes and buffer are cloned."""
        new = _SparseStore(self.gram, self.s, self.buffer, self.block, self.value_dtype)
        new.indices, new.coef, new.fp = (None if t is None else t.clone() for t in (self.indices, self.coef, self.fp))
        new.n_c = self.n_c
        return new

    def set_full(self, t: torch.Tensor | None) -> None:
        self.indices = self.coef = None
        self.n_c = 0
        self.fp = None if t is None else t.detach().contiguous().clone()

    def append(self, t: torch.Tensor) -> None:
        self.fp = t.detach().contiguous().clone() if self.fp is None else torch.cat([self.fp, t.detach()], dim=-2)

    def flush(self) -> None:
        if self.fp is None:
            return
        n_b = self.fp.shape[-2]
        n_move = self.block * max(0, (n_b - self.buffer) // self.block)
        if n_move == 0:
            return
        old, self.fp = self.fp[..., :n_move, :], self.fp[..., n_move:, :].contiguous().clone()
        b, g, n, d = old.shape
        idx, coef = omp(old.reshape(-1, d), self.gram, self.s)
        idx = idx.to(torch.int16).reshape(b, g, n, self.s)
        coef = coef.to(self.value_dtype).reshape(b, g, n, self.s)
        if self.indices is None:
            self.indices, self.coef = idx.contiguous(), coef.contiguous()
        else:
            self.indices = torch.cat([self.indices, idx], dim=-2)
            self.coef = torch.cat([self.coef, coef], dim=-2)
        self.n_c += n_move

    def dense(self, dtype) -> torch.Tensor | None:
        if self.indices is None:
            return None
        b, g, n, s = self.indices.shape
        x = reconstruct(self.indices.reshape(-1, s).long(), self.coef.reshape(-1, s).float(), self.gram.dictionary)
        return x.reshape(b, g, n, -1).to(dtype)

    def full(self) -> torch.Tensor | None:
        if self.fp is None and self.indices is None:
            return None
        dq = self.dense(self.fp.dtype if self.fp is not None else torch.float32)
        if dq is None:
            return self.fp
        if self.fp is None or self.fp.shape[-2] == 0:
            return dq
        return torch.cat([dq.to(self.fp.device), self.fp], dim=-2)

    def seq_len(self) -> int:
        return self.n_c + (0 if self.fp is None else self.fp.shape[-2])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.indices, self.coef, self.fp) if t is not None]


class LexicoLayer(DynamicLayer):
    """A transformers cache layer holding K/V as sparse dictionary codes plus a full-precision buffer.

    Shapes as in the module docstring; ``keys``/``values`` give the dense (B, G, N, d) reconstruction.
    """

    is_compileable = False

    def __init__(self, key_gram: Gram, value_gram: Gram, sparsity: int = 14, buffer: int = 128, block: int = 32,
                 value_dtype: torch.dtype = torch.float16):
        self._k = _SparseStore(key_gram, sparsity, buffer, block, value_dtype)
        self._v = _SparseStore(value_gram, sparsity, buffer, block, value_dtype)
        self.sparsity, self.buffer, self.block, self.value_dtype = sparsity, buffer, block, value_dtype
        self.is_initialized = False

    @property
    def keys(self):
        return self._k.full()

    @keys.setter
    def keys(self, t):
        self._k.set_full(t)

    @property
    def values(self):
        return self._v.full()

    @values.setter
    def values(self, t):
        self._v.set_full(t)

    @classmethod
    def from_tensors(cls, keys: torch.Tensor, values: torch.Tensor, **kw) -> "LexicoLayer":
        lay = cls(**kw)
        lay.dtype, lay.device = keys.dtype, keys.device
        lay._k.set_full(keys)
        lay._v.set_full(values)
        lay.is_initialized = True
        lay.flush()
        return lay

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def flush(self) -> None:
        self._k.flush()
        self._v.flush()

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._k.append(key_states)
        self._v.append(value_states)
        self.flush()
        return self._k.full(), self._v.full()

    def get_seq_length(self) -> int:
        return self._k.seq_len() if self.is_initialized else 0

    def reset(self) -> None:
        self._k.set_full(None)
        self._v.set_full(None)
        self.is_initialized = False

    @property
    def n_sparse(self) -> int:
        return self._k.n_c

    def codes(self, kind: str = "keys") -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(indices (B, G, n_c, s) int16, coefficients (B, G, n_c, s)) of "keys" or "values"."""
        st = self._k if kind == "keys" else self._v
        return st.indices, st.coef

    def stored_tensors(self) -> list[torch.Tensor]:
        """Exactly the tensors this layer holds: indices, coefficients and buffer of K and V."""
        return self._k.tensors() + self._v.tensors()

    def __repr__(self) -> str:
        return (f"LexicoLayer(s={self.sparsity}, buffer={self.buffer}, block={self.block}, "
                f"sparse={self._k.n_c}, fp={self.get_seq_length() - self._k.n_c})")


def bytes_formula(n_tokens: int, *, n_layers: int, n_kv_heads: int, d_head: int, sparsity: int, buffer: int = 128,
                  block: int = 32, value_bytes: int = 2, index_bytes: int = 2, dtype_bytes: int = 4,
                  position_bytes: int = 8, batch: int = 1) -> int:
    """Physical bytes of a Lexico cache holding ``n_tokens`` entries per KV head in every layer (module doc)."""
    n_c = block * max(0, (n_tokens - buffer) // block)
    n_b = n_tokens - n_c
    per_head = 2 * n_c * sparsity * (index_bytes + value_bytes) + 2 * n_b * d_head * dtype_bytes \
        + n_tokens * position_bytes
    return per_head * batch * n_kv_heads * n_layers


def _check_int(name, v, lo):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise InputError(f"Lexico: {name} must be an integer >= {lo}, got {v!r}.")
    return v


@register(POLICY_NAME)
class LexicoCompression(PolicyBase):
    """Cache policy: replace every layer by a ``LexicoLayer`` (sparse codes over the model's dictionary
    plus a full-precision buffer). sparsity: atoms per vector (s); buffer: newest tokens kept exact;
    block: tokens encoded at a time; value_dtype: dtype of the stored coefficients; dictionary: a
    ``LexicoDictionary`` (default: the one learned on the model, found by ``bind``)."""

    def __init__(self, sparsity: int = 14, buffer: int = 128, block: int = 32, *,
                 value_dtype: torch.dtype = torch.float16, dictionary: LexicoDictionary | None = None):
        self.sparsity = _check_int("sparsity", sparsity, 1)
        self.buffer = _check_int("buffer", buffer, 0)
        self.block = _check_int("block", block, 1)
        if value_dtype not in VALUE_DTYPES:
            raise InputError(f"Lexico: value_dtype must be one of {VALUE_DTYPES}, got {value_dtype!r}.")
        self.value_dtype = value_dtype
        if dictionary is not None and not isinstance(dictionary, LexicoDictionary):
            raise InputError(f"Lexico: dictionary must be a LexicoDictionary, got {type(dictionary).__name__}.")
        self.dictionary = dictionary

    @property
    def name(self) -> str:
        n = f", N={self.dictionary.n_atoms}" if self.dictionary is not None else ""
        dt = "" if self.value_dtype == torch.float16 else f", {str(self.value_dtype).replace('torch.', '')}"
        return f"Lexico s={self.sparsity} (buffer {self.buffer}{dt}{n})"

    def bind(self, model) -> None:
        """Load the dictionary learned on ``model`` when none was given; check a given one fits."""
        if self.dictionary is None:
            self.dictionary = LexicoDictionary.for_model(model)
        else:
            self.dictionary.check(model)

    def layer_kwargs(self, layer: int) -> dict:
        d = self.dictionary
        return dict(key_gram=d.gram(layer, "keys"), value_gram=d.gram(layer, "values"), sparsity=self.sparsity,
                    buffer=self.buffer, block=self.block, value_dtype=self.value_dtype)

    def value_bytes(self) -> int:
        return torch.finfo(self.value_dtype).bits // 8

    def bytes_formula(self, n_tokens: int, cache: KVCache, batch: int = 1, dtype_bytes: int = 4) -> int:
        """``bytes_formula`` with this policy's settings and ``cache``'s shape."""
        return bytes_formula(n_tokens, n_layers=cache.n_layers, n_kv_heads=cache.n_kv_heads, d_head=cache.d_head,
                             sparsity=self.sparsity, buffer=self.buffer, block=self.block,
                             value_bytes=self.value_bytes(), dtype_bytes=dtype_bytes, batch=batch)

    def apply(self, cache: KVCache, ctx: StepContext) -> None:
        if self.dictionary is None:
            raise InputError("Lexico needs its dictionary: use it through model.prefill / generate / "
                             "compress_context / sweep (which bind the model), or pass dictionary=.")
        if self.sparsity > min(self.dictionary.n_atoms, cache.d_head):
            raise InputError(f"Lexico: sparsity {self.sparsity} exceeds min(N, d_head) = "
                             f"{min(self.dictionary.n_atoms, cache.d_head)}.")
        for l in range(cache.n_layers):
            lay = cache.layer(l)
            if isinstance(lay, LexicoLayer):
                lay.flush()
            elif isinstance(lay, RaggedLayer):
                raise InputError("Lexico stores dense layers; this cache has per-head (ragged) layers.")
            else:
                cache.set_layer(l, LexicoLayer.from_tensors(lay.keys, lay.values, **self.layer_kwargs(l)))

    def __repr__(self) -> str:
        return (f"LexicoCompression(sparsity={self.sparsity}, buffer={self.buffer}, block={self.block}, "
                f"value_dtype={self.value_dtype})")
