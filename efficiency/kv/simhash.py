"""SimHash codes: signs of Gaussian projections, packed bits, Hamming distances.

Charikar's SimHash: with a Gaussian projection ``P`` (d, b), the code of a vector x is the b sign
bits of ``x P`` (bit = 1 where ``x P >= 0``). For two vectors at angle θ each bit differs with
probability θ / π, so ``π · Hamming(code(x), code(y)) / b`` estimates θ (the estimate tightens
as b grows), and a small Hamming distance means a small angle, i.e. a large cosine similarity.

Storage: codes are packed 8 bits per byte (``pack_bits``), so a b-bit code takes ceil(b / 8)
bytes. Distances between packed codes use XOR and a 256-entry popcount table (``hamming``); many
distances at once use the ±1 form ``(b - s_x · s_y) / 2`` with s = 2 · bit - 1 (``hamming_matrix``),
which gives the same integers through one matrix product.
"""
from __future__ import annotations

import math

import torch

from workbench.errors import InputError

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.uint8)


def gaussian_projection(d: int, bits: int, seed: int = 0, device=None) -> torch.Tensor:
    """(d, bits) float32 matrix of independent standard normals, reproducible from ``seed``."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise InputError(f"bits must be a positive integer, got {bits!r}.")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(d, bits, generator=g).to(device)


def sign_bits(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """x (..., d) -> bool (..., b): the signs of x @ projection (True where >= 0)."""
    return (x.float() @ projection.to(x.device, torch.float32)) >= 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool (..., b) -> uint8 (..., ceil(b / 8)); bit i of a code is bit (i % 8) of byte i // 8."""
    b = bits.shape[-1]
    nb = math.ceil(b / 8)
    padded = torch.zeros(*bits.shape[:-1], nb * 8, dtype=torch.uint8, device=bits.device)
    padded[..., :b] = bits.to(torch.uint8)
    weights = (2 ** torch.arange(8, device=bits.device)).to(torch.uint8)
    return (padded.reshape(*bits.shape[:-1], nb, 8) * weights).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 (..., ceil(b / 8)) -> bool (..., b), the inverse of ``pack_bits``."""
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    out = ((packed[..., None] >> shifts) & 1).bool()
    return out.reshape(*packed.shape[:-1], -1)[..., :bits]


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance of packed codes a (..., nb) and b (..., nb) (broadcast), as int64 (...)."""
    table = _POPCOUNT.to(a.device)
    return table[(a ^ b).long()].sum(-1, dtype=torch.int64)


def hamming_matrix(x_bits: torch.Tensor, y_bits: torch.Tensor) -> torch.Tensor:
    """All distances between unpacked codes x (..., M, b) and y (..., N, b): int64 (..., M, N)."""
    b = x_bits.shape[-1]
    sx, sy = x_bits.float() * 2 - 1, y_bits.float() * 2 - 1
    return ((b - sx @ sy.transpose(-1, -2)) / 2).round().long()


def angle_estimate(distance: torch.Tensor, bits: int) -> torch.Tensor:
    """π · Hamming / b: the SimHash estimate of the angle (radians) between the hashed vectors."""
    return math.pi * distance.double() / bits
