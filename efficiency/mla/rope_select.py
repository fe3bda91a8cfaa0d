"""Partial RoPE for MHA2MLA: which rotary frequency pairs each KV head keeps.

In HF's rotate-half layout, frequency i (0 <= i < e/2) rotates the dimension pair (i, i + e/2). A layer's
KV head g keeps r/2 of its e/2 pairs (r = ``rope_dims``); the other dimensions lose their rotation and
go into the low-rank latent. Choices (MHA2MLA, Ji et al. 2025):

- "2-norm" (the paper's best): S_i = sum over the query heads h of the group of
  mean_t ||q_h[i, i+e/2]|| x mean_t ||k_g[i, i+e/2]|| on pre-RoPE queries and keys of calibration text;
  keep the r/2 pairs with the largest S (those contributing most to the scores);
- "high": the r/2 highest-frequency pairs (i = 0, 1, ...); "low": the r/2 lowest; "uniform": evenly spaced.
"""
from __future__ import annotations

import torch

from workbench import hook_name
from workbench.errors import InputError

from ..calibration import token_windows

SELECTIONS = ("2-norm", "high", "low", "uniform")


def pair_norm_scores(model, texts, window: int = 256, n_windows: int = 4) -> torch.Tensor:
    """(L, G, e/2) the 2-norm contribution score S of every frequency pair (module docstring)."""
    i = model.info
    e, half, grp = i.d_head, i.d_head // 2, i.group_size
    windows = token_windows(model, texts, window, n_windows)
    q_sum = torch.zeros(i.n_layers, i.n_heads, half, dtype=torch.float64)
    k_sum = torch.zeros(i.n_layers, i.n_kv_heads, half, dtype=torch.float64)
    count = [0]

    def pair_norms(x: torch.Tensor) -> torch.Tensor:  # (B, T, heads, e) -> (heads, e/2) summed over tokens
        x = x.double()
        return (x[..., :half] ** 2 + x[..., half:] ** 2).sqrt().sum((0, 1)).cpu()

    def on_q(l):
        def fn(x, _n):
            q_sum[l] += pair_norms(x)
        return fn

    def on_k(l):
        def fn(x, _n):
            k_sum[l] += pair_norms(x)
        return fn

    hooks = [(hook_name("q", l), on_q(l)) for l in range(i.n_layers)]
    hooks += [(hook_name("k", l), on_k(l)) for l in range(i.n_layers)]
    with model.without_interventions(), model.session(hooks=hooks) as s:
        for b in range(windows.shape[0]):
            s.forward(windows[b: b + 1])
            count[0] += windows.shape[1]
    q_mean, k_mean = q_sum / count[0], k_sum / count[0]
    return (q_mean.view(i.n_layers, i.n_kv_heads, grp, half) * k_mean[:, :, None]).sum(2) if e else q_mean


def select_pairs(model, rope_dims: int, how: str = "2-norm", scores: torch.Tensor | None = None) -> torch.Tensor:
    """(L, G, rope_dims/2) kept frequency indices per layer and KV head, ascending."""
    i = model.info
    half = i.d_head // 2
    if how not in SELECTIONS:
        raise InputError(f"rope selection must be one of {SELECTIONS}, got {how!r}.")
    if not isinstance(rope_dims, int) or isinstance(rope_dims, bool) or rope_dims % 2 or not 0 <= rope_dims <= i.d_head:
        raise InputError(f"rope_dims must be an even integer in [0, {i.d_head}] (pairs of rotated dimensions), "
                         f"got {rope_dims!r}.")
    k = rope_dims // 2
    shape = (i.n_layers, i.n_kv_heads)
    if how == "high":
        idx = torch.arange(k)
    elif how == "low":
        idx = torch.arange(half - k, half)
    elif how == "uniform":
        idx = torch.linspace(0, half - 1, k).round().long() if k else torch.arange(0)
    else:
        if scores is None:
            raise InputError("2-norm rope selection needs the pair scores (pair_norm_scores on calibration texts).")
        return scores.topk(k, dim=-1).indices.sort(dim=-1).values if k else torch.zeros(*shape, 0, dtype=torch.long)
    return idx.long().expand(*shape, k).clone()
