"""Quantization grids: weights per output channel or per group along the input dim, activations per token.

**Weights** W (out, in), ``bits`` b, ``group`` g (None = one group per output channel, the whole row):
each row is cut into in / g groups of g consecutive input columns, and every group gets its own grid.

- asymmetric: ``w ≈ s · q + m`` with q in 0 .. 2^b - 1, ``m = min``, ``s = (max - min) / (2^b - 1)``
  (GGUF's Q4_1 format: d = s, m = m);
- symmetric: ``w ≈ s · q`` with q in -2^(b-1) .. 2^(b-1) - 1, ``s = max|w| / (2^(b-1) - 1)``
  (the most negative level is only reached by clipping; codes are stored offset by 2^(b-1)).

The scale s (and m) are stored in float16, rounded to nearest, and the codes are computed with the stored
values, so ``dequantize()`` returns exactly what the packed form holds. A value already on such a grid
(s, m representable in float16, every group touching both ends of its range) round-trips exactly: the
weights of the bundled SmolLM2, dequantized from Q4_1 (b = 4, g = 32, asymmetric), come back to the bit.
A constant group gets s = 1 (every code 0 for asymmetric). Otherwise ``|w - ŵ| ≤ s/2`` up to the float16
rounding of s and m.

**Activations** x (..., d), quantized per token (one grid per row over d), fake-quantized in place of x:

- symmetric: ``s = clip · max|x| / (2^(b-1) - 1)``, ``x̂ = s · clamp(round(x / s), -2^(b-1), 2^(b-1) - 1)``;
- asymmetric: ``hi = clip · max x``, ``lo = clip · min x``, ``s = (hi - lo) / (2^b - 1)``,
  ``z = round(-lo / s)``, ``x̂ = s · (clamp(round(x / s) + z, 0, 2^b - 1) - z)`` (an integer zero point).

``clip`` < 1 trades clipping error on the largest values for resolution on the rest (QuaRot uses 0.9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError

WEIGHT_BITS = (2, 3, 4, 8)
ACT_BITS = (4, 8)
GROUPS = (None, 16, 32, 64, 96, 128, 192, 256)
PARAM_DTYPE = torch.float16


def check_weight_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise InputError(f"Weight bits must be one of {WEIGHT_BITS}, got {bits!r}.")
    return int(bits)


def check_act_bits(bits) -> int | None:
    if bits is None:
        return None
    if isinstance(bits, bool) or bits not in ACT_BITS:
        raise InputError(f"Activation bits must be one of {ACT_BITS} or None (no activation quantization), got {bits!r}.")
    return int(bits)


def check_group(group, n_in: int | None = None, what: str = "weight") -> int | None:
    """``group`` valid (None or one of GROUPS) and dividing ``n_in`` when given; returns it."""
    if group is not None and (isinstance(group, bool) or group not in GROUPS[1:]):
        raise InputError(f"group must be None (per output channel) or one of {GROUPS[1:]}, got {group!r}.")
    if group is not None and n_in is not None and n_in % group:
        ok = [g for g in GROUPS[1:] if n_in % g == 0]
        raise InputError(f"group={group} does not divide the input dimension {n_in} of the {what}; "
                         f"choose one of {ok} or None (per channel).")
    return group


@dataclass
class QuantizedWeight:
    """Integer codes and grid parameters of one weight matrix (see the module docstring).

    codes: (out, in) uint8, unsigned (symmetric codes offset by 2^(b-1)); scale: (out, n_groups) float16;
    zero: (out, n_groups) float16 (the minimum m, asymmetric) or None (symmetric).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    group: int | None
    sym: bool

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def group_size(self) -> int:
        return self.group or self.codes.shape[1]

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """(out, in) ŵ = s q + m (asymmetric) or s (q - 2^(b-1)) (symmetric), computed in float32."""
        out, n = self.codes.shape
        g = self.group_size
        q = self.codes.reshape(out, n // g, g).float()
        if self.sym:
            q = q - float(1 << (self.bits - 1))
        w = q * self.scale.float()[..., None]
        if self.zero is not None:
            w = w + self.zero.float()[..., None]
        return w.reshape(out, n).to(dtype)


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grid of each row of ``w`` (..., k): (scale (...,), zero (...,) or None), float16-rounded (module doc)."""
    wf = w.float()
    if sym:
        qmax = (1 << (bits - 1)) - 1
        amax = wf.abs().amax(-1)
        s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).to(PARAM_DTYPE)
        s = torch.where(s.float() > 0, s, torch.ones_like(s))  # a tiny amax underflowing float16
        return s, None
    lo, hi = wf.amin(-1), wf.amax(-1)
    m = lo.to(PARAM_DTYPE)
    span = hi - m.float()
    s = torch.where(span > 0, span / ((1 << bits) - 1), torch.ones_like(span)).to(PARAM_DTYPE)
    s = torch.where(s.float() > 0, s, torch.ones_like(s))
    return s, m


def codes_for(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, sym: bool) -> torch.Tensor:
    """Integer codes (uint8, same shape as w) of ``w`` (..., k) on the grid (scale, zero) of shape (...,) or
    broadcastable to w[..., 0]."""
    s = scale.float()[..., None]
    if sym:
        half = 1 << (bits - 1)
        q = torch.clamp(torch.round(w.float() / s), -half, half - 1) + half
    else:
        q = torch.clamp(torch.round((w.float() - zero.float()[..., None]) / s), 0, (1 << bits) - 1)
    return q.to(torch.uint8)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int, sym: bool) -> torch.Tensor:
    """Inverse of ``codes_for`` (float32)."""
    v = q.float()
    if sym:
        v = v - float(1 << (bits - 1))
    v = v * scale.float()[..., None]
    return v if zero is None else v + zero.float()[..., None]


def quantize_weight(w: torch.Tensor, bits: int, group: int | None = None, sym: bool = False) -> QuantizedWeight:
    """Round-to-nearest quantization of ``w`` (out, in) on per-channel or per-group grids (module docstring)."""
    bits = check_weight_bits(bits)
    if w.ndim != 2:
        raise InputError(f"quantize_weight() takes a 2-D (out, in) matrix, got shape {tuple(w.shape)}.")
    out, n = w.shape
    check_group(group, n)
    g = group or n
    wg = w.detach().float().reshape(out, n // g, g)
    scale, zero = grid_params(wg, bits, sym)
    codes = codes_for(wg, scale, zero, bits, sym)
    return QuantizedWeight(codes.reshape(out, n), scale, zero, bits, group, bool(sym))


def fake_quantize_weight(w: torch.Tensor, bits: int, group: int | None = None, sym: bool = False) -> torch.Tensor:
    """ŵ (same shape and dtype as w): ``quantize_weight(...).dequantize()``."""
    return quantize_weight(w, bits, group, sym).dequantize(w.dtype)


def quantize_tokens(x: torch.Tensor, bits: int, sym: bool = True, clip: float = 1.0) -> torch.Tensor:
    """Per-token fake quantization of x (..., d): each row on its own grid (module docstring); same dtype."""
    if not 0 < clip <= 1:
        raise InputError(f"clip must lie in (0, 1], got {clip!r}.")
    xf = x if x.dtype == torch.float64 else x.float()
    tiny = torch.finfo(torch.float32).tiny
    if sym:
        qmax = (1 << (bits - 1)) - 1
        s = (xf.abs().amax(-1, keepdim=True) * clip / qmax).clamp_min(tiny)
        return (torch.clamp(torch.round(xf / s), -qmax - 1, qmax) * s).to(x.dtype)
    levels = (1 << bits) - 1
    hi = (xf.amax(-1, keepdim=True) * clip).clamp_min(0)
    lo = (xf.amin(-1, keepdim=True) * clip).clamp_max(0)
    s = ((hi - lo) / levels).clamp_min(tiny)
    z = torch.round(-lo / s)
    return ((torch.clamp(torch.round(xf / s) + z, 0, levels) - z) * s).to(x.dtype)


def token_error(x: torch.Tensor, bits: int, sym: bool = True, clip: float = 1.0) -> torch.Tensor:
    """(...,) relative error ‖x̂ - x‖ / ‖x‖ of per-token quantization of x (..., d)."""
    xf = x if x.dtype == torch.float64 else x.float()
    return (quantize_tokens(xf, bits, sym, clip) - xf).norm(dim=-1) / xf.norm(dim=-1).clamp_min(1e-30)
