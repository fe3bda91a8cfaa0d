"""Bit packing and per-group asymmetric quantization, the storage layer of the quantized KV cache.

Packing: ``pack(codes, bits)`` stores ``8 // bits`` unsigned codes per byte along the last dim,
lowest bits first (code ``i`` of a byte sits at bit offset ``bits * (i % (8 // bits))``).
codes (..., D) uint8 with values in [0, 2^bits - 1] -> packed (..., D * bits / 8) uint8; D must be a
multiple of ``8 // bits``. ``unpack(packed, bits)`` is its exact inverse.

Quantization (asymmetric, round to nearest): the elements of a tensor are split into groups of
``group_size`` consecutive elements along one dim; every group gets a minimum ``mn`` and a scale
``s = (max - mn) / (2^bits - 1)``; ``code = clamp(round((x - mn) / s), 0, 2^bits - 1)`` and
``x_hat = code * s + mn``. Hence ``|x - x_hat| <= s / 2`` for every element (up to float rounding).

When the parameters are stored in a narrower dtype (``param_dtype=torch.float16``), the minimum is
rounded *down* and the scale *up* to the next representable value, so the stored grid still covers
[min, max] and the bound ``|x - x_hat| <= s / 2`` holds with the stored (returned) scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError

BITS = (2, 4, 8)


def check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise InputError(f"bits must be one of {BITS}, got {bits!r}.")
    return int(bits)


def check_group_size(group_size, what: str = "group_size") -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise InputError(f"{what} must be a positive integer, got {group_size!r}.")
    return group_size


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes (..., D) integers in [0, 2^bits - 1] -> uint8 (..., D * bits // 8), exact (see module doc)."""
    bits = check_bits(bits)
    per = 8 // bits
    d = codes.shape[-1]
    if d % per:
        raise InputError(f"pack(): the last dim ({d}) must be a multiple of {per} to pack {bits}-bit codes.")
    c = codes.to(torch.uint8)
    if per == 1:
        return c.contiguous()
    c = c.reshape(*c.shape[:-1], d // per, per)
    out = c[..., 0].clone()
    for i in range(1, per):
        out |= c[..., i] << (bits * i)
    return out.contiguous()


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (..., D * bits // 8) -> uint8 codes (..., D); the inverse of ``pack``."""
    bits = check_bits(bits)
    per = 8 // bits
    if packed.dtype != torch.uint8:
        raise InputError(f"unpack(): expected uint8, got {packed.dtype}.")
    if per == 1:
        return packed
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * per)


@dataclass
class GroupQuantized:
    """Codes (unpacked, uint8, same shape as the input) plus per-group scale and minimum.

    scale, mn: the input's shape with ``dim`` of size n replaced by n // group_size (one entry per group).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    mn: torch.Tensor
    bits: int
    group_size: int
    dim: int


def _grouped(x: torch.Tensor, group_size: int, dim: int) -> tuple[torch.Tensor, int]:
    """View x with ``dim`` split into (n_groups, group_size); returns the view and the (positive) group-member dim."""
    dim = dim % x.ndim
    n = x.shape[dim]
    if n % group_size:
        raise InputError(f"quantize: size {n} along dim {dim} is not a multiple of group_size {group_size}.")
    return x.reshape(*x.shape[:dim], n // group_size, group_size, *x.shape[dim + 1:]), dim + 1


def _round_toward(t: torch.Tensor, dtype: torch.dtype, exact: torch.Tensor, down: bool) -> torch.Tensor:
    """t cast to dtype, moved one ulp so that the result is <= exact (down) or >= exact (up)."""
    r = t.to(dtype)
    bad = r.to(exact.dtype) > exact if down else r.to(exact.dtype) < exact
    if bool(bad.any()):
        step = torch.full_like(r, float("-inf") if down else float("inf"))
        r = torch.where(bad, torch.nextafter(r, step), r)
    return r


def quantize_groups(x: torch.Tensor, bits: int, group_size: int, dim: int,
                    param_dtype: torch.dtype | None = None) -> GroupQuantized:
    """Asymmetric per-group quantization of ``x`` with groups of ``group_size`` along ``dim``."""
    bits, group_size = check_bits(bits), check_group_size(group_size)
    levels = (1 << bits) - 1
    xf = x.float()
    g, gdim = _grouped(xf, group_size, dim)
    lo = g.amin(dim=gdim, keepdim=True)
    hi = g.amax(dim=gdim, keepdim=True)
    pd = param_dtype or x.dtype
    mn = _round_toward(lo, pd, lo, down=True)
    span = (hi - mn.float()).clamp_min(0)
    exact_scale = torch.where(span > 0, span / levels, torch.ones_like(span))
    scale = _round_toward(exact_scale, pd, exact_scale, down=False)
    codes = torch.round((g - mn.float()) / scale.float()).clamp_(0, levels).to(torch.uint8)
    return GroupQuantized(codes.reshape(x.shape), scale.squeeze(gdim), mn.squeeze(gdim), bits, group_size, dim % x.ndim)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, group_size: int, dim: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_groups`` up to rounding: codes (unpacked) -> x_hat of ``dtype``, same shape."""
    g, gdim = _grouped(codes, group_size, dim)
    out = g.float() * scale.float().unsqueeze(gdim) + mn.float().unsqueeze(gdim)
    return out.reshape(codes.shape).to(dtype)
