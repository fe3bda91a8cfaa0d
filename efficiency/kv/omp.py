"""Batched orthogonal matching pursuit (OMP) with a cached Gram matrix.

Given a dictionary ``D`` (d, N) of unit-norm atoms and signals ``x`` (M, d), OMP picks, for each
signal, ``s`` atoms one at a time: the atom most correlated (in absolute value) with the current
residual, then the least-squares coefficients of x on all atoms picked so far, so the residual stays
orthogonal to them. Working from correlations (Batch-OMP, Rubinstein et al. 2008):

    α0 = Dᵀ x  (M, N);  after picking the set I:  c = (G_II)⁻¹ α0_I,  α = α0 - G_{:,I} c,

with the Gram matrix ``G = DᵀD`` (N, N) computed once per dictionary (``Gram``) and reused for every
call. Per signal the cost is ``N·d`` for α0 plus ``N·t`` per step t and a t×t solve (in float64), so a
whole encode costs about ``N·(d + s²/2)`` multiply-adds instead of recomputing ``DᵀD`` (N²·d) per call.

Exactness: with s = d and a dictionary whose atoms span R^d (e.g. a complete basis), the residual
after d steps is 0 and the reconstruction equals x up to float rounding (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError


@dataclass
class Gram:
    """A dictionary (d, N) with unit-norm atoms and its Gram matrix (N, N), computed once."""

    dictionary: torch.Tensor
    gram: torch.Tensor

    @classmethod
    def of(cls, dictionary: torch.Tensor) -> "Gram":
        if dictionary.ndim != 2:
            raise InputError(f"OMP: the dictionary must be (d, N), got {tuple(dictionary.shape)}.")
        d = dictionary.float()
        return cls(d, d.T @ d)


def omp(x: torch.Tensor, dictionary: torch.Tensor | Gram, sparsity: int, chunk: int = 2048
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse codes of x (M, d): (indices (M, s) long, coefficients (M, s) float32) with
    ``x ≈ Σ_j coef[:, j] * D[:, idx[:, j]]``. Signals are processed ``chunk`` at a time."""
    g = dictionary if isinstance(dictionary, Gram) else Gram.of(dictionary)
    d_dim, n_atoms = g.dictionary.shape
    if x.ndim != 2 or x.shape[-1] != d_dim:
        raise InputError(f"OMP: signals must be (M, {d_dim}), got {tuple(x.shape)}.")
    if not isinstance(sparsity, int) or isinstance(sparsity, bool) or not 1 <= sparsity <= min(n_atoms, d_dim):
        raise InputError(f"OMP: sparsity must be an integer in 1..{min(n_atoms, d_dim)}, got {sparsity!r}.")
    idx_out, coef_out = [], []
    for start in range(0, x.shape[0], chunk):
        i, c = _omp_chunk(x[start:start + chunk].float(), g, sparsity)
        idx_out.append(i)
        coef_out.append(c)
    if not idx_out:
        return (torch.empty(0, sparsity, dtype=torch.long, device=x.device),
                torch.empty(0, sparsity, device=x.device))
    return torch.cat(idx_out), torch.cat(coef_out)


def _omp_chunk(x: torch.Tensor, g: Gram, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    D, G = g.dictionary.to(x.device), g.gram.to(x.device)
    m, n = x.shape[0], D.shape[1]
    alpha0 = x @ D  # (M, N)
    alpha = alpha0.clone()
    chosen = torch.zeros(m, s, dtype=torch.long, device=x.device)
    g_rows = torch.empty(m, s, n, device=x.device)  # G[I_t, :] of each picked atom
    coef = None
    for t in range(s):
        if t:  # the residual is orthogonal to the picked atoms; zero them exactly so none is picked twice
            alpha.scatter_(1, chosen[:, :t], 0.0)
        k = alpha.abs_().argmax(-1)
        chosen[:, t] = k
        g_rows[:, t] = G[k]
        idx = chosen[:, :t + 1]
        g_ii = g_rows[:, :t + 1].gather(2, idx[:, None, :].expand(m, t + 1, t + 1)).double()  # (M, t+1, t+1)
        rhs = alpha0.gather(1, idx).double()[..., None]
        coef = _solve(g_ii, rhs)[..., 0]  # (M, t+1)
        if t + 1 < s:
            alpha = torch.baddbmm(alpha0[:, None], coef.float()[:, None], g_rows[:, :t + 1], alpha=-1)[:, 0]
    return chosen, coef.float()


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched solve of the (symmetric positive semi-definite) Gram systems; a tiny ridge where singular."""
    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # an exactly singular system (an atom repeated in value): regularize lightly
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        return torch.linalg.solve(a + 1e-10 * eye * a.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None], b)


def reconstruct(indices: torch.Tensor, coefficients: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """x̂ (M, d) = Σ_j coef[:, j] · D[:, idx[:, j]] from codes (M, s) and the dictionary (d, N)."""
    atoms = dictionary.float().T[indices.long()]  # (M, s, d)
    return (coefficients.float()[..., None] * atoms).sum(-2)
