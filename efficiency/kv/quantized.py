"""KV-cache quantization in the KIVI manner, with packed storage whose bytes really go.

KIVI (Liu et al., 2024): keys are quantized per **channel** (each channel of a group of
``group_size`` consecutive tokens shares a min and a scale), values per **token** (each token's
channels are split into groups of ``value_group_size`` channels, default ``min(group_size, d_head)``),
and the most recent tokens stay in full precision (the residual window).

Storage (``KIVILayer``, one per model layer, installed with ``KVCache.set_layer``), per KV head:

- quantized part, ``n_q`` tokens (a multiple of ``group_size``): key and value codes packed into
  uint8 along the channel dim, (B, G, n_q, d_head * bits / 8) each; key scale and min
  (B, G, n_q / group_size, d_head); value scale and min (B, G, n_q, d_head / value_group_size);
  parameters in ``param_dtype`` (fp16 by default, rounded so the error bound still holds);
- residual: the newest ``n_r`` tokens in the cache dtype, (B, G, n_r, d_head) for K and for V.

Flushing: whenever the residual holds at least ``residual + group_size`` tokens, its oldest
``group_size`` tokens are quantized and appended to the quantized part. So after any update
``n_q = group_size * floor(max(0, N - residual) / group_size)`` and ``n_r = N - n_q`` lies in
[min(N, residual), residual + group_size - 1]: the newest ``residual`` tokens are always exact.

Code layout: within a byte, the ``8 // bits`` codes are channels ``j, j + d/per, j + 2d/per, ...``
(channel j of each of the ``per`` channel blocks), so unpacking yields whole contiguous channel
blocks (``(byte >> bits*i) & mask`` is channels ``[i*d/per, (i+1)*d/per)``) instead of interleaved ones.

Reading: ``update()`` (called by the hooked attention) appends the new tokens to the residual,
flushes, and returns the dequantized quantized part concatenated with the residual, in the cache
dtype. ``layer.keys`` / ``layer.values`` return the same full tensors, so everything that reads a
``KVCache`` keeps working; assigning them (e.g. an eviction policy's ``keep``) stores the given
tensors as a full-precision residual that the next flush re-quantizes. Prefill attention runs at
full precision (as in KIVI); the cache is quantized by the policy right after prefill.

Decoding on the hook-free path (``Model.forward_tokens``) uses ``append`` + ``attend`` instead:
the quantized part is dequantized into transient tensors in a few whole-block passes (no stacking,
no concatenation with the residual: the scores of the quantized part and of the residual are
computed separately and joined, which is small), then grouped-query attention runs without
expanding K/V to the query heads. Nothing dequantized is kept between steps, so the bytes held are
those of the codes, parameters and residual only (``stats().physical_bytes``, exactly the tensors
listed by ``stored_tensors()`` plus the cache's int64 position index; ``bytes_formula`` predicts it). On a CPU without a fused low-bit
attention kernel every step still writes the dequantized keys and values (4 bytes per element)
before reading them, so 4-bit decoding cannot read fewer bytes than the fp32 cache does; see
BENCHMARKS.md for what it costs.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from workbench.errors import InputError
from workbench.fast_attention import causal_block
from workbench.kv_cache import KVCache, PolicyBase, StepContext

from .registry import register
from .packing import check_bits, check_group_size, pack, quantize_groups

POLICY_NAME = "kivi"

_PARAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _block_order(d: int, bits: int) -> torch.Tensor:
    """Channel order that makes ``pack`` put channel j of every block of d/per channels in one byte."""
    per = 8 // bits
    return torch.arange(d).view(per, d // per).t().reshape(-1)


def _unpack_blocks(packed: torch.Tensor, bits: int, dtype) -> torch.Tensor:
    """Packed codes (..., d * bits / 8) in block layout -> codes (..., d) as ``dtype`` (exact small integers)."""
    per = 8 // bits
    cw = packed.shape[-1]
    out = torch.empty(*packed.shape[:-1], cw * per, dtype=dtype, device=packed.device)
    if per == 1:
        return out.copy_(packed)
    mask = (1 << bits) - 1
    for i in range(per):
        part = packed if i == 0 else packed >> (bits * i)
        out[..., i * cw:(i + 1) * cw].copy_(part if i == per - 1 else part & mask)
    return out


def _planes(packed: torch.Tensor, bits: int) -> list[tuple[int, torch.Tensor]]:
    """(first channel, float32 codes (..., d / per)) of each of the ``per = 8 // bits`` channel blocks
    of the block layout: unpacked and converted without assembling the full (..., d) tensor."""
    per = 8 // bits
    cw = packed.shape[-1]
    mask = (1 << bits) - 1
    out = []
    for i in range(per):
        part = packed if i == 0 else packed >> (bits * i)
        if i < per - 1:
            part = part & mask
        out.append((i * cw, part.to(torch.float32)))
    return out


def _own(t: torch.Tensor) -> torch.Tensor:
    """t as a contiguous tensor owning exactly its storage (so byte counts are exact)."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size() \
            and t.storage_offset() == 0:
        return t
    return t.contiguous().clone()


class _Store:
    """Quantized part plus full-precision residual for one of K or V of one layer.

    mode "channel" (keys): groups of ``group_size`` tokens per channel; params (B, G, n_q / gs, d).
    mode "token" (values): groups of ``vgs`` channels per token; params (B, G, n_q, d / vgs).
    """

    def __init__(self, mode: str, bits: int, group_size: int, vgs: int, residual: int, param_dtype):
        self.mode, self.bits, self.gs, self.vgs, self.residual = mode, bits, group_size, vgs, residual
        self.param_dtype = param_dtype
        self.codes = self.scale = self.mn = None  # packed quantized part (None while empty)
        self.fp: torch.Tensor | None = None  # residual (B, G, n_r, d)
        self.n_q = 0

    # ------------------------------------------------------------ writing
    def set_full(self, t: torch.Tensor | None) -> None:
        self.codes = self.scale = self.mn = None
        self.n_q = 0
        self.fp = None if t is None else _own(t.detach())

    def append(self, t: torch.Tensor) -> None:
        self.fp = _own(t.detach()) if self.fp is None else torch.cat([self.fp, t.detach()], dim=-2)

    def flush(self) -> None:
        """Move the oldest full groups of the residual into quantized storage (see module doc)."""
        if self.fp is None:
            return
        n_r = self.fp.shape[-2]
        n_move = self.gs * max(0, (n_r - self.residual) // self.gs)
        if n_move == 0:
            return
        old, self.fp = self.fp[..., :n_move, :], _own(self.fp[..., n_move:, :].clone())
        if self.mode == "channel":
            q = quantize_groups(old, self.bits, self.gs, dim=-2, param_dtype=self.param_dtype)
        else:
            q = quantize_groups(old, self.bits, self.vgs, dim=-1, param_dtype=self.param_dtype)
        order = _block_order(q.codes.shape[-1], self.bits).to(q.codes.device)
        codes = pack(q.codes.index_select(-1, order), self.bits)
        if self.codes is None:
            self.codes, self.scale, self.mn = _own(codes), _own(q.scale), _own(q.mn)
        else:
            self.codes = torch.cat([self.codes, codes], dim=-2)
            self.scale = torch.cat([self.scale, q.scale], dim=-2)
            self.mn = torch.cat([self.mn, q.mn], dim=-2)
        self.n_q += n_move

    # ------------------------------------------------------------ reading
    def dequantized(self, dtype) -> torch.Tensor | None:
        """(B, G, n_q, d) ``code * scale + min`` in ``dtype`` (computed in float32), or None while empty."""
        if self.codes is None:
            return None
        x = _unpack_blocks(self.codes, self.bits, torch.float32)
        b, g, n, d = x.shape
        if self.mode == "channel":  # params (B, G, n / gs, d): one per channel and group of gs tokens
            v = x.view(b, g, n // self.gs, self.gs, d)
            v.mul_(self.scale.float()[:, :, :, None]).add_(self.mn.float()[:, :, :, None])
        else:  # params (B, G, n, d / vgs): one per token and group of vgs channels
            v = x.view(b, g, n, d // self.vgs, self.vgs)
            v.mul_(self.scale.float()[..., None]).add_(self.mn.float()[..., None])
        return x if dtype == torch.float32 else x.to(dtype)

    def full(self) -> torch.Tensor | None:
        if self.fp is None and self.codes is None:
            return None
        dq = self.dequantized(self.fp.dtype if self.fp is not None else torch.float32)
        if dq is None:
            return self.fp
        if self.fp is None or self.fp.shape[-2] == 0:
            return dq
        return torch.cat([dq, self.fp], dim=-2)

    def seq_len(self) -> int:
        return self.n_q + (0 if self.fp is None or self.fp.ndim < 4 else self.fp.shape[-2])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.scale, self.mn, self.fp) if t is not None]


class KIVILayer(DynamicLayer):
    """A transformers cache layer holding K/V as packed KIVI codes plus a full-precision residual.

    Shapes as in the module docstring; ``keys`` / ``values`` give the dequantized (B, G, N, d) tensors.
    """

    is_compileable = False

    def __init__(self, bits: int = 4, group_size: int = 32, residual: int = 32, value_group_size: int = 32,
                 param_dtype: torch.dtype = torch.float16):
        # Deliberately not calling DynamicLayer.__init__ chains that assign keys/values before the stores exist.
        self._k = _Store("channel", bits, group_size, value_group_size, residual, param_dtype)
        self._v = _Store("token", bits, group_size, value_group_size, residual, param_dtype)
        self.bits, self.group_size, self.residual = bits, group_size, residual
        self.value_group_size, self.param_dtype = value_group_size, param_dtype
        self.is_initialized = False

    # ``keys`` / ``values`` look like DynamicLayer's attributes to every reader and writer.
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
    def from_tensors(cls, keys: torch.Tensor, values: torch.Tensor, **kw) -> "KIVILayer":
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
        self.append(key_states, value_states)
        return self._k.full(), self._v.full()

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Store (B, G, T, d) new entries in the residual (then flush full groups into codes)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._k.append(key_states)
        self._v.append(value_states)
        self.flush()

    def attend(self, query: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of the (B, H, T, d) queries of the T entries just appended over every entry.
        Query head h reads KV head h // (H // G). Returns (B, T, H, d).

        Quantized part, one channel block (a bit plane of the packed codes) at a time, nothing kept:
        keys are dequantized in place in the converted block (``code * scale + min``, per channel and
        token group) and multiplied with the queries' matching channels, the blocks' scores summed;
        values are never dequantized: the per-token scale is folded into the attention weights,
        ``sum_t p_t (code_tc s_t + m_t) = sum_t (p_t s_t) code_tc + sum_t p_t m_t``. The residual is
        read in place; the score blocks of both parts are joined, never the keys or values."""
        b, h, t, d = query.shape
        kr, vr = self._k.fp, self._v.fp
        g = kr.shape[1]
        r = h // g
        q = query.reshape(b, g, r * t, d)
        k, v = self._k, self._v
        n_q = k.n_q if k.codes is not None else 0
        s = torch.matmul(q, kr.transpose(-1, -2))
        if n_q:
            ks, km = k.scale.float()[:, :, :, None], k.mn.float()[:, :, :, None]  # (B, G, n_q / gs, 1, d)
            s_q = None
            for c0, plane in _planes(k.codes, k.bits):
                w = plane.shape[-1]
                grouped = plane.view(b, g, n_q // k.gs, k.gs, w)
                torch.addcmul(km[..., c0:c0 + w], grouped, ks[..., c0:c0 + w], out=grouped)
                part = torch.matmul(q[..., c0:c0 + w], plane.transpose(-1, -2))
                s_q = part if s_q is None else s_q.add_(part)
            s = torch.cat([s_q, s], dim=-1)
        s.mul_(scaling)
        n = s.shape[-1]
        blocked = causal_block(n, t, query.device)
        if blocked is not None:
            s = s.view(b, g, r, t, n).masked_fill_(blocked, torch.finfo(s.dtype).min).view(b, g, r * t, n)
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(kr.dtype)
        out = torch.matmul(p[..., n_q:], vr)  # (B, G, R*T, d)
        if n_q:
            p_q = p[..., :n_q]
            vs, vm = v.scale.float(), v.mn.float()  # (B, G, n_q, d / vgs)
            pm = torch.matmul(p_q, vm)  # (B, G, R*T, d / vgs): the minimums' share
            for c0, plane in _planes(v.codes, v.bits):
                o, cw = 0, plane.shape[-1]
                while o < cw:  # the block's channels, cut where a value group ends
                    grp = (c0 + o) // v.vgs
                    w = min(cw - o, (grp + 1) * v.vgs - (c0 + o))
                    part = torch.matmul(p_q * vs[:, :, None, :, grp], plane[..., o:o + w])
                    out[..., c0 + o:c0 + o + w] += part + pm[..., grp:grp + 1]
                    o += w
        return out.view(b, h, t, d).transpose(1, 2)

    def get_seq_length(self) -> int:
        return self._k.seq_len() if self.is_initialized else 0

    def reset(self) -> None:
        self._k.set_full(None)
        self._v.set_full(None)
        self.is_initialized = False

    @property
    def n_quantized(self) -> int:
        return self._k.n_q

    @property
    def residual_keys(self) -> torch.Tensor | None:
        return self._k.fp

    @property
    def residual_values(self) -> torch.Tensor | None:
        return self._v.fp

    def stored_tensors(self) -> list[torch.Tensor]:
        """Exactly the tensors this layer holds: packed codes, scales, mins, residual K/V."""
        return self._k.tensors() + self._v.tensors()

    def __repr__(self) -> str:
        return (f"KIVILayer(bits={self.bits}, group={self.group_size}, residual={self.residual}, "
                f"quantized={self._k.n_q}, fp={self.get_seq_length() - self._k.n_q})")


def _check_residual(residual) -> int:
    if isinstance(residual, bool) or not isinstance(residual, int) or residual < 0:
        raise InputError(f"residual must be a non-negative integer, got {residual!r}.")
    return residual


def _value_group(group_size: int, value_group_size: int | None, d_head: int) -> int:
    vgs = min(group_size, d_head) if value_group_size is None else value_group_size
    if d_head % vgs:
        raise InputError(f"The value group size {vgs} must divide d_head={d_head} (values are quantized per token "
                         f"in groups of channels); pass value_group_size, or a group_size dividing {d_head}.")
    return vgs


def bytes_formula(n_tokens: int, *, n_layers: int, n_kv_heads: int, d_head: int, bits: int, group_size: int = 32,
                  residual: int = 32, value_group_size: int | None = None, batch: int = 1, dtype_bytes: int = 4,
                  param_bytes: int = 2, position_bytes: int = 8) -> int:
    """Physical bytes of a KIVI cache holding ``n_tokens`` entries per KV head in every layer.

    Per layer, batch row and KV head, with n_q = group_size * floor(max(0, N - residual) / group_size)
    and n_r = N - n_q: codes 2 * n_q * d * bits / 8; key params 2 * (n_q / group_size) * d * param_bytes;
    value params 2 * n_q * (d / value_group_size) * param_bytes; residual 2 * n_r * d * dtype_bytes;
    the cache's position index N * position_bytes (int64; ``KVCache.positions``).
    """
    vgs = _value_group(group_size, value_group_size, d_head)
    n_q = group_size * max(0, (n_tokens - residual) // group_size)
    n_r = n_tokens - n_q
    per_head = (2 * n_q * d_head * bits // 8 + 2 * (n_q // group_size) * d_head * param_bytes
                + 2 * n_q * (d_head // vgs) * param_bytes + 2 * n_r * d_head * dtype_bytes
                + n_tokens * position_bytes)
    return per_head * batch * n_kv_heads * n_layers


@register(POLICY_NAME)
class KIVIQuantization(PolicyBase):
    """Cache policy: quantize the KV cache KIVI-style (keys per channel, values per token) with packed storage.

    bits: 2, 4 or 8. group_size: tokens per key group (and the default channels per value group,
    ``min(group_size, d_head)``). residual: newest tokens kept in full precision. param_dtype: dtype
    of the stored scales and mins. After prefill every layer is replaced by a ``KIVILayer``; from then
    on the layer quantizes itself as tokens arrive, and ``apply`` only re-installs/flushes.
    """

    def __init__(self, bits: int = 4, group_size: int = 32, residual: int = 32, *,
                 value_group_size: int | None = None, param_dtype: torch.dtype = torch.float16):
        self.bits = check_bits(bits)
        self.group_size = check_group_size(group_size)
        self.residual = _check_residual(residual)
        if value_group_size is not None:
            check_group_size(value_group_size, "value_group_size")
        self.value_group_size = value_group_size
        if param_dtype not in _PARAM_DTYPES:
            raise InputError(f"param_dtype must be one of {_PARAM_DTYPES}, got {param_dtype!r}.")
        self.param_dtype = param_dtype

    @property
    def name(self) -> str:
        return f"KIVI {self.bits}-bit (g{self.group_size}, r{self.residual})"

    def layer_kwargs(self, d_head: int) -> dict:
        return dict(bits=self.bits, group_size=self.group_size, residual=self.residual,
                    value_group_size=_value_group(self.group_size, self.value_group_size, d_head),
                    param_dtype=self.param_dtype)

    def bytes_formula(self, n_tokens: int, cache: KVCache, batch: int = 1, dtype_bytes: int = 4) -> int:
        """``bytes_formula`` with this policy's settings and ``cache``'s shape."""
        return bytes_formula(n_tokens, n_layers=cache.n_layers, n_kv_heads=cache.n_kv_heads, d_head=cache.d_head,
                             bits=self.bits, group_size=self.group_size, residual=self.residual,
                             value_group_size=self.value_group_size, batch=batch, dtype_bytes=dtype_bytes,
                             param_bytes=torch.finfo(self.param_dtype).bits // 8)

    def apply(self, cache: KVCache, ctx: StepContext) -> None:
        kw = self.layer_kwargs(cache.d_head)
        for l in range(cache.n_layers):
            lay = cache.layer(l)
            if isinstance(lay, KIVILayer):
                lay.flush()
            else:
                cache.set_layer(l, KIVILayer.from_tensors(lay.keys, lay.values, **kw))

    def __repr__(self) -> str:
        return (f"KIVIQuantization(bits={self.bits}, group_size={self.group_size}, residual={self.residual}, "
                f"value_group_size={self.value_group_size}, param_dtype={self.param_dtype})")
