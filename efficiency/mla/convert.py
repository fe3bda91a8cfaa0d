"""The training-free MHA2MLA conversion of one layer's attention weights (GQA included).

Per KV head g with kept rotary dimensions R_g (r of them, ``rope_select``) and the others N_g (e - r):

    keys    k = [x W_K[g][:, R_g] rotated, x W_K[g][:, N_g] (no rotation)]
    joint   M_g = [W_K[g][:, N_g] | W_V[g]]  (d, 2e - r)  ~  D_g U_g,  D_g (d, d_kv), U_g (d_kv, 2e - r)
    latent  c = x D_g (d_kv per token): k_nope = c U_g^k, v = c U_g^v

"plain" takes the top d_kv singular directions of M_g (MHA2MLA's joint SVD); "whitened" minimizes the
error on calibration inputs X instead, ||X (M_g - D_g U_g)||: with C = X^T X = S S^T, the SVD of
S^T M_g = U Sigma V^T gives D_g = S^-T U_r and U_g = Sigma_r V_r^T.

Absorbed form (what decoding from the latent uses): the scores of query head h (group g) are
q_R . k_R + (q_N U_g^k^T) . c, so W_Q[h][:, N_g] U_g^k^T (d, d_kv) replaces the non-rotated query part;
the output is sum_h (p_h c) (U_g^v W_O[h]), so U_g^v W_O[h] (d_kv, d) replaces W_O[h].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError


@dataclass
class LayerFactors:
    """One converted layer (shapes: d model, H query heads, G KV heads, e head dim, r kept rotary dims)."""

    rope_idx: torch.Tensor    # (G, r) kept dimensions, [freqs, freqs + e/2]
    nope_idx: torch.Tensor    # (G, e - r)
    Wq_rope: torch.Tensor     # (d, H, r)
    Wq_nope: torch.Tensor     # (d, H, e - r)
    Wk_rope: torch.Tensor     # (d, G, r)
    down: torch.Tensor        # (d, G, d_kv)
    up_k: torch.Tensor        # (G, d_kv, e - r)
    up_v: torch.Tensor        # (G, d_kv, e)
    W_O: torch.Tensor         # (H, e, d)
    b_O: torch.Tensor | None
    singular_values: torch.Tensor  # (G, min(d, 2e - r)) of M_g (whitened when whitened)

    @property
    def d_kv(self) -> int:
        return self.down.shape[-1]

    def absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Wq_lat (d, H, d_kv), W_VO (H, d_kv, d)): the query-side and output-side absorbed weights."""
        h = self.Wq_rope.shape[1]
        g = self.up_v.shape[0]
        grp = h // g
        up_k = self.up_k.repeat_interleave(grp, 0)   # (H, d_kv, e - r)
        up_v = self.up_v.repeat_interleave(grp, 0)   # (H, d_kv, e)
        wq_lat = torch.einsum("dhn,hcn->dhc", self.Wq_nope, up_k)
        w_vo = torch.einsum("hce,hed->hcd", up_v, self.W_O)
        return wq_lat, w_vo


def dims_of(freqs: torch.Tensor, d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rope_idx (G, r), nope_idx (G, e - r)) from kept frequency indices (G, r/2)."""
    half = d_head // 2
    rope = torch.cat([freqs, freqs + half], dim=-1)
    nope = []
    for g in range(freqs.shape[0]):
        keep = torch.ones(d_head, dtype=torch.bool)
        keep[rope[g]] = False
        nope.append(torch.nonzero(keep).squeeze(1))
    return rope.long(), torch.stack(nope).long()


def convert_layer(lw, freqs: torch.Tensor, d_kv: int, svd: str = "plain", cov: torch.Tensor | None = None) -> LayerFactors:
    """``LayerFactors`` of one layer from its ``workbench.LayerWeights`` (module docstring)."""
    W_Q, W_K, W_V, W_O = lw.W_Q, lw.W_K, lw.W_V, lw.W_O
    if lw.b_Q is not None or lw.b_K is not None or lw.b_V is not None:
        raise InputError("MHA2MLA conversion: attention with q/k/v biases is not supported.")
    h, d, e = W_Q.shape
    g = W_K.shape[0]
    grp = h // g
    rope_idx, nope_idx = dims_of(freqs, e)
    r = rope_idx.shape[1]
    m = 2 * e - r
    if not 1 <= d_kv <= min(d, m):
        raise InputError(f"d_kv={d_kv} is larger than the head dimensions allow: the joint matrix [W_K_nope | W_V] of a "
                         f"KV head is ({d}, {m}) with {r} rotary dims kept, so its rank is at most {min(d, m)}.")
    dt = W_Q.dtype
    per_head = torch.arange(h) // grp
    Wq_rope = torch.stack([W_Q[i][:, rope_idx[per_head[i]]] for i in range(h)], dim=1)
    Wq_nope = torch.stack([W_Q[i][:, nope_idx[per_head[i]]] for i in range(h)], dim=1)
    Wk_rope = torch.stack([W_K[j][:, rope_idx[j]] for j in range(g)], dim=1)
    downs, ups, sigmas = [], [], []
    chol = None
    if svd == "whitened":
        if cov is None:
            raise InputError("MHA2MLA whitened SVD needs the attention-input covariance (calibration texts).")
        from ..lowrank.svd_llm import cholesky_jittered

        chol = cholesky_jittered(cov.double().cpu())
    elif svd != "plain":
        raise InputError(f"svd must be 'plain' or 'whitened', got {svd!r}.")
    for j in range(g):
        M = torch.cat([W_K[j][:, nope_idx[j]], W_V[j]], dim=1).double().cpu()  # (d, m)
        if chol is None:
            u, s, vh = torch.linalg.svd(M, full_matrices=False)
            down = u[:, :d_kv]
        else:
            u, s, vh = torch.linalg.svd(chol.T @ M, full_matrices=False)
            down = torch.linalg.solve_triangular(chol.T, u[:, :d_kv], upper=True)
        downs.append(down)
        ups.append(s[:d_kv, None] * vh[:d_kv])
        sigmas.append(s)
    dev = W_Q.device
    down = torch.stack(downs, dim=1).to(dt).to(dev)                # (d, G, d_kv)
    up = torch.stack(ups).to(dt).to(dev)                           # (G, d_kv, m)
    return LayerFactors(rope_idx.to(dev), nope_idx.to(dev), Wq_rope.contiguous(), Wq_nope.contiguous(),
                        Wk_rope.contiguous(), down.contiguous(), up[:, :, : e - r].contiguous(),
                        up[:, :, e - r:].contiguous(), W_O, lw.b_O, torch.stack(sigmas))
