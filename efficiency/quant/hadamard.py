"""Hadamard and random orthogonal matrices, built here (Sylvester and Paley), and online Hadamard transforms.

A Hadamard matrix of order n has entries ±1 and ``H Hᵀ = n I``; divided by √n it is orthogonal. It
exists only for n = 1, 2 or a multiple of 4. We build:

- **Sylvester** for powers of two: ``H_1 = [1]``, ``H_2k = [[H_k, H_k], [H_k, -H_k]]``.
- **Paley I** for m = q + 1 with q a prime, q ≡ 3 (mod 4): with the quadratic character χ mod q
  (χ(0) = 0, +1 on non-zero squares, -1 otherwise) the Jacobsthal matrix ``J[i, j] = χ(j - i)`` is
  skew-symmetric, and ``H = I + [[0, 1ᵀ], [-1, J]]`` is Hadamard. (12 = 11 + 1.)
- **Paley II** for m = 2(q + 1) with q a prime, q ≡ 1 (mod 4): J is symmetric; the conference matrix
  ``C = [[0, 1ᵀ], [1, J]]`` becomes Hadamard when every 0 is replaced by ``[[1, -1], [-1, -1]]`` and every
  ±1 by ``±[[1, 1], [1, -1]]``. (36 = 2 (17 + 1).)
- **Kronecker products** ``H_m ⊗ H_{2^k}`` for n = m 2^k (the smallest Paley order m with the largest power of two):
  576 = 36 · 16 and 1536 = 12 · 128 on SmolLM2, 64 and 128 on the tiny test models.

``hadamard(n)`` returns the orthogonal (normalized) matrix in float64, checked to be orthogonal;
``random_hadamard(n, seed)`` = diag(±1) · H (QuaRot's randomized Hadamard, RH); ``random_orthogonal(n, seed)``
a Haar-random orthogonal matrix (RO) from the QR of a Gaussian matrix with the sign fix.
``KroneckerHadamard`` applies ``x ↦ x (A ⊗ B)`` online in Kronecker form: x (..., m·b) is viewed as
X (..., m, b) and ``x (A ⊗ B) = Aᵀ X B``, (m² b + m b²) multiply-adds per token instead of (m b)².
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from workbench.errors import InputError

ORTHOGONALITY_TOL = 1e-12


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    i = 2
    while i * i <= q:
        if q % i == 0:
            return False
        i += 1
    return True


def _jacobsthal(q: int) -> torch.Tensor:
    """(q, q) J[i, j] = χ(j - i) mod the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def sylvester(n: int) -> torch.Tensor:
    """(n, n) unnormalized ±1 Sylvester Hadamard matrix; n a power of two."""
    if n < 1 or n & (n - 1):
        raise InputError(f"sylvester(): n must be a power of two, got {n}.")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def paley(m: int) -> torch.Tensor:
    """(m, m) unnormalized ±1 Hadamard matrix by Paley's construction I (m - 1 prime ≡ 3 mod 4) or
    II (m / 2 - 1 prime ≡ 1 mod 4)."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        J = _jacobsthal(q)
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:] = 1.0
        S[1:, 0] = -1.0
        S[1:, 1:] = J
        return torch.eye(m, dtype=torch.float64) + S
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:
        J = _jacobsthal(q)
        C = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        C[0, 1:] = 1.0
        C[1:, 0] = 1.0
        C[1:, 1:] = J
        one = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(C, one) + torch.kron((C == 0).double(), zero)
    raise InputError(f"paley(): no Paley construction for order {m}.")


def _paley_order(m: int) -> bool:
    if m in (1, 2):
        return True
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        return True
    q = m // 2 - 1
    return m % 2 == 0 and _is_prime(q) and q % 4 == 1


def factor(n: int) -> tuple[int, int]:
    """(m, 2^k) with n = m · 2^k, m a Paley order (or 1), the power of two as large as possible."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"A Hadamard size must be a positive integer, got {n!r}.")
    p = 1
    while n % (2 * p) == 0:
        p *= 2
    while p >= 1:
        if _paley_order(n // p):
            return n // p, p
        p //= 2
    raise InputError(f"No Hadamard matrix of order {n} can be built here (orders m·2^k with m = 1, 2, q + 1 for a "
                     "prime q ≡ 3 mod 4, or 2(q + 1) for a prime q ≡ 1 mod 4). Use a random orthogonal rotation "
                     "(rotation='ro') for this size.")


def check_orthogonal(Q: torch.Tensor, what: str, tol: float = ORTHOGONALITY_TOL) -> torch.Tensor:
    err = float((Q @ Q.T - torch.eye(Q.shape[0], dtype=Q.dtype)).abs().max())
    if err > tol:
        raise RuntimeError(f"{what} is not orthogonal: max |Q Qᵀ - I| = {err:.2e} > {tol:.0e}.")
    return Q


@lru_cache(maxsize=16)
def _hadamard_cached(n: int) -> torch.Tensor:
    m, p = factor(n)
    a = paley(m) if m > 2 else sylvester(m)
    h = torch.kron(a, sylvester(p))
    return check_orthogonal(h / n ** 0.5, f"hadamard({n})")


def hadamard(n: int) -> torch.Tensor:
    """(n, n) orthogonal Hadamard matrix (entries ±1/√n), float64 (see the module docstring)."""
    return _hadamard_cached(n).clone()


def hadamard_factors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (m, m), B (2^k, 2^k)), both orthogonal float64, with hadamard(n) == kron(A, B)."""
    m, p = factor(n)
    a = (paley(m) if m > 2 else sylvester(m)) / m ** 0.5
    return a, sylvester(p) / p ** 0.5


def random_signs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2, (n,), generator=g).double() * 2 - 1


def random_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """(n, n) diag(s) · H with random signs s (seeded): QuaRot's randomized Hadamard, float64, orthogonal."""
    return random_signs(n, seed)[:, None] * hadamard(n)


def random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    """(n, n) Haar-random orthogonal matrix (seeded), float64: Q of the QR of a Gaussian matrix, with
    the signs of R's diagonal moved into Q so the distribution is uniform."""
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    return check_orthogonal(q, f"random_orthogonal({n})", 1e-10)


class KroneckerHadamard(nn.Module):
    """``x ↦ x · hadamard(n)`` applied online in Kronecker form (see the module docstring); x (..., n).

    The factors are buffers in the dtype and on the device of the model (moved with ``.to``)."""

    def __init__(self, n: int, dtype=torch.float32, device=None):
        super().__init__()
        a, b = hadamard_factors(n)
        self.n, self.m, self.p = n, a.shape[0], b.shape[0]
        self.register_buffer("a", a.to(dtype=dtype, device=device), persistent=False)
        self.register_buffer("b", b.to(dtype=dtype, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        X = x.reshape(*x.shape[:-1], self.m, self.p) @ self.b.to(x.dtype)
        if self.m > 1:
            X = self.a.t().to(x.dtype) @ X
        return X.reshape(x.shape)

    def matrix(self) -> torch.Tensor:
        """(n, n) the matrix applied, float64."""
        return torch.kron(self.a.double().cpu(), self.b.double().cpu())

    def extra_repr(self) -> str:
        return f"n={self.n} = {self.m} x {self.p}"
