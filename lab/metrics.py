"""The numbers the lab compares, as plain functions on tensors (each checked against a hand computation).

Shapes: L layers, H query heads, N tokens, T positions (keys), F features, V vocabulary.
"""
from __future__ import annotations

import torch

EPS = 1e-12


def residual_drift(base: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, N, d) residuals of the baseline and the method -> per layer (L,) the mean over tokens of the
    relative error ‖new − base‖ / ‖base‖ and of the cosine similarity."""
    b, n = base.double(), new.double()
    nb = b.norm(dim=-1)
    rel = (n - b).norm(dim=-1) / nb.clamp_min(EPS)
    cos = (b * n).sum(-1) / (nb * n.norm(dim=-1)).clamp_min(EPS)
    return rel.mean(-1), cos.mean(-1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """0.5 Σ |p − q| over the last axis (distributions that sum to 1)."""
    return 0.5 * (p.double() - q.double()).abs().sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats over the last axis: ½ KL(p‖m) + ½ KL(q‖m), m = (p + q)/2; in [0, ln 2]."""
    p, q = p.double().clamp_min(0), q.double().clamp_min(0)
    m = 0.5 * (p + q)
    kl = lambda a: torch.where(a > 0, a * (a.clamp_min(EPS).log() - m.clamp_min(EPS).log()), torch.zeros_like(a))  # noqa: E731
    return 0.5 * kl(p).sum(-1) + 0.5 * kl(q).sum(-1)


def kl_from_logprobs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis from log-probabilities (p the baseline); clamped at 0 against rounding."""
    p = logp.double().exp()
    return (p * (logp.double() - logq.double())).sum(-1).clamp_min(0)


def topk_kept(base: torch.Tensor, new: torch.Tensor, k: int) -> torch.Tensor:
    """(N, F) activations -> (N,) share of each token's top-k baseline features (among its active ones, at most k)
    that are also among the method's top-k active features; NaN for a token with no active baseline feature."""
    k = min(k, base.shape[-1])
    bv, bi = base.topk(k, dim=-1)
    nv, ni = new.topk(k, dim=-1)
    b_on = torch.zeros_like(base, dtype=torch.bool).scatter_(-1, bi, bv > 0)
    n_on = torch.zeros_like(new, dtype=torch.bool).scatter_(-1, ni, nv > 0)
    kept = (b_on & n_on).sum(-1).double()
    total = b_on.sum(-1).double()
    return torch.where(total > 0, kept / total.clamp_min(1), torch.full_like(total, float("nan")))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two tensors flattened (NaN when either is constant)."""
    x, y = a.double().flatten(), b.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


def map_rows(rows: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
    """Attention rows over cache slots -> rows over original positions.

    rows (..., H, K) attention of query heads over the K slots of one layer; positions (G, K) the original
    position of each slot per KV head (-1: a padding slot of a per-head layer, which gets zero attention);
    query head h reads KV head h // (H // G). Returns (..., H, size), evicted positions at 0.
    """
    h, g = rows.shape[-2], positions.shape[0]
    idx = positions.repeat_interleave(h // g, dim=0)  # (H, K)
    pad = idx < 0
    vals = rows.masked_fill(pad, 0.0)
    out = torch.zeros(*rows.shape[:-1], size, dtype=rows.dtype, device=rows.device)
    return out.scatter_add_(-1, idx.clamp_min(0).expand_as(vals), vals)


__all__ = ["residual_drift", "total_variation", "js_divergence", "kl_from_logprobs", "topk_kept", "pearson", "map_rows"]
