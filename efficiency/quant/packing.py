"""Packed storage of quantized weights: codes as a bit stream per output row, grid parameters in float16.

``pack_rows(codes, bits)``: codes (out, in) uint8 with values < 2^bits -> (out, ceil(in · bits / 8)) uint8.
Code j of a row occupies bits [j·bits, (j+1)·bits) of the row's stream, least significant bit first
(so 4-bit codes sit two per byte, low nibble first, and 3-bit codes straddle byte boundaries).
``unpack_rows(packed, bits, n_in)`` is its exact inverse.

``PackedWeight`` holds one matrix packed: the code stream, the scales (out, n_groups) float16 and, for
asymmetric grids, the minima (out, n_groups) float16. Its ``nbytes`` are the bytes of those tensors,
and always equal ``packed_bytes(out, in, bits, group, sym)``:

    out · ceil(in · bits / 8)  +  out · n_groups · 2 · (1 if symmetric else 2),   n_groups = in / group (1 per channel)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from workbench.errors import InputError

from .grids import QuantizedWeight, check_group, check_weight_bits


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(out, in) uint8 codes -> (out, ceil(in·bits/8)) uint8 bit stream per row (module docstring)."""
    bits = check_weight_bits(bits)
    if codes.ndim != 2 or codes.dtype != torch.uint8:
        raise InputError(f"pack_rows() takes (out, in) uint8 codes, got {codes.dtype} {tuple(codes.shape)}.")
    c = codes.detach().cpu().numpy()
    if c.size and int(c.max()) >= 1 << bits:
        raise InputError(f"pack_rows(): a code {int(c.max())} does not fit in {bits} bits.")
    out, n = c.shape
    stream = np.unpackbits(c[..., None], axis=-1, bitorder="little")[..., :bits].reshape(out, n * bits)
    packed = np.packbits(stream, axis=-1, bitorder="little")
    return torch.from_numpy(packed).to(codes.device)


def unpack_rows(packed: torch.Tensor, bits: int, n_in: int) -> torch.Tensor:
    """Inverse of ``pack_rows``: (out, ceil(n_in·bits/8)) uint8 -> (out, n_in) uint8 codes."""
    bits = check_weight_bits(bits)
    p = packed.detach().cpu().numpy()
    out = p.shape[0]
    stream = np.unpackbits(p, axis=-1, bitorder="little")[:, : n_in * bits].reshape(out, n_in, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16))
    codes = (stream.astype(np.uint16) * weights).sum(-1).astype(np.uint8)
    return torch.from_numpy(codes).to(packed.device)


def packed_bytes(out: int, n_in: int, bits: int, group: int | None, sym: bool) -> int:
    """Physical bytes of one packed (out, n_in) matrix (module docstring)."""
    check_weight_bits(bits)
    check_group(group, n_in)
    n_groups = n_in // (group or n_in)
    return out * math.ceil(n_in * bits / 8) + out * n_groups * 2 * (1 if sym else 2)


@dataclass
class PackedWeight:
    """One quantized matrix as it would be stored: codes packed per row, float16 grid parameters."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple[int, int]
    bits: int
    group: int | None
    sym: bool

    @classmethod
    def from_quantized(cls, q: QuantizedWeight) -> "PackedWeight":
        return cls(pack_rows(q.codes, q.bits), q.scale.contiguous(), None if q.zero is None else q.zero.contiguous(),
                   q.shape, q.bits, q.group, q.sym)

    def unpack(self) -> QuantizedWeight:
        return QuantizedWeight(unpack_rows(self.codes, self.bits, self.shape[1]), self.scale, self.zero, self.bits,
                               self.group, self.sym)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return self.unpack().dequantize(dtype)

    def stored_tensors(self) -> list[torch.Tensor]:
        return [self.codes, self.scale] + ([] if self.zero is None else [self.zero])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stored_tensors())
