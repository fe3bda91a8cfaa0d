"""One Llama-family block computed from its weights, with TEAL thresholds on every projection input.

Used by the greedy allocation, which evaluates thousands of candidate sparsity settings on one block at
a time from cached block inputs. It is checked against the model (``resid_post`` from ``resid_pre``) in
the tests. Supports RMSNorm, RoPE (rotate-half, default scaling), GQA and a SwiGLU MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.errors import InputError


def check_llama_like(model, what: str) -> None:
    i = model.info
    w = model.weights().layers[0]
    if i.positional != "rotary" or w.W_gate is None or i.normalization.upper().startswith("LN"):
        raise InputError(f"{what} needs a Llama-family model (RoPE, RMSNorm, gated MLP); {i.name} is {i.architecture}.")
    if model.rope_inv_freq() is None:
        raise InputError(f"{what}: cannot read the model's RoPE frequencies.")


def rope_tables(model, n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (n, d_head), for positions 0..n-1 in HF's rotate-half layout."""
    inv_freq, _ = model.rope_inv_freq()
    pos = torch.arange(n, dtype=torch.float32, device=inv_freq.device)
    freqs = pos[:, None] * inv_freq.float()[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device or inv_freq.device), emb.sin().to(device or inv_freq.device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def _sparsify(x: torch.Tensor, t: float) -> torch.Tensor:
    return x * (x.abs() > t) if t > 0 else x


def block_forward(lw, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, thresholds: dict | None = None) -> torch.Tensor:
    """x (B, T, d) residual entering the block -> (B, T, d) leaving it. thresholds: {kind: t} on the inputs of
    q, k, v, o, gate, up, down (missing kinds dense). lw: ``workbench.LayerWeights``; cos/sin (>= T, e)."""
    th = thresholds or {}
    b, t, d = x.shape
    n_heads, _, e = lw.W_Q.shape
    g = lw.W_K.shape[0]
    h = lw.ln1(x)
    q = torch.einsum("btd,hde->bhte", _sparsify(h, th.get("q", 0.0)), lw.W_Q)
    k = torch.einsum("btd,gde->bgte", _sparsify(h, th.get("k", 0.0)), lw.W_K)
    v = torch.einsum("btd,gde->bgte", _sparsify(h, th.get("v", 0.0)), lw.W_V)
    if lw.b_Q is not None:
        q, k, v = q + lw.b_Q[None, :, None], k + lw.b_K[None, :, None], v + lw.b_V[None, :, None]
    c, s = cos[:t], sin[:t]
    q = q * c + rotate_half(q) * s
    k = k * c + rotate_half(k) * s
    k = k.repeat_interleave(n_heads // g, dim=1)
    v = v.repeat_interleave(n_heads // g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * e ** -0.5
    causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
    p = torch.softmax(scores.masked_fill(causal, float("-inf")).float(), -1).to(x.dtype)
    z = (p @ v).transpose(1, 2).reshape(b, t, n_heads * e)
    attn = _sparsify(z, th.get("o", 0.0)) @ lw.W_O.reshape(n_heads * e, d)
    if lw.b_O is not None:
        attn = attn + lw.b_O
    mid = x + attn
    h2 = lw.ln2(mid)
    gate = _sparsify(h2, th.get("gate", 0.0)) @ lw.W_gate
    up = _sparsify(h2, th.get("up", 0.0)) @ lw.W_in
    if lw.b_in is not None:
        up = up + lw.b_in
    act = F.silu(gate) * up
    out = _sparsify(act, th.get("down", 0.0)) @ lw.W_out
    if lw.b_out is not None:
        out = out + lw.b_out
    return mid + out
